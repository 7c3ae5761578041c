//! Checkpoint settings (job file `[checkpoint]` and the Rust builder use the same names).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;

/// The longest `interval`, `min_pause` and `timeout` accepted: a year.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Consistency guarantee of checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CheckpointMode {
    /// Aligned barriers: every record is reflected exactly once in the state of a checkpoint.
    #[default]
    ExactlyOnce,
    /// Barriers are not aligned: after a restore some records may be processed twice, none lost.
    AtLeastOnce,
}

/// What happens to completed checkpoints when the job is cancelled (Ctrl-C/SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCancel {
    /// Keep them, so that the job can be restored later (Flink's RETAIN_ON_CANCELLATION).
    #[default]
    Retain,
    /// Delete them (Flink's DELETE_ON_CANCELLATION).
    Delete,
}

/// Checkpoint settings. [`CheckpointConfig::new`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// Time between checkpoint triggers. Default 1 s.
    pub interval: Duration,
    /// Exactly-once (aligned) or at-least-once. Default exactly-once.
    pub mode: CheckpointMode,
    /// Minimum time between the end of one checkpoint and the start of the next. Default 0.
    pub min_pause: Duration,
    /// A checkpoint not complete after this long is aborted. Default 10 min.
    pub timeout: Duration,
    /// Checkpoints in flight at once. Default 1.
    pub max_concurrent: usize,
    /// Consecutive failed checkpoints tolerated before the job fails. Default 3.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept (older ones are deleted). Default 3.
    pub retained: usize,
    /// Fate of checkpoints when the job is cancelled. Default retain.
    pub on_cancel: OnCancel,
    /// Where checkpoints are persisted, e.g. `file:///var/lib/weir/checkpoints`.
    pub storage: String,
    /// Local directory for the memory-mapped snapshot files (and local recovery).
    /// Default: `<system temp dir>/weir/local`.
    pub local_dir: PathBuf,
    /// Incremental checkpoints: keyed state that did not change since the last completed
    /// checkpoint is referenced from earlier files instead of being written again. Default on.
    pub incremental: bool,
    /// With incremental checkpoints, the longest chain of deltas a key group may have before
    /// it is written in full again (full rewrites are spread over checkpoints, starting at
    /// half this length). Bounds restore work and the files a checkpoint references.
    /// Default 64.
    pub max_delta_chain: usize,
    /// Bytes of local copies (the snapshot files under `local_dir` this run wrote) whose pages
    /// stay in the page cache once they are durable; past it, the oldest files' pages are
    /// dropped (their bytes stay on disk, so local recovery reads them from the disk instead
    /// of memory). `None`: no bound, the kernel evicts them when it needs the memory.
    /// Default `None`. A bound saves the memory (and, for a growing state, the cost of fresh
    /// memory every checkpoint) that a second copy of the state in the page cache takes.
    pub local_cache: Option<u64>,
    /// Settings of remote storage (`s3://`); unset ones come from the environment.
    pub store: weir_storage::StoreOptions,
}

impl CheckpointConfig {
    /// Defaults, persisting to `storage`.
    pub fn new(storage: impl Into<String>) -> Self {
        CheckpointConfig {
            interval: Duration::from_secs(1),
            mode: CheckpointMode::ExactlyOnce,
            min_pause: Duration::ZERO,
            timeout: Duration::from_secs(600),
            max_concurrent: 1,
            tolerable_failures: 3,
            retained: 3,
            on_cancel: OnCancel::Retain,
            storage: storage.into(),
            local_dir: std::env::temp_dir().join("weir").join("local"),
            incremental: true,
            max_delta_chain: 64,
            local_cache: None,
            store: weir_storage::StoreOptions::default(),
        }
    }

    /// Checks the bounds; the error names the setting and what was expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |setting: &'static str, message: String| Err(ConfigError { setting, message });
        if self.interval < Duration::from_millis(10) {
            return bad(
                "checkpoint.interval",
                format!("{:?} is too short; expected at least 10ms", self.interval),
            );
        }
        if self.timeout < Duration::from_millis(10) {
            return bad(
                "checkpoint.timeout",
                format!("{:?} is too short; expected at least 10ms", self.timeout),
            );
        }
        // Deadlines are `Instant`s: durations beyond a year would overflow them and mean
        // "never" anyway.
        for (setting, d) in [
            ("checkpoint.interval", self.interval),
            ("checkpoint.min_pause", self.min_pause),
            ("checkpoint.timeout", self.timeout),
        ] {
            if d > MAX_DURATION {
                return bad(
                    setting,
                    format!("{d:?} is too long; expected at most 365 days"),
                );
            }
        }
        if self.max_concurrent == 0 || self.max_concurrent > 64 {
            return bad(
                "checkpoint.max_concurrent",
                format!("{} is out of range; expected 1..=64", self.max_concurrent),
            );
        }
        if self.retained == 0 || self.retained > 1000 {
            return bad(
                "checkpoint.retained",
                format!("{} is out of range; expected 1..=1000", self.retained),
            );
        }
        if self.max_delta_chain == 0 || self.max_delta_chain > 10_000 {
            return bad(
                "checkpoint.max_delta_chain",
                format!(
                    "{} is out of range; expected 1..=10000",
                    self.max_delta_chain
                ),
            );
        }
        if self.storage.trim().is_empty() {
            return bad(
                "checkpoint.storage",
                "is empty; expected a URI such as file:///var/lib/weir/checkpoints".into(),
            );
        }
        Ok(())
    }
}
