//! Restarting a failed job from its latest checkpoint, in the same process, under a
//! [`RestartStrategy`] (fixed delay or exponential backoff, bounded attempts).

use std::time::Duration;

use weir_runtime::{JobError, JobHandle, JobSummary, RestoreFrom};

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
/// `give_up` is asked before each restart (e.g. a stop was requested).
pub fn run_with_restarts(
    strategy: &RestartStrategy,
    checkpointing: bool,
    mut restore: Option<RestoreFrom>,
    mut start: impl FnMut(Option<&RestoreFrom>) -> Result<JobHandle, JobError>,
    mut wait: impl FnMut(JobHandle) -> Result<JobSummary, JobError>,
    mut on_restart: impl FnMut(&JobError, u32, Duration),
    give_up: impl Fn() -> bool,
) -> Result<JobSummary, JobError> {
    let mut attempt = 0;
    loop {
        let handle = start(restore.as_ref())?;
        let err = match wait(handle) {
            Ok(summary) => return Ok(summary),
            Err(e) => e,
        };
        let delay = match next_delay(strategy, attempt) {
            Some(d) if checkpointing && is_restartable(&err) && !give_up() => d,
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
