//! Runtime configuration: defaults in one place, validated before a job starts.

use std::time::Duration;

use crate::error::ConfigError;

/// Default number of key groups (the upper bound for any operator's parallelism).
pub const DEFAULT_MAX_PARALLELISM: usize = 128;

/// Settings of one job's execution. Every field has a documented default
/// ([`RuntimeConfig::default`]); [`RuntimeConfig::validate`] checks the bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Worker threads, one per core. Default: the number of available cores.
    pub workers: usize,
    /// Default parallelism of every operator. Default: `workers`.
    pub parallelism: usize,
    /// Number of key groups; keyed state is partitioned by key group so that it can later be
    /// redistributed. Bounds every operator's parallelism. Default 128.
    pub max_parallelism: usize,
    /// Records per batch exchanged between chains. Default 1024.
    pub batch_size: usize,
    /// Batches each channel holds before its producer is backpressured. Default 16.
    pub channel_capacity: usize,
    /// Longest time a partially filled output batch waits before it is sent. Default 10 ms.
    pub buffer_timeout: Duration,
    /// Pin worker threads to cores. Failure to pin is a warning. Default true.
    pub pin_workers: bool,
    /// Cores reserved for the snapshot writers (which encode, write and upload checkpoints):
    /// the first `io_cores` cores run only the writers, the workers are pinned to the others.
    /// Default 0: workers use every core and the writers are left to the OS scheduler, so a
    /// checkpoint's asynchronous work takes its CPU time from the workers. Must leave at least
    /// one core for the workers; needs `pin_workers`.
    pub io_cores: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        RuntimeConfig {
            workers,
            parallelism: workers,
            max_parallelism: DEFAULT_MAX_PARALLELISM,
            batch_size: 1024,
            channel_capacity: 16,
            buffer_timeout: Duration::from_millis(10),
            pin_workers: true,
            io_cores: 0,
        }
    }
}

impl RuntimeConfig {
    /// Checks every bound; the error names the setting and what was expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range(name: &'static str, v: usize, lo: usize, hi: usize) -> Result<(), ConfigError> {
            if v < lo || v > hi {
                return Err(ConfigError {
                    setting: name,
                    message: format!("{v} is out of range; expected {lo}..={hi}"),
                });
            }
            Ok(())
        }
        range("workers", self.workers, 1, 4096)?;
        range("max_parallelism", self.max_parallelism, 1, 32768)?;
        range("parallelism", self.parallelism, 1, self.max_parallelism)?;
        range("batch_size", self.batch_size, 1, 1_000_000)?;
        range("channel_capacity", self.channel_capacity, 1, 4096)?;
        range("io_cores", self.io_cores, 0, 4095)?;
        if self.buffer_timeout.is_zero() || self.buffer_timeout > Duration::from_secs(60) {
            return Err(ConfigError {
                setting: "buffer_timeout",
                message: format!(
                    "{:?} is out of range; expected more than 0 and at most 60s",
                    self.buffer_timeout
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        RuntimeConfig::default().validate().unwrap();
    }

    #[test]
    fn parallelism_above_max_is_rejected() {
        let c = RuntimeConfig {
            parallelism: 300,
            ..RuntimeConfig::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "parallelism");
        assert!(e.message.contains("expected 1..=128"), "{e}");
    }
}
