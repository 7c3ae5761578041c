//! Checkpoints through the `weir` binary: damaged checkpoints are skipped with a warning,
//! unusable storage is refused before the job starts, `on_cancel` is honoured on SIGTERM, and
//! `weir checkpoints list/inspect` report what is stored.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn setup(dir: &Path, records: usize, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let mut text = String::new();
    for i in 0..records {
        text.push_str(&format!(
            "{{\"id\":{i},\"key\":\"k{}\",\"value\":{}}}\n",
            i % 17,
            1 + i % 5
        ));
    }
    std::fs::write(dir.join("in/a.jsonl"), text).unwrap();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "cj"
parallelism = 2
[source]
type = "file"
path = "in"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "file"
path = "out"
[checkpoint]
interval = "50ms"
storage = "store"
local_dir = "local"
{extra}
"#
        ),
    )
    .unwrap();
    job
}

/// Runs the job to its end; it must succeed.
fn run_ok(job: &Path) {
    let o = weir().arg("run").arg(job).arg("--quiet").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `weir checkpoints <cmd> <arg> --json`, which must succeed, parsed.
fn checkpoints_json<T: serde::de::DeserializeOwned>(cmd: &str, arg: &Path) -> T {
    let o = weir()
        .args(["checkpoints", cmd])
        .arg(arg)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `weir checkpoints <cmd> <arg>` as text.
fn checkpoints_text(cmd: &str, arg: &Path) -> String {
    let o = weir().args(["checkpoints", cmd]).arg(arg).output().unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value of `name=<n>` in a log line.
fn log_field(log: &str, name: &str) -> u64 {
    let at = log
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {log}"));
    log[at + name.len() + 1..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {log}"))
}

/// Ids of the complete checkpoints (those with metadata) in the store.
/// `weir run JOB --restore latest`.
fn restore_latest(job: &Path) -> Output {
    weir()
        .arg("run")
        .arg(job)
        .args(["--restore", "latest"])
        .output()
        .unwrap()
}

/// The files of `dir` with their bytes, by name (none if it does not exist).
fn list_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let bytes = std::fs::read(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), bytes)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn checkpoint_ids(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir.join("store/cj"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("_metadata").exists())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_prefix("chk-")
                        .and_then(|n| n.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

fn flip_byte(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x5a;
    std::fs::write(p, b).unwrap();
}

#[test]
fn damaged_checkpoints_are_skipped_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 20_000, "retained = 3");
    let o = weir().arg("run").arg(&job).arg("--quiet").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ids = checkpoint_ids(d.path());
    assert!(ids.len() >= 2 && ids.len() <= 3, "retained: {ids:?}");
    let (newest, previous) = (ids[ids.len() - 1], ids[ids.len() - 2]);
    // Corrupt the newest checkpoint's state file, in the store and in the local copy (once
    // when the store hard-linked the local file: they are then the same file).
    let store_file = d
        .path()
        .join(format!("store/cj/chk-{newest}/worker-0.snap"));
    let local_file = d
        .path()
        .join(format!("local/cj/chk-{newest}/worker-0.snap"));
    flip_byte(&store_file, 100);
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(&store_file).unwrap().ino()
        != std::fs::metadata(&local_file).unwrap().ino()
    {
        flip_byte(&local_file, 100);
    }
    let o = restore_latest(&job);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("skipping damaged checkpoint") && e.contains(&format!("chk-{newest}")),
        "{e}"
    );
    assert!(
        e.contains(&format!("restored from checkpoint {previous}")),
        "{e}"
    );

    // Truncated metadata of the now newest checkpoint is detected the same way.
    let ids = checkpoint_ids(d.path());
    let newest = *ids.last().unwrap();
    let meta = d.path().join(format!("store/cj/chk-{newest}/_metadata"));
    let len = std::fs::metadata(&meta).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&meta)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let o = restore_latest(&job);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("skipping damaged checkpoint") && e.contains("metadata"),
        "{e}"
    );

    // `checkpoints list` marks it damaged.
    let rows: Vec<Value> = checkpoints_json("list", &job);
    assert!(
        rows.iter()
            .any(|r| r["id"] == newest && r["status"] == "damaged"),
        "{rows:?}"
    );
}

/// A checkpoint whose file is gone from the store is damaged: skipped for the previous one. A
/// checkpoint the store cannot read (here: its metadata path is a directory, which no read
/// of a damaged file returns) fails the restore instead: falling back would repeat the output
/// committed since the older checkpoint, and starting fresh, all of it.
#[test]
fn unreadable_checkpoints_fail_the_restore_but_missing_files_fall_back() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 20_000, "retained = 3");
    run_ok(&job);
    let ids = checkpoint_ids(d.path());
    assert!(ids.len() >= 2, "{ids:?}");
    let (newest, previous) = (ids[ids.len() - 1], ids[ids.len() - 2]);
    let out_before = list_files(&d.path().join("out"));

    let meta = d.path().join(format!("store/cj/chk-{newest}/_metadata"));
    let saved = std::fs::read(&meta).unwrap();
    std::fs::remove_file(&meta).unwrap();
    std::fs::create_dir(&meta).unwrap();
    let o = restore_latest(&job);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("cannot read checkpoint")
            && e.contains(&format!("chk-{newest}"))
            && e.contains("--restore <path>")
            && !e.contains("skipping damaged checkpoint")
            && !e.contains("restored from checkpoint"),
        "{e}"
    );
    assert_eq!(list_files(&d.path().join("out")), out_before);

    std::fs::remove_dir(&meta).unwrap();
    std::fs::write(&meta, saved).unwrap();
    for root in ["store", "local"] {
        let f = d
            .path()
            .join(format!("{root}/cj/chk-{newest}/worker-0.snap"));
        let _ = std::fs::remove_file(f);
    }
    let o = restore_latest(&job);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(
        e.contains("skipping damaged checkpoint")
            && e.contains("does not exist")
            && e.contains(&format!("restored from checkpoint {previous}")),
        "{e}"
    );
}

/// The lines of every visible part file in `out`, sorted.
fn output_lines(out: &Path) -> Vec<String> {
    let mut lines: Vec<String> = list_files(out)
        .into_iter()
        .filter(|(name, _)| name.starts_with("part-"))
        .flat_map(|(_, b)| {
            String::from_utf8(b)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    lines
}

/// `--restore latest` that finds no checkpoint (here: deleted, as `on_cancel = "delete"` does)
/// starts from the beginning; its output would be numbered from checkpoint 1 again, over the
/// earlier run's files. It refuses to, naming them; with `overwrite = true` it replaces them.
#[test]
fn a_restore_that_finds_no_checkpoint_does_not_commit_over_earlier_output() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 20_000, "");
    run_ok(&job);
    let out = d.path().join("out");
    let first = output_lines(&out);
    assert_eq!(first.len(), 20_000);
    let before = list_files(&out);
    std::fs::remove_dir_all(d.path().join("store")).unwrap();
    std::fs::remove_dir_all(d.path().join("local")).unwrap();
    let o = restore_latest(&job);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("from an earlier run") && e.contains("overwrite = true"),
        "{e}"
    );
    assert_eq!(
        list_files(&out),
        before,
        "nothing committed over the old output"
    );

    let text = std::fs::read_to_string(&job).unwrap();
    std::fs::write(
        &job,
        text.replace("path = \"out\"", "path = \"out\"\noverwrite = true"),
    )
    .unwrap();
    let o = restore_latest(&job);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(output_lines(&out), first, "the same output, once");
}

#[test]
fn restoring_with_the_local_copy_deleted_downloads_from_the_store() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 10_000, "");
    run_ok(&job);
    std::fs::remove_dir_all(d.path().join("local")).unwrap();
    let o = weir()
        .arg("run")
        .arg(&job)
        .args(["--restore", "latest"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    assert!(e.contains("restoring from checkpoint"), "{e}");
    assert!(
        e.contains("local_files=0") && log_field(&e, "downloaded_files") >= 2,
        "{e}"
    );
    // A second restore finds the (re-created) local copies and reads nothing from the store.
    let o = weir()
        .arg("run")
        .arg(&job)
        .args(["--restore", "latest"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let e = stderr(&o);
    assert!(
        log_field(&e, "local_files") >= 2 && e.contains("downloaded_files=0"),
        "{e}"
    );
}

#[test]
fn unusable_storage_or_local_dir_is_refused_before_start() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("blocker"), "").unwrap();
    for (key, extra) in [
        ("checkpoint.storage", "storage = \"blocker/x\""),
        ("checkpoint.local_dir", "local_dir = \"blocker/y\""),
    ] {
        let job = setup(d.path(), 10, "");
        let text = std::fs::read_to_string(&job).unwrap();
        let field = key.strip_prefix("checkpoint.").unwrap();
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} =")))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            + extra
            + "\n";
        std::fs::write(&job, text).unwrap();
        let o = weir().arg("run").arg(&job).output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{key}: {e}");
        assert!(
            e.contains(key) && e.contains("not writable") && e.contains("job.toml"),
            "{key}: {e}"
        );
        let outputs = std::fs::read_dir(d.path().join("out"))
            .map(|r| r.count())
            .unwrap_or(0);
        assert_eq!(outputs, 0, "{key}: the job must not start");
    }
}

fn unbounded_job(dir: &Path, on_cancel: &str) -> PathBuf {
    let job = dir.join("u.toml");
    std::fs::write(
        &job,
        format!(
            "name = \"u\"\nparallelism = 2\n[source]\ntype = \"generator\"\nrate = 20000\n[[transform]]\ntype = \"key_by\"\nfield = \"key\"\n[[transform]]\ntype = \"count\"\nfield = \"n\"\n[sink]\ntype = \"file\"\npath = \"out\"\n[checkpoint]\ninterval = \"100ms\"\nstorage = \"store\"\nlocal_dir = \"local\"\non_cancel = \"{on_cancel}\"\n"
        ),
    )
    .unwrap();
    job
}

fn sigterm_after(job: &Path, after: Duration) -> Output {
    let child = weir()
        .arg("run")
        .arg(job)
        .arg("--quiet")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(after);
    assert!(Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    child.wait_with_output().unwrap()
}

#[test]
fn on_cancel_is_honoured_on_sigterm() {
    let d = tempfile::tempdir().unwrap();
    let job = unbounded_job(d.path(), "retain");
    let o = sigterm_after(&job, Duration::from_millis(1200));
    assert!(o.status.success(), "{}", stderr(&o));
    let kept = std::fs::read_dir(d.path().join("store/u")).unwrap().count();
    assert!(kept >= 1, "retain keeps checkpoints");
    // Output of a stopped job is complete and committed: counts per key have no gaps.
    let mut visible = 0;
    for e in std::fs::read_dir(d.path().join("out")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "uncommitted file left: {name}");
        visible += std::fs::read_to_string(e.path()).unwrap().lines().count();
    }
    assert!(visible > 1000);

    let d = tempfile::tempdir().unwrap();
    let job = unbounded_job(d.path(), "delete");
    let o = sigterm_after(&job, Duration::from_millis(1200));
    assert!(o.status.success(), "{}", stderr(&o));
    let left = std::fs::read_dir(d.path().join("store/u"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "delete removes every checkpoint");
    assert!(!d.path().join("local/u").exists());
}

#[test]
fn list_and_inspect_report_checkpoints() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 30_000, "");
    run_ok(&job);
    let rows: Vec<Value> = checkpoints_json("list", &job);
    assert!(!rows.is_empty());
    for r in &rows {
        if r["status"] == "retired" {
            // Deleted by retention; newer checkpoints still reference its files.
            assert!(!r["referenced_by"].as_array().unwrap().is_empty(), "{r}");
            continue;
        }
        assert_eq!(r["status"], "completed");
        for k in [
            "id",
            "completed_at",
            "duration_ms",
            "sync_ms_max",
            "alignment_ms_max",
            "bytes",
            "files",
            "bytes_uploaded",
            "requests",
            "files_referenced",
            "bytes_referenced",
        ] {
            assert!(!r[k].is_null(), "{k} missing in {r}");
        }
        assert_eq!(r["files"], 3, "one file per worker plus metadata");
    }
    let last = rows.last().unwrap();
    let path = d.path().join(format!("store/cj/chk-{}", last["id"]));
    let v: Value = checkpoints_json("inspect", &path);
    let ops = v["operators"].as_array().unwrap();
    let names: Vec<&str> = ops.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["file-source", "key_by", "sum", "file-sink"]);
    let sum = &ops[2];
    assert!(sum["state_bytes"].as_u64().unwrap() > 0);
    // The final checkpoint's source position is the end of the input.
    let positions: Vec<&Value> = ops[0]["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.get("position"))
        .collect();
    assert!(!positions.is_empty());
    let t = checkpoints_text("inspect", &path);
    assert!(t.contains("operators:") && t.contains("position"), "{t}");

    // Rerun from the last checkpoint: the state does not change, so the new (final)
    // checkpoint writes its two small files and references the keyed state written before.
    let o = weir()
        .arg("run")
        .arg(&job)
        .args(["--restore", "latest", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let newest = *checkpoint_ids(d.path()).last().unwrap();
    let path = d.path().join(format!("store/cj/chk-{newest}"));
    let v: Value = checkpoints_json("inspect", &path);
    assert!(v["files_referenced"].as_u64().unwrap() >= 1, "{v}");
    let files = v["state_files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["referenced"] == true && f["checkpoint"] != newest),
        "{v}"
    );
    assert!(
        v["bytes"].as_u64().unwrap() < v["bytes_referenced"].as_u64().unwrap(),
        "unchanged state is referenced, not written again: {v}"
    );
    let t = checkpoints_text("inspect", &path);
    assert!(t.contains("referenced chk-"), "{t}");
    // A directory without metadata is reported as incomplete.
    let bad = d.path().join("store/cj/chk-999");
    std::fs::create_dir_all(&bad).unwrap();
    let o = weir()
        .args(["checkpoints", "inspect"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("incomplete"), "{}", stderr(&o));
}

#[test]
fn restore_from_an_explicit_path_and_bad_paths() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 5_000, "");
    run_ok(&job);
    let id = *checkpoint_ids(d.path()).last().unwrap();
    let path = d.path().join(format!("store/cj/chk-{id}"));
    let o = weir()
        .arg("run")
        .arg(&job)
        .arg("--restore")
        .arg(&path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("restored from checkpoint {id}")),
        "{}",
        stderr(&o)
    );
    // Also as a file:// URI.
    let o = weir()
        .arg("run")
        .arg(&job)
        .arg("--restore")
        .arg(format!("file://{}", path.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    for (bad, expect) in [
        (d.path().join("store/cj/chk-424242"), "no metadata"),
        (d.path().join("store/cj/nope"), "not a checkpoint path"),
    ] {
        let o = weir()
            .arg("run")
            .arg(&job)
            .arg("--restore")
            .arg(&bad)
            .output()
            .unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        assert!(e.contains(expect) && e.contains("cannot restore"), "{e}");
    }
    // A job file without [checkpoint] cannot restore.
    let plain = d.path().join("plain.toml");
    let text = std::fs::read_to_string(&job).unwrap();
    let text = text.split("[checkpoint]").next().unwrap().to_string();
    std::fs::write(&plain, text).unwrap();
    let o = weir()
        .arg("run")
        .arg(&plain)
        .args(["--restore", "latest"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--restore needs checkpointing"),
        "{}",
        stderr(&o)
    );
}

/// A checkpoint taken with another parallelism is refused with a clear message (rescaling is
/// not supported yet), instead of restoring state into the wrong key groups.
#[test]
fn restoring_with_another_parallelism_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let job = setup(d.path(), 5_000, "");
    run_ok(&job);
    let o = weir()
        .arg("run")
        .arg(&job)
        .args(["--parallelism", "3", "--restore", "latest"])
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("rescaling is not supported yet")
            && e.contains("parallelism 2")
            && e.contains("parallelism 3"),
        "{e}"
    );
}
