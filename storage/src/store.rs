//! Checkpoint stores: where the files of completed checkpoints live.
//!
//! Layout (for every store): `<root>/<job>/chk-<id>/` holds the checkpoint's files and, once it
//! is complete, its `_metadata`. The metadata is the commit point: it is written last, a
//! checkpoint without it is incomplete and never restored, and it is deleted first.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::durable::{commit_rename, fsync_dir};
use crate::error::{io_err, StorageError};

/// Name of the metadata file in a checkpoint directory.
pub const METADATA_FILE: &str = "_metadata";
/// The largest `_metadata` file [`CheckpointStore::get_metadata`] reads.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

/// A place to keep checkpoints of one job. Every method is safe to call from several threads.
pub trait CheckpointStore: Send + Sync {
    /// Human-readable location of checkpoint `id` (e.g. `file:///x/job/chk-7`).
    fn location(&self, id: u64) -> String;
    /// Checks that the store can be written (before a job starts), so that a wrong path,
    /// bucket or credentials fail at once with a clear error.
    fn probe(&self) -> Result<(), StorageError>;
    /// Checkpoint `id` was aborted: uploads for it still running stop (and clean up after
    /// themselves) and fail with [`StorageError::Aborted`]. A store whose writes cannot be
    /// interrupted ignores this.
    fn abort(&self, _id: u64) {}
    /// Copies a local file into checkpoint `id` under `name`; durable when it returns Ok (file:
    /// write to a hidden temp name, fsync, rename, fsync dir; on the same file system a hard
    /// link replaces the copy). The local file must not change afterwards. Returns what the
    /// upload cost (bytes sent, requests made).
    fn put_file(&self, id: u64, name: &str, local: &Path) -> Result<PutStats, StorageError>;
    /// Writes the metadata of `id` last and atomically; Err if it already exists (a checkpoint
    /// is never claimed twice). A remote store gives up after `within` (the time left to the
    /// checkpoint's timeout) with [`StorageError::Remote`]; whether the metadata landed is then
    /// unknown, and either outcome is consistent: every file it lists was durable before.
    fn put_metadata(&self, id: u64, bytes: &[u8], within: Duration) -> Result<(), StorageError>;
    /// The bytes of the metadata of `id`, `None` if it has none (incomplete or absent).
    fn get_metadata(&self, id: u64) -> Result<Option<Vec<u8>>, StorageError>;
    /// Copies file `name` of checkpoint `id` to `dest` (temp + rename).
    fn get_file(&self, id: u64, name: &str, dest: &Path) -> Result<(), StorageError>;
    /// Ids of all checkpoint directories (complete or not), ascending.
    fn list(&self) -> Result<Vec<u64>, StorageError>;
    /// Deletes checkpoint `id`: its metadata first (so a half-deleted checkpoint is never
    /// restorable), then every file but those named in `keep` (files that later incremental
    /// checkpoints still reference); the directory goes when nothing is kept. Deleting a
    /// checkpoint or file that does not exist is not an error.
    fn delete(&self, id: u64, keep: &[&str]) -> Result<(), StorageError>;
}

/// Runs a remote store's request `fut`, giving up after `limit` with [`StorageError::Remote`]
/// naming `op`, `location` and `hint` (what to check). Dropping the future stops the request.
pub(crate) async fn bounded<T>(
    limit: Duration,
    op: &'static str,
    location: &str,
    hint: &str,
    fut: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(StorageError::Remote {
            op,
            location: location.to_string(),
            message: format!("no answer within {:.1} s ({hint})", limit.as_secs_f64()),
        })
    })
}

/// Checkpoints aborted while their uploads may still run: remote stores race each upload
/// against [`Aborts::wait`] for its checkpoint.
#[derive(Default)]
pub(crate) struct Aborts {
    ids: parking_lot::Mutex<std::collections::HashSet<u64>>,
    signal: tokio::sync::Notify,
}

impl Aborts {
    pub(crate) fn abort(&self, id: u64) {
        self.ids.lock().insert(id);
        self.signal.notify_waiters();
    }

    /// Resolves when checkpoint `id` is aborted.
    pub(crate) async fn wait(&self, id: u64) {
        loop {
            let signal = self.signal.notified();
            if self.ids.lock().contains(&id) {
                return;
            }
            signal.await;
        }
    }
}

/// A download from a remote store in progress: a temp file beside the destination.
pub(crate) struct Download<'a> {
    file: File,
    tmp: PathBuf,
    location: &'a str,
    /// Expected length (for progress), once known.
    pub(crate) total: u64,
    done: u64,
}

impl Download<'_> {
    /// Appends bytes; logs progress of a large file at every 64 MiB mark and at the end.
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        const STEP: u64 = 64 << 20;
        self.file
            .write_all(chunk)
            .map_err(io_err("write download file", &self.tmp))?;
        let before = self.done;
        self.done += chunk.len() as u64;
        if self.total >= STEP && (before / STEP != self.done / STEP || self.done == self.total) {
            tracing::info!(file = %self.location, done_mib = self.done >> 20, total_mib = self.total >> 20, "downloading");
        }
        Ok(())
    }
}

/// Downloads file `name` from `location` to `dest`: `fill` writes the bytes into a temp file
/// beside it, which is renamed into place only when complete (and removed otherwise). The copy
/// is a cache, verified against the metadata's crc before use, so it is not fsync'd.
pub(crate) fn download(
    dest: &Path,
    name: &str,
    location: &str,
    fill: impl FnOnce(&mut Download<'_>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
    let tmp = temp_path(parent, name);
    let file = File::create(&tmp).map_err(io_err("create download file", &tmp))?;
    let mut d = Download {
        file,
        tmp,
        location,
        total: 0,
        done: 0,
    };
    let result = fill(&mut d);
    let tmp = d.tmp;
    drop(d.file);
    if let Err(e) = result {
        discard(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest)
        .inspect_err(|_| discard(&tmp))
        .map_err(io_err("rename into place", dest))
}

/// What writing one file to a store cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PutStats {
    /// Bytes sent to the store (0 when a file store hard-links the local file).
    pub bytes: u64,
    /// Requests made (a create, put, multipart part, completion, link...).
    pub requests: u64,
}

/// Settings of the remote stores (the file store has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// For `s3://` storage.
    pub s3: crate::s3::S3Options,
}

/// Opens the checkpoint store at `uri` for job `job` with default [`StoreOptions`].
pub fn open_store(uri: &str, job: &str) -> Result<Box<dyn CheckpointStore>, StorageError> {
    open_store_with(uri, job, &StoreOptions::default())
}

/// Opens the checkpoint store at `uri` for job `job`.
///
/// Accepted forms: `file:///abs/path` (or Flink's `file:/abs/path`), a plain absolute or
/// relative path (made absolute against the current directory now), or `s3://bucket[/prefix]`.
/// Checkpoints of `job` live in `<root>/<job>/chk-<id>/`, metadata file `_metadata`. `hdfs://`
/// is recognised but not supported yet; anything else is an error naming the URI and the
/// expected forms. Nothing is written until the first write ([`CheckpointStore::probe`]
/// checks writability).
pub fn open_store_with(
    uri: &str,
    job: &str,
    options: &StoreOptions,
) -> Result<Box<dyn CheckpointStore>, StorageError> {
    let unsupported = |reason: String| StorageError::UnsupportedUri {
        uri: uri.to_owned(),
        reason,
    };
    const EXPECTED: &str =
        "expected s3://bucket/prefix, hdfs://namenode:port/path, file:///absolute/path, /absolute/path or relative/path";
    if uri.starts_with("s3://") {
        check_component("job name", job)?;
        return Ok(Box::new(crate::s3::S3Store::open(uri, job, &options.s3)?));
    }
    if uri.starts_with("hdfs://") {
        check_component("job name", job)?;
        return Ok(Box::new(crate::hdfs::HdfsStore::open(uri, job)?));
    }
    let root = if let Some(rest) = uri.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(unsupported(format!(
                "a file:// URI needs an absolute path and no host, e.g. file:///var/lib/weir/checkpoints; {EXPECTED}"
            )));
        }
        PathBuf::from(rest)
    } else if let Some(rest) = uri.strip_prefix("file:") {
        // Flink's short form `file:/abs/path`.
        if !rest.starts_with('/') {
            return Err(unsupported(format!(
                "`file:` needs an absolute path; {EXPECTED}"
            )));
        }
        PathBuf::from(rest)
    } else if let Some((scheme, _)) = uri.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        return Err(unsupported(match scheme.as_str() {
            "s3" => "write the scheme in lowercase: s3://".to_string(),
            "s3a" | "s3n" => format!(
                "use s3:// (Weir talks to S3 directly; `{scheme}://` is Hadoop's name for it)"
            ),
            "hdfs" => "write the scheme in lowercase: hdfs://".to_string(),
            _ => format!("unknown scheme `{scheme}://`; {EXPECTED}"),
        }));
    } else if uri.trim().is_empty() {
        return Err(unsupported(format!("empty; {EXPECTED}")));
    } else {
        PathBuf::from(uri)
    };
    Ok(Box::new(FsStore::new(root, job)?))
}

/// The longest job or file name: file systems allow 255 bytes per component, and temp names add
/// a prefix and suffix.
const MAX_NAME_LEN: usize = 200;

/// Checks that `name` is usable as one path component of a checkpoint: not empty, at most 200
/// bytes, no path separator or NUL, not hidden (`.` prefix, which also excludes `.` and `..` and
/// the temp names of this store) and not `_metadata`.
pub(crate) fn check_component(what: &'static str, name: &str) -> Result<(), StorageError> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 200 bytes")
    } else if name.contains(['/', '\\', '\0']) {
        Some("must not contain `/`, `\\` or NUL")
    } else if name.starts_with('.') {
        Some("must not start with `.`")
    } else if name == METADATA_FILE {
        Some("`_metadata` is reserved for the checkpoint metadata")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StorageError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The local (or mounted) file system implementation of [`CheckpointStore`].
#[derive(Debug, Clone)]
pub struct FsStore {
    /// `<root>/<job>`.
    job_dir: PathBuf,
}

impl FsStore {
    /// A store for `job` under `root` (made absolute against the current directory).
    pub fn new(root: impl Into<PathBuf>, job: &str) -> Result<FsStore, StorageError> {
        check_component("job name", job)?;
        let root = root.into();
        let root = std::path::absolute(&root).map_err(io_err("resolve storage path", &root))?;
        Ok(FsStore {
            job_dir: root.join(job),
        })
    }

    /// The directory of checkpoint `id`: `<root>/<job>/chk-<id>`.
    pub fn checkpoint_dir(&self, id: u64) -> PathBuf {
        self.job_dir.join(format!("chk-{id}"))
    }

    /// Creates the checkpoint directory if needed and makes its entry durable.
    fn ensure_dir(&self, id: u64) -> Result<PathBuf, StorageError> {
        let dir = self.checkpoint_dir(id);
        if !dir.is_dir() {
            let job_existed = self.job_dir.is_dir();
            std::fs::create_dir_all(&dir).map_err(io_err("create checkpoint directory", &dir))?;
            fsync_dir(&self.job_dir)?;
            if !job_existed {
                if let Some(root) = self.job_dir.parent() {
                    fsync_dir(root)?;
                }
            }
        }
        Ok(dir)
    }
}

/// A hidden temp name in `dir` for `name`, unique within this machine's processes, so that
/// concurrent writers never write into each other's temp file.
pub(crate) fn temp_path(dir: &Path, name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.{}-{n}.inprogress", std::process::id()))
}

/// Removes a temp file after a failed write; its own failure is not interesting then.
fn discard(tmp: &Path) {
    let _ = std::fs::remove_file(tmp);
}

impl CheckpointStore for FsStore {
    fn location(&self, id: u64) -> String {
        format!("file://{}", self.checkpoint_dir(id).display())
    }

    fn probe(&self) -> Result<(), StorageError> {
        crate::durable::probe_writable(&self.job_dir)
    }

    fn put_file(&self, id: u64, name: &str, local: &Path) -> Result<PutStats, StorageError> {
        check_component("checkpoint file name", name)?;
        let dir = self.ensure_dir(id)?;
        let tmp = temp_path(&dir, name);
        let to = dir.join(name);
        // Same file system: a hard link publishes the (immutable, already fsync'd) local file
        // without copying its bytes. The store then survives exactly what the local disk
        // survives, which is all a store on that disk could promise anyway.
        if std::fs::hard_link(local, &tmp).is_ok() {
            commit_rename(&tmp, &to).inspect_err(|_| discard(&tmp))?;
            return Ok(PutStats {
                bytes: 0,
                requests: 1,
            });
        }
        let bytes = match std::fs::copy(local, &tmp) {
            Ok(n) => n,
            Err(e) => {
                discard(&tmp);
                // Name the side that failed: a missing source is the caller's problem.
                let path = if local.exists() { &tmp } else { local };
                return Err(io_err("copy into checkpoint", path)(e));
            }
        };
        commit_rename(&tmp, &to).inspect_err(|_| discard(&tmp))?;
        Ok(PutStats { bytes, requests: 1 })
    }

    /// Local writes cannot be interrupted: `within` is not enforced.
    fn put_metadata(&self, id: u64, bytes: &[u8], _within: Duration) -> Result<(), StorageError> {
        let dir = self.ensure_dir(id)?;
        let path = dir.join(METADATA_FILE);
        if path.exists() {
            return Err(StorageError::AlreadyComplete { id, path });
        }
        let tmp = temp_path(&dir, METADATA_FILE);
        let write = || -> Result<(), StorageError> {
            let mut f = File::create(&tmp).map_err(io_err("create metadata temp file", &tmp))?;
            f.write_all(bytes)
                .map_err(io_err("write metadata temp file", &tmp))?;
            f.sync_all()
                .map_err(io_err("fsync of metadata temp file", &tmp))
        };
        write().inspect_err(|_| discard(&tmp))?;
        // A hard link publishes the file atomically and, unlike rename, fails if the target
        // exists: two writers can never both complete the checkpoint.
        let linked = std::fs::hard_link(&tmp, &path);
        discard(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StorageError::AlreadyComplete { id, path });
            }
            Err(e) => return Err(io_err("publish checkpoint metadata (link)", &path)(e)),
        }
        fsync_dir(&dir)?;
        // The checkpoint directory's own entry must be durable too before anyone relies on it.
        fsync_dir(&self.job_dir)
    }

    fn get_metadata(&self, id: u64) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.checkpoint_dir(id).join(METADATA_FILE);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("stat checkpoint metadata", &path)(e)),
        };
        if len > MAX_METADATA_BYTES {
            return Err(StorageError::TooLarge {
                what: "checkpoint metadata",
                path,
                len,
                limit: MAX_METADATA_BYTES,
            });
        }
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read checkpoint metadata", &path)(e)),
        }
    }

    fn get_file(&self, id: u64, name: &str, dest: &Path) -> Result<(), StorageError> {
        check_component("checkpoint file name", name)?;
        let from = self.checkpoint_dir(id).join(name);
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        let file_name = dest.file_name().ok_or_else(|| StorageError::InvalidName {
            what: "destination file",
            name: dest.display().to_string(),
            reason: "has no file name",
        })?;
        let tmp = temp_path(parent, &file_name.to_string_lossy());
        if let Err(e) = std::fs::copy(&from, &tmp) {
            discard(&tmp);
            if e.kind() == std::io::ErrorKind::NotFound && !from.exists() {
                return Err(StorageError::NotFound {
                    location: from.display().to_string(),
                });
            }
            return Err(io_err("copy from checkpoint", &tmp)(e));
        }
        // The local copy is a cache verified against the metadata's checksum before use, so it
        // needs no fsync; the rename keeps readers from seeing half a file.
        std::fs::rename(&tmp, dest)
            .inspect_err(|_| discard(&tmp))
            .map_err(io_err("rename into place", dest))
    }

    fn list(&self) -> Result<Vec<u64>, StorageError> {
        let entries = match std::fs::read_dir(&self.job_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list checkpoints in", &self.job_dir)(e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("list checkpoints in", &self.job_dir))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("chk-"))
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
            else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn delete(&self, id: u64, keep: &[&str]) -> Result<(), StorageError> {
        let dir = self.checkpoint_dir(id);
        let meta = dir.join(METADATA_FILE);
        match std::fs::remove_file(&meta) {
            Ok(()) => fsync_dir(&dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove checkpoint metadata", &meta)(e)),
        }
        if keep.is_empty() {
            return match std::fs::remove_dir_all(&dir) {
                Ok(()) => fsync_dir(&self.job_dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove checkpoint directory", &dir)(e)),
            };
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("list checkpoint directory", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io_err("list checkpoint directory", &dir))?;
            let name = entry.file_name();
            if keep.iter().any(|k| name.as_os_str() == *k) {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove checkpoint file", &path)(e)),
            }
        }
        Ok(())
    }
}

/// Which checkpoints to delete, ascending: keep the newest `retained` complete ones (at least
/// one: `retained == 0` is treated as 1, so the newest restorable checkpoint is never deleted);
/// delete complete ones older than those, and incomplete ones (no metadata) older than the
/// newest complete one. Incomplete ones newer than that may still be in progress and are kept.
/// An id listed as both complete and incomplete counts as complete.
pub fn retention_plan(complete: &[u64], incomplete: &[u64], retained: usize) -> Vec<u64> {
    let mut complete = complete.to_vec();
    complete.sort_unstable();
    complete.dedup();
    let Some(&newest) = complete.last() else {
        return Vec::new();
    };
    let keep = retained.max(1).min(complete.len());
    let mut out: Vec<u64> = complete[..complete.len() - keep].to_vec();
    out.extend(
        incomplete
            .iter()
            .copied()
            .filter(|id| *id < newest && complete.binary_search(id).is_err()),
    );
    out.sort_unstable();
    out.dedup();
    out
}
