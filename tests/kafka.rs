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
    let job = dir.join("job.toml");
    let text = sum_job_toml(
        name,
        "batch_size = 256",
        input,
        output,
        semantics,
        "150ms",
        extra,
    );
    std::fs::write(&job, text).unwrap();
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
    // The Kafka key is the record's `key_field`.
    for (k, v) in read_raw(&broker(), &output, "read_committed") {
        let v: serde_json::Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(k.as_deref(), v["key"].as_str().map(str::as_bytes));
    }
}

#[test]
fn raw_bytes_through_the_rust_api() {
    use weir::connectors::kafka::{
        KafkaSink, KafkaSinkConfig, KafkaSource, KafkaSourceConfig, Semantics,
    };
    use weir::{RuntimeConfig, StreamEnv};
    let b = broker();
    let input = unique("raw-in");
    let output = unique("raw-out");
    create_topic(&b, &input, 2);
    create_topic(&b, &output, 2);
    let recs: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"key": format!("k{i}")}))
        .collect();
    produce(&b, &input, &recs, |_| None, |_| None);
    let env = StreamEnv::new(RuntimeConfig {
        parallelism: 2,
        ..RuntimeConfig::default()
    });
    let mut sc = KafkaSourceConfig::new(&b, &input);
    sc.stop_at_latest = true;
    let src = KafkaSource::new(sc);
    let mut kc = KafkaSinkConfig::new(&b, &output);
    kc.semantics = Semantics::AtLeastOnce;
    let sink = KafkaSink::new(kc);
    // Records are (key, value) byte pairs; the value is written back reversed.
    env.source("raw", move |info| {
        src.reader(
            info,
            Box::new(|m: &weir::connectors::kafka::KafkaMessage<'_>| {
                Ok(Some((m.key.map(<[u8]>::to_vec), m.value.to_vec())))
            }),
        )
    })
    .sink("raw-sink", move |info| {
        sink.writer(
            info,
            Box::new(|r: &(Option<Vec<u8>>, Vec<u8>), out: &mut Vec<u8>| {
                out.extend_from_slice(r.0.as_deref().unwrap_or_default());
                Ok(r.0.is_some())
            }),
            Box::new(|r: &(Option<Vec<u8>>, Vec<u8>), out: &mut Vec<u8>| {
                out.extend(r.1.iter().rev());
                Ok(())
            }),
        )
    });
    let summary = env.execute(&unique("raw-job")).unwrap();
    assert_eq!(summary.records_in, 100);
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = read_raw(&b, &output, "read_uncommitted")
        .into_iter()
        .map(|(k, v)| (k.unwrap(), v.into_iter().rev().collect()))
        .collect();
    got.sort();
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = recs
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().as_bytes().to_vec(),
                serde_json::to_vec(r).unwrap(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
}

/// The largest id of a completed checkpoint (its `_metadata` written) of the job in `dir`
/// (layout `<dir>/checkpoints/<job>/chk-<id>/_metadata`); 0 when there is none.
fn last_completed(dir: &Path) -> u64 {
    let Ok(jobs) = std::fs::read_dir(dir.join("checkpoints")) else {
        return 0;
    };
    let mut last = 0;
    for job in jobs.flatten() {
        for chk in std::fs::read_dir(job.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = chk.file_name();
            let id = name.to_str().and_then(|n| n.strip_prefix("chk-"));
            if let Some(id) = id.and_then(|i| i.parse::<u64>().ok()) {
                if chk.path().join("_metadata").exists() {
                    last = last.max(id);
                }
            }
        }
    }
    last
}

/// Runs `job` (with `--restore latest`) `rounds` times, each killed with SIGKILL at a point
/// chosen by progress, not by wall time (a loaded CI machine runs at any speed): in a third
/// of the rounds 50..350 ms after the start (during start-up or restore), otherwise 0..150 ms
/// after the run completed 1 or 2 new checkpoints. A run that ends before its kill must have
/// succeeded; `on_finished` then checks its output and starts over (fresh output topic and
/// checkpoints), so that later kills land mid-run again. Returns how many runs finished.
fn kill_loop(job: &Path, rounds: usize, seed: u64, mut on_finished: impl FnMut()) -> usize {
    let dir = job.parent().unwrap();
    let mut rng = Rng(seed);
    let mut finished = 0;
    for i in 0..rounds {
        let before = last_completed(dir);
        let wait_for = rng.next() % 3;
        let mut child = weir()
            .arg("run")
            .arg(job)
            .args(["--quiet", "--restore", "latest"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if wait_for == 0 {
            std::thread::sleep(Duration::from_millis(50 + rng.next() % 300));
        } else {
            let deadline = Instant::now() + Duration::from_secs(120);
            while last_completed(dir) < before + wait_for && child.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "round {i}: no {wait_for} checkpoints after chk-{before} within 120 s"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rng.next() % 150));
        }
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
    // One run without kills first.
    let t = Instant::now();
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let full = t.elapsed();
    check_exactly_once(&read_all(&broker(), &output, "read_committed"), &all);

    // Again from scratch into a fresh output topic, killed over and over.
    let output = std::cell::RefCell::new(start_over(d.path(), "eos-kill", &input, "exactly-once"));
    let n = kills();
    let finished = kill_loop(&job, n, 7, || {
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

/// Runs an exactly-once job named `name` until it aborts right before committing the
/// transaction of its second checkpoint (complete), rewrites its sink's `semantics` line to
/// `sink_line`, and reruns it with `--restore latest` to the end. Returns the output topic and
/// the input records.
fn crash_before_commit_then_rerun(
    dir: &Path,
    name: &str,
    sink_line: &str,
) -> (String, std::collections::HashMap<u64, (String, u64)>) {
    let (input, output, all) = topics(name, 4, 40_000);
    let job = kafka_sum_job(dir, name, &input, &output, "exactly-once", "");
    let o = run(
        &job,
        &[(weir::connectors::kafka::FAULT_KILL_BEFORE_COMMIT, "2")],
    );
    assert!(
        o.status.code().is_none(),
        "expected the injected abort, got: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let b = broker();
    let visible = read_all(&b, &output, "read_committed").len();
    let written = read_all(&b, &output, "read_uncommitted").len();
    assert!(written > visible, "no pre-committed output was left behind");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("semantics = \"exactly-once\"", sink_line);
    std::fs::write(&job, text).unwrap();
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (output, all)
}

/// A job whose checkpoint completed before its transaction was committed, restored with the
/// sink switched to at-least-once: the restore still commits that transaction (its records
/// are before the checkpoint's source positions, so nothing writes them again).
#[test]
fn switching_to_at_least_once_still_commits_the_restored_transactions() {
    let d = tempfile::tempdir().unwrap();
    let (output, all) =
        crash_before_commit_then_rerun(d.path(), "eos-to-alo", "semantics = \"at-least-once\"");
    check_at_least_once(&read_all(&broker(), &output, "read_committed"), &all);
}

/// The same crash, restored with another `transactional_id_prefix`: the restore commits the
/// checkpoint's transactions and aborts the old run's open ones under the old prefix too,
/// which would otherwise hide every later record from `read_committed` consumers until they
/// time out.
#[test]
fn a_changed_transactional_id_prefix_still_recovers_the_old_transactions() {
    let d = tempfile::tempdir().unwrap();
    let (output, all) = crash_before_commit_then_rerun(
        d.path(),
        "eos-prefix",
        "semantics = \"exactly-once\"\ntransactional_id_prefix = \"renamed\"",
    );
    check_exactly_once(&read_all(&broker(), &output, "read_committed"), &all);
}

#[test]
fn at_least_once_sink_loses_nothing_under_sigkills() {
    let d = tempfile::tempdir().unwrap();
    let (input, _, all) = topics("alo-kill", 4, 40_000);
    let output = start_over(d.path(), "alo-kill", &input, "at-least-once");
    let job = d.path().join("job.toml");
    let o = run(&job, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_at_least_once(&read_all(&broker(), &output, "read_uncommitted"), &all);
    let output = std::cell::RefCell::new(start_over(d.path(), "alo-kill", &input, "at-least-once"));
    let finished = kill_loop(&job, 10, 11, || {
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
    eprintln!(
        "{} records written for {} inputs; {finished} of 10 runs finished first",
        out.len(),
        all.len()
    );
}

/// Writes `<dir>/<name>.toml`: Kafka `topic` -> file sink in `<dir>/<name>-out`, with the
/// given extra source settings; checkpoints every 200 ms.
fn copy_job(dir: &Path, name: &str, topic: &str, source_extra: &str) -> PathBuf {
    let b = broker();
    let job = dir.join(format!("{name}.toml"));
    std::fs::write(
        &job,
        format!(
            r#"
name = "{name}"
parallelism = 2
[source]
type = "kafka"
brokers = "{b}"
topic = "{topic}"
{source_extra}
[sink]
type = "file"
path = "{name}-out"
[checkpoint]
interval = "200ms"
storage = "checkpoints"
local_dir = "local"
"#
        ),
    )
    .unwrap();
    job
}

fn ids(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = read_visible(dir)
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn source_start_positions() {
    let d = tempfile::tempdir().unwrap();
    let b = broker();
    let topic = unique("start");
    create_topic(&b, &topic, 2);
    let recs = |r: std::ops::Range<u64>, ts0: i64| -> Vec<serde_json::Value> {
        r.map(|id| serde_json::json!({"id": id, "key": format!("k{}", id % 5), "ts": ts0 + id as i64}))
            .collect()
    };
    let ts = |r: &serde_json::Value| r["ts"].as_i64();
    produce(&b, &topic, &recs(0..100, 1_000_000), |_| None, ts);
    let group = unique("g");
    // Runs a bounded job named `name` with the source keys `keys`; returns the ids it wrote.
    let read = |name: &str, keys: &str| -> Vec<u64> {
        let job = copy_job(
            d.path(),
            name,
            &topic,
            &format!("{keys}\nstop_at = \"latest\""),
        );
        let o = run(&job, &[]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        ids(&d.path().join(format!("{name}-out")))
    };
    // earliest: everything so far; its checkpoints commit offsets to the group.
    let earliest = format!("start = \"earliest\"\ngroup = \"{group}\"");
    assert_eq!(read("earliest", &earliest), (0..100).collect::<Vec<_>>());
    produce(&b, &topic, &recs(100..200, 2_000_000 - 100), |_| None, ts);
    // committed: where the group left off.
    let committed = format!("start = \"committed\"\ngroup = \"{group}\"");
    assert_eq!(
        read("committed", &committed),
        (100..200).collect::<Vec<_>>()
    );
    // a timestamp (milliseconds and RFC 3339): the first record at or after it.
    // Record id >= 100 has timestamp 2_000_000 + (id - 100).
    let from_150 = (150..200).collect::<Vec<_>>();
    assert_eq!(read("timestamp", "start = 2000050"), from_150);
    assert_eq!(
        read("rfc3339", "start = 1970-01-01T00:33:20.050Z"),
        from_150
    );
    // latest: nothing.
    assert!(read("latest", "start = \"latest\"").is_empty());
}

/// Sends SIGTERM (a graceful stop: final checkpoint, output committed).
fn terminate(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn latest_start_and_new_partitions_are_picked_up() {
    let d = tempfile::tempdir().unwrap();
    let b = broker();
    let topic = unique("grow");
    create_topic(&b, &topic, 2);
    let recs = |r: std::ops::Range<u64>| -> Vec<serde_json::Value> {
        r.map(|id| serde_json::json!({"id": id, "key": format!("k{id}")}))
            .collect()
    };
    // Before the job starts: not read with start = "latest".
    produce(&b, &topic, &recs(0..50), |_| None, |_| None);
    let job = copy_job(
        d.path(),
        "grow",
        &topic,
        "start = \"latest\"\npartition_discovery = \"500ms\"",
    );
    let mut child = Spawned::new(
        weir()
            .current_dir(d.path())
            .arg("run")
            .arg(&job)
            .args(["--quiet"])
            .stderr(Stdio::piped()),
    );
    // Wait until both subtasks hold their start positions (their first checkpoint).
    wait_for("the first checkpoint", Duration::from_secs(30), || {
        d.path().join("checkpoints/grow/chk-1/_metadata").exists()
    });
    produce(&b, &topic, &recs(50..150), |_| None, |_| None);
    let out = d.path().join("grow-out");
    wait_for("records 50..150", Duration::from_secs(60), || {
        ids(&out).len() >= 100
    });
    add_partitions(&b, &topic, 4);
    produce(
        &b,
        &topic,
        &recs(150..250),
        |r| Some(2 + (r["id"].as_u64().unwrap() % 2) as i32),
        |_| None,
    );
    wait_for(
        "records of the new partitions",
        Duration::from_secs(60),
        || ids(&out).len() >= 200,
    );
    terminate(&child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the job did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(ids(&out), (50..250).collect::<Vec<_>>());
}

#[test]
fn idle_partitions_do_not_hold_back_the_watermark() {
    use weir::connectors::kafka::{KafkaSource, KafkaSourceConfig};
    use weir::{Count, RuntimeConfig, StreamEnv, WindowAssigner};
    let b = broker();
    // Event times 1000..=5000 ms, all in partition 0; partition 1 (if any) stays empty.
    let recs: Vec<serde_json::Value> = (0..=40)
        .map(|i| serde_json::json!({"key": "a", "ts": 1000 + i * 100}))
        .collect();
    let topic_of = |partitions: i32| {
        let topic = unique("idle");
        create_topic(&b, &topic, partitions);
        produce(&b, &topic, &recs, |_| Some(0), |r| r["ts"].as_i64());
        topic
    };
    let two = topic_of(2);
    let one = topic_of(1);
    let windows_while_running = |topic: &str, parallelism: usize, idle: Option<Duration>| {
        let cfg = RuntimeConfig {
            parallelism,
            workers: parallelism,
            pin_workers: false,
            ..RuntimeConfig::default()
        };
        let env = StreamEnv::new(cfg);
        let mut sc = KafkaSourceConfig::new(&b, topic);
        sc.idle_timeout = idle;
        let src = KafkaSource::new(sc);
        let out = env
            .source("kafka", move |info| src.json_reader(info))
            .key_by(|r: &weir::connectors::JsonRecord| {
                r["key"].as_str().unwrap_or_default().to_string()
            })
            .window(WindowAssigner::tumbling(Duration::from_secs(1)))
            .aggregate("count", Count)
            .collect();
        let h = env.start(&unique("idle-job")).unwrap();
        // The windows can fire only once the source has read the records; on a loaded
        // machine that can take a while.
        wait_for("the records read", Duration::from_secs(60), || {
            h.metrics().source_records() >= 41
        });
        let mut fired = Vec::new();
        // Long enough for the windows to fire on a loaded machine when they can; the loop
        // ends as soon as all four did.
        let can_fire = idle.is_some() || parallelism > 1;
        let deadline = Instant::now() + Duration::from_secs(if can_fire { 20 } else { 3 });
        while Instant::now() < deadline && fired.len() < 4 {
            fired.extend(out.take());
            std::thread::sleep(Duration::from_millis(100));
        }
        let while_running = fired.len();
        h.stop();
        h.join().unwrap();
        // The end of input fires the rest.
        fired.extend(out.take());
        let counted: u64 = fired.iter().map(|w| w.value).sum();
        assert_eq!(counted, 41, "every record counted once");
        while_running.min(4)
    };
    // Without idleness the empty partition holds the watermark: nothing fires while running.
    assert_eq!(windows_while_running(&two, 1, None), 0);
    // With it, windows [1000,2000) .. [4000,5000) fire while the job runs.
    assert_eq!(
        windows_while_running(&two, 1, Some(Duration::from_millis(300))),
        4
    );
    // Two subtasks, one partition each: the one whose partition is empty goes idle as a
    // whole, and the window operator downstream no longer waits for it.
    assert_eq!(
        windows_while_running(&two, 2, Some(Duration::from_millis(300))),
        4
    );
    // A subtask that reads no partition at all is idle from the start, idle_timeout or not.
    assert_eq!(windows_while_running(&one, 2, None), 4);
}

#[test]
fn a_transaction_timeout_shorter_than_a_checkpoint_is_refused_before_the_start() {
    let d = tempfile::tempdir().unwrap();
    let job = kafka_sum_job(d.path(), "short-txn", "in", "out", "exactly-once", "");
    let text = std::fs::read_to_string(&job).unwrap().replace(
        "semantics = \"exactly-once\"",
        "semantics = \"exactly-once\"\ntransaction_timeout = \"1m\"",
    );
    std::fs::write(&job, text).unwrap();
    let o = weir().arg("run").arg(&job).arg("--quiet").output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sink.transaction_timeout")
            && err.contains("transaction timeout (60 s) must exceed")
            && err.contains("checkpoint timeout (600 s)"),
        "{err}"
    );
    assert!(!d.path().join("checkpoints").exists(), "nothing may run");

    // The default 15 min is refused when min_pause leaves barriers 4 min apart: a transaction
    // would be 4 min old at its barrier (240 + 600 + 1 + 60 + 10 s > 900 s).
    let job = kafka_sum_job(d.path(), "slow-txn", "in", "out", "exactly-once", "");
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("[checkpoint]", "[checkpoint]\nmin_pause = \"4m\"");
    std::fs::write(&job, text).unwrap();
    let o = weir().arg("run").arg(&job).arg("--quiet").output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("transaction timeout (900 s) must exceed")
            && err.contains("min_pause, the longer (240 s)"),
        "{err}"
    );
}
