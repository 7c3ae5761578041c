//! The worker's side of a connector I/O thread: commands go over a bounded channel with
//! `try_send`; what does not fit waits in a local queue (the connector is then `blocked`,
//! which backpressures its chain) and is retried on the next `send_pending`. The thread
//! reports how it ended on a one-slot channel.
//!
//! Dropping the handoff before the thread finished (the job failed or was cancelled) discards
//! the commands the thread has not taken and, for threads that commit output (`wait_on_drop`),
//! waits for it to end, up to [`DROP_WAIT`]: a pre-commit queued before a failure must not
//! rename files, or open a transaction, while the restarted job recovers.

use std::collections::VecDeque;

use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use weir_runtime::{BoxError, TaskInfo, Waker};

/// How long a dropped handoff waits for its thread to end (longer than the Kafka sink's
/// calls to the broker, which give up after 60 s): a thread stuck beyond that (a dead
/// disk) is left running, with a warning.
const DROP_WAIT: Duration = Duration::from_secs(90);

/// Commands queued for an I/O thread, and how it ended.
pub(crate) struct Handoff<C> {
    /// `None` once dropped (the thread then sees the channel closed).
    tx: Option<Sender<C>>,
    /// The thread's end of the channel, to discard what it has not taken on drop.
    queued: Receiver<C>,
    thread: Option<JoinHandle<()>>,
    /// Wait for the thread when dropped before it finished (it commits output).
    wait_on_drop: bool,
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
    /// `wait_on_drop`: the thread commits output, so a drop before it finished waits for it
    /// (see the module docs); not for a thread that only writes to stdout.
    pub(crate) fn spawn(
        name: String,
        what: &'static str,
        capacity: usize,
        info: &TaskInfo,
        wait_on_drop: bool,
        body: impl FnOnce(Receiver<C>, &Waker) -> Result<(), String> + Send + 'static,
    ) -> Result<Self, BoxError> {
        Self::spawn_waking(name, what, capacity, info.waker(), wait_on_drop, body)
    }

    fn spawn_waking(
        name: String,
        what: &'static str,
        capacity: usize,
        waker: Waker,
        wait_on_drop: bool,
        body: impl FnOnce(Receiver<C>, &Waker) -> Result<(), String> + Send + 'static,
    ) -> Result<Self, BoxError> {
        let (tx, rx) = crossbeam_channel::bounded::<C>(capacity);
        let (ended_tx, ended) = crossbeam_channel::bounded(1);
        let queued = rx.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let r = body(rx, &waker);
                let _ = ended_tx.send(r);
                waker.wake();
            })
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        Ok(Handoff {
            tx: Some(tx),
            queued,
            thread: Some(thread),
            wait_on_drop,
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
        let tx = self.tx.as_ref().expect("sender lives until drop");
        while let Some(cmd) = self.pending.pop_front() {
            match tx.try_send(cmd) {
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

impl<C> Drop for Handoff<C> {
    fn drop(&mut self) {
        // After a normal end the thread is done and this returns at once.
        self.pending.clear();
        while self.queued.try_recv().is_ok() {}
        drop(self.tx.take());
        let Some(t) = self.thread.take() else {
            return;
        };
        if !self.wait_on_drop {
            return;
        }
        // The thread finishes the command it is running (bounded by the connector's own
        // timeouts), then sees the channel closed: its result arrives, or the channel
        // disconnects once it exited having reported already.
        match self.ended.recv_timeout(DROP_WAIT) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => tracing::warn!(
                thread = t.thread().name().unwrap_or("?"),
                "{} did not stop within {} s of its job's end; not waiting for it",
                self.what,
                DROP_WAIT.as_secs()
            ),
            _ => {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// A handoff dropped while its thread works (a failed job) runs none of the commands the
    /// thread had not taken, and returns only once the thread ended: nothing of the old run
    /// happens after a restart began.
    #[test]
    fn a_dropped_handoff_discards_queued_commands_and_waits_for_its_thread() {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let ended = Arc::new(AtomicBool::new(false));
        let (r, e) = (ran.clone(), ended.clone());
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let mut h = Handoff::spawn_waking(
            "handoff-test".into(),
            "the test thread",
            8,
            Waker::none(),
            true,
            move |rx: Receiver<u32>, _| {
                while let Ok(cmd) = rx.recv() {
                    let _ = started_tx.try_send(());
                    std::thread::sleep(Duration::from_millis(200));
                    r.lock().unwrap().push(cmd);
                }
                e.store(true, Ordering::SeqCst);
                Ok(())
            },
        )
        .unwrap();
        for cmd in 1..=5 {
            h.push(cmd).unwrap();
        }
        started.recv().unwrap();
        drop(h);
        assert!(
            ended.load(Ordering::SeqCst),
            "drop returned before the thread ended"
        );
        assert_eq!(
            *ran.lock().unwrap(),
            vec![1],
            "only the command in progress ran"
        );
    }
}
