//! The coordinator's decisions, free of I/O and threads: it is told what happened (time passed,
//! a worker acknowledged or declined, a source ran dry) and answers with actions. The
//! coordinator thread carries the actions out; tests drive the decider directly.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::config::CheckpointConfig;

/// What one worker reported for a checkpoint: its file is durable in the store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ack {
    pub(crate) worker: usize,
    pub(crate) file: String,
    pub(crate) bytes: u64,
    pub(crate) crc32: u32,
    pub(crate) sync: Duration,
    pub(crate) asynchronous: Duration,
    pub(crate) alignment: Duration,
    /// Earlier checkpoints whose files this worker's state references (incremental).
    pub(crate) refs: std::collections::BTreeSet<u64>,
    /// What uploading the file cost.
    pub(crate) uploaded: weir_storage::PutStats,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Tell every source to emit barrier `id`.
    Trigger { id: u64, is_final: bool },
    /// Every worker acknowledged: write the metadata (last), then notify completion.
    Complete {
        id: u64,
        triggered_at: Instant,
        acks: Vec<Ack>,
        is_final: bool,
    },
    /// Give up on `id` (timeout, decline, or subsumed by a newer completed checkpoint).
    Abort { id: u64, reason: String },
    /// The final checkpoint completed: sources may end their streams.
    FinishSources,
    /// Too many consecutive failures: fail the job.
    Fail(String),
}

struct InFlight {
    triggered: Instant,
    acks: Vec<Option<Ack>>,
    is_final: bool,
}

pub(crate) struct Decider {
    interval: Duration,
    min_pause: Duration,
    timeout: Duration,
    max_concurrent: usize,
    tolerable_failures: u32,
    workers: usize,
    next_id: u64,
    in_flight: BTreeMap<u64, InFlight>,
    next_trigger: Instant,
    /// Workers still building their tasks (restoring state): nothing is triggered until they
    /// are all ready, and the interval counts from then (Flink schedules checkpoints once
    /// every task runs).
    building: usize,
    last_end: Option<Instant>,
    consecutive_failures: u32,
    sources_total: usize,
    sources_exhausted: usize,
    final_attempts: u32,
    finished: bool,
}

impl Decider {
    pub(crate) fn new(
        cfg: &CheckpointConfig,
        workers: usize,
        sources_total: usize,
        first_id: u64,
        now: Instant,
    ) -> Self {
        assert!(workers > 0 && first_id > 0);
        Decider {
            interval: cfg.interval,
            min_pause: cfg.min_pause,
            timeout: cfg.timeout,
            max_concurrent: cfg.max_concurrent.max(1),
            tolerable_failures: cfg.tolerable_failures,
            workers,
            next_id: first_id,
            in_flight: BTreeMap::new(),
            next_trigger: now + cfg.interval,
            building: workers,
            last_end: None,
            consecutive_failures: 0,
            sources_total,
            sources_exhausted: 0,
            final_attempts: 0,
            finished: false,
        }
    }

    /// A worker built its tasks; once all have, checkpoints are due one interval later.
    pub(crate) fn on_ready(&mut self, now: Instant) -> Vec<Action> {
        assert!(self.building > 0, "more workers ready than the job has");
        self.building -= 1;
        if self.building > 0 {
            return Vec::new();
        }
        self.next_trigger = now + self.interval;
        self.on_tick(now)
    }

    fn all_exhausted(&self) -> bool {
        self.sources_exhausted >= self.sources_total
    }

    fn final_in_flight(&self) -> bool {
        self.in_flight.values().any(|f| f.is_final)
    }

    /// When `on_tick` should run next at the latest.
    pub(crate) fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = now + Duration::from_millis(100);
        // A trigger due while none may start (too many in flight) is no reason to wake: the
        // completion or timeout that frees a slot is (a wake time in the past would spin).
        let may_trigger = self.in_flight.len() < self.max_concurrent
            && (self.min_pause.is_zero() || self.in_flight.is_empty());
        if !self.finished && may_trigger && self.building == 0 {
            let due = match self.earliest_by_pause() {
                Some(t) => self.next_trigger.max(t),
                None => self.next_trigger,
            };
            wake = wake.min(due);
        }
        for f in self.in_flight.values() {
            wake = wake.min(f.triggered + self.timeout);
        }
        wake
    }

    /// The end of the current minimum pause, if one applies.
    fn earliest_by_pause(&self) -> Option<Instant> {
        match self.last_end {
            Some(t) if !self.min_pause.is_zero() => Some(t + self.min_pause),
            _ => None,
        }
    }

    fn trigger(&mut self, now: Instant, is_final: bool) -> Action {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.insert(
            id,
            InFlight {
                triggered: now,
                acks: vec![None; self.workers],
                is_final,
            },
        );
        self.next_trigger = now + self.interval;
        Action::Trigger { id, is_final }
    }

    fn fail(&mut self, id: u64, reason: String, out: &mut Vec<Action>) {
        self.in_flight.remove(&id);
        self.consecutive_failures += 1;
        out.push(Action::Abort {
            id,
            reason: reason.clone(),
        });
        if self.consecutive_failures > self.tolerable_failures {
            out.push(Action::Fail(format!(
                "{} consecutive checkpoints failed (tolerable_failures = {}); last: checkpoint {id}: {reason}",
                self.consecutive_failures, self.tolerable_failures
            )));
        }
    }

    pub(crate) fn on_tick(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| now.duration_since(f.triggered) >= self.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.fail(
                id,
                format!("not complete after the timeout of {:?}", self.timeout),
                &mut out,
            );
        }
        if self.finished || self.building > 0 || self.in_flight.len() >= self.max_concurrent {
            return out;
        }
        // With a min pause, Flink allows one checkpoint at a time; so does Weir.
        if !self.min_pause.is_zero() && !self.in_flight.is_empty() {
            return out;
        }
        if self.all_exhausted() {
            // The first final checkpoint starts at once; a retry after a failure waits for the
            // interval like any other checkpoint (no trigger storm against a failing store).
            if !self.final_in_flight() && (self.final_attempts == 0 || now >= self.next_trigger) {
                self.final_attempts += 1;
                out.push(self.trigger(now, true));
            }
        } else if now >= self.next_trigger && self.earliest_by_pause().is_none_or(|t| now >= t) {
            out.push(self.trigger(now, false));
        }
        out
    }

    pub(crate) fn on_source_exhausted(&mut self, now: Instant) -> Vec<Action> {
        self.sources_exhausted += 1;
        self.on_tick(now)
    }

    pub(crate) fn on_ack(&mut self, now: Instant, id: u64, ack: Ack) -> Vec<Action> {
        let Some(f) = self.in_flight.get_mut(&id) else {
            return Vec::new(); // aborted or unknown: ignore
        };
        let w = ack.worker;
        assert!(w < f.acks.len(), "ack from unknown worker {w}");
        f.acks[w] = Some(ack);
        if f.acks.iter().any(|a| a.is_none()) {
            return Vec::new();
        }
        let f = self.in_flight.remove(&id).expect("present");
        let _ = now;
        vec![Action::Complete {
            id,
            triggered_at: f.triggered,
            acks: f.acks.into_iter().map(|a| a.expect("all acked")).collect(),
            is_final: f.is_final,
        }]
    }

    /// The metadata of `id` was written: the checkpoint exists.
    pub(crate) fn on_completed(&mut self, now: Instant, id: u64, is_final: bool) -> Vec<Action> {
        self.consecutive_failures = 0;
        self.last_end = Some(now);
        // A newer complete checkpoint subsumes older ones still in flight; only once it is
        // complete (Flink does the same): if its metadata cannot be written, they may still
        // complete.
        let older: Vec<u64> = self.in_flight.range(..id).map(|(i, _)| *i).collect();
        let mut subsumed = Vec::new();
        for o in older {
            self.in_flight.remove(&o);
            subsumed.push(Action::Abort {
                id: o,
                reason: format!("subsumed by checkpoint {id}"),
            });
        }
        if is_final {
            self.finished = true;
            // Anything still in flight can never complete: sources end.
            let rest: Vec<u64> = self.in_flight.keys().copied().collect();
            subsumed.extend(rest.into_iter().map(|id| {
                self.in_flight.remove(&id);
                Action::Abort {
                    id,
                    reason: "the final checkpoint completed".into(),
                }
            }));
            subsumed.push(Action::FinishSources);
            return subsumed;
        }
        subsumed.extend(self.on_tick(now));
        subsumed
    }

    pub(crate) fn on_decline(&mut self, now: Instant, id: u64, reason: String) -> Vec<Action> {
        let mut out = Vec::new();
        if self.in_flight.contains_key(&id) {
            self.fail(id, reason, &mut out);
        }
        out.extend(self.on_tick(now));
        out
    }

    /// Writing the metadata failed.
    pub(crate) fn on_complete_failed(
        &mut self,
        now: Instant,
        id: u64,
        reason: String,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        self.in_flight.insert(
            id,
            InFlight {
                triggered: now,
                acks: Vec::new(),
                is_final: false,
            },
        );
        self.fail(id, reason, &mut out);
        self.last_end = Some(now);
        out.extend(self.on_tick(now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CheckpointConfig {
        let mut c = CheckpointConfig::new("file:///tmp/x");
        c.interval = Duration::from_millis(100);
        c.timeout = Duration::from_millis(1000);
        c
    }

    fn ack(worker: usize) -> Ack {
        Ack {
            worker,
            file: format!("worker-{worker}.snap"),
            bytes: 1,
            crc32: 0,
            sync: Duration::ZERO,
            asynchronous: Duration::ZERO,
            alignment: Duration::ZERO,
            refs: Default::default(),
            uploaded: Default::default(),
        }
    }

    /// A decider whose `workers` have all built their tasks at `t0`.
    fn started(
        c: &CheckpointConfig,
        workers: usize,
        sources: usize,
        first: u64,
        t0: Instant,
    ) -> Decider {
        let mut d = Decider::new(c, workers, sources, first, t0);
        for _ in 0..workers {
            d.on_ready(t0);
        }
        d
    }

    /// Nothing is triggered while a worker restores (not even the final checkpoint of
    /// sources that ran dry), and the interval counts from when the last one is ready.
    #[test]
    fn checkpoints_wait_for_every_worker_to_be_ready() {
        let t0 = Instant::now();
        let mut d = Decider::new(&cfg(), 2, 1, 1, t0);
        let s = |ms| t0 + Duration::from_millis(ms);
        assert!(d.on_tick(s(5_000)).is_empty());
        assert!(d.on_ready(s(5_000)).is_empty());
        assert!(d.on_tick(s(9_000)).is_empty());
        assert!(d.next_wake(s(9_000)) <= s(9_100));
        assert!(d.on_ready(s(10_000)).is_empty());
        assert!(d.on_tick(s(10_099)).is_empty());
        assert_eq!(triggers(&d.on_tick(s(10_100))), vec![1]);

        let mut d = Decider::new(&cfg(), 1, 1, 1, t0);
        assert!(d.on_source_exhausted(s(1)).is_empty());
        let a = d.on_ready(s(2));
        assert!(
            matches!(
                a.as_slice(),
                [Action::Trigger {
                    id: 1,
                    is_final: true
                }]
            ),
            "{a:?}"
        );
    }

    fn triggers(a: &[Action]) -> Vec<u64> {
        a.iter()
            .filter_map(|a| {
                if let Action::Trigger { id, .. } = a {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn triggers_per_interval_one_at_a_time() {
        let t0 = Instant::now();
        let mut d = started(&cfg(), 2, 1, 1, t0);
        assert!(d.on_tick(t0 + Duration::from_millis(50)).is_empty());
        assert_eq!(
            triggers(&d.on_tick(t0 + Duration::from_millis(100))),
            vec![1]
        );
        // max_concurrent = 1: nothing while 1 is in flight, and no reason to wake before its
        // timeout although the next interval is overdue (a wake time in the past spins).
        assert!(d.on_tick(t0 + Duration::from_millis(250)).is_empty());
        let now = t0 + Duration::from_millis(250);
        assert!(
            d.next_wake(now) > now,
            "woke at once with a trigger that cannot start"
        );
        assert!(d
            .on_ack(t0 + Duration::from_millis(260), 1, ack(0))
            .is_empty());
        let a = d.on_ack(t0 + Duration::from_millis(270), 1, ack(1));
        assert!(matches!(a[0], Action::Complete { id: 1, .. }));
        // Overdue interval: the next one starts as soon as 1 completed.
        assert_eq!(
            triggers(&d.on_completed(t0 + Duration::from_millis(280), 1, false)),
            vec![2]
        );
    }

    #[test]
    fn min_pause_delays_the_next_trigger() {
        let mut c = cfg();
        c.min_pause = Duration::from_millis(500);
        let t0 = Instant::now();
        let mut d = started(&c, 1, 1, 1, t0);
        assert_eq!(
            triggers(&d.on_tick(t0 + Duration::from_millis(100))),
            vec![1]
        );
        d.on_ack(t0 + Duration::from_millis(150), 1, ack(0));
        assert!(triggers(&d.on_completed(t0 + Duration::from_millis(200), 1, false)).is_empty());
        assert!(d.on_tick(t0 + Duration::from_millis(650)).is_empty());
        assert_eq!(
            triggers(&d.on_tick(t0 + Duration::from_millis(700))),
            vec![2]
        );
    }

    #[test]
    fn timeouts_count_as_failures_and_fail_the_job_past_tolerance() {
        let mut c = cfg();
        c.tolerable_failures = 1;
        let t0 = Instant::now();
        let mut d = started(&c, 1, 1, 1, t0);
        assert_eq!(
            triggers(&d.on_tick(t0 + Duration::from_millis(100))),
            vec![1]
        );
        let a = d.on_tick(t0 + Duration::from_millis(1100));
        assert!(matches!(&a[0], Action::Abort { id: 1, .. }), "{a:?}");
        assert_eq!(triggers(&a), vec![2]);
        assert!(!a.iter().any(|x| matches!(x, Action::Fail(_))));
        let a = d.on_tick(t0 + Duration::from_millis(2200));
        assert!(
            a.iter()
                .any(|x| matches!(x, Action::Fail(m) if m.contains("2 consecutive"))),
            "{a:?}"
        );
    }

    #[test]
    fn success_resets_failures_and_late_acks_are_ignored() {
        let mut c = cfg();
        c.tolerable_failures = 1;
        let t0 = Instant::now();
        let mut d = started(&c, 1, 1, 1, t0);
        d.on_tick(t0 + Duration::from_millis(100));
        d.on_decline(t0 + Duration::from_millis(150), 1, "disk full".into());
        assert!(
            d.on_ack(t0 + Duration::from_millis(160), 1, ack(0))
                .is_empty(),
            "aborted id"
        );
        let a = d.on_tick(t0 + Duration::from_millis(200));
        assert_eq!(triggers(&a), vec![2]);
        d.on_ack(t0 + Duration::from_millis(210), 2, ack(0));
        d.on_completed(t0 + Duration::from_millis(220), 2, false);
        d.on_tick(t0 + Duration::from_millis(300));
        let a = d.on_decline(t0 + Duration::from_millis(310), 3, "x".into());
        assert!(!a.iter().any(|x| matches!(x, Action::Fail(_))), "{a:?}");
    }

    #[test]
    fn exhausted_sources_get_a_final_checkpoint_then_finish() {
        let t0 = Instant::now();
        let mut d = started(&cfg(), 1, 2, 5, t0);
        assert!(triggers(&d.on_source_exhausted(t0)).is_empty());
        let a = d.on_source_exhausted(t0 + Duration::from_millis(1));
        assert_eq!(
            a,
            vec![Action::Trigger {
                id: 5,
                is_final: true
            }]
        );
        // A failed final checkpoint is retried, after the interval (no trigger storm).
        let a = d.on_decline(t0 + Duration::from_millis(2), 5, "x".into());
        assert!(triggers(&a).is_empty(), "{a:?}");
        assert!(triggers(&d.on_tick(t0 + Duration::from_millis(50))).is_empty());
        let a = d.on_tick(t0 + Duration::from_millis(101));
        assert!(
            a.contains(&Action::Trigger {
                id: 6,
                is_final: true
            }),
            "{a:?}"
        );
        let a = d.on_ack(t0 + Duration::from_millis(103), 6, ack(0));
        assert!(matches!(
            a[0],
            Action::Complete {
                id: 6,
                is_final: true,
                ..
            }
        ));
        assert_eq!(
            d.on_completed(t0 + Duration::from_millis(104), 6, true),
            vec![Action::FinishSources]
        );
        assert!(d.on_tick(t0 + Duration::from_secs(10)).is_empty());
    }

    #[test]
    fn newer_completion_subsumes_older_in_flight() {
        let mut c = cfg();
        c.max_concurrent = 2;
        let t0 = Instant::now();
        let mut d = started(&c, 1, 1, 1, t0);
        d.on_tick(t0 + Duration::from_millis(100));
        d.on_tick(t0 + Duration::from_millis(200));
        let a = d.on_ack(t0 + Duration::from_millis(210), 2, ack(0));
        assert!(
            matches!(a.as_slice(), [Action::Complete { id: 2, .. }]),
            "{a:?}"
        );
        // Not before its metadata is written: if that fails, checkpoint 1 may still complete.
        d.on_complete_failed(t0 + Duration::from_millis(215), 2, "disk full".into());
        let a = d.on_ack(t0 + Duration::from_millis(220), 1, ack(0));
        assert!(
            matches!(a.as_slice(), [Action::Complete { id: 1, .. }]),
            "{a:?}"
        );
        d.on_tick(t0 + Duration::from_millis(400));
        d.on_tick(t0 + Duration::from_millis(500));
        d.on_ack(t0 + Duration::from_millis(510), 4, ack(0));
        let a = d.on_completed(t0 + Duration::from_millis(520), 4, false);
        assert!(matches!(&a[0], Action::Abort { id: 3, .. }), "{a:?}");
    }
}
