//! The coordinator thread: carries out the decider's actions (triggers, metadata, retention,
//! notifications). Runs beside the workers, never on a worker thread.

use std::path::PathBuf;
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
    /// Bytes written (snapshot files).
    pub bytes: u64,
    /// Files written (one per worker) plus the metadata file.
    pub files: u64,
    /// The final checkpoint of a bounded job.
    pub is_final: bool,
    /// Where it is stored.
    pub location: String,
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
    pub(crate) history: Arc<Mutex<Vec<CompletedCheckpoint>>>,
    pub(crate) operators: Vec<OperatorEntry>,
    pub(crate) max_parallelism: u32,
    pub(crate) first_id: u64,
    pub(crate) sources: usize,
}

fn wall_ms(at: Instant) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.saturating_sub(Instant::now().saturating_duration_since(at))).as_millis() as u64
}

pub(crate) fn run(s: CoordinatorSetup) {
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
                Ok(ToCoordinator::SourceExhausted) => d.on_source_exhausted(Instant::now()),
                Ok(ToCoordinator::Ack(id, ack)) => d.on_ack(Instant::now(), id, ack),
                Ok(ToCoordinator::Decline { id, worker, reason }) => {
                    d.on_decline(Instant::now(), id, format!("worker {worker}: {reason}"))
                }
                Err(_) => return,
            },
            recv(s.shutdown) -> _ => return,
            default(timeout) => d.on_tick(Instant::now()),
        };
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for a in queue {
                next.extend(execute(&s, &mut d, a));
            }
            queue = next;
        }
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

fn execute(s: &CoordinatorSetup, d: &mut Decider, action: Action) -> Vec<Action> {
    match action {
        Action::Trigger { id, is_final } => {
            tracing::debug!(checkpoint = id, is_final, "triggering checkpoint");
            broadcast(s, ToWorker::Trigger(id));
            Vec::new()
        }
        Action::Abort { id, reason } => {
            tracing::warn!(checkpoint = id, %reason, "checkpoint aborted");
            Vec::new()
        }
        Action::FinishSources => {
            broadcast(s, ToWorker::FinishSources);
            Vec::new()
        }
        Action::Fail(message) => {
            let mut slot = s.failure.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                tracing::error!(%message, "job failed");
                *slot = Some(JobError::Checkpoint(message));
            }
            s.cancel.store(true, Ordering::SeqCst);
            for (_, w) in &s.workers {
                w.wake();
            }
            Vec::new()
        }
        Action::Complete {
            id,
            triggered_at,
            acks,
            is_final,
        } => {
            let duration = triggered_at.elapsed();
            let stats = CompletedCheckpoint {
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
                is_final,
                location: s.store.location(id),
            };
            let meta = CheckpointMetadata {
                format_version: 1,
                job: s.job.to_string(),
                checkpoint_id: id,
                triggered_at_ms: stats.triggered_at_ms,
                completed_at_ms: wall_ms(Instant::now()),
                max_parallelism: s.max_parallelism,
                files: acks
                    .iter()
                    .map(|a| FileEntry {
                        name: a.file.clone(),
                        worker: a.worker as u32,
                        bytes: a.bytes,
                        crc32: a.crc32,
                    })
                    .collect(),
                stats: weir_storage::CheckpointStats {
                    duration_ms: duration.as_millis() as u64,
                    sync_ms_max: stats.sync_max.as_millis() as u64,
                    async_ms_max: stats.async_max.as_millis() as u64,
                    alignment_ms_max: stats.alignment_max.as_millis() as u64,
                    bytes_written: stats.bytes,
                    files_written: stats.files,
                },
                operators: s.operators.clone(),
            };
            if let Err(e) = s
                .store
                .put_metadata(id, &weir_storage::encode_metadata(&meta))
            {
                return d.on_complete_failed(
                    Instant::now(),
                    id,
                    format!("writing its metadata failed: {e}"),
                );
            }
            tracing::info!(
                checkpoint = id,
                duration_ms = duration.as_millis() as u64,
                sync_ms_max = stats.sync_max.as_millis() as u64,
                async_ms_max = stats.async_max.as_millis() as u64,
                alignment_ms_max = stats.alignment_max.as_millis() as u64,
                bytes = stats.bytes,
                files = stats.files,
                is_final,
                "checkpoint completed"
            );
            s.history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stats);
            broadcast(s, ToWorker::Complete(id));
            retention(s);
            d.on_completed(Instant::now(), is_final)
        }
    }
}

/// Deletes checkpoints beyond `retained` (and incomplete ones older than the newest complete
/// one), remotely and locally. Failures are logged and retried at the next completion.
fn retention(s: &CoordinatorSetup) {
    let ids = match s.store.list() {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list checkpoints for retention");
            return;
        }
    };
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for id in ids {
        match s.store.get_metadata(id) {
            Ok(Some(_)) => complete.push(id),
            Ok(None) => incomplete.push(id),
            Err(e) => {
                tracing::warn!(checkpoint = id, error = %e, "cannot read checkpoint metadata")
            }
        }
    }
    for id in weir_storage::retention_plan(&complete, &incomplete, s.cfg.retained) {
        match s.store.delete(id) {
            Ok(()) => tracing::debug!(checkpoint = id, "deleted by retention"),
            Err(e) => tracing::warn!(checkpoint = id, error = %e, "cannot delete checkpoint"),
        }
        let local = s.local_dir.join(format!("chk-{id}"));
        if local.exists() {
            if let Err(e) = std::fs::remove_dir_all(&local) {
                tracing::warn!(path = %local.display(), error = %e, "cannot delete local checkpoint copy");
            }
        }
    }
}

/// On cancellation with `on_cancel = delete`: removes every checkpoint of the job.
pub(crate) fn delete_all(store: &dyn CheckpointStore, local_dir: &std::path::Path) {
    match store.list() {
        Ok(ids) => {
            for id in ids {
                if let Err(e) = store.delete(id) {
                    tracing::warn!(checkpoint = id, error = %e, "cannot delete checkpoint");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list checkpoints to delete them"),
    }
    let _ = std::fs::remove_dir_all(local_dir);
}
