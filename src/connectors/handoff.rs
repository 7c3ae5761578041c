//! The worker's side of a connector I/O thread: commands go over a bounded channel with
//! `try_send`; what does not fit waits in a local queue (the connector is then `blocked`,
//! which backpressures its chain) and is retried on the next `send_pending`. The thread
//! reports how it ended on a one-slot channel.

use std::collections::VecDeque;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use weir_runtime::{BoxError, TaskInfo, Waker};

/// Commands queued for an I/O thread, and how it ended.
pub(crate) struct Handoff<C> {
    tx: Sender<C>,
    ended: Receiver<Result<(), String>>,
    pending: VecDeque<C>,
    /// The thread reported success.
    finished: bool,
    what: &'static str,
}

impl<C: Send + 'static> Handoff<C> {
    /// Starts thread `name` running `body` on the receiving end of a channel of `capacity`
    /// commands; `what` names it in errors ("the Kafka sink thread"). The worker is woken
    /// when the thread ends.
    pub(crate) fn spawn(
        name: String,
        what: &'static str,
        capacity: usize,
        info: &TaskInfo,
        body: impl FnOnce(Receiver<C>, &Waker) -> Result<(), String> + Send + 'static,
    ) -> Result<Self, BoxError> {
        let (tx, rx) = crossbeam_channel::bounded::<C>(capacity);
        let (ended_tx, ended) = crossbeam_channel::bounded(1);
        let waker = info.waker();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let r = body(rx, &waker);
                let _ = ended_tx.send(r);
                waker.wake();
            })
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Handoff {
            tx,
            ended,
            pending: VecDeque::new(),
            finished: false,
            what,
        })
    }

    /// Fails with the thread's error once it reported one.
    fn check_ended(&mut self) -> Result<(), BoxError> {
        match self.ended.try_recv() {
            Ok(Ok(())) => {
                self.finished = true;
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) if self.finished => Ok(()),
            Err(TryRecvError::Disconnected) => {
                Err(format!("{} ended without reporting", self.what).into())
            }
        }
    }

    /// Queues `cmd` behind everything queued before and sends what fits.
    pub(crate) fn push(&mut self, cmd: C) -> Result<(), BoxError> {
        self.pending.push_back(cmd);
        self.send_pending().map(|_| ())
    }

    /// Sends queued commands while the channel has room; true if any went.
    pub(crate) fn send_pending(&mut self) -> Result<bool, BoxError> {
        self.check_ended()?;
        let mut progress = false;
        while let Some(cmd) = self.pending.pop_front() {
            match self.tx.try_send(cmd) {
                Ok(()) => progress = true,
                Err(TrySendError::Full(cmd)) => {
                    self.pending.push_front(cmd);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The thread stopped: it reported why.
                    self.check_ended()?;
                    return Err(format!("{} stopped", self.what).into());
                }
            }
        }
        Ok(progress)
    }

    /// Commands are waiting for room in the channel.
    pub(crate) fn blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Everything was handed over and the thread ended successfully.
    pub(crate) fn finished(&self) -> bool {
        self.pending.is_empty() && self.finished
    }
}
