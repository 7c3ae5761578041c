//! Crash loops: the `weir` binary runs a bounded file job with an exactly-once file sink and
//! 150 ms checkpoints, and is killed with SIGKILL at random moments, then rerun with
//! `--restore latest`, at least 50 times (WEIR_CRASH_KILLS and WEIR_CRASH_RECORDS override;
//! scripts/soak-crash.sh runs longer); every fourth time it is stopped gracefully with SIGTERM
//! instead (final checkpoint, then `--restore latest` continues). The visible output must then
//! be exactly one consistent execution. Two jobs:
//! - key_by + running sum: every input record once, and each key's running sums a prefix-sum
//!   sequence of exactly its records;
//! - key_by + sliding event-time windows (sum per key and window, state in slices, the
//!   watermark in the checkpoint): every window of every key once, with the sum of exactly
//!   its records.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

fn kills() -> usize {
    std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

fn records(default: u64) -> u64 {
    std::env::var("WEIR_CRASH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `job` (in `d`, writing `out/`, checkpoints in `checkpoints/<name>`, local copies in
/// `local/`) once to completion, then `kills` times killed with SIGKILL at a random moment
/// and restarted with `--restore latest`, then to completion; `check` must accept the visible
/// output after the first and the last full run, and after every run that finished before its
/// kill. At the end the store and the local directory hold exactly the files the retained
/// checkpoints list.
fn crash_loop(d: &Path, job: &Path, name: &str, kills: usize, check: impl Fn(&[Value])) {
    // A full run's length bounds where kills land.
    let t = Instant::now();
    run_to_completion(job);
    let full = t.elapsed();
    check(&read_visible(&d.join("out")));
    // Start over for the crash loop.
    for sub in ["out", "checkpoints", "local"] {
        std::fs::remove_dir_all(d.join(sub)).unwrap();
    }

    let mut rng = Rng(42);
    let mut finished_early = 0;
    for i in 0..kills {
        let mut child = weir()
            .args([
                "run",
                job.to_str().unwrap(),
                "--quiet",
                "--restore",
                "latest",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Kill anywhere from start-up to the end of a run (later kills hit the final phase).
        let wait = Duration::from_millis(rng.next() % (full.as_millis() as u64 + 200).max(50));
        std::thread::sleep(wait);
        // Every fourth round stops gracefully instead (SIGTERM: a final checkpoint, output
        // committed, exit 0), which the next round's `--restore latest` continues.
        let graceful = i % 4 == 3;
        if graceful {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        } else {
            let _ = child.kill(); // SIGKILL
        }
        let o = child.wait_with_output().unwrap();
        if graceful {
            // Stopped (or finished) on its own terms, or killed by the signal before the
            // handler was installed.
            assert!(
                o.status.success() || o.status.code().is_none(),
                "round {i}: the job failed on SIGTERM: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        } else if o.status.success() {
            finished_early += 1;
            // It completed before the kill: start the next round from scratch so that kills keep
            // landing mid-run (a completed output must already be exact).
            check(&read_visible(&d.join("out")));
            for sub in ["out", "checkpoints", "local"] {
                let _ = std::fs::remove_dir_all(d.join(sub));
            }
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.code().is_none() || err.is_empty(),
                "round {i}: the job failed on its own instead of being killed: {err}"
            );
        }
    }
    // Final run to completion.
    run_to_completion(job);
    check(&read_visible(&d.join("out")));
    // Rerunning a finished job from its latest checkpoint changes nothing.
    let before = read_visible(&d.join("out")).len();
    run_to_completion(job);
    assert_eq!(read_visible(&d.join("out")).len(), before);
    // After all those crashes, the store and the local directory hold exactly the files the
    // retained checkpoints list: nothing orphaned, nothing missing.
    let store = d.join("checkpoints").join(name);
    assert_listing(
        "files in the store",
        &files_in(&store),
        &listed_files(&store),
        &d.join("local").join(name),
    );
    eprintln!(
        "{name}: {kills} kills ({finished_early} runs finished before their kill); full run {full:?}"
    );
}

#[test]
fn sigkill_crash_loop_keeps_output_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), records(120_000), 12);
    let job = sum_job(d.path(), "crash", "checkpoints");
    crash_loop(d.path(), &job, "crash", kills(), |out| {
        check_exactly_once(out, &input)
    });
}

/// Window size and slide of the sliding-window job, in event-time milliseconds.
const SIZE_MS: i64 = 100;
const SLIDE_MS: i64 = 40;

#[test]
fn sigkill_crash_loop_keeps_sliding_windows_exactly_once() {
    let d = tempfile::tempdir().unwrap();
    // Event time `ts` = id (ms), the ids spread over two files that each hold them in order:
    // with one file per source subtask no record is ever late, so the windows' contents do
    // not depend on timing, and any difference is a lost or repeated record or window.
    let n = records(100_000);
    let dir = d.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng(7);
    let mut texts = [String::new(), String::new()];
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for id in 0..n as i64 {
        let key = format!("k{}", rng.next() % 31);
        let value = 1 + rng.next() % 1000;
        texts[(id % 2) as usize].push_str(&format!(
            "{{\"id\":{id},\"key\":\"{key}\",\"value\":{value},\"ts\":{id}}}\n"
        ));
        // The windows holding `id`: those starting at multiples of the slide in
        // (id - size, id].
        let mut start = id - id.rem_euclid(SLIDE_MS);
        while start > id - SIZE_MS {
            *expected.entry((key.clone(), start)).or_default() += value;
            start -= SLIDE_MS;
        }
    }
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(dir.join(format!("in-{i}.jsonl")), t).unwrap();
    }
    let job = d.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "windows"
parallelism = 2
batch_size = 256
[source]
type = "file"
path = "in"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sliding"
size = "{SIZE_MS}ms"
slide = "{SLIDE_MS}ms"
time_field = "ts"
aggregate = "sum"
field = "value"
[sink]
type = "file"
path = "out"
[checkpoint]
interval = "150ms"
storage = "checkpoints"
local_dir = "local"
"#
        ),
    )
    .unwrap();
    crash_loop(d.path(), &job, "windows", kills(), |out| {
        let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for r in out {
            let k = (
                r["key"].as_str().expect("key").to_string(),
                r["window_start"].as_i64().expect("window_start"),
            );
            assert_eq!(
                r["window_end"].as_i64(),
                Some(k.1 + SIZE_MS),
                "window end of {r}"
            );
            let sum = r["sum"].as_f64().expect("sum");
            assert!(sum.fract() == 0.0 && sum > 0.0, "sum of {r}");
            if let Some(prev) = got.insert(k.clone(), sum as u64) {
                panic!("window {k:?} appears twice in the output (sums {prev} and {sum})");
            }
        }
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| !got.contains_key(k))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} windows missing from the output, e.g. {missing:?}",
            expected.len() - got.len().min(expected.len()),
            expected.len()
        );
        let wrong: Vec<_> = expected
            .iter()
            .filter(|(k, v)| got[*k] != **v)
            .take(5)
            .map(|(k, v)| (k, *v, got[k]))
            .collect();
        assert!(
            wrong.is_empty(),
            "windows with wrong sums (window, expected, got): {wrong:?}"
        );
        assert_eq!(got.len(), expected.len(), "windows that should not exist");
    });
}
