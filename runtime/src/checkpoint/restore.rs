//! Finding, verifying and loading the checkpoint a job restarts from.
//!
//! `latest` walks checkpoints from the newest down and takes the first whose metadata decodes
//! and whose every file passes its checksum; a damaged one is skipped with a warning naming it.
//! Files are taken from the local copy under `local_dir` when it matches the checksum (local
//! recovery, no download), else downloaded from the store and verified.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use weir_storage::{CheckpointMetadata, CheckpointStore, FileEntry, OperatorEntry, Snapshot};

use crate::error::JobError;

/// Which checkpoint to restore from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreFrom {
    /// The newest complete, undamaged checkpoint of the job (a fresh start if there is none).
    Latest,
    /// A checkpoint directory, e.g. `/var/lib/weir/checkpoints/sums/chk-42` or
    /// `file:///var/lib/weir/checkpoints/sums/chk-42`.
    Path(String),
}

/// The state sections of a checkpoint, by name (`<node>/<subtask>/<kind>`), read from its
/// verified snapshot files (held in memory, not copied per section), and those of the earlier
/// checkpoints whose files it references.
pub struct RestoreSet {
    pub(crate) id: u64,
    /// The checkpoint's `format_version`: how its sections are laid out (see
    /// [`weir_storage::CHECKPOINT_FORMAT_VERSION`]).
    pub(crate) format_version: u32,
    snapshots: Vec<Snapshot>,
    /// (checkpoint, section name) -> index of the snapshot holding it.
    sections: HashMap<(u64, String), usize>,
    /// Every file the checkpoint lists (later incremental checkpoints may reference them).
    pub(crate) files: Vec<FileEntry>,
    /// Restored from another job's storage: later checkpoints cannot reference its files.
    pub(crate) foreign: bool,
    pub(crate) local_files: usize,
    pub(crate) downloaded_files: usize,
    pub(crate) downloaded_bytes: u64,
}

impl std::fmt::Debug for RestoreSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreSet")
            .field("id", &self.id)
            .field("sections", &self.sections.len())
            .finish()
    }
}

impl RestoreSet {
    /// A checkpoint `id` of `format_version` holding `sections` in one snapshot (unit tests
    /// of how operators read their state).
    #[cfg(test)]
    pub(crate) fn for_test(id: u64, format_version: u32, sections: &[(String, Vec<u8>)]) -> Self {
        let named: Vec<(&str, &[u8])> = sections
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let header = weir_storage::SnapshotHeader {
            checkpoint_id: id,
            worker: 0,
        };
        let bytes = weir_storage::encode_snapshot(&header, &named).unwrap();
        let snap = Snapshot::from_bytes(bytes).unwrap();
        RestoreSet {
            id,
            format_version,
            sections: sections.iter().map(|(n, _)| ((id, n.clone()), 0)).collect(),
            snapshots: vec![snap],
            files: Vec::new(),
            foreign: false,
            local_files: 1,
            downloaded_files: 0,
            downloaded_bytes: 0,
        }
    }

    pub(crate) fn section(&self, name: &str) -> Option<&[u8]> {
        self.section_at(self.id, name)
    }

    /// Section `name` as written by checkpoint `id` (the restored one or one it references).
    pub(crate) fn section_at(&self, id: u64, name: &str) -> Option<&[u8]> {
        let &i = self.sections.get(&(id, name.to_string()))?;
        // Every section was verified when the set was loaded.
        self.snapshots[i].section(name).ok().flatten()
    }
}

/// Splits `<root>/<job>/chk-<n>` into (root, job, n).
pub(crate) fn parse_checkpoint_path(p: &str) -> Result<(String, String, u64), JobError> {
    let bad = || {
        JobError::Restore(format!(
            "`{p}` is not a checkpoint path; expected `<storage>/<job>/chk-<id>`, e.g. /var/lib/weir/checkpoints/sums/chk-42"
        ))
    };
    let local = p.strip_prefix("file://").unwrap_or(p);
    let path = Path::new(local.trim_end_matches('/'));
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("chk-"))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(bad)?;
    let job_dir = path.parent().ok_or_else(bad)?;
    let job = job_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(bad)?
        .to_string();
    let root = job_dir.parent().ok_or_else(bad)?;
    let root = if root.as_os_str().is_empty() {
        Path::new(".")
    } else {
        root
    };
    Ok((root.display().to_string(), job, id))
}

/// Why a checkpoint cannot be loaded.
enum Unusable {
    /// No metadata: never completed (or being deleted).
    Incomplete,
    /// Complete but taken by another job graph: restoring anything older would not help.
    Mismatch(String),
    /// Something is missing or fails its checks.
    Damaged(String),
    /// The store or the local directory could not be used (an outage, permissions, a full
    /// disk): the checkpoint may be fine, so no older one may be taken instead.
    Unreadable(String),
}

impl From<String> for Unusable {
    fn from(s: String) -> Self {
        Unusable::Damaged(s)
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Incomplete => write!(f, "it has no metadata (incomplete)"),
            Unusable::Mismatch(s) | Unusable::Damaged(s) | Unusable::Unreadable(s) => {
                write!(f, "{s}")
            }
        }
    }
}

/// `what` failed with `e`: damage of the checkpoint, or a store that could not be used.
fn storage_failure(what: String, e: &weir_storage::StorageError) -> Unusable {
    let reason = format!("{what}: {e}");
    if e.is_damage() {
        Unusable::Damaged(reason)
    } else {
        Unusable::Unreadable(reason)
    }
}

/// Loads and verifies checkpoint `id`.
fn load(
    store: &dyn CheckpointStore,
    local_dir: &Path,
    id: u64,
    operators: &[OperatorEntry],
    max_parallelism: u32,
) -> Result<RestoreSet, Unusable> {
    let bytes = store
        .get_metadata(id)
        .map_err(|e| storage_failure("cannot read its metadata".into(), &e))?
        .ok_or(Unusable::Incomplete)?;
    let meta: CheckpointMetadata = weir_storage::decode_metadata(&bytes)
        .map_err(|e| format!("its metadata is damaged: {e}"))?;
    if meta.checkpoint_id != id {
        return Err(format!("its metadata names checkpoint {}", meta.checkpoint_id).into());
    }
    check_fits(&meta, operators, max_parallelism).map_err(Unusable::Mismatch)?;
    for f in &meta.files {
        if f.name.contains('/') || f.name.contains('\\') || f.name.starts_with('.') {
            return Err(format!("its metadata lists an invalid file name `{}`", f.name).into());
        }
        if f.checkpoint > id {
            return Err(format!(
                "its metadata lists file `{}` of a newer checkpoint {}",
                f.name, f.checkpoint
            )
            .into());
        }
    }
    // One thread per file: read, verify and index the workers' snapshots in parallel.
    let loaded: Vec<Result<(Snapshot, bool), Unusable>> = std::thread::scope(|scope| {
        let handles: Vec<_> = meta
            .files
            .iter()
            .map(|f| scope.spawn(move || load_file(store, local_dir, f)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Unusable::Unreadable("a restore thread panicked".into()))
                })
            })
            .collect()
    });
    let mut snapshots = Vec::with_capacity(loaded.len());
    let mut sections = HashMap::new();
    let (mut local_files, mut downloaded_files, mut downloaded_bytes) = (0, 0, 0);
    for r in loaded {
        let (snap, local) = r?;
        if local {
            local_files += 1;
        } else {
            downloaded_files += 1;
            downloaded_bytes += snap.len();
        }
        let owner = snap.header().checkpoint_id;
        for name in snap.section_names() {
            sections.insert((owner, name.to_string()), snapshots.len());
        }
        snapshots.push(snap);
    }
    Ok(RestoreSet {
        id,
        format_version: meta.format_version,
        snapshots,
        sections,
        files: meta.files,
        foreign: false,
        local_files,
        downloaded_files,
        downloaded_bytes,
    })
}

/// Reads one snapshot file, from the local copy when it matches the metadata (length and crc),
/// else downloaded from the store and checked the same way. Returns whether it was local.
fn load_file(
    store: &dyn CheckpointStore,
    local_dir: &Path,
    f: &FileEntry,
) -> Result<(Snapshot, bool), Unusable> {
    let id = f.checkpoint;
    let dir = local_dir.join(format!("chk-{id}"));
    let dir = dir.as_path();
    let path: PathBuf = dir.join(&f.name);
    // Length and identity first (cheap), then one crc pass over the whole file: it equals the
    // writer's crc only if every byte is as written, so sections are not checked again.
    let matches = |s: &Snapshot| {
        s.len() == f.bytes
            && s.header().checkpoint_id == id
            && s.header().worker == f.worker
            && s.verify_file_crc(f.crc32).is_ok()
    };
    if let Ok(snap) = Snapshot::open(&path) {
        if matches(&snap) {
            return Ok((snap, true));
        }
        tracing::warn!(file = %path.display(), "local checkpoint copy does not match its metadata; downloading it again");
    }
    std::fs::create_dir_all(dir).map_err(|e| {
        Unusable::Unreadable(format!(
            "cannot create local directory `{}`: {e}",
            dir.display()
        ))
    })?;
    store
        .get_file(id, &f.name, &path)
        .map_err(|e| storage_failure(format!("cannot download `{}`", f.name), &e))?;
    let snap = Snapshot::open(&path)
        .map_err(|e| storage_failure(format!("cannot read file `{}`", f.name), &e))?;
    if !matches(&snap) {
        return Err(Unusable::Damaged(format!(
            "file `{}` does not match the metadata (expected checkpoint {id} worker {}, {} bytes, crc32 {:08x}; found checkpoint {} worker {}, {} bytes, crc32 {:08x})",
            f.name,
            f.worker,
            f.bytes,
            f.crc32,
            snap.header().checkpoint_id,
            snap.header().worker,
            snap.len(),
            snap.file_crc32()
        )));
    }
    Ok((snap, false))
}

fn check_fits(
    meta: &CheckpointMetadata,
    operators: &[OperatorEntry],
    max_parallelism: u32,
) -> Result<(), String> {
    if meta.max_parallelism != max_parallelism {
        return Err(format!(
            "it was taken with max_parallelism {} and the job now has {max_parallelism}; they must be equal",
            meta.max_parallelism
        ));
    }
    let show = |o: &[OperatorEntry]| {
        o.iter()
            .map(|o| format!("{} (parallelism {})", o.name, o.parallelism))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let same = meta.operators.len() == operators.len()
        && meta
            .operators
            .iter()
            .zip(operators)
            .all(|(a, b)| a.name == b.name && a.parallelism == b.parallelism);
    if !same {
        return Err(format!(
            "it was taken by a different job graph or parallelism (rescaling is not supported yet): checkpoint has [{}], job has [{}]",
            show(&meta.operators),
            show(operators)
        ));
    }
    Ok(())
}

/// Resolves what to restore. `Ok(None)`: nothing to restore (fresh start, said in the log).
pub(crate) fn resolve(
    store: &dyn CheckpointStore,
    local_dir: &Path,
    from: &RestoreFrom,
    operators: &[OperatorEntry],
    max_parallelism: u32,
    options: &weir_storage::StoreOptions,
) -> Result<Option<RestoreSet>, JobError> {
    match from {
        RestoreFrom::Path(p) => {
            let (root, job, id) = parse_checkpoint_path(p)?;
            let other = weir_storage::open_store_with(&root, &job, options)
                .map_err(|e| JobError::Restore(format!("{p}: {e}")))?;
            let mut set = load(other.as_ref(), local_dir, id, operators, max_parallelism).map_err(
                |reason| JobError::Restore(format!("checkpoint `{p}` cannot be used: {reason}")),
            )?;
            set.foreign = other.location(id) != store.location(id);
            Ok(Some(set))
        }
        RestoreFrom::Latest => {
            let mut ids = store
                .list()
                .map_err(|e| JobError::Restore(format!("cannot list checkpoints: {e}")))?;
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for id in ids {
                match load(store, local_dir, id, operators, max_parallelism) {
                    Ok(set) => return Ok(Some(set)),
                    Err(Unusable::Incomplete) => {
                        tracing::info!(checkpoint = id, location = %store.location(id), "skipping incomplete checkpoint");
                    }
                    Err(Unusable::Mismatch(reason)) => {
                        return Err(JobError::Restore(format!(
                            "checkpoint {} cannot be used: {reason}",
                            store.location(id)
                        )));
                    }
                    Err(Unusable::Unreadable(reason)) => {
                        // Taking an older checkpoint instead would repeat everything committed
                        // since it; starting fresh, everything.
                        return Err(JobError::Storage(format!(
                            "cannot read checkpoint {}: {reason}; an older checkpoint is not \
                             used instead, as that would repeat committed output: retry when \
                             the store and local_dir can be read, or restore an older \
                             checkpoint on purpose with --restore <path>",
                            store.location(id)
                        )));
                    }
                    Err(Unusable::Damaged(reason)) => {
                        tracing::warn!(checkpoint = id, location = %store.location(id), %reason, "skipping damaged checkpoint; trying the previous one");
                        // Visible at 3 a.m. even when logging is filtered.
                        eprintln!(
                            "weir: warning: skipping damaged checkpoint {}: {reason}",
                            store.location(id)
                        );
                    }
                }
            }
            tracing::warn!("no complete checkpoint found; starting from the beginning");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_paths_parse() {
        assert_eq!(
            parse_checkpoint_path("/a/b/sums/chk-42").unwrap(),
            ("/a/b".into(), "sums".into(), 42)
        );
        assert_eq!(
            parse_checkpoint_path("file:///a/sums/chk-7/").unwrap(),
            ("/a".into(), "sums".into(), 7)
        );
        assert_eq!(
            parse_checkpoint_path("s3://bkt/pre/fix/sums/chk-9").unwrap(),
            ("s3://bkt/pre/fix".into(), "sums".into(), 9)
        );
        assert_eq!(
            parse_checkpoint_path("s3://bkt/sums/chk-9").unwrap(),
            ("s3://bkt".into(), "sums".into(), 9)
        );
        assert!(parse_checkpoint_path("/a/sums/chk-x").is_err());
        assert!(parse_checkpoint_path("chk-1").is_err());
    }
}
