//! Crash loop: the `weir` binary runs a bounded file job (key_by + running sum, exactly-once
//! file sink, 150 ms checkpoints) and is killed with SIGKILL at random moments, then rerun with
//! `--restore latest`, at least 50 times (WEIR_CRASH_KILLS and WEIR_CRASH_RECORDS override;
//! scripts/soak-crash.sh runs longer). The visible output must then be exactly one consistent execution: every input
//! record once, and each key's running sums a prefix-sum sequence of exactly its records.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// xorshift: the test's own deterministic randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn write_input(dir: &Path, n: u64, files: u64) -> HashMap<u64, (String, u64)> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut texts = vec![String::new(); files as usize];
    let mut all = HashMap::new();
    for id in 0..n {
        let key = format!("k{}", rng.next() % 101);
        let value = 1 + rng.next() % 1000; // > 0: running sums strictly increase per key
        texts[(id % files) as usize].push_str(&format!(
            "{{\"id\":{id},\"key\":\"{key}\",\"value\":{value}}}\n"
        ));
        all.insert(id, (key, value));
    }
    for (i, t) in texts.iter().enumerate() {
        std::fs::write(dir.join(format!("in-{i:02}.jsonl")), t).unwrap();
    }
    all
}

/// Runs the job with `--restore latest` until it ends; it must succeed.
fn run_to_completion(job: &Path) {
    let o = weir()
        .arg("run")
        .arg(job)
        .args(["--quiet", "--restore", "latest"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn read_visible(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            out.push(
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("{name}: bad line {line:?}: {err}")),
            );
        }
    }
    out
}

/// Exactly-once check against the input.
fn check_exactly_once(out: &[Value], input: &HashMap<u64, (String, u64)>) {
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut per_key: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
    for r in out {
        let id = r["id"].as_u64().expect("id");
        let sum = r["value"].as_u64().expect("value");
        if let Some(prev) = seen.insert(id, sum) {
            panic!("record {id} appears twice in the output (sums {prev} and {sum})");
        }
        per_key
            .entry(r["key"].as_str().unwrap().to_string())
            .or_default()
            .push((sum, id));
    }
    let missing: Vec<u64> = input
        .keys()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{} input records missing from the output, e.g. {missing:?}",
        input.len() - seen.len()
    );
    assert_eq!(seen.len(), input.len());
    for (key, mut sums) in per_key {
        sums.sort_unstable();
        let mut prev = 0;
        for (sum, id) in sums {
            let (k, v) = &input[&id];
            assert_eq!(k, &key, "record {id} under the wrong key");
            assert_eq!(sum - prev, *v, "key {key}: running sum of record {id} is {sum}, previous {prev}, but its value is {v}");
            prev = sum;
        }
    }
}

type FileSet = std::collections::BTreeSet<(u64, String)>;

/// The snapshot files in `chk-*` directories under `job_dir`, as (checkpoint, name).
fn files_in(job_dir: &Path) -> FileSet {
    let mut out = FileSet::new();
    for e in std::fs::read_dir(job_dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        let id: u64 = name.strip_prefix("chk-").unwrap().parse().unwrap();
        for f in std::fs::read_dir(e.path()).unwrap().flatten() {
            let f = f.file_name().into_string().unwrap();
            if f != "_metadata" {
                out.insert((id, f));
            }
        }
    }
    out
}

/// The files the complete checkpoints under `job_dir` list in their metadata.
fn listed_files(job_dir: &Path) -> FileSet {
    let mut out = FileSet::new();
    for e in std::fs::read_dir(job_dir).unwrap().flatten() {
        let Ok(bytes) = std::fs::read(e.path().join("_metadata")) else {
            continue;
        };
        for f in weir_storage::decode_metadata(&bytes).unwrap().files {
            out.insert((f.checkpoint, f.name));
        }
    }
    out
}

#[test]
fn sigkill_crash_loop_keeps_output_exactly_once() {
    let kills: usize = std::env::var("WEIR_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let d = tempfile::tempdir().unwrap();
    let records: u64 = std::env::var("WEIR_CRASH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120_000);
    let input = write_input(&d.path().join("in"), records, 12);
    let job = d.path().join("job.toml");
    std::fs::write(
        &job,
        r#"
name = "crash"
parallelism = 2
batch_size = 256
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
interval = "150ms"
storage = "checkpoints"
local_dir = "local"
"#,
    )
    .unwrap();
    // A full run's length bounds where kills land.
    let t = Instant::now();
    run_to_completion(&job);
    let full = t.elapsed();
    check_exactly_once(&read_visible(&d.path().join("out")), &input);
    // Start over for the crash loop.
    std::fs::remove_dir_all(d.path().join("out")).unwrap();
    std::fs::remove_dir_all(d.path().join("checkpoints")).unwrap();
    std::fs::remove_dir_all(d.path().join("local")).unwrap();

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
        let _ = child.kill(); // SIGKILL
        let o = child.wait_with_output().unwrap();
        if o.status.success() {
            finished_early += 1;
            // It completed before the kill: start the next round from scratch so that kills keep
            // landing mid-run (a completed output must already be exact).
            check_exactly_once(&read_visible(&d.path().join("out")), &input);
            for sub in ["out", "checkpoints", "local"] {
                let _ = std::fs::remove_dir_all(d.path().join(sub));
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
    run_to_completion(&job);
    check_exactly_once(&read_visible(&d.path().join("out")), &input);
    // Rerunning a finished job from its latest checkpoint changes nothing.
    let before = read_visible(&d.path().join("out")).len();
    run_to_completion(&job);
    assert_eq!(read_visible(&d.path().join("out")).len(), before);
    // After all those crashes, the store and the local directory hold exactly the files the
    // retained checkpoints list: nothing orphaned, nothing missing.
    let listed = listed_files(&d.path().join("checkpoints/crash"));
    assert_eq!(
        files_in(&d.path().join("checkpoints/crash")),
        listed,
        "store"
    );
    let local = files_in(&d.path().join("local/crash"));
    assert!(
        local.is_subset(&listed),
        "local orphans: {:?}",
        local.difference(&listed)
    );
    eprintln!(
        "{kills} kills ({finished_early} runs finished before their kill); full run {full:?}"
    );
}
