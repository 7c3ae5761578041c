//! JSON-lines sinks with their I/O on a thread per subtask: the file sink and (via
//! [`IoWriter`]) the stdout sink.
//!
//! The worker encodes records into a buffer; full buffers go to the writer thread over a
//! bounded channel. When that channel is full the sink reports itself blocked and the worker
//! stops feeding it (backpressure) until the writer thread catches up and rings the worker.
//!
//! Files: subtask `s` writes `.part-<s>-0.inprogress` (hidden) and, at end of input, flushes,
//! fsyncs and renames it to `part-<s>-0.jsonl` (then fsyncs the directory). Only complete
//! files are ever visible.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;
use weir_runtime::{BoxError, PreCommit, SinkWriter, TaskInfo, Waker};

use super::handoff::Handoff;

/// Bytes encoded before a buffer is handed to the writer thread.
const BUFFER_BYTES: usize = 256 << 10;
/// Buffers in flight between worker and writer thread.
const BUFFERS_IN_FLIGHT: usize = 4;

/// Checks the output directory before a job starts: creates it, proves it writable, and
/// refuses to mix with output of an earlier run (`part-*` files or hidden in-progress files)
/// unless `overwrite` is set, in which case those files are deleted.
pub fn prepare_output_dir(dir: &Path, overwrite: bool) -> Result<(), String> {
    weir_storage::probe_writable(dir)
        .map_err(|e| format!("output directory is not writable: {e}"))?;
    let old = earlier_parts(dir, |name| {
        name.starts_with("part-") || name.starts_with(".part-")
    })?;
    if old.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(format!(
            "output directory `{}` already holds {} part file(s) of an earlier run (e.g. `{}`); to continue that run use `--restore latest`, otherwise delete them or set `overwrite = true` on the sink",
            dir.display(),
            old.len(),
            old[0].file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    delete_parts(dir, &old)?;
    tracing::info!(dir = %dir.display(), files = old.len(), "deleted output of an earlier run (overwrite = true)");
    Ok(())
}

/// The files of `dir` whose names `matches`, sorted.
fn earlier_parts(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>, String> {
    let list_err =
        |e: std::io::Error| format!("cannot list output directory `{}`: {e}", dir.display());
    let mut old = Vec::new();
    for e in std::fs::read_dir(dir).map_err(list_err)? {
        let e = e.map_err(list_err)?;
        if matches(&e.file_name().to_string_lossy()) {
            old.push(e.path());
        }
    }
    old.sort();
    Ok(old)
}

/// Deletes `old` from `dir`, durably.
fn delete_parts(dir: &Path, old: &[PathBuf]) -> Result<(), String> {
    for p in old {
        std::fs::remove_file(p)
            .map_err(|e| format!("cannot delete old output `{}`: {e}", p.display()))?;
    }
    weir_storage::fsync_dir(dir).map_err(|e| e.to_string())
}

enum Cmd {
    Write(Vec<u8>),
    /// Flush and fsync the current part and rename it to the pending name of checkpoint `id`;
    /// answer on `ack` once durable.
    PreCommit {
        id: u64,
        ack: Sender<Result<(), String>>,
    },
    /// Make every pending part of a checkpoint `<= upto` visible.
    Commit {
        upto: u64,
    },
    Close,
}

/// Where a writer thread writes.
pub(crate) enum Target {
    File {
        dir: PathBuf,
        subtask: usize,
        checkpointing: bool,
    },
    Stdout,
}

/// Worker-side handle of a writer thread.
pub(crate) struct IoWriter {
    io: Handoff<Cmd>,
    buf: Vec<u8>,
    closed: bool,
}

impl IoWriter {
    pub(crate) fn spawn(target: Target, info: &TaskInfo) -> Result<Self, BoxError> {
        // Files are renamed into place by the thread; stdout is only written.
        let commits = matches!(target, Target::File { .. });
        let io = Handoff::spawn(
            format!("weir-writer-{}", info.subtask),
            "the writer thread",
            BUFFERS_IN_FLIGHT,
            info,
            commits,
            move |rx, waker| write_loop(target, &rx, waker),
        )?;
        Ok(IoWriter {
            io,
            buf: Vec::with_capacity(BUFFER_BYTES),
            closed: false,
        })
    }

    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Hands the buffer over once it is large enough (or always when `force`).
    pub(crate) fn seal(&mut self, force: bool) -> Result<(), BoxError> {
        if self.buf.len() >= BUFFER_BYTES || (force && !self.buf.is_empty()) {
            let b = std::mem::replace(&mut self.buf, Vec::with_capacity(BUFFER_BYTES));
            return self.io.push(Cmd::Write(b));
        }
        self.io.send_pending().map(|_| ())
    }

    fn command(&mut self, cmd: Cmd) -> Result<(), BoxError> {
        self.seal(true)?;
        self.io.push(cmd)
    }

    pub(crate) fn close(&mut self) -> Result<(), BoxError> {
        self.command(Cmd::Close)?;
        self.closed = true;
        Ok(())
    }

    pub(crate) fn try_send(&mut self) -> Result<bool, BoxError> {
        self.io.send_pending()
    }

    pub(crate) fn blocked(&self) -> bool {
        self.io.blocked()
    }

    pub(crate) fn done(&self) -> bool {
        self.closed && self.io.finished()
    }
}

/// Names of a subtask's part files.
struct Parts {
    dir: PathBuf,
    subtask: usize,
}

impl Parts {
    fn in_progress(&self, seq: u64) -> PathBuf {
        self.dir
            .join(format!(".part-{}-{seq}.inprogress", self.subtask))
    }
    fn pending(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!(".part-{}-{id}.pending", self.subtask))
    }
    fn visible(&self, id: u64) -> PathBuf {
        self.dir.join(format!("part-{}-{id}.jsonl", self.subtask))
    }
    /// Checkpoint ids of this subtask's pending files.
    fn pending_ids(&self) -> Result<Vec<u64>, String> {
        let prefix = format!(".part-{}-", self.subtask);
        let mut ids = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot list `{}`: {e}", self.dir.display()))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".pending"))
                .and_then(|n| n.parse().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }
    fn commit(&self, id: u64) -> Result<(), String> {
        weir_storage::commit_rename(&self.pending(id), &self.visible(id)).map_err(|e| e.to_string())
    }
}

fn write_loop(target: Target, rx: &Receiver<Cmd>, waker: &Waker) -> Result<(), String> {
    match target {
        Target::Stdout => {
            let stdout = std::io::stdout();
            while let Ok(cmd) = rx.recv() {
                waker.wake();
                match cmd {
                    Cmd::Write(b) => stdout
                        .lock()
                        .write_all(&b)
                        .map_err(|e| format!("cannot write to stdout: {e}"))?,
                    Cmd::PreCommit { ack, .. } => {
                        let r = stdout
                            .lock()
                            .flush()
                            .map_err(|e| format!("cannot flush stdout: {e}"));
                        let _ = ack.send(r);
                    }
                    Cmd::Commit { .. } => {}
                    Cmd::Close => {
                        stdout
                            .lock()
                            .flush()
                            .map_err(|e| format!("cannot flush stdout: {e}"))?;
                        return Ok(());
                    }
                }
            }
            Ok(())
        }
        Target::File {
            dir,
            subtask,
            checkpointing,
        } => {
            let parts = Parts { dir, subtask };
            let mut seq = 0u64;
            let mut file: Option<BufWriter<File>> = None;
            // Flushes, fsyncs and closes the current part; returns its path.
            let finish_part =
                |file: &mut Option<BufWriter<File>>, seq: u64| -> Result<Option<PathBuf>, String> {
                    let Some(f) = file.take() else {
                        return Ok(None);
                    };
                    let path = parts.in_progress(seq);
                    let f = f
                        .into_inner()
                        .map_err(|e| format!("cannot write `{}`: {}", path.display(), e.error()))?;
                    f.sync_all()
                        .map_err(|e| format!("cannot fsync `{}`: {e}", path.display()))?;
                    Ok(Some(path))
                };
            while let Ok(cmd) = rx.recv() {
                waker.wake();
                match cmd {
                    Cmd::Write(b) => {
                        if file.is_none() {
                            seq += 1;
                            let path = parts.in_progress(seq);
                            let f = File::create(&path)
                                .map_err(|e| format!("cannot create `{}`: {e}", path.display()))?;
                            file = Some(BufWriter::with_capacity(1 << 20, f));
                        }
                        if let Some(f) = file.as_mut() {
                            f.write_all(&b).map_err(|e| {
                                format!("cannot write part file of subtask {subtask}: {e}")
                            })?;
                        }
                    }
                    Cmd::PreCommit { id, ack } => {
                        let r = finish_part(&mut file, seq).and_then(|p| match p {
                            Some(path) => std::fs::rename(&path, parts.pending(id))
                                .map_err(|e| {
                                    format!("cannot rename `{}` to pending: {e}", path.display())
                                })
                                .and_then(|_| {
                                    weir_storage::fsync_dir(&parts.dir).map_err(|e| e.to_string())
                                }),
                            None => Ok(()),
                        });
                        let failed = r.is_err();
                        let _ = ack.send(r.clone());
                        if failed {
                            return r;
                        }
                    }
                    Cmd::Commit { upto } => {
                        for id in parts.pending_ids()?.into_iter().filter(|id| *id <= upto) {
                            parts.commit(id)?;
                        }
                    }
                    Cmd::Close => {
                        if !checkpointing {
                            if let Some(path) = finish_part(&mut file, seq)? {
                                weir_storage::commit_rename(&path, &parts.visible(0))
                                    .map_err(|e| e.to_string())?;
                            }
                        }
                        // With checkpointing everything was pre-committed at the final barrier
                        // and committed by its notification.
                        return Ok(());
                    }
                }
            }
            // The worker went away without closing (job cancelled): leave the hidden files;
            // a restore cleans them up.
            Ok(())
        }
    }
}

/// Recovery of one subtask's files from checkpoint state: commits the parts the checkpoint
/// pre-committed (still pending, or already visible) and deletes every other hidden file of
/// the subtask (written after the checkpoint, so not part of it).
fn recover(parts: &Parts, pending: &[u64]) -> Result<(), String> {
    for &id in pending {
        if parts.pending(id).exists() {
            parts.commit(id)?;
        } else if !parts.visible(id).exists() {
            return Err(format!(
                "the checkpoint lists pre-committed output `{}` but neither it nor `{}` exists: that output was lost (deleted by hand?)",
                parts.pending(id).display(),
                parts.visible(id).display()
            ));
        }
    }
    let prefix = format!(".part-{}-", parts.subtask);
    let entries = std::fs::read_dir(&parts.dir)
        .map_err(|e| format!("cannot list `{}`: {e}", parts.dir.display()))?;
    let mut removed = 0;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(e.path())
                .map_err(|err| format!("cannot remove `{}`: {err}", e.path().display()))?;
            removed += 1;
        }
    }
    if removed > 0 {
        weir_storage::fsync_dir(&parts.dir).map_err(|e| e.to_string())?;
        tracing::info!(
            subtask = parts.subtask,
            files = removed,
            "discarded output written after the restored checkpoint"
        );
    }
    Ok(())
}

/// Before a run with checkpoints that restored none: the visible part files of this subtask
/// from an earlier run are refused, or deleted with `overwrite`.
fn clear_earlier_output(parts: &Parts, overwrite: bool) -> Result<(), String> {
    let prefix = format!("part-{}-", parts.subtask);
    let old = earlier_parts(&parts.dir, |name| name.starts_with(&prefix))?;
    if old.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(format!(
            "output directory `{}` holds {} part file(s) of subtask {} from an earlier run \
             (e.g. `{}`), but this run restored no checkpoint and would commit over them: \
             restore the checkpoint that wrote them, or delete them, or set `overwrite = true` \
             on the sink",
            parts.dir.display(),
            old.len(),
            parts.subtask,
            old[0].file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    delete_parts(&parts.dir, &old)?;
    tracing::info!(
        subtask = parts.subtask,
        files = old.len(),
        "no checkpoint restored: deleted output of an earlier run (overwrite = true)"
    );
    Ok(())
}

/// JSON-lines file sink: part files per subtask in `dir`. Without checkpoints each subtask
/// writes `part-<s>-0.jsonl` at end of input; with checkpoints, the output between two
/// barriers becomes `part-<s>-<checkpoint>.jsonl` once that checkpoint completed
/// (two-phase commit: in progress -> pending at the barrier -> visible on completion).
///
/// A run with checkpoints that restored none (a fresh start, or `--restore latest` that found
/// no checkpoint) numbers its output from its first checkpoint id, so it refuses to start over
/// visible part files of its subtask from an earlier run, which its commits would replace or
/// mix with; with [`FileSink::overwrite`] it deletes them instead.
#[derive(Clone)]
pub struct FileSink {
    dir: Arc<PathBuf>,
    overwrite: bool,
}

impl FileSink {
    /// Writes into `dir` (call [`prepare_output_dir`] before the job starts).
    pub fn new(dir: &Path) -> Self {
        FileSink {
            dir: Arc::new(dir.to_path_buf()),
            overwrite: false,
        }
    }

    /// Whether a run that restored no checkpoint deletes the part files of earlier runs it
    /// finds (default: it refuses to start), as `overwrite = true` in a job file.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The writer of one subtask; on restore it first recovers the subtask's files.
    pub fn writer<T: Serialize>(&self, info: &TaskInfo) -> Result<JsonLinesWriter<T>, BoxError> {
        let parts = Parts {
            dir: (*self.dir).clone(),
            subtask: info.subtask,
        };
        if info.checkpointing() {
            if info.restored_checkpoint().is_none() {
                clear_earlier_output(&parts, self.overwrite)?;
            }
            let pending: Vec<u64> = match info.restored_state() {
                Some(b) => decode_ids(b)?,
                None => Vec::new(),
            };
            recover(&parts, &pending)?;
        }
        let io = IoWriter::spawn(
            Target::File {
                dir: parts.dir,
                subtask: info.subtask,
                checkpointing: info.checkpointing(),
            },
            info,
        )?;
        Ok(JsonLinesWriter {
            io,
            wrote: false,
            uncommitted: Vec::new(),
            _t: std::marker::PhantomData,
        })
    }
}

/// Pending checkpoint ids, as stored in the sink's checkpoint state (u64 little endian each).
fn decode_ids(b: &[u8]) -> Result<Vec<u64>, BoxError> {
    if b.len() % 8 != 0 {
        return Err(format!(
            "damaged file sink state in checkpoint ({} bytes, expected a multiple of 8)",
            b.len()
        )
        .into());
    }
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Encodes records as JSON lines into an [`IoWriter`].
pub struct JsonLinesWriter<T> {
    pub(crate) io: IoWriter,
    /// Records were written since the last barrier.
    pub(crate) wrote: bool,
    /// Checkpoints pre-committed with a part file and not yet committed.
    pub(crate) uncommitted: Vec<u64>,
    pub(crate) _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Serialize> SinkWriter<T> for JsonLinesWriter<T> {
    fn write(&mut self, batch: &mut Vec<(i64, T)>) -> Result<(), BoxError> {
        let buf = self.io.buffer();
        for (_, r) in batch.drain(..) {
            serde_json::to_writer(&mut *buf, &r)?;
            buf.push(b'\n');
        }
        self.wrote = true;
        self.io.seal(false)
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        self.io.close()
    }
    fn blocked(&self) -> bool {
        self.io.blocked()
    }
    fn try_flush(&mut self) -> Result<bool, BoxError> {
        self.io.try_send()
    }
    fn done(&self) -> bool {
        self.io.done() && self.uncommitted.is_empty()
    }
    fn pre_commit(&mut self, checkpoint: u64) -> Result<PreCommit, BoxError> {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.wrote {
            self.uncommitted.push(checkpoint);
            self.wrote = false;
        }
        self.io.command(Cmd::PreCommit {
            id: checkpoint,
            ack: ack_tx,
        })?;
        let state: Vec<u8> = self
            .uncommitted
            .iter()
            .flat_map(|id| id.to_le_bytes())
            .collect();
        let wait = move || -> Result<(), BoxError> {
            match ack_rx.recv() {
                Ok(r) => r.map_err(|e| e.into()),
                Err(_) => Err("the file writer stopped before the pre-commit was durable".into()),
            }
        };
        Ok(PreCommit {
            state,
            durable: Some(Box::new(wait)),
            ..PreCommit::default()
        })
    }
    fn commit(&mut self, checkpoint: u64) -> Result<(), BoxError> {
        self.uncommitted.retain(|id| *id > checkpoint);
        self.io.command(Cmd::Commit { upto: checkpoint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_refuses_old_output_unless_overwrite() {
        let d = tempfile::tempdir().unwrap();
        prepare_output_dir(d.path(), false).unwrap();
        std::fs::write(d.path().join("part-0-0.jsonl"), "{}\n").unwrap();
        std::fs::write(d.path().join("notes.txt"), "keep").unwrap();
        let e = prepare_output_dir(d.path(), false).unwrap_err();
        assert!(
            e.contains("part-0-0.jsonl") && e.contains("overwrite = true"),
            "{e}"
        );
        prepare_output_dir(d.path(), true).unwrap();
        assert!(!d.path().join("part-0-0.jsonl").exists());
        assert!(d.path().join("notes.txt").exists());
    }
}
