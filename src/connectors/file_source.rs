//! File source: JSON lines from a file or a directory, read by a thread per subtask.
//!
//! The files of a directory (regular files, sorted by name, skipping names that start with
//! `.` or `_`) are split among subtasks: subtask `s` of `p` reads files `s, s + p, ..`. A
//! reader thread reads complete lines into chunks and hands them over a bounded channel; the
//! worker parses them. Each chunk carries the position after its last line, so the source
//! always knows the position of the next unread record (for checkpoints).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, TryRecvError};
use weir_runtime::{BoxError, SourcePoll, SourceReader, TaskInfo, NO_TIMESTAMP};

use super::JsonRecord;

/// Longest accepted line.
const MAX_LINE_BYTES: u64 = 16 << 20;
/// Lines per chunk handed from the reader thread to the worker.
const CHUNK_LINES: usize = 1024;
/// Chunks buffered between reader thread and worker.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Position of the next unread record of one subtask: the index into its file list and the
/// byte offset in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct FilePosition {
    /// Index into the subtask's files.
    pub file: usize,
    /// Byte offset of the next line.
    pub offset: u64,
    /// Number of the next line (1-based), for error messages.
    pub line: u64,
}

/// The input files of `path`: the file itself, or a directory's visible regular files sorted.
pub fn list_input_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        if e.file_type()?.is_file() || std::fs::metadata(e.path())?.is_file() {
            files.push(e.path());
        }
    }
    files.sort();
    Ok(files)
}

/// JSON-lines file source (one JSON object per line; empty lines are skipped).
#[derive(Clone)]
pub struct FileSource {
    files: Arc<Vec<PathBuf>>,
}

impl FileSource {
    /// Reads `path` (a file or a directory). Fails when it cannot be listed.
    pub fn new(path: &Path) -> Result<Self, BoxError> {
        let files = list_input_files(path).map_err(|e| {
            format!(
                "cannot read input `{}`: {e}; expected a readable file or directory",
                path.display()
            )
        })?;
        Ok(FileSource {
            files: Arc::new(files),
        })
    }

    /// The reader of one subtask: from the beginning, or from the position stored in the
    /// checkpoint the job was restored from.
    pub fn reader(&self, info: &TaskInfo) -> Result<FileReader, BoxError> {
        let mine: Vec<PathBuf> = self
            .files
            .iter()
            .skip(info.subtask)
            .step_by(info.parallelism)
            .cloned()
            .collect();
        let start = match info.restored_state() {
            None => FilePosition::default(),
            Some(bytes) => {
                let saved: SavedPosition = serde_json::from_slice(bytes)
                    .map_err(|e| format!("damaged file source position in checkpoint: {e}"))?;
                let here = mine
                    .get(saved.position.file)
                    .map(|p| p.display().to_string());
                if saved.position.file < mine.len() && here.as_deref() != Some(saved.path.as_str())
                {
                    return Err(format!(
                        "the input files changed since the checkpoint: subtask {} was reading `{}` (file #{}) and that file is now `{}`; restore needs the same input files",
                        info.subtask,
                        saved.path,
                        saved.position.file,
                        here.unwrap_or_default()
                    )
                    .into());
                }
                saved.position
            }
        };
        let (tx, rx) = crossbeam_channel::bounded(CHUNKS_IN_FLIGHT);
        let waker = info.waker();
        let files = mine.clone();
        std::thread::Builder::new()
            .name(format!("weir-file-reader-{}", info.subtask))
            .spawn(move || {
                read_files(&files, start, |msg| {
                    let ok = tx.send(msg).is_ok();
                    waker.wake();
                    ok
                })
            })
            .map_err(|e| format!("cannot start file reader thread: {e}"))?;
        Ok(FileReader {
            files: mine,
            rx,
            position: start,
            current: None,
            done: false,
        })
    }
}

/// Complete lines of one file, each with the byte offset just after it.
struct Chunk {
    file: usize,
    lines: Vec<(String, u64)>,
    first_line: u64,
}

enum ReadMsg {
    Chunk(Chunk),
    Failed(String),
    Done,
}

/// Reader thread body; `send` returns false when the worker is gone.
fn read_files(files: &[PathBuf], start: FilePosition, mut send: impl FnMut(ReadMsg) -> bool) {
    for (i, path) in files.iter().enumerate().skip(start.file) {
        let (mut offset, mut line_no) = if i == start.file {
            (start.offset, start.line.max(1))
        } else {
            (0, 1)
        };
        let fail = |msg: String| ReadMsg::Failed(format!("{}: {msg}", path.display()));
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) => {
                send(fail(format!("cannot open: {e}")));
                return;
            }
        };
        if let Err(e) = f.seek(SeekFrom::Start(offset)) {
            send(fail(format!("cannot seek to byte {offset}: {e}")));
            return;
        }
        let mut r = BufReader::with_capacity(1 << 16, f);
        let mut buf = Vec::new();
        loop {
            let mut lines = Vec::with_capacity(CHUNK_LINES);
            let first_line = line_no;
            let mut eof = false;
            while lines.len() < CHUNK_LINES {
                buf.clear();
                let n = match (&mut r)
                    .take(MAX_LINE_BYTES + 1)
                    .read_until(b'\n', &mut buf)
                {
                    Ok(n) => n,
                    Err(e) => {
                        send(fail(format!("read error at byte {offset}: {e}")));
                        return;
                    }
                };
                if n == 0 {
                    eof = true;
                    break;
                }
                if n as u64 > MAX_LINE_BYTES {
                    send(fail(format!(
                        "line {line_no} is longer than {MAX_LINE_BYTES} bytes; expected JSON lines"
                    )));
                    return;
                }
                match String::from_utf8(std::mem::take(&mut buf)) {
                    Ok(s) => lines.push((s, offset + n as u64)),
                    Err(_) => {
                        send(fail(format!(
                            "line {line_no} is not valid UTF-8; expected JSON lines"
                        )));
                        return;
                    }
                }
                offset += n as u64;
                line_no += 1;
            }
            if !lines.is_empty()
                && !send(ReadMsg::Chunk(Chunk {
                    file: i,
                    lines,
                    first_line,
                }))
            {
                return;
            }
            if eof {
                break;
            }
        }
    }
    send(ReadMsg::Done);
}

/// What a checkpoint stores: the position and, to detect changed inputs, the file's path.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPosition {
    #[serde(flatten)]
    position: FilePosition,
    path: String,
}

/// One subtask's file source.
pub struct FileReader {
    files: Vec<PathBuf>,
    rx: Receiver<ReadMsg>,
    position: FilePosition,
    /// A chunk partly emitted (polls emit at most `max` records), and its next line.
    current: Option<(Chunk, usize)>,
    done: bool,
}

impl FileReader {
    /// Position of the next record not yet emitted.
    pub fn position(&self) -> FilePosition {
        self.position
    }
}

fn parse_line(line: &str, path: &Path, line_no: u64) -> Result<Option<JsonRecord>, BoxError> {
    let t = line.trim();
    if t.is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
        Ok(other) => Err(format!(
            "{} line {line_no}: expected a JSON object, found {}",
            path.display(),
            match other {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )
        .into()),
        Err(e) => Err(format!(
            "{} line {line_no}: invalid JSON ({e}); expected one JSON object per line",
            path.display()
        )
        .into()),
    }
}

impl SourceReader<JsonRecord> for FileReader {
    fn snapshot(&mut self, _checkpoint: u64) -> Result<Vec<u8>, BoxError> {
        let path = self
            .files
            .get(self.position.file)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        Ok(serde_json::to_vec(&SavedPosition {
            position: self.position,
            path,
        })?)
    }

    fn poll(
        &mut self,
        out: &mut Vec<(i64, JsonRecord)>,
        max: usize,
    ) -> Result<SourcePoll, BoxError> {
        if self.done {
            return Ok(SourcePoll::Exhausted);
        }
        if self.current.is_none() {
            match self.rx.try_recv() {
                Ok(ReadMsg::Chunk(c)) => self.current = Some((c, 0)),
                Ok(ReadMsg::Failed(msg)) => return Err(msg.into()),
                Ok(ReadMsg::Done) => {
                    self.done = true;
                    self.position = FilePosition {
                        file: self.files.len(),
                        offset: 0,
                        line: 1,
                    };
                    return Ok(SourcePoll::Exhausted);
                }
                Err(TryRecvError::Empty) => return Ok(SourcePoll::Idle(None)),
                Err(TryRecvError::Disconnected) => {
                    return Err("file reader thread ended unexpectedly".into())
                }
            }
        }
        let (chunk, next) = self.current.as_mut().expect("a chunk is in hand");
        let path = &self.files[chunk.file];
        while *next < chunk.lines.len() && out.len() < max {
            let (line, end) = &chunk.lines[*next];
            let line_no = chunk.first_line + *next as u64;
            if let Some(rec) = parse_line(line, path, line_no)? {
                out.push((NO_TIMESTAMP, rec));
            }
            // The position always names the first line not yet emitted.
            self.position = FilePosition {
                file: chunk.file,
                offset: *end,
                line: line_no + 1,
            };
            *next += 1;
        }
        if *next >= chunk.lines.len() {
            self.current = None;
        }
        Ok(SourcePoll::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(files: &[PathBuf], start: FilePosition) -> (Vec<String>, Option<String>) {
        let mut lines = Vec::new();
        let mut err = None;
        read_files(files, start, |m| {
            match m {
                ReadMsg::Chunk(c) => lines.extend(c.lines.into_iter().map(|(l, _)| l)),
                ReadMsg::Failed(e) => err = Some(e),
                ReadMsg::Done => {}
            }
            true
        });
        (lines, err)
    }

    #[test]
    fn reads_all_lines_and_resumes_from_position() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a.jsonl");
        std::fs::write(&a, "{\"x\":1}\n{\"x\":2}\n{\"x\":3}").unwrap();
        let (lines, err) = collect(std::slice::from_ref(&a), FilePosition::default());
        assert!(err.is_none());
        assert_eq!(lines.len(), 3);
        let (lines, _) = collect(
            &[a],
            FilePosition {
                file: 0,
                offset: 8,
                line: 2,
            },
        );
        assert_eq!(
            lines,
            vec!["{\"x\":2}\n".to_string(), "{\"x\":3}".to_string()]
        );
    }

    #[test]
    fn directory_listing_skips_hidden_and_sorts() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b", "a", ".hidden", "_tmp"] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let names: Vec<String> = list_input_files(d.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn bad_lines_give_errors_with_file_and_line() {
        let p = Path::new("in.jsonl");
        let e = parse_line("{nope", p, 7).unwrap_err().to_string();
        assert!(
            e.contains("in.jsonl line 7") && e.contains("invalid JSON"),
            "{e}"
        );
        let e = parse_line("[1]", p, 2).unwrap_err().to_string();
        assert!(e.contains("expected a JSON object, found an array"), "{e}");
        assert!(parse_line("  ", p, 1).unwrap().is_none());
    }
}
