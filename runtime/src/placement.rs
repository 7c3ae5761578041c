//! Which core each worker thread and each snapshot writer thread is pinned to.
//!
//! With `io_cores = n`, the first `n` cores of the machine run only the snapshot writers
//! (writer `w` on reserved core `w % n`) and worker `w` runs on core `n + w % (cores - n)`.
//! With `io_cores = 0`, worker `w` runs on core `w % cores` and the writers are not pinned.

use crate::error::ConfigError;

/// Core indices (into the machine's list of cores) for every worker and every snapshot writer;
/// `None` leaves the thread to the OS scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) workers: Vec<Option<usize>>,
    pub(crate) writers: Vec<Option<usize>>,
    /// Workers that share a core with another worker (more workers than cores for them).
    pub(crate) oversubscribed: bool,
}

/// Places `workers` workers and their writers on a machine with `cores` usable cores (0: the
/// cores could not be listed, nothing is pinned).
pub(crate) fn place(
    cores: usize,
    workers: usize,
    io_cores: usize,
    pin: bool,
) -> Result<Placement, ConfigError> {
    let unpinned = Placement {
        workers: vec![None; workers],
        writers: vec![None; workers],
        oversubscribed: false,
    };
    if !pin {
        if io_cores > 0 {
            return Err(ConfigError {
                setting: "io_cores",
                message: format!(
                    "{io_cores} cores cannot be reserved for snapshot writers when worker threads \
                     are not pinned; expected io_cores = 0 or pin_workers = true"
                ),
            });
        }
        return Ok(unpinned);
    }
    if cores == 0 {
        return Ok(unpinned);
    }
    if io_cores >= cores {
        return Err(ConfigError {
            setting: "io_cores",
            message: format!(
                "{io_cores} reserves every one of this machine's {cores} cores for snapshot \
                 writers and leaves none for the workers; expected at most {}",
                cores - 1
            ),
        });
    }
    let for_workers = cores - io_cores;
    Ok(Placement {
        workers: (0..workers)
            .map(|w| Some(io_cores + w % for_workers))
            .collect(),
        writers: (0..workers)
            .map(|w| (io_cores > 0).then(|| w % io_cores))
            .collect(),
        oversubscribed: workers > for_workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_reserved_cores_workers_take_every_core_and_writers_float() {
        let p = place(4, 6, 0, true).unwrap();
        assert_eq!(
            p.workers,
            [0, 1, 2, 3, 0, 1].map(Some).to_vec(),
            "round robin over all cores"
        );
        assert_eq!(p.writers, vec![None; 6]);
        assert!(p.oversubscribed);
        assert!(!place(4, 4, 0, true).unwrap().oversubscribed);
    }

    #[test]
    fn reserved_cores_run_only_writers_and_workers_never_touch_them() {
        for cores in 2..=8 {
            for io in 1..cores {
                for workers in 1..=10 {
                    let p = place(cores, workers, io, true).unwrap();
                    assert_eq!(p.workers.len(), workers);
                    assert_eq!(p.writers.len(), workers);
                    for w in &p.workers {
                        let c = w.expect("pinned");
                        assert!((io..cores).contains(&c), "worker on core {c}, io {io}");
                    }
                    for w in &p.writers {
                        let c = w.expect("pinned");
                        assert!(c < io, "writer on core {c}, io {io}");
                    }
                    // Every worker core is used before any is shared.
                    let distinct: std::collections::BTreeSet<_> = p.workers.iter().collect();
                    assert_eq!(distinct.len(), workers.min(cores - io));
                    assert_eq!(p.oversubscribed, workers > cores - io);
                }
            }
        }
    }

    #[test]
    fn reserving_every_core_or_reserving_without_pinning_is_an_error() {
        let e = place(2, 1, 2, true).unwrap_err();
        assert_eq!(e.setting, "io_cores");
        assert!(e.message.contains("expected at most 1"), "{e}");
        let e = place(2, 1, 1, false).unwrap_err();
        assert!(e.message.contains("pin_workers = true"), "{e}");
        // Cores that cannot be listed: nothing pinned (the caller warns).
        assert_eq!(place(0, 2, 1, true).unwrap().workers, vec![None, None]);
    }
}
