//! The traits connectors implement: sources produce batches, sinks consume them.
//!
//! Both run on a worker thread and must never block on I/O: a connector that does I/O keeps it
//! on a thread of its own, exchanges data with it over a bounded channel, and rings the
//! worker's [`Waker`] when that thread made progress.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::BoxError;
use crate::Timestamp;

/// Identity of one parallel instance of an operator, handed to factories.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    /// Name of the job.
    pub job: Arc<str>,
    /// Name of the operator (source, transform or sink).
    pub operator: Arc<str>,
    /// Index of this parallel instance, `0..parallelism`.
    pub subtask: usize,
    /// Number of parallel instances of this operator.
    pub parallelism: usize,
    /// Number of key groups of the job.
    pub max_parallelism: usize,
    pub(crate) waker: Waker,
    pub(crate) metrics: Arc<crate::metrics::NodeMetrics>,
    /// Set when the job is asked to stop gracefully: sources end as if exhausted.
    pub(crate) stop: Arc<std::sync::atomic::AtomicBool>,
    /// Index of the operator in the job graph (names its checkpoint sections).
    pub(crate) node: usize,
    pub(crate) restore: Option<Arc<crate::checkpoint::RestoreSet>>,
    pub(crate) checkpointing: bool,
    /// A graceful stop ends in a checkpoint that is kept (checkpointing with `on_cancel =
    /// retain`), which `--restore` continues: the stop does not end the input (no final
    /// watermark). Otherwise (no checkpoints, or `on_cancel = delete`) a stop drains.
    pub(crate) stop_resumes: bool,
    /// Id of the first checkpoint of this run (barrier ids start here).
    pub(crate) first_checkpoint: u64,
    /// Set when checkpoints are incremental: shared by every keyed table of the run.
    pub(crate) incremental: Option<Arc<crate::state::Incremental>>,
}

impl TaskInfo {
    /// A handle that wakes the worker running this task; give it to I/O threads.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// True when the job takes checkpoints (sinks then commit per checkpoint).
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// Id of the first checkpoint of this run: barriers are numbered from it, one apart.
    pub fn first_checkpoint(&self) -> u64 {
        self.first_checkpoint
    }

    /// When the job was restored from a checkpoint: the id of that checkpoint.
    pub fn restored_checkpoint(&self) -> Option<u64> {
        self.restore.as_ref().map(|r| r.id)
    }

    /// When the job was restored: the state this instance stored in that checkpoint (what its
    /// source's `snapshot` or its sink's `pre_commit` returned). `None` on a fresh start or
    /// when the instance stored nothing.
    pub fn restored_state(&self) -> Option<&[u8]> {
        self.restored_section("state")
    }

    pub(crate) fn section_name(&self, kind: &str) -> String {
        format!("{}/{}/{kind}", self.node, self.subtask)
    }

    pub(crate) fn restored_section(&self, kind: &str) -> Option<&[u8]> {
        self.restore.as_ref()?.section(&self.section_name(kind))
    }

    /// Threads this instance may use to decode its restored state: its share of the machine's
    /// cores (all instances of the operator restore at the same time), at least 1.
    pub(crate) fn restore_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / self.parallelism.max(1)).max(1)
    }

    /// The section `kind` of this instance in the files of checkpoint `id`, an earlier
    /// checkpoint the restored one references (incremental state).
    pub(crate) fn earlier_section(&self, id: u64, kind: &str) -> Result<&[u8], String> {
        let name = self.section_name(kind);
        self.restore
            .as_ref()
            .and_then(|r| r.section_at(id, &name))
            .ok_or_else(|| {
                format!("section `{name}` of checkpoint {id} is missing from the files the checkpoint lists")
            })
    }
}

/// Wakes a parked worker. Cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Waker(Sender<()>);

impl Waker {
    pub(crate) fn pair() -> (Waker, Receiver<()>) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (Waker(tx), rx)
    }

    /// A waker tied to no worker (waking it does nothing): for connector code run outside a
    /// job, such as tests of an I/O thread.
    pub fn none() -> Waker {
        Waker::pair().0
    }

    /// Asks the worker to poll its tasks again.
    pub fn wake(&self) {
        match self.0.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
        }
    }
}

/// What a source did when polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// Records were appended (or may be available right away).
    Ready,
    /// Nothing available now. Poll again at the given instant, or when the [`Waker`] rings
    /// (`None`: only when woken, or after the worker's idle timeout).
    Idle(Option<Instant>),
    /// The source is exhausted; it will not be polled again.
    Exhausted,
}

/// One parallel instance of a source, created on its worker thread by a factory.
pub trait SourceReader<T> {
    /// Appends at most `max` records with their event timestamps
    /// ([`crate::NO_TIMESTAMP`] when the source has none) to `out`.
    fn poll(&mut self, out: &mut Vec<(Timestamp, T)>, max: usize) -> Result<SourcePoll, BoxError>;
    /// The position of the next record not yet returned by `poll`, stored in checkpoint
    /// `checkpoint` and handed back through [`TaskInfo::restored_state`] when the job is
    /// restored from it.
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        Ok(Vec::new())
    }
    /// The source's own event-time watermark, asked after every poll: no record with a smaller
    /// timestamp follows (e.g. the minimum over a Kafka source's active partitions). Only
    /// increases are forwarded. `None` (the default): the source emits no watermarks of its
    /// own (a `with_timestamps` operator may add them downstream).
    fn watermark(&mut self) -> Option<Timestamp> {
        None
    }
    /// True while the source has nothing to emit and should not hold back event time
    /// downstream (e.g. a Kafka source whose partitions have all been idle for `idle_timeout`,
    /// or that reads no partition at all). Asked after every poll that returned no records;
    /// the source is active again as soon as it returns records or a new watermark. Operators
    /// downstream leave an idle input out of their watermark; records that arrive after it woke
    /// up may be late if the others moved event time past them meanwhile (as in Flink).
    /// Default `false`.
    fn idle(&self) -> bool {
        false
    }
    /// Checkpoint `checkpoint` completed (its metadata is durable): e.g. commit the positions
    /// it recorded to an external system for monitoring. Must not block.
    fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A sink's state that is known only once its pre-commit is durable (see
/// [`PreCommit::durable_state`]).
pub type DurableState = Box<dyn FnOnce() -> Result<Vec<u8>, BoxError> + Send>;

/// What a sink returns when a checkpoint barrier reaches it.
#[derive(Default)]
pub struct PreCommit {
    /// Stored in the checkpoint (e.g. the names of the files pending for it).
    pub state: Vec<u8>,
    /// Blocks until the pre-committed data is durable; runs on the checkpoint writer thread,
    /// and the checkpoint completes only after it returned `Ok`.
    pub durable: Option<Box<dyn FnOnce() -> Result<(), BoxError> + Send>>,
    /// State that is known only once the pre-commit is durable (e.g. the producer id and
    /// epoch of a transaction, learned by the sink's I/O thread when it flushed). Runs on the
    /// checkpoint writer thread after every `durable` wait; when set, its bytes are stored
    /// instead of `state`.
    pub durable_state: Option<DurableState>,
}

/// One parallel instance of a sink, created on its worker thread by a factory.
pub trait SinkWriter<T> {
    /// Consumes the records of `batch` (the vector may be drained and reused).
    fn write(&mut self, batch: &mut Vec<(Timestamp, T)>) -> Result<(), BoxError>;
    /// End of input: flush and close. Called once; no `write` follows.
    fn finish(&mut self) -> Result<(), BoxError>;
    /// True while the sink cannot take more records (its I/O thread is behind). The worker
    /// then stops feeding it and polls [`SinkWriter::try_flush`] after each wake-up.
    fn blocked(&self) -> bool {
        false
    }
    /// Retries output that could not be handed over; returns true on progress.
    fn try_flush(&mut self) -> Result<bool, BoxError> {
        Ok(false)
    }
    /// True once everything handed to the sink is finished (after `finish`).
    fn done(&self) -> bool {
        true
    }
    /// A checkpoint barrier: everything written so far belongs to `checkpoint`; make it
    /// durable but not yet visible (phase one of two-phase commit).
    fn pre_commit(&mut self, _checkpoint: u64) -> Result<PreCommit, BoxError> {
        Ok(PreCommit::default())
    }
    /// `checkpoint` completed: make what was pre-committed up to it visible (phase two). Must
    /// be idempotent.
    fn commit(&mut self, _checkpoint: u64) -> Result<(), BoxError> {
        Ok(())
    }
}
