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

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use serde::Serialize;
use weir_runtime::{BoxError, SinkWriter, TaskInfo, Waker};

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
    let mut old = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list output directory `{}`: {e}", dir.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("cannot list output directory `{}`: {e}", dir.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") || name.starts_with(".part-") {
            old.push(e.path());
        }
    }
    old.sort();
    if old.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(format!(
            "output directory `{}` already holds {} part file(s) of an earlier run (e.g. `{}`); delete them or set `overwrite = true` on the sink",
            dir.display(),
            old.len(),
            old[0].file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    for p in &old {
        std::fs::remove_file(p)
            .map_err(|e| format!("cannot delete old output `{}`: {e}", p.display()))?;
    }
    weir_storage::fsync_dir(dir).map_err(|e| e.to_string())?;
    tracing::info!(dir = %dir.display(), files = old.len(), "deleted output of an earlier run (overwrite = true)");
    Ok(())
}

enum Cmd {
    Write(Vec<u8>),
    Close,
}

/// Where a writer thread writes.
pub(crate) enum Target {
    File { dir: PathBuf, subtask: usize },
    Stdout,
}

/// Worker-side handle of a writer thread.
pub(crate) struct IoWriter {
    tx: Sender<Cmd>,
    acks: Receiver<Result<(), String>>,
    pending: VecDeque<Cmd>,
    buf: Vec<u8>,
    closed: bool,
    done: bool,
}

impl IoWriter {
    pub(crate) fn spawn(target: Target, info: &TaskInfo) -> Result<Self, BoxError> {
        let (tx, rx) = crossbeam_channel::bounded::<Cmd>(BUFFERS_IN_FLIGHT);
        let (ack_tx, acks) = crossbeam_channel::bounded(1);
        let waker = info.waker();
        std::thread::Builder::new()
            .name(format!("weir-writer-{}", info.subtask))
            .spawn(move || {
                let r = write_loop(target, &rx, &waker);
                let _ = ack_tx.send(r);
                waker.wake();
            })
            .map_err(|e| format!("cannot start writer thread: {e}"))?;
        Ok(IoWriter {
            tx,
            acks,
            pending: VecDeque::new(),
            buf: Vec::with_capacity(BUFFER_BYTES),
            closed: false,
            done: false,
        })
    }

    pub(crate) fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Hands the buffer over once it is large enough (or always when `force`).
    pub(crate) fn seal(&mut self, force: bool) -> Result<(), BoxError> {
        if self.buf.len() >= BUFFER_BYTES || (force && !self.buf.is_empty()) {
            let b = std::mem::replace(&mut self.buf, Vec::with_capacity(BUFFER_BYTES));
            self.pending.push_back(Cmd::Write(b));
        }
        self.try_send().map(|_| ())
    }

    pub(crate) fn close(&mut self) -> Result<(), BoxError> {
        self.seal(true)?;
        self.pending.push_back(Cmd::Close);
        self.closed = true;
        self.try_send().map(|_| ())
    }

    fn check_acks(&mut self) -> Result<(), BoxError> {
        match self.acks.try_recv() {
            Ok(Ok(())) => {
                self.done = true;
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => {
                if self.done {
                    Ok(())
                } else {
                    Err("writer thread ended without reporting".into())
                }
            }
        }
    }

    pub(crate) fn try_send(&mut self) -> Result<bool, BoxError> {
        self.check_acks()?;
        let mut progress = false;
        while let Some(cmd) = self.pending.pop_front() {
            match self.tx.try_send(cmd) {
                Ok(()) => progress = true,
                Err(TrySendError::Full(cmd)) => {
                    self.pending.push_front(cmd);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The thread stopped: it reported why on the ack channel.
                    self.check_acks()?;
                    return Err("writer thread stopped".into());
                }
            }
        }
        Ok(progress)
    }

    pub(crate) fn blocked(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(crate) fn done(&self) -> bool {
        self.closed && self.pending.is_empty() && self.done
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
        Target::File { dir, subtask } => {
            let tmp = dir.join(format!(".part-{subtask}-0.inprogress"));
            let fin = dir.join(format!("part-{subtask}-0.jsonl"));
            let mut file: Option<BufWriter<File>> = None;
            while let Ok(cmd) = rx.recv() {
                waker.wake();
                match cmd {
                    Cmd::Write(b) => {
                        if file.is_none() {
                            let f = File::create(&tmp)
                                .map_err(|e| format!("cannot create `{}`: {e}", tmp.display()))?;
                            file = Some(BufWriter::with_capacity(1 << 20, f));
                        }
                        if let Some(f) = file.as_mut() {
                            f.write_all(&b)
                                .map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
                        }
                    }
                    Cmd::Close => {
                        if let Some(mut f) = file.take() {
                            f.flush()
                                .map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
                            drop(f);
                            weir_storage::commit_rename(&tmp, &fin).map_err(|e| e.to_string())?;
                        }
                        return Ok(());
                    }
                }
            }
            // The worker went away without closing (job cancelled): leave the hidden file.
            Ok(())
        }
    }
}

/// JSON-lines file sink: one part file per subtask in `dir`.
#[derive(Clone)]
pub struct FileSink {
    dir: Arc<PathBuf>,
}

impl FileSink {
    /// Writes into `dir` (call [`prepare_output_dir`] before the job starts).
    pub fn new(dir: &Path) -> Self {
        FileSink {
            dir: Arc::new(dir.to_path_buf()),
        }
    }

    /// The writer of one subtask.
    pub fn writer<T: Serialize>(&self, info: &TaskInfo) -> Result<JsonLinesWriter<T>, BoxError> {
        let io = IoWriter::spawn(
            Target::File {
                dir: (*self.dir).clone(),
                subtask: info.subtask,
            },
            info,
        )?;
        Ok(JsonLinesWriter {
            io,
            _t: std::marker::PhantomData,
        })
    }
}

/// Encodes records as JSON lines into an [`IoWriter`].
pub struct JsonLinesWriter<T> {
    pub(crate) io: IoWriter,
    pub(crate) _t: std::marker::PhantomData<fn(T)>,
}

impl<T: Serialize> SinkWriter<T> for JsonLinesWriter<T> {
    fn write(&mut self, batch: &mut Vec<(i64, T)>) -> Result<(), BoxError> {
        let buf = self.io.buffer();
        for (_, r) in batch.drain(..) {
            serde_json::to_writer(&mut *buf, &r)?;
            buf.push(b'\n');
        }
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
        self.io.done()
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
