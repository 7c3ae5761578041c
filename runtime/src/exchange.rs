//! Exchanges between chains: partitioned, batched, bounded, never blocking.
//!
//! The sending side ([`ExchangeOutput`]) is the tail of a chain. It sorts records into one
//! buffer per target subtask and hands full buffers to bounded crossbeam channels with
//! `try_send`. A channel that is full leaves the message in a small per-target pending queue;
//! while anything is pending the worker stops feeding the chain (backpressure) but keeps running
//! every other chain, so two workers that feed each other can never deadlock (the wait-for graph
//! follows the job's DAG, whose sinks always make progress).
//!
//! The receiving side ([`InputGate`]) merges all channels into one chain head: data in arrival
//! order per channel, the watermark as the minimum over active channels (an idle one, whose
//! sources have nothing to emit, does not hold it back), idle when every open channel is, end
//! of input when every channel ended.
//!
//! Invariants: messages on one channel are delivered in order; a watermark is only sent after
//! every record that preceded it and before any record that followed it; end of input is the
//! last message on a channel.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError, TrySendError};

use crate::checkpoint::{CheckpointMode, WorkerCheckpoints};
use crate::error::JobError;
use crate::operator::{Barrier, Batch, Collector, Out};
use crate::source::TaskInfo;
use crate::{Timestamp, MAX_WATERMARK, NO_TIMESTAMP};

/// What travels on a channel.
pub(crate) enum Message<T> {
    Data(Batch<T>),
    Watermark(Timestamp),
    /// Watermark status of the sending subtask: idle (`true`) or active again.
    Idle(bool),
    /// Checkpoint barrier `n`: everything before it belongs to checkpoint `n`. The flag says
    /// no record follows it on this channel ([`crate::operator::Barrier::last`]).
    Barrier(u64, bool),
    End,
}

/// Output ports of a chain that the worker must watch: exchanges and sinks.
pub(crate) trait Outlet {
    /// Has output that could not be handed on; the chain must not be fed until it clears.
    fn blocked(&self) -> bool;
    /// Retries pending output; Ok(true) on progress.
    fn try_flush(&self) -> Result<bool, JobError>;
    /// Sends partially filled buffers too (buffer timeout, idle worker); Ok(true) on progress.
    fn flush_buffers(&self) -> Result<bool, JobError>;
    /// Nothing buffered, nothing pending.
    fn idle(&self) -> bool;
    /// Registers the send operations the worker may wait on; true if any.
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> bool;
    /// Checkpoint `id` completed (sinks commit).
    fn checkpoint_complete(&self, _id: u64) -> Result<(), JobError> {
        Ok(())
    }
}

/// How records are routed to the subtasks of the next chain.
pub(crate) enum Route<T> {
    /// One target (same subtask index).
    Forward,
    /// Whole batches round-robin over targets.
    Rebalance,
    /// Every batch to every target.
    Broadcast,
    /// By key group: `key_group(record) * targets / max_parallelism`.
    Hash(Arc<dyn Fn(&T) -> u32 + Send + Sync>),
}

pub(crate) struct ExchangeShared<T> {
    senders: Vec<Sender<Message<T>>>,
    state: RefCell<ExchangeState<T>>,
    info: TaskInfo,
}

struct ExchangeState<T> {
    route: Route<T>,
    buffers: Vec<Batch<T>>,
    pending: Vec<VecDeque<Message<T>>>,
    /// Latest watermark received from the chain, and the last one sent per target.
    watermark: Timestamp,
    sent_watermark: Vec<Timestamp>,
    next: usize,
    batch_size: usize,
    max_parallelism: usize,
}

impl<T> ExchangeState<T> {
    /// Moves target `t`'s buffer (if any) and then the current watermark (if newer) to pending.
    fn seal(&mut self, t: usize) {
        if !self.buffers[t].is_empty() {
            let b = std::mem::replace(&mut self.buffers[t], Vec::with_capacity(self.batch_size));
            self.pending[t].push_back(Message::Data(b));
        }
        if self.sent_watermark[t] < self.watermark {
            self.sent_watermark[t] = self.watermark;
            // Coalesce with a watermark still queued at the back.
            if let Some(Message::Watermark(w)) = self.pending[t].back_mut() {
                *w = self.watermark;
            } else {
                self.pending[t].push_back(Message::Watermark(self.watermark));
            }
        }
    }
}

impl<T> ExchangeShared<T> {
    pub(crate) fn new(
        senders: Vec<Sender<Message<T>>>,
        route: Route<T>,
        batch_size: usize,
        info: TaskInfo,
    ) -> Rc<Self> {
        assert!(!senders.is_empty(), "an exchange needs at least one target");
        let n = senders.len();
        let max_parallelism = info.max_parallelism;
        Rc::new(ExchangeShared {
            senders,
            state: RefCell::new(ExchangeState {
                route,
                buffers: (0..n).map(|_| Vec::with_capacity(batch_size)).collect(),
                pending: (0..n).map(|_| VecDeque::new()).collect(),
                watermark: NO_TIMESTAMP,
                sent_watermark: vec![NO_TIMESTAMP; n],
                next: 0,
                batch_size,
                max_parallelism,
            }),
            info,
        })
    }

    fn send_pending(&self, st: &mut ExchangeState<T>) -> Result<bool, JobError> {
        let mut progress = false;
        for (t, q) in st.pending.iter_mut().enumerate() {
            while let Some(msg) = q.pop_front() {
                match self.senders[t].try_send(msg) {
                    Ok(()) => progress = true,
                    Err(TrySendError::Full(msg)) => {
                        q.push_front(msg);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        return Err(JobError::operator(
                            &self.info,
                            format!("downstream subtask {t} closed its input channel early"),
                        ))
                    }
                }
            }
        }
        Ok(progress)
    }
}

impl<T> Outlet for ExchangeShared<T> {
    fn blocked(&self) -> bool {
        self.state.borrow().pending.iter().any(|q| !q.is_empty())
    }
    fn try_flush(&self) -> Result<bool, JobError> {
        let mut st = self.state.borrow_mut();
        self.send_pending(&mut st)
    }
    fn flush_buffers(&self) -> Result<bool, JobError> {
        let mut st = self.state.borrow_mut();
        for t in 0..st.buffers.len() {
            st.seal(t);
        }
        self.send_pending(&mut st)
    }
    fn idle(&self) -> bool {
        let st = self.state.borrow();
        st.pending.iter().all(|q| q.is_empty()) && st.buffers.iter().all(|b| b.is_empty())
    }
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> bool {
        let st = self.state.borrow();
        let mut any = false;
        for (t, q) in st.pending.iter().enumerate() {
            if !q.is_empty() {
                sel.send(&self.senders[t]);
                any = true;
            }
        }
        any
    }
}

/// The chain-side handle of an exchange.
pub(crate) struct ExchangeOutput<T>(pub(crate) Rc<ExchangeShared<T>>);

impl<T: Clone> Collector<T> for ExchangeOutput<T> {
    fn batch(&mut self, batch: Batch<T>) -> Result<(), JobError> {
        let shared = &*self.0;
        let mut guard = shared.state.borrow_mut();
        let st = &mut *guard;
        let n = st.buffers.len();
        match &st.route {
            Route::Forward | Route::Rebalance => {
                let t = if matches!(st.route, Route::Forward) {
                    0
                } else {
                    st.next = (st.next + 1) % n;
                    st.next
                };
                if st.buffers[t].is_empty() && batch.len() >= st.batch_size / 2 {
                    st.buffers[t] = batch;
                } else {
                    st.buffers[t].extend(batch);
                }
                if st.buffers[t].len() >= st.batch_size {
                    st.seal(t);
                }
            }
            Route::Broadcast => {
                for t in 0..n {
                    st.buffers[t].extend(batch.iter().cloned());
                    if st.buffers[t].len() >= st.batch_size {
                        st.seal(t);
                    }
                }
            }
            Route::Hash(key_group) => {
                let key_group = key_group.clone();
                let max_p = st.max_parallelism;
                for (ts, r) in batch {
                    let kg = key_group(&r) as usize;
                    debug_assert!(kg < max_p);
                    let t = kg * n / max_p;
                    st.buffers[t].push((ts, r));
                    if st.buffers[t].len() >= st.batch_size {
                        st.seal(t);
                    }
                }
            }
        }
        shared.send_pending(st)?;
        Ok(())
    }

    fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
        // Every buffered record precedes the watermark on its channel, so the watermark's
        // position in the stream is kept exactly (no record that followed it can overtake it).
        let shared = &*self.0;
        let mut st = shared.state.borrow_mut();
        debug_assert!(wm >= st.watermark);
        st.watermark = wm;
        for t in 0..st.buffers.len() {
            st.seal(t);
        }
        shared.send_pending(&mut st)?;
        Ok(())
    }

    fn idle(&mut self, idle: bool) -> Result<(), JobError> {
        // In stream order on every channel, after what was buffered before it.
        let shared = &*self.0;
        let mut st = shared.state.borrow_mut();
        for t in 0..st.buffers.len() {
            st.seal(t);
            st.pending[t].push_back(Message::Idle(idle));
        }
        shared.send_pending(&mut st)?;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), JobError> {
        let shared = &*self.0;
        let mut st = shared.state.borrow_mut();
        for t in 0..st.buffers.len() {
            st.seal(t);
            st.pending[t].push_back(Message::End);
        }
        shared.send_pending(&mut st)?;
        Ok(())
    }

    fn barrier(&mut self, b: &mut Barrier<'_>) -> Result<(), JobError> {
        // Everything before the barrier goes out first, on every channel.
        let shared = &*self.0;
        let mut st = shared.state.borrow_mut();
        for t in 0..st.buffers.len() {
            st.seal(t);
            st.pending[t].push_back(Message::Barrier(b.id, b.last));
        }
        shared.send_pending(&mut st)?;
        Ok(())
    }
}

/// Something the worker polls: the head of a chain fed by channels, or a source.
pub(crate) trait Driver {
    /// Does some work. Must return promptly.
    fn poll(
        &mut self,
        outlets: &[Rc<dyn Outlet>],
        cp: &mut WorkerCheckpoints,
    ) -> Result<Poll, JobError>;
    /// Registers receive operations the worker may wait on; true if any.
    fn register<'a>(&'a self, sel: &mut Select<'a>) -> bool;
    /// Sources: record the position and emit barrier `id`.
    fn trigger(&mut self, _id: u64, _cp: &mut WorkerCheckpoints) -> Result<(), JobError> {
        Ok(())
    }
    /// Sources: checkpoint `id` completed.
    fn checkpoint_complete(&mut self, _id: u64) -> Result<(), JobError> {
        Ok(())
    }
    /// Sources: the final checkpoint completed; end the stream.
    fn finish_sources(&mut self) -> Result<(), JobError> {
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Poll {
    /// Did work; poll again soon.
    Progress,
    /// Nothing to do now; wake at the given instant at the latest (None: when woken).
    Idle(Option<std::time::Instant>),
    /// The driver's input ended and the chain was finished.
    Finished,
}

struct GateChannel<T> {
    rx: Receiver<Message<T>>,
    watermark: Timestamp,
    /// Its sender is idle: left out of the watermark minimum until it is active again.
    idle: bool,
    ended: bool,
    /// Id of the last barrier this channel delivered.
    barrier: u64,
    /// Id of the first barrier after which no record follows on this channel (its sources
    /// have stopped or ended and wait for the final checkpoint).
    last_from: Option<u64>,
}

/// Merges the input channels of a chain head.
pub(crate) struct InputGate<T> {
    channels: Vec<GateChannel<T>>,
    head: Out<T>,
    watermark: Timestamp,
    /// The idle status last forwarded to the chain: every open channel is idle.
    idle: bool,
    open: usize,
    next: usize,
    info: TaskInfo,
    finished: bool,
    mode: CheckpointMode,
    /// Last barrier forwarded to the chain.
    aligned: u64,
    /// When the first barrier after `aligned` arrived (alignment time).
    align_start: Option<std::time::Instant>,
}

/// Messages a gate hands to its chain per poll before yielding to other tasks.
const MESSAGES_PER_POLL: usize = 16;

impl<T> InputGate<T> {
    pub(crate) fn new(
        receivers: Vec<Receiver<Message<T>>>,
        head: Out<T>,
        info: TaskInfo,
        mode: CheckpointMode,
    ) -> Self {
        let open = receivers.len();
        let start = info.first_checkpoint.saturating_sub(1);
        InputGate {
            channels: receivers
                .into_iter()
                .map(|rx| GateChannel {
                    rx,
                    watermark: NO_TIMESTAMP,
                    idle: false,
                    ended: false,
                    barrier: start,
                    last_from: None,
                })
                .collect(),
            head,
            watermark: NO_TIMESTAMP,
            idle: false,
            open,
            next: 0,
            info,
            finished: false,
            mode,
            aligned: start,
            align_start: None,
        }
    }

    /// Exactly-once: a channel that delivered a barrier not yet forwarded is held back.
    fn held(&self, ch: &GateChannel<T>) -> bool {
        self.mode == CheckpointMode::ExactlyOnce && ch.barrier > self.aligned
    }

    /// Forwards every barrier that all open channels have delivered.
    fn forward_barriers(&mut self, cp: &mut WorkerCheckpoints) -> Result<(), JobError> {
        let Some(min) = self
            .channels
            .iter()
            .filter(|c| !c.ended)
            .map(|c| c.barrier)
            .min()
        else {
            return Ok(());
        };
        while self.aligned < min {
            let id = self.aligned + 1;
            let alignment = self
                .align_start
                .take()
                .map(|t| t.elapsed())
                .unwrap_or_default();
            // No record follows barrier `id` when none does on any open channel.
            let last = self
                .channels
                .iter()
                .filter(|c| !c.ended)
                .all(|c| c.last_from.is_some_and(|from| from <= id));
            let head = &mut self.head;
            cp.task_barrier(id, alignment, last, |b| head.barrier(b))?;
            self.aligned = id;
            if self
                .channels
                .iter()
                .any(|c| !c.ended && c.barrier > self.aligned)
            {
                self.align_start = Some(std::time::Instant::now());
            }
        }
        Ok(())
    }

    /// Forwards the minimum watermark over the open, active channels when it advanced (the
    /// final one when every channel ended; none while every open channel is idle). A channel
    /// that comes back from idleness behind the forwarded watermark holds it until it caught
    /// up: the output never goes back, and its records are not made late by others meanwhile.
    fn advance_watermark(&mut self) -> Result<(), JobError> {
        let min = if self.open == 0 {
            Some(MAX_WATERMARK)
        } else {
            self.channels
                .iter()
                .filter(|c| !c.ended && !c.idle)
                .map(|c| c.watermark)
                .min()
        };
        if let Some(min) = min.filter(|&m| m > self.watermark) {
            self.watermark = min;
            self.head.watermark(min)?;
        }
        Ok(())
    }

    /// After a channel went idle, came back or ended: forwards the gate's status (idle when
    /// every open channel is) and the watermark, in the order downstream needs. Going active
    /// comes before the watermark that the active channels now give. Going idle first
    /// flushes the largest watermark of any open channel (as Flink's valve does): no channel
    /// advances any more, and without it the watermarks that channels sent before they went
    /// idle would never count (two sources that both went quiet would stall every window).
    fn refresh(&mut self) -> Result<(), JobError> {
        let idle = self.open > 0 && self.channels.iter().all(|c| c.ended || c.idle);
        if idle == self.idle {
            return self.advance_watermark();
        }
        self.idle = idle;
        if idle {
            let max = self
                .channels
                .iter()
                .filter(|c| !c.ended)
                .map(|c| c.watermark)
                .max()
                .unwrap_or(NO_TIMESTAMP);
            if max > self.watermark {
                self.watermark = max;
                self.head.watermark(max)?;
            }
            self.head.idle(true)
        } else {
            self.head.idle(false)?;
            self.advance_watermark()
        }
    }
}

impl<T> Driver for InputGate<T> {
    fn poll(
        &mut self,
        outlets: &[Rc<dyn Outlet>],
        cp: &mut WorkerCheckpoints,
    ) -> Result<Poll, JobError> {
        if self.finished {
            return Ok(Poll::Finished);
        }
        if self.open == 0 {
            // A chain head without inputs (cannot happen for a valid graph, but be total).
            self.advance_watermark()?;
            self.head.finish()?;
            self.finished = true;
            return Ok(Poll::Finished);
        }
        let mut handled = 0;
        let mut empty_in_a_row = 0;
        let n = self.channels.len();
        while handled < MESSAGES_PER_POLL && empty_in_a_row < n {
            if outlets.iter().any(|o| o.blocked()) {
                break;
            }
            let i = self.next;
            self.next = (self.next + 1) % n;
            if self.channels[i].ended || self.held(&self.channels[i]) {
                empty_in_a_row += 1;
                continue;
            }
            let ch = &mut self.channels[i];
            match ch.rx.try_recv() {
                Ok(Message::Data(b)) => {
                    empty_in_a_row = 0;
                    handled += 1;
                    self.head.batch(b)?;
                }
                Ok(Message::Watermark(w)) => {
                    empty_in_a_row = 0;
                    handled += 1;
                    if w > ch.watermark {
                        ch.watermark = w;
                        self.advance_watermark()?;
                    }
                }
                Ok(Message::Idle(idle)) => {
                    empty_in_a_row = 0;
                    handled += 1;
                    if ch.idle != idle {
                        ch.idle = idle;
                        self.refresh()?;
                    }
                }
                Ok(Message::Barrier(id, last)) => {
                    empty_in_a_row = 0;
                    handled += 1;
                    if last && ch.last_from.is_none() {
                        ch.last_from = Some(id);
                    }
                    if id != ch.barrier + 1 {
                        return Err(JobError::operator(
                            &self.info,
                            format!("input channel {i} delivered barrier {id} after barrier {}; barriers must arrive in order", ch.barrier),
                        ));
                    }
                    ch.barrier = id;
                    if self.align_start.is_none() {
                        self.align_start = Some(std::time::Instant::now());
                    }
                    self.forward_barriers(cp)?;
                }
                Ok(Message::End) => {
                    empty_in_a_row = 0;
                    handled += 1;
                    ch.ended = true;
                    self.open -= 1;
                    self.forward_barriers(cp)?;
                    // With checkpoints, streams end only after the job's final checkpoint:
                    // at the end of input every channel delivered the final watermark
                    // before, and when the job was stopped its input has not ended, and a
                    // restore continues it. Either way an ending channel must not move the
                    // watermark on (by no longer holding back the others' minimum, or with
                    // the final watermark): that would fire windows and timers, with part
                    // of their records, after the checkpoint that holds them.
                    if !self.info.checkpointing {
                        self.refresh()?;
                    }
                    if self.open == 0 {
                        self.head.finish()?;
                        self.finished = true;
                        return Ok(Poll::Finished);
                    }
                }
                Err(TryRecvError::Empty) => empty_in_a_row += 1,
                Err(TryRecvError::Disconnected) => {
                    return Err(JobError::operator(
                        &self.info,
                        format!("input channel {i} was closed before its end of input (an upstream task failed)"),
                    ))
                }
            }
        }
        Ok(if handled > 0 {
            Poll::Progress
        } else {
            Poll::Idle(None)
        })
    }

    fn register<'a>(&'a self, sel: &mut Select<'a>) -> bool {
        let mut any = false;
        for c in self.channels.iter().filter(|c| !c.ended && !self.held(c)) {
            sel.recv(&c.rx);
            any = true;
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Ev {
        Watermark(Timestamp),
        Idle(bool),
        Finish,
    }

    /// The head of the gate's chain: records what reaches it.
    struct Record(Rc<RefCell<Vec<Ev>>>);

    impl Collector<u32> for Record {
        fn batch(&mut self, _batch: Batch<u32>) -> Result<(), JobError> {
            Ok(())
        }
        fn watermark(&mut self, wm: Timestamp) -> Result<(), JobError> {
            self.0.borrow_mut().push(Ev::Watermark(wm));
            Ok(())
        }
        fn idle(&mut self, idle: bool) -> Result<(), JobError> {
            self.0.borrow_mut().push(Ev::Idle(idle));
            Ok(())
        }
        fn finish(&mut self) -> Result<(), JobError> {
            self.0.borrow_mut().push(Ev::Finish);
            Ok(())
        }
        fn barrier(&mut self, _b: &mut Barrier<'_>) -> Result<(), JobError> {
            Ok(())
        }
    }

    fn info() -> TaskInfo {
        TaskInfo {
            job: "test".into(),
            operator: "gate".into(),
            subtask: 0,
            parallelism: 1,
            max_parallelism: 128,
            waker: crate::source::Waker::pair().0,
            metrics: Arc::new(crate::metrics::NodeMetrics::new(
                "gate".into(),
                false,
                false,
                1,
                Vec::new(),
                0,
            )),
            stop: Default::default(),
            node: 0,
            restore: None,
            checkpointing: false,
            stop_resumes: false,
            first_checkpoint: 1,
            incremental: None,
        }
    }

    /// What each step sends on one channel: a watermark step (added to the channel's last),
    /// a status flip, or the channel's end.
    #[derive(Debug, Clone)]
    enum Step {
        Advance(usize, i64),
        Flip(usize),
        End(usize),
    }

    fn steps() -> impl Strategy<Value = (usize, Vec<Step>)> {
        (1usize..5).prop_flat_map(|n| {
            let step = prop_oneof![
                4 => (0..n, 1i64..50).prop_map(|(c, d)| Step::Advance(c, d)),
                2 => (0..n).prop_map(Step::Flip),
                1 => (0..n).prop_map(Step::End),
            ];
            (Just(n), prop::collection::vec(step, 0..60))
        })
    }

    /// With checkpoints, channels end only after the job's final checkpoint: an ending channel
    /// neither releases the others' watermark nor brings the final one (a stopped job's input
    /// has not ended). Without checkpoints both happen.
    #[test]
    fn with_checkpoints_ending_channels_do_not_move_the_watermark() {
        for checkpointing in [false, true] {
            let events = Rc::new(RefCell::new(Vec::new()));
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..2)
                .map(|_| crossbeam_channel::bounded::<Message<u32>>(4))
                .unzip();
            let mut gate = InputGate::new(
                rxs,
                Box::new(Record(events.clone())),
                TaskInfo {
                    checkpointing,
                    ..info()
                },
                CheckpointMode::ExactlyOnce,
            );
            let mut cp = WorkerCheckpoints::disabled(0);
            let mut send = |c: usize, m: Message<u32>| {
                txs[c].send(m).unwrap();
                while gate.poll(&[], &mut cp).unwrap() == Poll::Progress {}
            };
            send(0, Message::Watermark(100));
            send(1, Message::Watermark(50));
            send(1, Message::End);
            send(0, Message::End);
            let want = if checkpointing {
                vec![Ev::Watermark(50), Ev::Finish]
            } else {
                vec![
                    Ev::Watermark(50),
                    Ev::Watermark(100),
                    Ev::Watermark(MAX_WATERMARK),
                    Ev::Finish,
                ]
            };
            assert_eq!(*events.borrow(), want, "checkpointing {checkpointing}");
        }
    }

    proptest! {
        /// Step by step, the gate forwards what a model says: the watermark is the running
        /// maximum of the minimum over open, active channels (the largest of all open channels
        /// when the last active one goes idle; the final one once every channel ended), the
        /// status is idle exactly when every open channel is, and no watermark is forwarded
        /// while the gate is idle.
        #[test]
        fn gate_follows_the_watermark_status_model((n, script) in steps()) {
            let events = Rc::new(RefCell::new(Vec::new()));
            let (txs, rxs): (Vec<_>, Vec<_>) =
                (0..n).map(|_| crossbeam_channel::bounded::<Message<u32>>(4)).unzip();
            let mut gate = InputGate::new(
                rxs,
                Box::new(Record(events.clone())),
                info(),
                CheckpointMode::ExactlyOnce,
            );
            let mut cp = WorkerCheckpoints::disabled(0);
            // Model.
            let mut wm = vec![NO_TIMESTAMP; n];
            let mut idle = vec![false; n];
            let mut ended = vec![false; n];
            let mut out_wm = NO_TIMESTAMP;
            let mut was_idle = false;
            for step in script {
                let msg = match step {
                    Step::Advance(c, d) if !ended[c] => {
                        wm[c] = if wm[c] == NO_TIMESTAMP { d } else { wm[c] + d };
                        Message::Watermark(wm[c])
                    }
                    Step::Flip(c) if !ended[c] => {
                        idle[c] = !idle[c];
                        Message::Idle(idle[c])
                    }
                    Step::End(c) if !ended[c] => {
                        ended[c] = true;
                        Message::End
                    }
                    _ => continue,
                };
                let c = match step {
                    Step::Advance(c, _) | Step::Flip(c) | Step::End(c) => c,
                };
                txs[c].send(msg).unwrap();
                while gate.poll(&[], &mut cp).unwrap() == Poll::Progress {}
                let open: Vec<usize> = (0..n).filter(|&i| !ended[i]).collect();
                let model_idle = !open.is_empty() && open.iter().all(|&i| idle[i]);
                if open.is_empty() {
                    out_wm = MAX_WATERMARK;
                } else if let Some(m) = open.iter().filter(|&&i| !idle[i]).map(|&i| wm[i]).min() {
                    out_wm = out_wm.max(m);
                } else if !was_idle {
                    // Every open channel just went idle: the largest of them is flushed.
                    out_wm = out_wm.max(open.iter().map(|&i| wm[i]).max().unwrap());
                }
                was_idle = model_idle;
                let ev = events.borrow();
                let last_wm = ev.iter().rev().find_map(|e| match e {
                    Ev::Watermark(w) => Some(*w),
                    _ => None,
                }).unwrap_or(NO_TIMESTAMP);
                let last_idle = ev.iter().rev().find_map(|e| match e {
                    Ev::Idle(i) => Some(*i),
                    _ => None,
                }).unwrap_or(false);
                prop_assert_eq!(last_wm, out_wm, "{:?}", ev);
                prop_assert_eq!(last_idle, model_idle, "{:?}", ev);
                prop_assert_eq!(ev.last() == Some(&Ev::Finish), open.is_empty());
            }
            // Over the whole run: watermarks strictly increase, statuses alternate starting
            // from active, and none is forwarded while idle.
            let ev = events.borrow();
            let (mut last, mut is_idle) = (NO_TIMESTAMP, false);
            for e in ev.iter() {
                match e {
                    Ev::Watermark(w) => {
                        prop_assert!(*w > last && !is_idle, "{:?}", ev);
                        last = *w;
                    }
                    Ev::Idle(i) => {
                        prop_assert!(*i != is_idle, "{:?}", ev);
                        is_idle = *i;
                    }
                    Ev::Finish => prop_assert!(!is_idle, "{:?}", ev),
                }
            }
        }
    }
}
