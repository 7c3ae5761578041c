//! Kafka source and sink against a real broker (Apache Kafka in KRaft mode, started by
//! `scripts/services/kafka.sh`): exactly-once under SIGKILLs and under a crash between a
//! checkpoint's completion and its transaction's commit, at-least-once without loss, a broker
//! restart during a job, and the source's start positions, new partitions and watermarks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use common::kafka::*;
use common::*;

/// Writes `<dir>/job.toml`: Kafka `input` (bounded) -> key_by key -> running sum of value ->
/// Kafka `output` with `semantics`, 150 ms checkpoints.
fn kafka_sum_job(
    dir: &Path,
    name: &str,
    input: &str,
    output: &str,
    semantics: &str,
    extra: &str,
) -> PathBuf {
    let b = broker();
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "{name}"
parallelism = 2
batch_size = 256
[source]
type = "kafka"
brokers = "{b}"
topic = "{input}"
stop_at = "latest"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "kafka"
brokers = "{b}"
topic = "{output}"
key_field = "key"
semantics = "{semantics}"
[checkpoint]
interval = "150ms"
storage = "checkpoints"
local_dir = "local"
{extra}
"#
        ),
    )
    .unwrap();
    job
}

/// Input topic with `partitions` partitions holding `n` sum records, and an empty output
/// topic; returns their names and the input by id.
fn topics(
    name: &str,
    partitions: i32,
    n: u64,
) -> (
    String,
    String,
    std::collections::HashMap<u64, (String, u64)>,
) {
    let b = broker();
    let input = unique(&format!("{name}-in"));
    let output = unique(&format!("{name}-out"));
    create_topic(&b, &input, partitions);
    create_topic(&b, &output, partitions);
    let (recs, all) = sum_input(n);
    produce(&b, &input, &recs, |_| None, |_| None);
    (input, output, all)
}

fn run(job: &Path, envs: &[(&str, &str)]) -> std::process::Output {
    weir()
        .envs(envs.iter().copied())
        .arg("run")
        .arg(job)
        .args(["--quiet", "--restore", "latest"])
        .output()
        .unwrap()
}

#[test]
fn exactly_once_end_to_end_without_failures() {
    let d = tempfile::tempdir().unwrap();
    let (input, output, all) = topics("eos-plain", 4, 20_000);
    let job = kafka_sum_job(d.path(), "eos-plain", &input, &output, "exactly-once", "");
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_exactly_once(&read_all(&broker(), &output, "read_committed"), &all);
}

/// Runs `job` (with `--restore latest`) killed with SIGKILL after a random time in
/// `100..100 + max_ms` ms, `rounds` times. A run that ends before its kill must have succeeded;
/// `on_finished` then checks its output and starts over (fresh output topic and checkpoints),
/// so that later kills land mid-run again. Returns how many runs finished.
fn kill_loop(
    job: &Path,
    rounds: usize,
    max_ms: u64,
    seed: u64,
    mut on_finished: impl FnMut(),
) -> usize {
    let mut rng = Rng(seed);
    let mut finished = 0;
    for i in 0..rounds {
        let mut child = weir()
            .arg("run")
            .arg(job)
            .args(["--quiet", "--restore", "latest"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + rng.next() % max_ms));
        let _ = child.kill();
        let o = child.wait_with_output().unwrap();
        if o.status.success() {
            finished += 1;
            on_finished();
        } else {
            assert!(
                o.status.code().is_none(),
                "round {i}: the job failed on its own instead of being killed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    finished
}

/// Starts a job over: a fresh output topic (returned) and no checkpoints.
fn start_over(dir: &Path, name: &str, input: &str, semantics: &str) -> String {
    let output = unique(&format!("{name}-out"));
    create_topic(&broker(), &output, 4);
    for sub in ["checkpoints", "local"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
    kafka_sum_job(dir, name, input, &output, semantics, "");
    output
}

/// At-least-once check: every input record is in the output, and each key's largest running
/// sum is the sum of all its values (state is exactly-once even when output is not).
fn check_at_least_once(
    out: &[serde_json::Value],
    all: &std::collections::HashMap<u64, (String, u64)>,
) {
    let mut seen = std::collections::HashSet::new();
    let mut max_sum: std::collections::HashMap<String, u64> = Default::default();
    for r in out {
        seen.insert(r["id"].as_u64().unwrap());
        let m = max_sum
            .entry(r["key"].as_str().unwrap().to_string())
            .or_default();
        *m = (*m).max(r["value"].as_u64().unwrap());
    }
    let missing = all.keys().filter(|id| !seen.contains(id)).count();
    assert_eq!(missing, 0, "{missing} records lost");
    let mut total: std::collections::HashMap<String, u64> = Default::default();
    for (k, v) in all.values() {
        *total.entry(k.clone()).or_default() += v;
    }
    assert_eq!(max_sum, total);
}

fn kills() -> usize {
    std::env::var("WEIR_KAFKA_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

#[test]
fn exactly_once_survives_sigkills() {
    let d = tempfile::tempdir().unwrap();
    let (input, output, all) = topics("eos-kill", 4, 60_000);
    let job = kafka_sum_job(d.path(), "eos-kill", &input, &output, "exactly-once", "");
    // A full run's length bounds where the kills land.
    let t = Instant::now();
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t.elapsed();
    check_exactly_once(&read_all(&broker(), &output, "read_committed"), &all);

    // Again from scratch into a fresh output topic, killed over and over.
    let output = std::cell::RefCell::new(start_over(d.path(), "eos-kill", &input, "exactly-once"));
    let n = kills();
    let finished = kill_loop(&job, n, full.as_millis() as u64 * 7 / 10, 7, || {
        check_exactly_once(
            &read_all(&broker(), &output.borrow(), "read_committed"),
            &all,
        );
        *output.borrow_mut() = start_over(d.path(), "eos-kill", &input, "exactly-once");
    });
    let output = output.into_inner();
    // The issue's bar: at least 20 kills during processing (by default; WEIR_KAFKA_KILLS).
    assert!(
        n - finished >= (n * 2 / 3).min(20),
        "only {} of {n} runs were killed mid-run",
        n - finished
    );
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_exactly_once(&read_all(&broker(), &output, "read_committed"), &all);
    // Rerunning the finished job from its last checkpoint writes nothing more.
    let before = read_all(&broker(), &output, "read_committed").len();
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_all(&broker(), &output, "read_committed").len(), before);
    eprintln!("{n} kills ({finished} runs finished first); full run {full:?}");
}

#[test]
fn crash_after_checkpoint_completed_before_commit_loses_and_duplicates_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (input, output, all) = topics("eos-window", 4, 40_000);
    let job = kafka_sum_job(d.path(), "eos-window", &input, &output, "exactly-once", "");
    let b = broker();
    let mut committed_before = 0;
    for k in [2u64, 4, 7] {
        // The process aborts right before committing the transaction of the first completed
        // checkpoint >= k (its metadata is written: the checkpoint is complete).
        let o = run(
            &job,
            &[(
                weir::connectors::kafka::FAULT_KILL_BEFORE_COMMIT,
                &k.to_string(),
            )],
        );
        if o.status.success() {
            // The job finished before reaching checkpoint k; nothing more to inject.
            break;
        }
        assert!(
            o.status.code().is_none(),
            "expected the injected abort, got: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("fault injection"), "{stderr}");
        // The restored run commits that pre-committed transaction first.
        let visible = read_all(&b, &output, "read_committed").len();
        assert!(visible >= committed_before, "committed output shrank");
        committed_before = visible;
        let uncommitted = read_all(&b, &output, "read_uncommitted").len();
        assert!(
            uncommitted > visible,
            "the crash left no pre-committed output behind ({uncommitted} records written, {visible} committed); the test injected nothing"
        );
    }
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_exactly_once(&read_all(&b, &output, "read_committed"), &all);
}

#[test]
fn at_least_once_sink_loses_nothing_under_sigkills() {
    let d = tempfile::tempdir().unwrap();
    let (input, _, all) = topics("alo-kill", 4, 40_000);
    let t = Instant::now();
    let output = start_over(d.path(), "alo-kill", &input, "at-least-once");
    let job = d.path().join("job.toml");
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t.elapsed();
    check_at_least_once(&read_all(&broker(), &output, "read_uncommitted"), &all);
    let output = std::cell::RefCell::new(start_over(d.path(), "alo-kill", &input, "at-least-once"));
    let finished = kill_loop(&job, 10, full.as_millis() as u64 * 7 / 10, 11, || {
        check_at_least_once(
            &read_all(&broker(), &output.borrow(), "read_uncommitted"),
            &all,
        );
        *output.borrow_mut() = start_over(d.path(), "alo-kill", &input, "at-least-once");
    });
    assert!(
        finished <= 5,
        "{finished} of 10 runs finished before their kill"
    );
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = read_all(&broker(), &output.borrow(), "read_uncommitted");
    check_at_least_once(&out, &all);
    eprintln!("{} records written for {} inputs", out.len(), all.len());
}
