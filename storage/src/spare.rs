//! Spare snapshot files and the page cache of local copies.
//!
//! Writing a snapshot into a new file through a memory map makes the kernel find a fresh page
//! of page cache for every 4 KiB, zero it (the file's blocks are holes or unwritten extents)
//! and map it: measured here at 0.5 GB/s, against 12-15 GB/s to map the still cached pages of
//! a file that is overwritten. Deleting a retired local copy throws those pages away; handing
//! the file to the next snapshot reuses them.
//!
//! A file becomes spare only when nothing can read it any more: the caller (retention) hands
//! over the local copies of checkpoints deleted from the store that no retained checkpoint
//! references, from the running job's first checkpoint on (never the files it was restored
//! from, which are older and stay mapped), and a file with another hard link (a `file://`
//! store links the local copy) is deleted instead. The directory holds at most `max` files;
//! the rest are deleted. A crash leaves at worst some spare files behind, which a later run
//! reuses or a `delete` on cancel removes with the local directory.
//!
//! **The cache bound.** The local copies a job keeps (for local recovery) stay in the page
//! cache: as much memory again as the state they hold, and for a growing state that memory
//! is new every checkpoint. With a bound ([`SpareFiles::with_cache_limit`]), the files a
//! snapshot writer hands to [`SpareFiles::admit`] once they are durable are counted, and when
//! their bytes pass the bound the oldest files' pages are dropped
//! (`posix_fadvise(POSIX_FADV_DONTNEED)`), newest kept. Their bytes stay on disk: a restore
//! reads them from there, slower than from memory. A file whose pages were dropped is deleted
//! when retired, never kept as spare: overwriting it through a map would read every page back
//! from disk first.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// A directory of spare snapshot files, shared by a job's retention (which adds) and snapshot
/// writers (which take); it also bounds the page cache of the local copies they write.
#[derive(Debug)]
pub struct SpareFiles {
    dir: PathBuf,
    max: usize,
    /// Bound on the bytes in `cache.files`; `None`: unbounded.
    cache_limit: Option<u64>,
    cache: Mutex<Cache>,
}

/// The local copies counted against the bound.
#[derive(Debug, Default)]
struct Cache {
    /// Admitted files whose pages are kept, oldest first, with their lengths.
    files: VecDeque<(PathBuf, u64)>,
    /// Sum of the lengths in `files`.
    bytes: u64,
    /// Files whose pages were dropped and that still exist (as far as this knows).
    dropped: HashSet<PathBuf>,
    /// Bytes whose pages were dropped since the start.
    dropped_bytes: u64,
}

impl SpareFiles {
    /// Spare files kept in `dir` (created when the first one arrives), at most `max` of them;
    /// the page cache of local copies is not bounded.
    pub fn new(dir: PathBuf, max: usize) -> Self {
        SpareFiles {
            dir,
            max,
            cache_limit: None,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Bounds the bytes of admitted local copies whose pages are kept in the page cache
    /// (`None`: no bound; `Some(0)`: every file's pages are dropped once it is durable).
    pub fn with_cache_limit(self, limit: Option<u64>) -> Self {
        SpareFiles {
            cache_limit: limit,
            ..self
        }
    }

    /// Counts `path`, a local copy of `bytes` bytes that is durable (fsync'd and uploaded: only
    /// a restore reads it again), as cached; then, over the bound, drops the pages of the
    /// oldest files, this one last. A file that cannot be advised stays counted as dropped
    /// (its pages are then left to the kernel), with a warning.
    pub fn admit(&self, path: &Path, bytes: u64) {
        let victims = {
            let mut c = self.cache.lock();
            c.files.push_back((path.to_path_buf(), bytes));
            c.bytes += bytes;
            let mut victims = Vec::new();
            while self.cache_limit.is_some_and(|l| c.bytes > l) {
                let Some((p, b)) = c.files.pop_front() else {
                    break;
                };
                c.bytes -= b;
                c.dropped_bytes += b;
                c.dropped.insert(p.clone());
                victims.push((p, b));
            }
            victims
        };
        for (p, b) in victims {
            match drop_pages(&p) {
                Ok(()) => {
                    tracing::debug!(path = %p.display(), bytes = b, "dropped the page cache of a local copy")
                }
                // Deleted meanwhile (retention): nothing to drop.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    path = %p.display(),
                    error = %e,
                    "cannot drop the page cache of a local copy; the kernel evicts it when it needs the memory"
                ),
            }
        }
    }

    /// Bytes of admitted local copies whose pages are kept.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.lock().bytes
    }

    /// Bytes of local copies whose pages the bound dropped since the start.
    pub fn dropped_bytes(&self) -> u64 {
        self.cache.lock().dropped_bytes
    }

    /// Deletes `path`, a local copy that nothing needs any more (not kept as spare).
    pub fn discard(&self, path: &Path) -> std::io::Result<()> {
        self.forget(path);
        std::fs::remove_file(path)
    }

    /// Takes `path` out of the count; true unless the bound dropped its pages.
    fn forget(&self, path: &Path) -> bool {
        let mut c = self.cache.lock();
        if c.dropped.remove(path) {
            return false;
        }
        if let Some(i) = c.files.iter().position(|(p, _)| p == path) {
            let (_, b) = c.files.remove(i).expect("position is in range");
            c.bytes -= b;
        }
        true
    }

    /// The directory the spare files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands over `path`, a local snapshot file that no checkpoint needs any more: moved into
    /// the spare directory when its pages are cached (the bound did not drop them), it has no
    /// other hard link and there is room; deleted otherwise. Returns whether it was kept.
    pub fn retire(&self, path: &Path) -> std::io::Result<bool> {
        let cached = self.forget(path);
        if cached && self.has_room() && single_link(path)? {
            let name = spare_name(path);
            std::fs::create_dir_all(&self.dir)?;
            if std::fs::rename(path, self.dir.join(name)).is_ok() {
                return Ok(true);
            }
        }
        std::fs::remove_file(path)?;
        Ok(false)
    }

    /// Moves a spare file to `to`, the one that fits `len` bytes best (the smallest at least
    /// that long, else the largest); false when there is none. Another writer may take the
    /// same file first: the rename of the loser fails and it tries the next.
    pub(crate) fn take(&self, to: &Path, len: u64) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return false;
        };
        let mut files: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| (m.len(), e.path()))
            })
            .collect();
        // Long enough first, smallest first; then the shorter ones, longest first.
        files.sort_by_key(|&(l, _)| if l >= len { (0, l) } else { (1, u64::MAX - l) });
        files
            .into_iter()
            .any(|(_, from)| std::fs::rename(from, to).is_ok())
    }

    fn has_room(&self) -> bool {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries.count() < self.max,
            Err(_) => self.max > 0,
        }
    }
}

/// `chk-<id>/<file>` becomes `chk-<id>-<file>`: unique within a job (ids only grow).
fn spare_name(path: &Path) -> String {
    let file = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let dir = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    match (dir, file) {
        (Some(d), Some(f)) => format!("{d}-{f}"),
        (None, Some(f)) => f,
        _ => "spare".to_string(),
    }
}

/// Asks the kernel to drop the (clean) cached pages of `path`.
#[cfg(target_os = "linux")]
fn drop_pages(path: &Path) -> std::io::Result<()> {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let file = std::fs::File::open(path)?;
    // Offset 0, length 0: the whole file.
    posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_DONTNEED)
        .map_err(std::io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn drop_pages(_path: &Path) -> std::io::Result<()> {
    // No portable way: the pages are left to the kernel's eviction.
    Ok(())
}

#[cfg(unix)]
fn single_link(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(path)?.nlink() == 1)
}

#[cfg(not(unix))]
fn single_link(_path: &Path) -> std::io::Result<bool> {
    // Link counts are not known here: never reuse a file another name may point to.
    Ok(false)
}
