//! Kafka -> keyed running sum -> Kafka, end to end against the real broker started by
//! `scripts/services/kafka.sh`: the exactly-once sink (one transaction per subtask per
//! checkpoint) vs the at-least-once sink (flush at every barrier), at checkpoint intervals of
//! 100 ms, 1 s and 10 s. Target: exactly-once costs at most 3% at 1 s (ratio >= 0.97).
//!
//! Each run reads the same input topic (4 partitions, `WEIR_BENCH_RECORDS` JSON records,
//! default 3M) from the start to its end (`stop_at = "latest"`) into a fresh output topic, with
//! parallelism 2 on this machine's cores, which the broker shares. Throughput is input records
//! per second of the job's wall time. Runs alternate at-least-once / exactly-once
//! (`WEIR_BENCH_ROUNDS` rounds, default 2) and ratios are of the medians: the machine is noisy.
//!
//! `cargo bench --bench kafka` (WEIR_BENCH_QUICK=1: a small smoke run; WEIR_BENCH_INTERVALS,
//! e.g. `1s` or `100ms,1s`; WEIR_BENCH_OUT: the results directory, default
//! `target/bench-results`). Results: `kafka.json`, `kafka.md`.

use std::path::Path;

mod common;

use common::median;
use common::shared::kafka::{broker, create_topic, produce, sum_input, sum_job_toml, unique};
use weir::StreamEnv;

/// Runs the job once; returns input records per second.
fn run(dir: &Path, input: &str, semantics: &str, interval: &str) -> f64 {
    let b = broker();
    let output = unique("bench-out");
    create_topic(&b, &output, 4);
    let name = unique("bench");
    let text = sum_job_toml(&name, "", input, &output, semantics, interval, "");
    let job = weir::job::parse_job(&text, &dir.join("job.toml"), &[]).expect("bench job");
    let env = StreamEnv::new(weir::plan::runtime_config(&job, None));
    weir::plan::build(&job, &env, false).expect("build the bench job");
    let s = env.execute(&job.name).expect("bench job failed");
    s.records_in as f64 / s.duration.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes `--test`-less args.
    let quick =
        std::env::args().any(|a| a == "--test") || std::env::var("WEIR_BENCH_QUICK").is_ok();
    let records: u64 = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 3_000_000 });
    let rounds: usize = std::env::var("WEIR_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 2 });
    let b = broker();
    let input = unique("bench-in");
    create_topic(&b, &input, 4);
    let (recs, _) = sum_input(records);
    let t = std::time::Instant::now();
    produce(&b, &input, &recs, |_| None, |_| None);
    drop(recs);
    eprintln!("produced {records} input records in {:?}", t.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let intervals: Vec<String> = std::env::var("WEIR_BENCH_INTERVALS")
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_else(|_| vec!["100ms".into(), "1s".into(), "10s".into()]);
    let mut rows = Vec::new();
    let mut md = String::from(
        "| interval | at-least-once rec/s | exactly-once rec/s | exactly-once / at-least-once | target |\n|---|---|---|---|---|\n",
    );
    for interval in intervals.iter().map(String::as_str) {
        let (mut alo, mut eos) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // Alternate which goes first, so that drift in the machine's speed hits both.
            let order = if r % 2 == 0 {
                ["at-least-once", "exactly-once"]
            } else {
                ["exactly-once", "at-least-once"]
            };
            for sem in order {
                let d = dir.path().join(unique("run"));
                std::fs::create_dir_all(&d).unwrap();
                let rate = run(&d, &input, sem, interval);
                let _ = std::fs::remove_dir_all(&d);
                eprintln!("interval {interval} {sem}: {:.0} records/s", rate);
                if sem == "exactly-once" {
                    eos.push(rate);
                } else {
                    alo.push(rate);
                }
            }
        }
        let (a, e) = (median(alo.clone()), median(eos.clone()));
        let ratio = e / a;
        let target = (interval == "1s").then_some(0.97);
        md.push_str(&format!(
            "| {interval} | {a:.0} | {e:.0} | {ratio:.3} | {} |\n",
            target.map_or("-".to_string(), |t| format!(">= {t}"))
        ));
        rows.push(serde_json::json!({
            "interval": interval, "records": records, "rounds": rounds,
            "at_least_once_records_per_s": a, "exactly_once_records_per_s": e,
            "at_least_once_runs": alo, "exactly_once_runs": eos,
            "ratio": ratio, "target": target, "met": target.map(|t| ratio >= t),
        }));
    }
    let out = common::out_dir();
    let json = serde_json::json!({ "quick": quick, "results": rows });
    std::fs::write(
        format!("{out}/kafka.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    std::fs::write(format!("{out}/kafka.md"), &md).unwrap();
    println!("{md}");
}
