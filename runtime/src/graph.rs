//! The logical job graph and the type-erased glue that instantiates it.
//!
//! The API builds typed closures; the graph stores them behind `Any` so that one executor can
//! instantiate any job. Each node knows the type operations of its output stream
//! ([`StreamType`]), which create channels, exchanges, fan-outs and input gates of that type.

use std::any::Any;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::checkpoint::{CheckpointMode, ToCoordinator, WorkerCheckpoints};
use crate::error::JobError;
use crate::exchange::{
    Driver, ExchangeOutput, ExchangeShared, InputGate, Message, Outlet, Poll, Route,
};
use crate::metrics::NodeMetrics;
use crate::operator::{Batch, Counted, Discard, Out, Tee};
use crate::source::{SourcePoll, SourceReader, TaskInfo};
use crate::{Timestamp, MAX_WATERMARK, NO_TIMESTAMP};

pub(crate) type NodeId = usize;
pub(crate) type AnyBox = Box<dyn Any>;
pub(crate) type AnySend = Box<dyn Any + Send>;
pub(crate) type Outlets = Vec<Rc<dyn Outlet>>;

/// `Fn(&T, max_parallelism) -> key group`, type-erased.
pub(crate) type HashFn<T> = Arc<dyn Fn(&T, usize) -> u32 + Send + Sync>;

pub(crate) enum RouteSpec {
    Forward,
    Rebalance,
    Broadcast,
    /// Holds a `HashFn<T>`.
    Hash(Arc<dyn Any + Send + Sync>),
}

impl RouteSpec {
    pub(crate) fn is_forward(&self) -> bool {
        matches!(self, RouteSpec::Forward)
    }
}

pub(crate) struct Edge {
    pub(crate) from: NodeId,
    pub(crate) route: RouteSpec,
}

type SourceBuild = dyn Fn(&TaskInfo, AnyBox) -> Result<Box<dyn Driver>, JobError> + Send + Sync;
type OperatorBuild =
    dyn Fn(&TaskInfo, &mut Outlets, AnyBox) -> Result<AnyBox, JobError> + Send + Sync;
type SinkBuild = dyn Fn(&TaskInfo, &mut Outlets) -> Result<AnyBox, JobError> + Send + Sync;

pub(crate) enum Kind {
    Source(Arc<SourceBuild>),
    Operator(Arc<OperatorBuild>),
    Sink(Arc<SinkBuild>),
}

pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) parallelism: Option<usize>,
    pub(crate) inputs: Vec<Edge>,
    pub(crate) kind: Kind,
    /// Type operations of the node's output (sinks: of their input, unused for output).
    pub(crate) out_type: Arc<dyn StreamType>,
}

#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<Node>,
}

/// Operations on streams of one record type, used by the type-erased executor.
pub(crate) trait StreamType: Send + Sync {
    fn channel(&self, capacity: usize) -> (AnySend, AnySend);
    fn exchange(
        &self,
        route: &RouteSpec,
        senders: Vec<AnySend>,
        batch_size: usize,
        info: TaskInfo,
    ) -> (AnyBox, Rc<dyn Outlet>);
    fn tee(&self, outs: Vec<AnyBox>) -> AnyBox;
    fn discard(&self) -> AnyBox;
    fn counted(&self, metrics: Arc<NodeMetrics>, inner: AnyBox) -> AnyBox;
    fn gate(
        &self,
        receivers: Vec<AnySend>,
        head: AnyBox,
        info: TaskInfo,
        mode: CheckpointMode,
    ) -> Box<dyn Driver>;
}

pub(crate) struct TypeOps<T>(PhantomData<fn() -> T>);

impl<T> TypeOps<T> {
    pub(crate) fn arc() -> Arc<dyn StreamType>
    where
        T: Clone + Send + 'static,
    {
        Arc::new(TypeOps::<T>(PhantomData))
    }
}

/// Downcasts a type-erased value built by this module; a mismatch is a bug in the executor.
pub(crate) fn cast<X: 'static>(b: AnyBox) -> X {
    *b.downcast::<X>().unwrap_or_else(|_| {
        panic!(
            "internal error: stream type mismatch, expected {}",
            std::any::type_name::<X>()
        )
    })
}

fn cast_send<X: 'static>(b: AnySend) -> X {
    *b.downcast::<X>().unwrap_or_else(|_| {
        panic!(
            "internal error: channel type mismatch, expected {}",
            std::any::type_name::<X>()
        )
    })
}

impl<T: Clone + Send + 'static> StreamType for TypeOps<T> {
    fn channel(&self, capacity: usize) -> (AnySend, AnySend) {
        let (tx, rx) = crossbeam_channel::bounded::<Message<T>>(capacity);
        (Box::new(tx), Box::new(rx))
    }

    fn exchange(
        &self,
        route: &RouteSpec,
        senders: Vec<AnySend>,
        batch_size: usize,
        info: TaskInfo,
    ) -> (AnyBox, Rc<dyn Outlet>) {
        let senders: Vec<Sender<Message<T>>> = senders.into_iter().map(cast_send).collect();
        let route = match route {
            // A forward edge between different parallelisms has several targets: spread.
            RouteSpec::Forward if senders.len() > 1 => Route::Rebalance,
            RouteSpec::Forward => Route::Forward,
            RouteSpec::Rebalance => Route::Rebalance,
            RouteSpec::Broadcast => Route::Broadcast,
            RouteSpec::Hash(f) => {
                let f = f
                    .downcast_ref::<HashFn<T>>()
                    .expect("internal error: key function type mismatch")
                    .clone();
                let max_p = info.max_parallelism;
                Route::Hash(Arc::new(move |r: &T| f(r, max_p)))
            }
        };
        let shared = ExchangeShared::new(senders, route, batch_size, info);
        let out: Out<T> = Box::new(ExchangeOutput(shared.clone()));
        (Box::new(out), shared)
    }

    fn tee(&self, outs: Vec<AnyBox>) -> AnyBox {
        let outs: Vec<Out<T>> = outs.into_iter().map(cast).collect();
        let out: Out<T> = Box::new(Tee { outs });
        Box::new(out)
    }

    fn discard(&self) -> AnyBox {
        let out: Out<T> = Box::new(Discard);
        Box::new(out)
    }

    fn counted(&self, metrics: Arc<NodeMetrics>, inner: AnyBox) -> AnyBox {
        let out: Out<T> = Box::new(Counted {
            metrics,
            inner: cast(inner),
        });
        Box::new(out)
    }

    fn gate(
        &self,
        receivers: Vec<AnySend>,
        head: AnyBox,
        info: TaskInfo,
        mode: CheckpointMode,
    ) -> Box<dyn Driver> {
        let receivers: Vec<Receiver<Message<T>>> = receivers.into_iter().map(cast_send).collect();
        Box::new(InputGate::new(receivers, cast(head), info, mode))
    }
}

/// Drives a source reader into its chain.
pub(crate) struct SourceDriver<T> {
    pub(crate) reader: Box<dyn SourceReader<T>>,
    pub(crate) out: Out<T>,
    pub(crate) info: TaskInfo,
    pub(crate) batch_size: usize,
    pub(crate) state: SourceState,
    /// The last watermark the reader reported and the driver forwarded.
    pub(crate) watermark: Option<Timestamp>,
    /// The reader reported itself idle and the driver forwarded that.
    pub(crate) idle: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SourceState {
    Running,
    /// Exhausted (or stopped) with checkpointing on: waits for the final checkpoint to
    /// complete before ending its stream, answering triggers meanwhile.
    WaitingFinal,
    Ended,
}

impl<T> SourceDriver<T> {
    /// Forwards a change of the reader's watermark status.
    fn set_idle(&mut self, idle: bool) -> Result<(), JobError> {
        if idle != self.idle {
            self.idle = idle;
            tracing::debug!(source = %self.info.operator, subtask = self.info.subtask, idle, "source watermark status changed");
            self.out.idle(idle)?;
        }
        Ok(())
    }

    /// Ends the source: its input ran out, or (`stopped`) the job was asked to stop.
    fn exhausted(&mut self, cp: &mut WorkerCheckpoints, stopped: bool) -> Result<Poll, JobError> {
        // The final watermark counts downstream only from an active input.
        self.set_idle(false)?;
        // A stop whose final checkpoint is kept ends in a checkpoint that `--restore` continues
        // from, so the input has not ended: no final watermark, which would fire every open
        // event-time window and timer with only the records seen so far, and would be stored
        // as the window operators' watermark (all later records late). They fire after the
        // restore. Without checkpoints, or with `on_cancel = delete`, nothing can resume them,
        // so a stop fires them (drains).
        if !(stopped && self.info.stop_resumes) {
            self.out.watermark(MAX_WATERMARK)?;
        }
        if self.info.checkpointing {
            self.state = SourceState::WaitingFinal;
            cp.send(ToCoordinator::SourceExhausted)?;
            return Ok(Poll::Progress);
        }
        self.state = SourceState::Ended;
        self.out.finish()?;
        Ok(Poll::Finished)
    }
}

impl<T> Driver for SourceDriver<T> {
    fn poll(
        &mut self,
        outlets: &[Rc<dyn Outlet>],
        cp: &mut WorkerCheckpoints,
    ) -> Result<Poll, JobError> {
        match self.state {
            SourceState::Ended => return Ok(Poll::Finished),
            SourceState::WaitingFinal => return Ok(Poll::Idle(None)),
            SourceState::Running => {}
        }
        if self.info.stop.load(Ordering::Relaxed) {
            tracing::debug!(source = %self.info.operator, subtask = self.info.subtask, "stopping source on request");
            return self.exhausted(cp, true);
        }
        if outlets.iter().any(|o| o.blocked()) {
            return Ok(Poll::Idle(None));
        }
        let mut buf: Batch<T> = Vec::with_capacity(self.batch_size);
        let status = self
            .reader
            .poll(&mut buf, self.batch_size)
            .map_err(|e| JobError::from_user(&self.info, e))?;
        let produced = !buf.is_empty();
        if produced {
            debug_assert!(buf.len() <= self.batch_size);
            // Active again before its first record.
            self.set_idle(false)?;
            self.info
                .metrics
                .records_in
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            self.out.batch(buf)?;
        }
        if let Some(wm) = self.reader.watermark() {
            // Never MAX_WATERMARK from here: that one means end of input and is sent once,
            // by `exhausted`.
            let wm = wm.min(MAX_WATERMARK - 1);
            if self.watermark.is_none_or(|last| wm > last) {
                // A watermark counts downstream only from an active input.
                self.set_idle(false)?;
                self.watermark = Some(wm);
                self.out.watermark(wm)?;
            }
        }
        if !produced && status != SourcePoll::Exhausted && self.reader.idle() {
            self.set_idle(true)?;
        }
        match status {
            SourcePoll::Exhausted => self.exhausted(cp, false),
            SourcePoll::Ready => Ok(Poll::Progress),
            SourcePoll::Idle(_) if produced => Ok(Poll::Progress),
            SourcePoll::Idle(at) => Ok(Poll::Idle(at)),
        }
    }

    fn register<'a>(&'a self, _sel: &mut crossbeam_channel::Select<'a>) -> bool {
        false
    }

    fn trigger(&mut self, id: u64, cp: &mut WorkerCheckpoints) -> Result<(), JobError> {
        if self.state == SourceState::Ended {
            return Ok(());
        }
        let position = self
            .reader
            .snapshot(id)
            .map_err(|e| JobError::from_user(&self.info, e))?;
        let section = self.info.section_name("state");
        let out = &mut self.out;
        // A source waiting for the final checkpoint emits nothing after this barrier.
        let last = self.state == SourceState::WaitingFinal;
        cp.task_barrier(id, std::time::Duration::ZERO, last, |b| {
            b.sections
                .push((section, crate::operator::Section::Bytes(position)));
            out.barrier(b)
        })
    }

    fn checkpoint_complete(&mut self, id: u64) -> Result<(), JobError> {
        self.reader
            .checkpoint_complete(id)
            .map_err(|e| JobError::from_user(&self.info, e))
    }

    fn finish_sources(&mut self) -> Result<(), JobError> {
        if self.state != SourceState::Ended {
            self.state = SourceState::Ended;
            self.out.finish()?;
        }
        Ok(())
    }
}

/// A source over a shared vector: subtask `s` of `p` emits the items `i` with `i % p == s`.
pub(crate) struct VecSource<T> {
    pub(crate) items: Arc<Vec<T>>,
    pub(crate) next: usize,
    pub(crate) step: usize,
}

impl<T: Clone> SourceReader<T> for VecSource<T> {
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, crate::BoxError> {
        Ok((self.next as u64).to_le_bytes().to_vec())
    }

    fn poll(&mut self, out: &mut Vec<(i64, T)>, max: usize) -> Result<SourcePoll, crate::BoxError> {
        while out.len() < max && self.next < self.items.len() {
            out.push((NO_TIMESTAMP, self.items[self.next].clone()));
            self.next += self.step;
        }
        Ok(if self.next >= self.items.len() {
            SourcePoll::Exhausted
        } else {
            SourcePoll::Ready
        })
    }
}
