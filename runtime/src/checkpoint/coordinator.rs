//! The coordinator thread: carries out the decider's actions (triggers, metadata, retention,
//! notifications). Runs beside the workers, never on a worker thread.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver, Sender};
use weir_storage::{CheckpointMetadata, CheckpointStore, FileEntry, OperatorEntry};

use super::config::CheckpointConfig;
use super::decider::{Action, Decider};
use super::messages::{ToCoordinator, ToWorker};
use crate::error::JobError;
use crate::source::Waker;

/// Statistics of a completed checkpoint (also in its metadata and the log).
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// Wall-clock trigger time, ms since the Unix epoch.
    pub triggered_at_ms: u64,
    /// Trigger to metadata written.
    pub duration: Duration,
    /// Longest synchronous part on any worker (the stream paused for this long).
    pub sync_max: Duration,
    /// Longest asynchronous part (file write and upload) on any worker.
    pub async_max: Duration,
    /// Longest barrier alignment on any worker.
    pub alignment_max: Duration,
    /// Bytes written (snapshot files of this checkpoint, not the ones it references).
    pub bytes: u64,
    /// Files written (one per worker) plus the metadata file.
    pub files: u64,
    /// Bytes sent to the store (snapshot files and metadata; 0 for files a file store
    /// hard-links).
    pub bytes_uploaded: u64,
    /// Requests made to the store to write the checkpoint.
    pub requests: u64,
    /// Files of earlier checkpoints referenced instead of written again (incremental).
    pub files_referenced: u64,
    /// Bytes of those files.
    pub bytes_referenced: u64,
    /// Bytes of this run's local copies kept in the page cache once this checkpoint completed
    /// (what [`crate::CheckpointConfig::local_cache`] bounds).
    pub local_cached_bytes: u64,
    /// The final checkpoint of a bounded job.
    pub is_final: bool,
    /// Where it is stored.
    pub location: String,
}

/// A checkpoint that failed (timed out, declined by a worker, or its metadata not written).
#[derive(Debug, Clone, PartialEq)]
pub struct FailedCheckpoint {
    /// Checkpoint id.
    pub id: u64,
    /// Wall-clock time it was given up, ms since the Unix epoch.
    pub failed_at_ms: u64,
    /// Why.
    pub reason: String,
}

/// The checkpoints of a run, newest kept: bounded, so a job that runs for months does not
/// grow it without end (the totals count everything).
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) completed: VecDeque<CompletedCheckpoint>,
    pub(crate) failed: VecDeque<FailedCheckpoint>,
    pub(crate) completed_total: u64,
    pub(crate) failed_total: u64,
}

/// Completed and failed checkpoints kept in [`History`] (the oldest go first).
pub(crate) const HISTORY_KEPT: usize = 10_000;

impl History {
    fn completed(&mut self, c: CompletedCheckpoint) {
        if self.completed.len() == HISTORY_KEPT {
            self.completed.pop_front();
        }
        self.completed.push_back(c);
        self.completed_total += 1;
    }
    fn failed(&mut self, f: FailedCheckpoint) {
        if self.failed.len() == HISTORY_KEPT {
            self.failed.pop_front();
        }
        self.failed.push_back(f);
        self.failed_total += 1;
    }
}

pub(crate) struct CoordinatorSetup {
    pub(crate) cfg: CheckpointConfig,
    pub(crate) job: Arc<str>,
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) local_dir: PathBuf,
    pub(crate) workers: Vec<(Sender<ToWorker>, Waker)>,
    pub(crate) events: Receiver<ToCoordinator>,
    pub(crate) shutdown: Receiver<()>,
    pub(crate) failure: Arc<Mutex<Option<JobError>>>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) history: Arc<Mutex<History>>,
    pub(crate) operators: Vec<OperatorEntry>,
    pub(crate) max_parallelism: u32,
    pub(crate) first_id: u64,
    /// Where retention puts the local copies it retires (see `weir_storage::SpareFiles`).
    pub(crate) spare: Option<Arc<weir_storage::SpareFiles>>,
    pub(crate) sources: usize,
    /// Told the newest completed checkpoint (incremental state settles its chains with it).
    pub(crate) incremental: Option<Arc<crate::state::Incremental>>,
    /// The files of the checkpoint the job was restored from (later ones may reference them).
    pub(crate) restored_files: Vec<FileEntry>,
}

fn wall_ms(at: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.saturating_sub(Instant::now().saturating_duration_since(at))).as_millis() as u64
}

/// Which files the checkpoints of this run may reference: the files written by each recent
/// completed checkpoint, kept while a checkpoint that could still be referenced lists them.
struct FileBook {
    /// Checkpoint id -> the files it wrote.
    owned: BTreeMap<u64, Vec<FileEntry>>,
    /// Owners of the files listed by the newest completed checkpoints (newest last).
    recent: VecDeque<BTreeSet<u64>>,
    keep: usize,
}

impl FileBook {
    fn new(restored: &[FileEntry], max_concurrent: usize) -> Self {
        let mut book = FileBook {
            owned: BTreeMap::new(),
            recent: VecDeque::new(),
            keep: max_concurrent + 1,
        };
        for f in restored {
            book.owned.entry(f.checkpoint).or_default().push(f.clone());
        }
        book.recent
            .push_back(restored.iter().map(|f| f.checkpoint).collect());
        book
    }

    /// The files a checkpoint referencing `refs` lists, or the first unknown reference.
    fn resolve(&self, refs: &BTreeSet<u64>) -> Result<Vec<FileEntry>, u64> {
        let mut out = Vec::new();
        for r in refs {
            out.extend(self.owned.get(r).ok_or(*r)?.iter().cloned());
        }
        Ok(out)
    }

    fn completed(&mut self, id: u64, own: Vec<FileEntry>, meta: &CheckpointMetadata) {
        self.owned.insert(id, own);
        self.recent
            .push_back(meta.files.iter().map(|f| f.checkpoint).collect());
        while self.recent.len() > self.keep {
            self.recent.pop_front();
        }
        let live: BTreeSet<u64> = self.recent.iter().flatten().copied().collect();
        self.owned.retain(|id, _| live.contains(id));
    }
}

/// Runs the coordinator until shutdown. A panic in it fails the job as a worker's does
/// (before, checkpointing stopped without an error and a bounded job never ended).
pub(crate) fn run(s: CoordinatorSetup) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| coordinate(&s)));
    if let Err(p) = r {
        let message = crate::execute::panic_message(&*p);
        fail_job(
            &s,
            format!("the checkpoint coordinator panicked: {message}"),
        );
    }
}

/// Fails the job with `message` (unless it failed already) and wakes every worker to stop.
fn fail_job(s: &CoordinatorSetup, message: String) {
    let mut slot = s.failure.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        tracing::error!(%message, "job failed");
        *slot = Some(JobError::Checkpoint(message));
    }
    drop(slot);
    s.cancel.store(true, Ordering::SeqCst);
    for (_, w) in &s.workers {
        w.wake();
    }
}

fn coordinate(s: &CoordinatorSetup) {
    let mut book = FileBook::new(&s.restored_files, s.cfg.max_concurrent);
    // Retention runs on a thread of its own: with the store away it may wait long, and the
    // coordinator must go on timing checkpoints out and triggering new ones meanwhile.
    let (retention_tx, retention_rx) = crossbeam_channel::bounded::<CheckpointMetadata>(16);
    let mut retainer = Retainer {
        store: s.store.clone(),
        local_dir: s.local_dir.clone(),
        retained: s.cfg.retained,
        max_concurrent: s.cfg.max_concurrent,
        metadata: BTreeMap::new(),
        ever_complete: BTreeSet::new(),
        spare: s.spare.clone(),
        first_id: s.first_id,
    };
    let retention = std::thread::Builder::new()
        .name("weir-checkpoint-retention".into())
        .spawn(move || {
            while let Ok(meta) = retention_rx.recv() {
                retainer.metadata.insert(meta.checkpoint_id, Some(meta));
                // Completions that queued up meanwhile need one pass, not one each.
                while let Ok(meta) = retention_rx.try_recv() {
                    retainer.metadata.insert(meta.checkpoint_id, Some(meta));
                }
                retainer.run();
            }
        })
        .inspect_err(|e| {
            tracing::error!(error = %e, "cannot start the retention thread; old checkpoints are kept")
        })
        .ok();
    let mut d = Decider::new(
        &s.cfg,
        s.workers.len(),
        s.sources,
        s.first_id,
        Instant::now(),
    );
    loop {
        let now = Instant::now();
        let timeout = d.next_wake(now).saturating_duration_since(now);
        let actions = select! {
            recv(s.events) -> ev => match ev {
                Ok(ToCoordinator::Ready) => d.on_ready(Instant::now()),
                Ok(ToCoordinator::SourceExhausted) => d.on_source_exhausted(Instant::now()),
                Ok(ToCoordinator::Ack(id, ack)) => d.on_ack(Instant::now(), id, ack),
                Ok(ToCoordinator::Decline { id, worker, reason }) => {
                    d.on_decline(Instant::now(), id, format!("worker {worker}: {reason}"))
                }
                Err(_) => break,
            },
            recv(s.shutdown) -> _ => break,
            default(timeout) => d.on_tick(Instant::now()),
        };
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for a in queue {
                next.extend(execute(s, &mut d, &mut book, &retention_tx, a));
            }
            queue = next;
        }
    }
    // The last completion's retention finishes before the job ends.
    drop(retention_tx);
    if let Some(t) = retention {
        let _ = t.join();
    }
}

fn broadcast(s: &CoordinatorSetup, msg: ToWorker) {
    for (tx, waker) in &s.workers {
        // Never dropped for a live worker (a lost FinishSources would hang the job): the
        // channel is bounded, so wait for room, ringing the worker meanwhile. A worker that is
        // gone (job ending) no longer needs the message.
        let mut msg = msg.clone();
        loop {
            waker.wake();
            match tx.send_timeout(msg, Duration::from_millis(100)) {
                Ok(()) | Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => msg = m,
            }
        }
        waker.wake();
    }
}

fn execute(
    s: &CoordinatorSetup,
    d: &mut Decider,
    book: &mut FileBook,
    retention: &Sender<CheckpointMetadata>,
    action: Action,
) -> Vec<Action> {
    match action {
        Action::Trigger { id, is_final } => {
            tracing::debug!(checkpoint = id, is_final, "triggering checkpoint");
            broadcast(s, ToWorker::Trigger(id));
            Vec::new()
        }
        Action::Abort { id, reason } => {
            tracing::warn!(checkpoint = id, %reason, "checkpoint aborted");
            s.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed(FailedCheckpoint {
                    id,
                    failed_at_ms: wall_ms(Instant::now()),
                    reason: reason.to_string(),
                });
            // Uploads still running for it stop and clean up.
            s.store.abort(id);
            Vec::new()
        }
        Action::FinishSources => {
            broadcast(s, ToWorker::FinishSources);
            Vec::new()
        }
        Action::Fail(message) => {
            fail_job(s, message);
            Vec::new()
        }
        Action::Complete {
            id,
            triggered_at,
            acks,
            is_final,
        } => {
            let own: Vec<FileEntry> = acks
                .iter()
                .map(|a| FileEntry {
                    name: a.file.clone(),
                    checkpoint: id,
                    worker: a.worker as u32,
                    bytes: a.bytes,
                    crc32: a.crc32,
                })
                .collect();
            let refs: BTreeSet<u64> = acks.iter().flat_map(|a| a.refs.iter().copied()).collect();
            let referenced = match book.resolve(&refs) {
                Ok(f) => f,
                Err(r) => {
                    return d.on_complete_failed(
                        Instant::now(),
                        id,
                        format!(
                        "its state references checkpoint {r}, whose files are not known to be kept"
                    ),
                    )
                }
            };
            let duration = triggered_at.elapsed();
            let mut stats = CompletedCheckpoint {
                id,
                triggered_at_ms: wall_ms(triggered_at),
                duration,
                sync_max: acks.iter().map(|a| a.sync).max().unwrap_or_default(),
                async_max: acks
                    .iter()
                    .map(|a| a.asynchronous)
                    .max()
                    .unwrap_or_default(),
                alignment_max: acks.iter().map(|a| a.alignment).max().unwrap_or_default(),
                bytes: acks.iter().map(|a| a.bytes).sum(),
                files: acks.len() as u64 + 1,
                bytes_uploaded: acks.iter().map(|a| a.uploaded.bytes).sum(),
                requests: acks.iter().map(|a| a.uploaded.requests).sum::<u64>() + 1,
                files_referenced: referenced.len() as u64,
                bytes_referenced: referenced.iter().map(|f| f.bytes).sum(),
                local_cached_bytes: s.spare.as_ref().map_or(0, |c| c.cached_bytes()),
                is_final,
                location: s.store.location(id),
            };
            let mut files = own.clone();
            files.extend(referenced);
            let mut meta = CheckpointMetadata {
                format_version: weir_storage::CHECKPOINT_FORMAT_VERSION,
                job: s.job.to_string(),
                checkpoint_id: id,
                triggered_at_ms: stats.triggered_at_ms,
                completed_at_ms: wall_ms(Instant::now()),
                max_parallelism: s.max_parallelism,
                files,
                stats: weir_storage::CheckpointStats {
                    duration_ms: duration.as_millis() as u64,
                    sync_ms_max: stats.sync_max.as_millis() as u64,
                    async_ms_max: stats.async_max.as_millis() as u64,
                    alignment_ms_max: stats.alignment_max.as_millis() as u64,
                    bytes_written: stats.bytes,
                    files_written: stats.files,
                    bytes_uploaded: stats.bytes_uploaded,
                    requests: stats.requests,
                    files_referenced: stats.files_referenced,
                    bytes_referenced: stats.bytes_referenced,
                },
                operators: s.operators.clone(),
            };
            // The metadata's own bytes count as uploaded (its length does not depend on this
            // figure by more than a varint byte or two, which is noise).
            let encoded_len = weir_storage::encode_metadata(&meta).len() as u64;
            stats.bytes_uploaded += encoded_len;
            meta.stats.bytes_uploaded = stats.bytes_uploaded;
            // Bounded by the checkpoint's timeout (at least a second to try): a store that
            // does not answer must not stop this thread timing out and triggering others.
            let within = (triggered_at + s.cfg.timeout)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1));
            if let Err(e) = s
                .store
                .put_metadata(id, &weir_storage::encode_metadata(&meta), within)
            {
                return d.on_complete_failed(
                    Instant::now(),
                    id,
                    format!("writing its metadata failed: {e}"),
                );
            }
            if let Some(inc) = &s.incremental {
                // Before the next trigger: captures after this see it and settle their chains.
                inc.completed
                    .store(id, std::sync::atomic::Ordering::Release);
            }
            book.completed(id, own, &meta);
            tracing::info!(
                checkpoint = id,
                duration_ms = duration.as_millis() as u64,
                sync_ms_max = stats.sync_max.as_millis() as u64,
                async_ms_max = stats.async_max.as_millis() as u64,
                alignment_ms_max = stats.alignment_max.as_millis() as u64,
                bytes = stats.bytes,
                files = stats.files,
                bytes_uploaded = stats.bytes_uploaded,
                requests = stats.requests,
                files_referenced = stats.files_referenced,
                bytes_referenced = stats.bytes_referenced,
                local_cached_bytes = stats.local_cached_bytes,
                is_final,
                "checkpoint completed"
            );
            s.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .completed(stats);
            broadcast(s, ToWorker::Complete(id));
            // Full queue: a pass is pending anyway (it reads the metadata it misses).
            let _ = retention.try_send(meta);
            d.on_completed(Instant::now(), id, is_final)
        }
    }
}

/// Deletes checkpoints beyond `retained` (and incomplete ones older than the newest complete
/// one), remotely and locally, keeping the files that newer checkpoints still reference.
/// Metadata is read from the store only for checkpoints it does not know yet. Failures are
/// logged and retried at the next completion.
struct Retainer {
    store: Arc<dyn CheckpointStore>,
    local_dir: PathBuf,
    retained: usize,
    max_concurrent: usize,
    /// Each checkpoint's metadata, or `None` when it has none and never will (older than a
    /// complete one): saves a read per checkpoint and pass (a GET each on S3).
    metadata: BTreeMap<u64, Option<CheckpointMetadata>>,
    /// Local copies of deleted checkpoints go here, to be overwritten by later snapshots.
    spare: Option<Arc<weir_storage::SpareFiles>>,
    /// The first checkpoint of this run: only files of checkpoints from it on become spare
    /// (the files the run was restored from stay mapped while it runs).
    first_id: u64,
    /// Checkpoints seen complete (their uploads are over), still in the store: the only ones
    /// whose files may become spare (an aborted checkpoint's upload may still read its files).
    ever_complete: BTreeSet<u64>,
}

impl Retainer {
    fn run(&mut self) {
        let ids = match self.store.list() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list checkpoints for retention");
                return;
            }
        };
        self.metadata.retain(|id, _| ids.binary_search(id).is_ok());
        self.ever_complete
            .retain(|id| ids.binary_search(id).is_ok());
        let mut complete = Vec::new();
        let mut incomplete = Vec::new();
        for &id in &ids {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.metadata.entry(id) {
                match self.store.get_metadata(id) {
                    Ok(Some(bytes)) => match weir_storage::decode_metadata(&bytes) {
                        Ok(m) => {
                            slot.insert(Some(m));
                        }
                        Err(_) => {
                            // Counted as complete, never cached (read again next time).
                            complete.push(id);
                            continue;
                        }
                    },
                    Ok(None) => {
                        incomplete.push(id);
                        continue;
                    }
                    Err(e) => {
                        // Unknown state: neither deleted nor counted, so nothing it references goes.
                        tracing::warn!(checkpoint = id, error = %e, "cannot read checkpoint metadata; retention skipped");
                        return;
                    }
                }
            }
            match &self.metadata[&id] {
                Some(_) => {
                    self.ever_complete.insert(id);
                    complete.push(id);
                }
                None => incomplete.push(id),
            }
        }
        // A checkpoint older than a complete one never gets metadata any more.
        let newest = complete.last().copied().unwrap_or(0);
        for &id in incomplete.iter().filter(|&&id| id < newest) {
            self.metadata.insert(id, None);
        }
        // Files referenced by the checkpoints that stay, and by the newest `max_concurrent`
        // complete ones (a checkpoint in flight may reference what they reference).
        let holders = self.retained.max(self.max_concurrent);
        let mut keep: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for id in complete.iter().rev().take(holders) {
            let Some(Some(meta)) = self.metadata.get(id) else {
                tracing::warn!(
                    checkpoint = id,
                    "checkpoint metadata is damaged; retention skipped"
                );
                return;
            };
            for f in &meta.files {
                keep.entry(f.checkpoint).or_default().push(f.name.clone());
            }
        }
        let kept = |id: u64| -> Vec<&str> {
            keep.get(&id)
                .map(|v| v.iter().map(|n| n.as_str()).collect())
                .unwrap_or_default()
        };
        let complete_ids = complete;
        // Local copies of checkpoints the store no longer (or never) had, e.g. written before a
        // crash and never uploaded, go too (those it has go below, after the store's copies).
        let retained: BTreeSet<u64> = complete_ids
            .iter()
            .rev()
            .take(self.retained.max(1))
            .copied()
            .collect();
        for id in local_checkpoints(&self.local_dir) {
            if id < newest && !retained.contains(&id) && ids.binary_search(&id).is_err() {
                let dir = self.local_dir.join(format!("chk-{id}"));
                prune_local(&dir, &kept(id), self.spare.as_deref(), false);
            }
        }
        for id in weir_storage::retention_plan(&complete_ids, &incomplete, self.retained) {
            let kept = kept(id);
            let deleted = match self.store.delete(id, &kept) {
                Ok(()) => {
                    tracing::debug!(checkpoint = id, kept = kept.len(), "deleted by retention");
                    // Its metadata is gone: retired (files kept) or deleted.
                    self.metadata.insert(id, None);
                    true
                }
                Err(e) => {
                    tracing::warn!(checkpoint = id, error = %e, "cannot delete checkpoint");
                    self.metadata.remove(&id);
                    false
                }
            };
            // The files of a checkpoint of this run that completed (its uploads are over), once
            // gone from the store, are read by nothing any more.
            let reuse = deleted && id >= self.first_id && self.ever_complete.contains(&id);
            let dir = self.local_dir.join(format!("chk-{id}"));
            prune_local(&dir, &kept, self.spare.as_deref(), reuse);
        }
    }
}

/// Ids of the `chk-<id>` directories under `local_dir`.
fn local_checkpoints(local_dir: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(local_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("chk-")?
                .parse::<u64>()
                .ok()
        })
        .collect()
}

/// Removes a local checkpoint copy except the files named in `keep`; with `reuse`, its files
/// are retired to `spare` (which deletes those it has no room for), else deleted (and taken out
/// of `spare`'s page-cache count).
fn prune_local(dir: &Path, keep: &[&str], spare: Option<&weir_storage::SpareFiles>, reuse: bool) {
    let result = std::fs::read_dir(dir).and_then(|entries| {
        for e in entries {
            let e = e?;
            if keep.iter().any(|k| e.file_name().as_os_str() == *k) {
                continue;
            }
            let kind = e.file_type()?;
            match spare {
                Some(s) if kind.is_file() && reuse => {
                    s.retire(&e.path())?;
                }
                Some(s) if kind.is_file() => s.discard(&e.path())?,
                _ if kind.is_dir() => std::fs::remove_dir_all(e.path())?,
                _ => std::fs::remove_file(e.path())?,
            }
        }
        if keep.is_empty() {
            std::fs::remove_dir(dir)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "cannot delete local checkpoint copy");
        }
    }
}

/// On cancellation with `on_cancel = delete`: removes every checkpoint of the job.
pub(crate) fn delete_all(store: &dyn CheckpointStore, local_dir: &std::path::Path) {
    match store.list() {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = store.delete(id, &[]) {
                    tracing::warn!(checkpoint = id, error = %e, "cannot delete checkpoint");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list checkpoints to delete them"),
    }
    let _ = std::fs::remove_dir_all(local_dir);
}
