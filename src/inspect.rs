//! `weir checkpoints list` and `weir checkpoints inspect`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use weir_storage::{decode_metadata, CheckpointMetadata, Snapshot};

/// Prints a line; a closed stdout (e.g. `| head`) ends the output quietly instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

fn fmt_ms(ms: u64) -> String {
    // RFC 3339 in UTC without pulling in a date crate: days since epoch -> civil date.
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn metadata_json(m: &CheckpointMetadata, location: &str) -> Value {
    json!({
        "id": m.checkpoint_id,
        "location": location,
        "completed_at": fmt_ms(m.completed_at_ms),
        "completed_at_ms": m.completed_at_ms,
        "triggered_at_ms": m.triggered_at_ms,
        "duration_ms": m.stats.duration_ms,
        "sync_ms_max": m.stats.sync_ms_max,
        "async_ms_max": m.stats.async_ms_max,
        "alignment_ms_max": m.stats.alignment_ms_max,
        "bytes": m.stats.bytes_written,
        "files": m.stats.files_written,
        "bytes_uploaded": m.stats.bytes_uploaded,
        "requests": m.stats.requests,
        "files_referenced": m.stats.files_referenced,
        "bytes_referenced": m.stats.bytes_referenced,
    })
}

fn size(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Lists the checkpoints of the job in `job_file`.
pub fn list(job_file: &Path, overrides: &[String], as_json: bool) -> anyhow::Result<ExitCode> {
    let job = match crate::job::load_job_file(job_file, overrides) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("weir: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let Some(cfg) = &job.checkpoint else {
        eprintln!(
            "weir: {}: the job has no [checkpoint] table, so it has no checkpoints",
            job_file.display()
        );
        return Ok(ExitCode::from(2));
    };
    let store = weir_storage::open_store_with(&cfg.storage, &job.name, &cfg.store)
        .with_context(|| format!("checkpoint.storage `{}`", cfg.storage))?;
    let mut ids = store.list().context("cannot list checkpoints")?;
    ids.sort_unstable();
    let mut rows = Vec::new();
    // Checkpoints whose files a complete checkpoint references.
    let mut referenced = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for id in ids {
        let location = store.location(id);
        let row = match store.get_metadata(id) {
            Ok(Some(bytes)) => match decode_metadata(&bytes) {
                Ok(m) => {
                    for f in m.files.iter().filter(|f| f.checkpoint != id) {
                        let by = referenced.entry(f.checkpoint).or_default();
                        if by.last() != Some(&id) {
                            by.push(id);
                        }
                    }
                    let mut v = metadata_json(&m, &location);
                    v["status"] = json!("completed");
                    v
                }
                Err(e) => {
                    json!({"id": id, "location": location, "status": "damaged", "error": e.to_string()})
                }
            },
            Ok(None) => json!({"id": id, "location": location, "status": "incomplete"}),
            Err(e) => {
                json!({"id": id, "location": location, "status": "unreadable", "error": e.to_string()})
            }
        };
        rows.push(row);
    }
    // A checkpoint deleted by retention keeps the files newer ones still reference.
    for r in &mut rows {
        let id = r["id"].as_u64().unwrap_or(0);
        if let Some(by) = referenced.get(&id) {
            if r["status"] == "incomplete" {
                r["status"] = json!("retired");
            }
            r["referenced_by"] = json!(by);
        }
    }
    if as_json {
        say!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        say!("no checkpoints of job `{}` in {}", job.name, cfg.storage);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:>6}  {:<11}  {:<24}  {:>9}  {:>7}  {:>7}  {:>10}  {:>5}  {:>10}  {:>8}  {:>14}",
        "id",
        "status",
        "completed at",
        "duration",
        "sync",
        "align",
        "size",
        "files",
        "uploaded",
        "requests",
        "referenced"
    );
    for r in &rows {
        let s = |k: &str| r.get(k).and_then(Value::as_u64);
        say!(
            "{:>6}  {:<11}  {:<24}  {:>9}  {:>7}  {:>7}  {:>10}  {:>5}  {:>10}  {:>8}  {:>14}",
            r["id"].as_u64().unwrap_or(0),
            r["status"].as_str().unwrap_or(""),
            r.get("completed_at").and_then(Value::as_str).unwrap_or("-"),
            s("duration_ms").map_or("-".into(), |v| format!("{v} ms")),
            s("sync_ms_max").map_or("-".into(), |v| format!("{v} ms")),
            s("alignment_ms_max").map_or("-".into(), |v| format!("{v} ms")),
            s("bytes").map_or("-".into(), size),
            s("files").map_or("-".into(), |v| v.to_string()),
            s("bytes_uploaded").map_or("-".into(), size),
            s("requests").map_or("-".into(), |v| v.to_string()),
            match (s("files_referenced"), s("bytes_referenced")) {
                (Some(0), _) => "-".to_string(),
                (Some(n), Some(b)) => format!("{n} ({})", size(b)),
                _ => "-".into(),
            },
        );
        if let Some(e) = r.get("error").and_then(Value::as_str) {
            say!("        {e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `inspect` reads a checkpoint from: a local directory, or a remote store (files are
/// downloaded to a temporary directory).
enum Source {
    Local(PathBuf),
    Remote {
        store: Box<dyn weir_storage::CheckpointStore>,
        id: u64,
        root: String,
        tmp: PathBuf,
    },
}

impl Source {
    fn open(path: &str) -> anyhow::Result<Source> {
        let expected = "expected `<storage>/<job>/chk-<id>`";
        if !path.starts_with("s3://") {
            let dir = PathBuf::from(path.strip_prefix("file://").unwrap_or(path));
            if !dir.is_dir() {
                bail!("`{path}` is not a checkpoint directory; {expected}");
            }
            return Ok(Source::Local(dir));
        }
        let trimmed = path.trim_end_matches('/');
        let mut parts = trimmed.rsplitn(3, '/');
        let (Some(chk), Some(job), Some(root)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("`{path}` is not a checkpoint path; {expected}");
        };
        let Some(id) = chk.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) else {
            bail!("`{path}` is not a checkpoint path; {expected}");
        };
        let store = weir_storage::open_store(root, job).with_context(|| format!("`{path}`"))?;
        let tmp = std::env::temp_dir().join(format!("weir-inspect-{}", std::process::id()));
        Ok(Source::Remote {
            store,
            id,
            root: format!("{root}/{job}"),
            tmp,
        })
    }

    /// Where file `name` of checkpoint `of` (this one if `None`) is, for messages.
    fn path(&self, name: &str, of: Option<u64>) -> String {
        match self {
            Source::Local(dir) => {
                let dir = match of {
                    Some(c) => dir
                        .parent()
                        .unwrap_or(Path::new("."))
                        .join(format!("chk-{c}")),
                    None => dir.clone(),
                };
                dir.join(name).display().to_string()
            }
            Source::Remote { root, id, .. } => format!("{root}/chk-{}/{name}", of.unwrap_or(*id)),
        }
    }

    fn metadata(&self) -> anyhow::Result<Vec<u8>> {
        match self {
            Source::Local(dir) => Ok(std::fs::read(dir.join("_metadata"))?),
            Source::Remote { store, id, .. } => store
                .get_metadata(*id)?
                .ok_or_else(|| anyhow::anyhow!("it does not exist")),
        }
    }

    fn file(&self, checkpoint: u64, name: &str) -> anyhow::Result<Snapshot> {
        match self {
            Source::Local(_) => {
                // Read, not mapped: a running job's retention may reuse the file of a
                // checkpoint it deletes meanwhile (a `file://` store links the job's local
                // copy, which becomes a spare file once the store's link is gone), and a
                // mapping must not change under the reader. Changed bytes fail the checks.
                let path = self.path(name, Some(checkpoint));
                let bytes = std::fs::read(&path).with_context(|| format!("`{path}`"))?;
                Ok(Snapshot::from_bytes(bytes).with_context(|| format!("`{path}`"))?)
            }
            Source::Remote { store, tmp, .. } => {
                let p = tmp.join(format!("chk-{checkpoint}")).join(name);
                store.get_file(checkpoint, name, &p)?;
                Ok(Snapshot::open(&p)?)
            }
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Remote { tmp, .. } = self {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

/// Shows one checkpoint directory: its metadata, operators, state sizes and source positions.
pub fn inspect(path: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let source = Source::open(path)?;
    let meta_path = source.path("_metadata", None);
    let bytes = source.metadata().with_context(|| {
        format!(
            "cannot read `{meta_path}`: a checkpoint without metadata is incomplete and cannot be restored"
        )
    })?;
    let m = decode_metadata(&bytes).with_context(|| format!("`{meta_path}` is damaged"))?;
    // Per operator: state bytes per subtask, and readable (JSON) states such as source positions.
    let mut ops: Vec<Value> = m
        .operators
        .iter()
        .map(|o| json!({"name": o.name, "parallelism": o.parallelism, "state_bytes": 0u64, "subtasks": []}))
        .collect();
    let mut files = Vec::new();
    for f in &m.files {
        let own = f.checkpoint == m.checkpoint_id;
        let p = source.path(&f.name, Some(f.checkpoint));
        let snap = source
            .file(f.checkpoint, &f.name)
            .with_context(|| format!("`{p}` is damaged or unreadable"))?;
        files.push(json!({
            "name": f.name,
            "checkpoint": f.checkpoint,
            "path": p,
            "referenced": !own,
            "worker": f.worker,
            "bytes": f.bytes,
            "crc32": format!("{:08x}", f.crc32),
        }));
        if !own {
            // State this checkpoint did not write; its sections count for the checkpoint
            // that wrote them.
            continue;
        }
        for (name, len) in snap.sections() {
            let mut parts = name.splitn(3, '/');
            let (Some(node), Some(subtask)) = (
                parts.next().and_then(|n| n.parse::<usize>().ok()),
                parts.next(),
            ) else {
                continue;
            };
            let Some(op) = ops.get_mut(node) else {
                continue;
            };
            op["state_bytes"] = json!(op["state_bytes"].as_u64().unwrap_or(0) + len);
            let data = snap.section(&name).ok().flatten().unwrap_or_default();
            let readable = serde_json::from_slice::<Value>(data)
                .ok()
                .filter(|v| v.is_object());
            let mut entry = json!({"subtask": subtask.parse::<u64>().unwrap_or(0), "bytes": len});
            if let Some(v) = readable {
                entry["position"] = v;
            }
            if let Some(a) = op["subtasks"].as_array_mut() {
                a.push(entry);
            }
        }
    }
    let mut out = metadata_json(&m, path);
    out["job"] = json!(m.job);
    out["max_parallelism"] = json!(m.max_parallelism);
    out["operators"] = Value::Array(ops);
    out["state_files"] = Value::Array(files);
    if as_json {
        say!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "checkpoint {} of job `{}` ({})",
        m.checkpoint_id,
        m.job,
        path
    );
    say!(
        "  completed at {}  duration {} ms  sync {} ms  async {} ms  alignment {} ms",
        fmt_ms(m.completed_at_ms),
        m.stats.duration_ms,
        m.stats.sync_ms_max,
        m.stats.async_ms_max,
        m.stats.alignment_ms_max,
    );
    say!(
        "  wrote {} in {} files ({} uploaded in {} requests); references {} files ({}) of earlier checkpoints",
        size(m.stats.bytes_written),
        m.stats.files_written,
        size(m.stats.bytes_uploaded),
        m.stats.requests,
        m.stats.files_referenced,
        size(m.stats.bytes_referenced),
    );
    say!("  operators:");
    for o in out["operators"].as_array().into_iter().flatten() {
        say!(
            "    {:<24} parallelism {:<3} state {} bytes",
            o["name"].as_str().unwrap_or(""),
            o["parallelism"],
            o["state_bytes"]
        );
        for s in o["subtasks"].as_array().into_iter().flatten() {
            if let Some(p) = s.get("position") {
                say!("      subtask {}: position {}", s["subtask"], p);
            }
        }
    }
    say!("  files:");
    for f in out["state_files"].as_array().into_iter().flatten() {
        say!(
            "    {}chk-{}/{} (worker {}, {} bytes, crc32 {})",
            if f["referenced"] == true {
                "referenced "
            } else {
                ""
            },
            f["checkpoint"],
            f["name"].as_str().unwrap_or(""),
            f["worker"],
            f["bytes"],
            f["crc32"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_utc_times() {
        assert_eq!(super::fmt_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::fmt_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(super::fmt_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
