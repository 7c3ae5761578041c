//! Worker side of checkpoints: collects the state sections of every task on a worker for a
//! checkpoint, then hands them to the worker's snapshot writer thread, which waits for the
//! sinks' pre-commits to be durable, writes one memory-mapped file under `local_dir`, copies it
//! to the checkpoint store and acknowledges to the coordinator. The worker never waits for any
//! of that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use weir_storage::{CheckpointStore, SnapshotHeader, SnapshotWriter};

use super::decider::Ack;
use super::messages::ToCoordinator;
use crate::error::JobError;
use crate::operator::{Barrier, DurableWait, Section};

struct Pending {
    sections: Vec<(String, Section)>,
    durable: Vec<DurableWait>,
    refs: BTreeSet<u64>,
    tasks_left: usize,
    sync: Duration,
    alignment: Duration,
}

/// A worker's complete share of one checkpoint.
pub(crate) struct SnapshotJob {
    id: u64,
    sections: Vec<(String, Section)>,
    durable: Vec<DurableWait>,
    refs: BTreeSet<u64>,
    sync: Duration,
    alignment: Duration,
}

/// Per-worker checkpoint bookkeeping (lives on the worker thread).
pub(crate) struct WorkerCheckpoints {
    pub(crate) worker: usize,
    pub(crate) tasks: usize,
    pending: BTreeMap<u64, Pending>,
    writer: Option<Sender<SnapshotJob>>,
    pub(crate) events: Option<Sender<ToCoordinator>>,
}

impl WorkerCheckpoints {
    pub(crate) fn disabled(worker: usize) -> Self {
        WorkerCheckpoints {
            worker,
            tasks: 0,
            pending: BTreeMap::new(),
            writer: None,
            events: None,
        }
    }

    pub(crate) fn new(
        worker: usize,
        writer: Sender<SnapshotJob>,
        events: Sender<ToCoordinator>,
    ) -> Self {
        WorkerCheckpoints {
            worker,
            tasks: 0,
            pending: BTreeMap::new(),
            writer: Some(writer),
            events: Some(events),
        }
    }

    pub(crate) fn send(&self, msg: ToCoordinator) -> Result<(), JobError> {
        if let Some(ev) = &self.events {
            match ev.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    return Err(JobError::Checkpoint(
                        "the checkpoint coordinator is not keeping up (event queue full)".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Runs one task's part of checkpoint `id` (`f` pushes the barrier through the task's
    /// chain, which appends state sections) and hands the worker's share to the writer once
    /// every task of the worker took part.
    pub(crate) fn task_barrier(
        &mut self,
        id: u64,
        alignment: Duration,
        last: bool,
        f: impl FnOnce(&mut Barrier<'_>) -> Result<(), JobError>,
    ) -> Result<(), JobError> {
        let tasks = self.tasks;
        let entry = self.pending.entry(id).or_insert_with(|| Pending {
            sections: Vec::new(),
            durable: Vec::new(),
            refs: BTreeSet::new(),
            tasks_left: tasks,
            sync: Duration::ZERO,
            alignment: Duration::ZERO,
        });
        let t = Instant::now();
        f(&mut Barrier {
            id,
            last,
            sections: &mut entry.sections,
            durable: &mut entry.durable,
            refs: &mut entry.refs,
        })?;
        entry.sync += t.elapsed();
        entry.alignment = entry.alignment.max(alignment);
        assert!(
            entry.tasks_left > 0,
            "checkpoint {id}: more barriers than tasks on worker {}",
            self.worker
        );
        entry.tasks_left -= 1;
        if entry.tasks_left > 0 {
            return Ok(());
        }
        let p = self.pending.remove(&id).expect("present");
        let job = SnapshotJob {
            id,
            sections: p.sections,
            durable: p.durable,
            refs: p.refs,
            sync: p.sync,
            alignment: p.alignment,
        };
        if let Some(w) = &self.writer {
            if let Err(e) = w.try_send(job) {
                let reason = match e {
                    TrySendError::Full(_) => {
                        "the snapshot writer is still busy with earlier checkpoints"
                    }
                    TrySendError::Disconnected(_) => "the snapshot writer stopped",
                };
                self.send(ToCoordinator::Decline {
                    id,
                    worker: self.worker,
                    reason: reason.into(),
                })?;
            }
        }
        Ok(())
    }
}

/// Where a worker's snapshot writer puts files.
pub(crate) struct WriterSetup {
    pub(crate) worker: usize,
    pub(crate) local_dir: PathBuf,
    /// Retired local copies to overwrite instead of creating new files; bounds the page cache
    /// of the local copies written.
    pub(crate) spare: Option<Arc<weir_storage::SpareFiles>>,
    pub(crate) store: Arc<dyn CheckpointStore>,
    pub(crate) events: Sender<ToCoordinator>,
}

/// Body of a worker's snapshot writer thread (never a worker core's thread).
pub(crate) fn writer_loop(setup: WriterSetup, jobs: Receiver<SnapshotJob>) {
    // The length of the last snapshot written: the next one is about as long.
    let mut last_len = 0;
    while let Ok(job) = jobs.recv() {
        let id = job.id;
        let msg = match write_one(&setup, job, &mut last_len) {
            Ok(ack) => ToCoordinator::Ack(id, ack),
            Err(reason) => {
                tracing::warn!(checkpoint = id, worker = setup.worker, %reason, "snapshot failed");
                ToCoordinator::Decline {
                    id,
                    worker: setup.worker,
                    reason,
                }
            }
        };
        if setup.events.send(msg).is_err() {
            return;
        }
    }
}

fn write_one(setup: &WriterSetup, job: SnapshotJob, last_len: &mut u64) -> Result<Ack, String> {
    let t = Instant::now();
    for wait in job.durable {
        wait().map_err(|e| format!("sink pre-commit failed: {e}"))?;
    }
    let dir = setup.local_dir.join(format!("chk-{}", job.id));
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create local directory `{}`: {e}", dir.display()))?;
    let name = format!("worker-{}.snap", setup.worker);
    let path = dir.join(&name);
    let header = SnapshotHeader {
        checkpoint_id: job.id,
        worker: setup.worker as u32,
    };
    // The asynchronous part: encode what was captured at the barrier, straight into the file.
    let mut file = SnapshotWriter::create(&path, &header, setup.spare.as_deref(), *last_len)
        .map_err(|e| e.to_string())?;
    for (name, section) in job.sections {
        file.section(&name).map_err(|e| e.to_string())?;
        match section {
            Section::Bytes(b) => file.write(&b).map_err(|e| e.to_string())?,
            Section::Deferred(encode) => encode(&mut file)?,
        }
    }
    let info = file.finish().map_err(|e| e.to_string())?;
    *last_len = info.bytes;
    let uploaded = setup
        .store
        .put_file(job.id, &name, &path)
        .map_err(|e| e.to_string())?;
    // Durable in the store: only a restore reads the local copy again.
    if let Some(spare) = &setup.spare {
        spare.admit(&path, info.bytes);
    }
    Ok(Ack {
        worker: setup.worker,
        file: name,
        bytes: info.bytes,
        crc32: info.crc32,
        sync: job.sync,
        asynchronous: t.elapsed(),
        alignment: job.alignment,
        refs: job.refs,
        uploaded,
    })
}
