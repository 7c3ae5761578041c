//! The worker loop: one thread per core runs the chain instances assigned to it.
//!
//! The loop never blocks on a send. Each round it (1) retries pending output of every task,
//! (2) polls every task whose outputs are not blocked, (3) flushes partially filled batches
//! when the buffer timeout passed or nothing else happened, and (4) when no task made progress,
//! parks on a crossbeam `Select` over the channels it could receive from, the channels its
//! pending output waits on, and its doorbell (rung by I/O threads), with a timeout.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select};

use crate::checkpoint::{ToWorker, WorkerCheckpoints};
use crate::error::JobError;
use crate::exchange::{Driver, Outlet, Poll};

/// Longest park, so that stop and cancel requests are seen promptly even without a wake-up.
const MAX_PARK: Duration = Duration::from_millis(100);

pub(crate) struct Task {
    pub(crate) name: String,
    pub(crate) driver: Box<dyn Driver>,
    pub(crate) outlets: Vec<Rc<dyn Outlet>>,
    pub(crate) input_done: bool,
    pub(crate) done: bool,
    /// The chain head's counters (backpressure is counted there).
    pub(crate) metrics: Arc<crate::metrics::NodeMetrics>,
    /// Since when (or since the last count) its outputs have been blocked.
    pub(crate) blocked_since: Option<Instant>,
}

impl Task {
    /// Counts the time the task's outputs have been blocked, up to now: called every round
    /// (at least every `MAX_PARK`), so a long stall shows while it lasts.
    fn count_backpressure(&mut self, blocked: bool, now: Instant) {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (true, Some(t)) => {
                self.metrics
                    .backpressured_ns
                    .fetch_add(now.duration_since(t).as_nanos() as u64, Ordering::Relaxed);
                self.blocked_since = Some(now);
            }
            (false, Some(t)) => {
                self.metrics
                    .backpressured_ns
                    .fetch_add(now.duration_since(t).as_nanos() as u64, Ordering::Relaxed);
                self.blocked_since = None;
            }
            (false, None) => {}
        }
    }
}

pub(crate) struct Worker {
    pub(crate) index: usize,
    pub(crate) tasks: Vec<Task>,
    pub(crate) doorbell: Receiver<()>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) buffer_timeout: Duration,
    pub(crate) cp: WorkerCheckpoints,
    pub(crate) control: Option<Receiver<ToWorker>>,
}

impl Worker {
    pub(crate) fn run(&mut self) -> Result<(), JobError> {
        let mut last_flush = Instant::now();
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(JobError::Cancelled);
            }
            let mut progress = self.handle_control()?;
            let mut wake_at: Option<Instant> = None;
            let round = Instant::now();
            for task in self.tasks.iter_mut().filter(|t| !t.done) {
                for o in &task.outlets {
                    progress |= o.try_flush()?;
                }
                let blocked = task.outlets.iter().any(|o| o.blocked());
                task.count_backpressure(blocked && !task.input_done, round);
                if !task.input_done && !blocked {
                    match task.driver.poll(&task.outlets, &mut self.cp)? {
                        Poll::Progress => progress = true,
                        Poll::Idle(at) => {
                            if let Some(at) = at {
                                wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                            }
                        }
                        Poll::Finished => {
                            task.input_done = true;
                            progress = true;
                        }
                    }
                }
                if task.input_done {
                    // Ended: push out everything buffered, then wait until it is all sent.
                    for o in &task.outlets {
                        progress |= o.flush_buffers()?;
                    }
                    if task.outlets.iter().all(|o| o.idle()) {
                        tracing::debug!(worker = self.index, task = %task.name, "task finished");
                        task.done = true;
                    }
                }
            }
            if self.tasks.iter().all(|t| t.done) {
                return Ok(());
            }
            // The round's clock reading: one per round on this hot loop.
            if !progress || round.duration_since(last_flush) >= self.buffer_timeout {
                last_flush = round;
                for task in self.tasks.iter().filter(|t| !t.done) {
                    for o in &task.outlets {
                        progress |= o.flush_buffers()?;
                    }
                }
            }
            if !progress {
                self.park(wake_at);
            }
        }
    }

    /// Carries out the coordinator's messages; true if there were any.
    fn handle_control(&mut self) -> Result<bool, JobError> {
        let Some(control) = &self.control else {
            return Ok(false);
        };
        let mut any = false;
        while let Ok(msg) = control.try_recv() {
            any = true;
            match msg {
                ToWorker::Trigger(id) => {
                    for task in self.tasks.iter_mut().filter(|t| !t.done) {
                        task.driver.trigger(id, &mut self.cp)?;
                    }
                }
                ToWorker::Complete(id) => {
                    for task in self.tasks.iter_mut() {
                        if !task.done {
                            task.driver.checkpoint_complete(id)?;
                        }
                        for o in &task.outlets {
                            o.checkpoint_complete(id)?;
                        }
                    }
                }
                ToWorker::FinishSources => {
                    for task in self.tasks.iter_mut().filter(|t| !t.done) {
                        task.driver.finish_sources()?;
                    }
                }
            }
        }
        Ok(any)
    }

    fn park(&self, wake_at: Option<Instant>) {
        let now = Instant::now();
        let mut timeout = MAX_PARK;
        if let Some(at) = wake_at {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if timeout.is_zero() {
            return;
        }
        let mut sel = Select::new();
        sel.recv(&self.doorbell);
        if let Some(c) = &self.control {
            sel.recv(c);
        }
        for task in self.tasks.iter().filter(|t| !t.done) {
            let blocked = task.outlets.iter().any(|o| o.blocked());
            for o in &task.outlets {
                o.register(&mut sel);
            }
            if !blocked && !task.input_done {
                task.driver.register(&mut sel);
            }
        }
        if let Ok(i) = sel.ready_timeout(timeout) {
            if i == 0 {
                // Consume the doorbell so that it can ring again.
                let _ = self.doorbell.try_recv();
            }
        }
    }
}
