//! Restarting a failed job from its latest checkpoint, in the same process, under a
//! [`RestartStrategy`] (fixed delay or exponential backoff, bounded attempts).

use std::time::Duration;

use weir_runtime::{JobError, RestoreFrom};

use crate::job::RestartStrategy;

/// Delay before restart number `attempt + 1`, or `None` when the strategy allows no more.
pub fn next_delay(s: &RestartStrategy, attempt: u32) -> Option<Duration> {
    if attempt >= s.attempts {
        return None;
    }
    if s.exponential {
        let factor = s.multiplier.powi(attempt.min(64) as i32);
        Some(s.delay.mul_f64(factor.min(1e9)).min(s.max_delay))
    } else {
        Some(s.delay)
    }
}

/// Failures that a restart from the latest checkpoint may cure: errors and panics of
/// operators, and checkpointing giving up. Bad configuration, unusable storage or an
/// unusable checkpoint would fail again the same way.
pub fn is_restartable(e: &JobError) -> bool {
    matches!(
        e,
        JobError::Operator { .. } | JobError::Panic { .. } | JobError::Checkpoint(_)
    )
}

/// Runs a job, restarting it from the latest checkpoint after restartable failures.
///
/// `start` builds and starts the job (given what to restore from); `wait` waits for it (the
/// CLI shows progress and handles signals there); `on_restart` is told about each restart;
/// `give_up` is asked before each restart (e.g. a stop was requested). A restart whose start
/// fails because the checkpoint storage cannot be used (`JobError::Storage`: a store that is
/// briefly away) is retried under the same strategy; at the first start that error is final.
pub fn run_with_restarts<H, S>(
    strategy: &RestartStrategy,
    checkpointing: bool,
    mut restore: Option<RestoreFrom>,
    mut start: impl FnMut(Option<&RestoreFrom>) -> Result<H, JobError>,
    mut wait: impl FnMut(H) -> Result<S, JobError>,
    mut on_restart: impl FnMut(&JobError, u32, Duration),
    give_up: impl Fn() -> bool,
) -> Result<S, JobError> {
    let mut attempt = 0;
    loop {
        let (err, restartable) = match start(restore.as_ref()) {
            Ok(handle) => match wait(handle) {
                Ok(summary) => return Ok(summary),
                Err(e) => {
                    let r = is_restartable(&e);
                    (e, r)
                }
            },
            Err(e @ JobError::Storage(_)) if attempt > 0 => (e, true),
            Err(e) => return Err(e),
        };
        let delay = match next_delay(strategy, attempt) {
            Some(d) if checkpointing && restartable && !give_up() => d,
            _ => return Err(err),
        };
        attempt += 1;
        tracing::warn!(error = %err, attempt, delay_ms = delay.as_millis() as u64, "job failed; restarting from the latest checkpoint");
        on_restart(&err, attempt, delay);
        std::thread::sleep(delay);
        restore = Some(RestoreFrom::Latest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store that cannot be read while restarting is retried under the strategy; at the
    /// first start it is final.
    #[test]
    fn storage_errors_at_a_restart_are_retried() {
        let strategy = RestartStrategy {
            attempts: 3,
            delay: Duration::from_millis(1),
            ..RestartStrategy::default()
        };
        let starts = std::cell::Cell::new(0);
        let outage = || JobError::Storage("cannot read checkpoint 7: no answer".into());
        let r = run_with_restarts(
            &strategy,
            true,
            None,
            |_| {
                starts.set(starts.get() + 1);
                match starts.get() {
                    1 => Ok(1),
                    2 => Err(outage()),
                    _ => Ok(3),
                }
            },
            |run: u32| {
                if run == 1 {
                    Err(JobError::Checkpoint("store away".into()))
                } else {
                    Ok(run)
                }
            },
            |_, _, _| {},
            || false,
        );
        assert_eq!(r.unwrap(), 3);
        assert_eq!(starts.get(), 3);
        let first = run_with_restarts(
            &strategy,
            true,
            None,
            |_| Err::<u32, _>(outage()),
            |run: u32| Ok(run),
            |_, _, _| {},
            || false,
        );
        assert!(matches!(first, Err(JobError::Storage(_))));
    }

    #[test]
    fn delays_follow_the_strategy() {
        let fixed = RestartStrategy {
            attempts: 2,
            ..RestartStrategy::default()
        };
        assert_eq!(next_delay(&fixed, 0), Some(Duration::from_secs(1)));
        assert_eq!(next_delay(&fixed, 1), Some(Duration::from_secs(1)));
        assert_eq!(next_delay(&fixed, 2), None);
        let exp = RestartStrategy {
            attempts: 10,
            exponential: true,
            delay: Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: Duration::from_millis(500),
        };
        let d: Vec<u64> = (0..5)
            .map(|a| next_delay(&exp, a).unwrap().as_millis() as u64)
            .collect();
        assert_eq!(d, vec![100, 200, 400, 500, 500]);
        assert!(next_delay(
            &RestartStrategy {
                attempts: 0,
                ..RestartStrategy::default()
            },
            0
        )
        .is_none());
    }
}
