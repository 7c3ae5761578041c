//! Operators: the [`Collector`] every operator instance implements, and the stateless ones.
//!
//! An operator instance receives batches and control calls from its upstream (a direct call
//! when chained, the input gate otherwise) and pushes results into its downstream collector.
//! Batches are `Vec<(Timestamp, T)>` and are moved, not copied, along a chain.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{BoxError, JobError};
use crate::exchange::Outlet;
use crate::metrics::NodeMetrics;
use crate::source::{SinkWriter, TaskInfo};
use crate::Timestamp;

/// A batch of records with their event timestamps.
pub(crate) type Batch<T> = Vec<(Timestamp, T)>;

/// Waits until something a checkpoint depends on is durable (e.g. a sink's pre-committed
/// file); runs on the checkpoint writer thread, never on a worker.
pub(crate) type DurableWait = Box<dyn FnOnce() -> Result<(), BoxError> + Send>;

/// A state section of a checkpoint: bytes captured at the barrier, or a capture (e.g. frozen
/// copy-on-write maps) encoded later on the snapshot writer thread, off the worker.
pub(crate) enum Section {
    Bytes(Vec<u8>),
    Deferred(crate::encoding::Deferred),
}

/// A checkpoint barrier travelling down a chain: operators append their state sections.
pub(crate) struct Barrier<'a> {
    pub(crate) id: u64,
    /// No record follows this barrier: every source upstream has stopped or ended and waits
    /// for the final checkpoint (the barrier of a job's final checkpoint, or of one triggered
    /// just before the last source stopped). `ProcessOp` runs `close` here when a stop did not
    /// end the input with a final watermark: a `ProcessFunction`'s fields are not
    /// checkpointed, so what it holds must be emitted before the checkpoint.
    pub(crate) last: bool,
    pub(crate) sections: &'a mut Vec<(String, Section)>,
    pub(crate) durable: &'a mut Vec<DurableWait>,
    /// Earlier checkpoints whose files the sections reference (incremental state).
    pub(crate) refs: &'a mut std::collections::BTreeSet<u64>,
}

/// Input side of an operator instance (Flink's `Output`/`Collector` seen from upstream).
pub(crate) trait Collector<T> {
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError>;
    /// The event-time clock of this input advanced to `wm`: no record with a smaller timestamp
    /// follows. Called with strictly increasing values.
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError>;
    /// Watermark status (Flink's `WatermarkStatus`): `true` when this input went idle (its
    /// sources have had nothing to emit for a while, or read nothing at all), `false` when it
    /// becomes active again, before its next record or watermark. Operators forward it; an
    /// input gate leaves idle channels out of its watermark minimum and is idle itself when
    /// every open channel is. Alternates, starting active.
    fn idle(&mut self, idle: bool) -> Result<(), JobError>;
    /// End of input. Called once, after a final `watermark(MAX_WATERMARK)`.
    fn finish(&mut self) -> Result<(), JobError>;
    /// Checkpoint barrier: snapshot state at this point of the stream, then forward it.
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError>;
}

pub(crate) type Out<T> = Box<dyn Collector<T>>;

/// Counts records entering an operator (all subtasks share the node's counters).
pub(crate) struct Counted<T> {
    pub(crate) metrics: Arc<NodeMetrics>,
    pub(crate) inner: Out<T>,
}

impl<T> Collector<T> for Counted<T> {
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError> {
        self.metrics
            .records_in
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.inner.batch(batch)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.metrics.watermark.store(wm, Ordering::Relaxed);
        self.inner.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.inner.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.inner.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.inner.barrier(b)
    }
}

/// Fan-out: every batch goes to every consumer (cloned for all but the last).
pub(crate) struct Tee<T> {
    pub(crate) outs: Vec<Out<T>>,
}

impl<T: Clone> Collector<T> for Tee<T> {
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError> {
        let (last, rest) = self.outs.split_last_mut().expect("tee has consumers");
        for o in rest {
            o.batch(batch.clone())?;
        }
        last.batch(batch)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.outs.iter_mut().try_for_each(|o| o.watermark(wm))
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.outs.iter_mut().try_for_each(|o| o.idle(idle))
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.outs.iter_mut().try_for_each(|o| o.finish())
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.outs.iter_mut().try_for_each(|o| o.barrier(b))
    }
}

/// A stream nobody consumes.
pub(crate) struct Discard;

impl<T> Collector<T> for Discard {
    fn batch(&mut self, _batch: Batch<T>) -> Result<(), JobError> {
        Ok(())
    }
    fn barrier(&mut self, _b: &mut Barrier<'_>) -> Result<(), JobError> {
        Ok(())
    }
    fn watermark(&mut self, _wm: Timestamp) -> Result<(), JobError> {
        Ok(())
    }
    fn idle(&mut self, _idle: bool) -> Result<(), JobError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), JobError> {
        Ok(())
    }
}

pub(crate) struct MapOp<F, O> {
    pub(crate) f: Arc<F>,
    pub(crate) out: Out<O>,
}

impl<I, O, F: Fn(I) -> O> Collector<I> for MapOp<F, O> {
    fn batch(&mut self, batch: Batch<I>) -> Result<(), JobError> {
        let f = &*self.f;
        let mapped: Batch<O> = batch.into_iter().map(|(ts, r)| (ts, f(r))).collect();
        self.out.batch(mapped)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.out.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.out.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.out.barrier(b)
    }
}

pub(crate) struct FilterOp<F, T> {
    pub(crate) f: Arc<F>,
    pub(crate) out: Out<T>,
}

impl<T, F: Fn(&T) -> bool> Collector<T> for FilterOp<F, T> {
    fn batch(&mut self, mut batch: Batch<T>) -> Result<(), JobError> {
        let f = &*self.f;
        batch.retain(|(_, r)| f(r));
        if batch.is_empty() {
            return Ok(());
        }
        self.out.batch(batch)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.out.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.out.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.out.barrier(b)
    }
}

pub(crate) struct FlatMapOp<F, O> {
    pub(crate) f: Arc<F>,
    pub(crate) out: Out<O>,
}

impl<I, O, It, F> Collector<I> for FlatMapOp<F, O>
where
    F: Fn(I) -> It,
    It: IntoIterator<Item = O>,
{
    fn batch(&mut self, batch: Batch<I>) -> Result<(), JobError> {
        let f = &*self.f;
        let mut out = Vec::with_capacity(batch.len());
        for (ts, r) in batch {
            out.extend(f(r).into_iter().map(|o| (ts, o)));
        }
        if out.is_empty() {
            return Ok(());
        }
        self.out.batch(out)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.out.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.out.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.out.barrier(b)
    }
}

/// Fallible map: `Ok(Some(o))` emits, `Ok(None)` drops, `Err` fails the job.
pub(crate) struct TryMapOp<F, O> {
    pub(crate) f: Arc<F>,
    pub(crate) info: TaskInfo,
    pub(crate) out: Out<O>,
}

impl<I, O, F> Collector<I> for TryMapOp<F, O>
where
    F: Fn(I) -> Result<Option<O>, BoxError>,
{
    fn batch(&mut self, batch: Batch<I>) -> Result<(), JobError> {
        let f = &*self.f;
        let mut out = Vec::with_capacity(batch.len());
        for (ts, r) in batch {
            match f(r) {
                Ok(Some(o)) => out.push((ts, o)),
                Ok(None) => {}
                Err(e) => return Err(JobError::from_user(&self.info, e)),
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        self.out.batch(out)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        self.out.watermark(wm)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.out.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.out.barrier(b)
    }
}

/// Assigns event timestamps and emits watermarks with bounded out-of-orderness:
/// watermark = max timestamp seen - out_of_orderness - 1 (Flink's
/// `forBoundedOutOfOrderness`), emitted after each batch that advanced it.
pub(crate) struct TimestampOp<F, T> {
    pub(crate) f: Arc<F>,
    pub(crate) out_of_orderness_ms: i64,
    pub(crate) max_ts: Timestamp,
    pub(crate) emitted: Timestamp,
    pub(crate) out: Out<T>,
}

impl<T, F: Fn(&T) -> Timestamp> Collector<T> for TimestampOp<F, T> {
    fn batch(&mut self, mut batch: Batch<T>) -> Result<(), JobError> {
        let f = &*self.f;
        let mut max = self.max_ts;
        for (ts, r) in batch.iter_mut() {
            *ts = f(r);
            max = max.max(*ts);
        }
        self.max_ts = max;
        self.out.batch(batch)?;
        let wm = max
            .saturating_sub(self.out_of_orderness_ms)
            .saturating_sub(1);
        if wm > self.emitted && max != crate::NO_TIMESTAMP {
            self.emitted = wm;
            self.out.watermark(wm)?;
        }
        Ok(())
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        // Upstream watermarks are replaced by this assigner's own, except the final one.
        if wm == crate::MAX_WATERMARK && self.emitted < wm {
            self.emitted = wm;
            return self.out.watermark(wm);
        }
        Ok(())
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.out.finish()
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        self.out.barrier(b)
    }
}

/// A stateless process function: each input may emit any number of outputs.
pub trait ProcessFunction<I, O>: Clone + Send + Sync + 'static {
    /// Called once per parallel instance before the first record.
    fn open(&mut self, _info: &TaskInfo) -> Result<(), BoxError> {
        Ok(())
    }
    /// Handles one record.
    fn process(&mut self, value: I, ctx: &mut Context<'_, O>) -> Result<(), BoxError>;
    /// Called once at end of input (when the final watermark arrives, before the job's final
    /// checkpoint, so that what it emits is committed with it); may emit final records. Also
    /// called when the job is stopped (Ctrl-C, SIGTERM, `JobHandle::stop`), before its final
    /// checkpoint: a process function's fields are not checkpointed, so this is its last
    /// chance to emit what it holds; a job restored from that checkpoint starts with a fresh
    /// function (keep state that must survive failures in keyed state).
    fn close(&mut self, _ctx: &mut Context<'_, O>) -> Result<(), BoxError> {
        Ok(())
    }
}

/// What a [`ProcessFunction`] sees of the stream.
pub struct Context<'a, O> {
    pub(crate) timestamp: Timestamp,
    pub(crate) watermark: Timestamp,
    pub(crate) out: &'a mut Batch<O>,
}

impl<O> Context<'_, O> {
    /// Emits a record with the current record's timestamp.
    pub fn emit(&mut self, value: O) {
        self.out.push((self.timestamp, value));
    }
    /// Emits a record with the given event timestamp.
    pub fn emit_at(&mut self, timestamp: Timestamp, value: O) {
        self.out.push((timestamp, value));
    }
    /// Event timestamp of the current record.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    /// Current event-time watermark of this operator's input.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }
}

pub(crate) struct ProcessOp<P, O> {
    pub(crate) f: P,
    pub(crate) info: TaskInfo,
    pub(crate) watermark: Timestamp,
    pub(crate) out: Out<O>,
    /// `close` ran (at the final watermark).
    pub(crate) closed: bool,
}

impl<P, O> ProcessOp<P, O> {
    /// Runs the function's `close` once and sends what it emitted on.
    fn close<I>(&mut self) -> Result<(), JobError>
    where
        P: ProcessFunction<I, O>,
    {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let mut out = Vec::new();
        let mut ctx = Context {
            timestamp: self.watermark,
            watermark: self.watermark,
            out: &mut out,
        };
        self.f
            .close(&mut ctx)
            .map_err(|e| JobError::from_user(&self.info, e))?;
        if out.is_empty() {
            return Ok(());
        }
        self.out.batch(out)
    }
}

impl<I, O, P: ProcessFunction<I, O>> Collector<I> for ProcessOp<P, O> {
    fn batch(&mut self, batch: Batch<I>) -> Result<(), JobError> {
        let mut out = Vec::with_capacity(batch.len());
        for (ts, r) in batch {
            let mut ctx = Context {
                timestamp: ts,
                watermark: self.watermark,
                out: &mut out,
            };
            self.f
                .process(r, &mut ctx)
                .map_err(|e| JobError::from_user(&self.info, e))?;
        }
        if out.is_empty() {
            return Ok(());
        }
        self.out.batch(out)
    }
    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        if wm == crate::MAX_WATERMARK {
            // End of input: every source is exhausted (or stopped). `close` runs now, not at
            // `finish`, so that what it emits is before the final checkpoint's barrier and is
            // committed with it (at `finish` the final checkpoint has already completed).
            // Its records carry the last watermark, so they are not late downstream.
            self.close()?;
        }
        self.watermark = wm;
        self.out.watermark(wm)
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        if b.last {
            // No record follows: a stop that keeps its final checkpoint sent no final
            // watermark. The function's fields are not checkpointed, so what it holds is
            // emitted now, before the barrier, and committed with the checkpoint (a restored
            // job starts with a fresh function, whose `close` runs at its own end).
            self.close()?;
        }
        self.out.barrier(b)
    }
    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        self.out.idle(idle)
    }
    fn finish(&mut self) -> Result<(), JobError> {
        // `close` ran at the final watermark or at the last barrier; this is a safety net for
        // jobs without checkpoints (with them, anything emitted now would follow the final
        // checkpoint).
        if !self.info.checkpointing {
            self.close()?;
        }
        self.out.finish()
    }
}

/// Adapts a [`SinkWriter`] to the chain; shares the writer with the worker as an [`Outlet`]
/// so that a sink whose I/O thread is behind backpressures its chain.
pub(crate) struct SinkOp<T> {
    pub(crate) writer: Rc<RefCell<Box<dyn SinkWriter<T>>>>,
    pub(crate) info: TaskInfo,
}

impl<T> Collector<T> for SinkOp<T> {
    fn batch(&mut self, mut batch: Batch<T>) -> Result<(), JobError> {
        self.writer
            .borrow_mut()
            .write(&mut batch)
            .map_err(|e| JobError::from_user(&self.info, e))
    }
    fn watermark(&mut self, _wm: Timestamp) -> Result<(), JobError> {
        Ok(())
    }
    fn idle(&mut self, _idle: bool) -> Result<(), JobError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), JobError> {
        self.writer
            .borrow_mut()
            .finish()
            .map_err(|e| JobError::from_user(&self.info, e))
    }
    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        let pc = self
            .writer
            .borrow_mut()
            .pre_commit(b.id)
            .map_err(|e| JobError::from_user(&self.info, e))?;
        if let Some(state) = pc.durable_state {
            // Encoded on the writer thread, after the durable waits above have returned.
            b.sections.push((
                self.info.section_name("state"),
                Section::Deferred(Box::new(move |out| {
                    let state = state().map_err(|e| format!("sink pre-commit failed: {e}"))?;
                    out.write(&state)
                })),
            ));
        } else if !pc.state.is_empty() {
            b.sections
                .push((self.info.section_name("state"), Section::Bytes(pc.state)));
        }
        if let Some(wait) = pc.durable {
            b.durable.push(wait);
        }
        Ok(())
    }
}

pub(crate) struct SinkOutlet<T> {
    pub(crate) writer: Rc<RefCell<Box<dyn SinkWriter<T>>>>,
    pub(crate) info: TaskInfo,
}

impl<T> Outlet for SinkOutlet<T> {
    fn blocked(&self) -> bool {
        self.writer.borrow().blocked()
    }
    fn try_flush(&self) -> Result<bool, JobError> {
        self.writer
            .borrow_mut()
            .try_flush()
            .map_err(|e| JobError::from_user(&self.info, e))
    }
    fn flush_buffers(&self) -> Result<bool, JobError> {
        self.try_flush()
    }
    fn idle(&self) -> bool {
        let w = self.writer.borrow();
        !w.blocked() && w.done()
    }
    fn register<'a>(&'a self, _sel: &mut crossbeam_channel::Select<'a>) -> bool {
        false
    }
    fn checkpoint_complete(&self, id: u64) -> Result<(), JobError> {
        self.writer
            .borrow_mut()
            .commit(id)
            .map_err(|e| JobError::from_user(&self.info, e))
    }
}
