//! Checkpoint costs with large keyed state (about 1 GB encoded by default), measured in one run:
//!
//! 1. throughput of a keyed job with checkpoints every 1 s divided by the same job without
//!    checkpoints (target >= 0.95);
//! 2. synchronous pause per checkpoint (max over workers), p99 (target <= 10 ms);
//! 3. snapshot write speed through the memory map vs a plain buffered write of the same bytes
//!    (target >= 0.8);
//! 4. restore time of that state from the local copy (target <= 2 s).
//!
//! `cargo bench --bench checkpoint` (env: WEIR_BENCH_STATE_MB, default 1024; WEIR_BENCH_QUICK=1
//! for a small smoke run; WEIR_BENCH_OUT for the results directory, default
//! `target/bench-results`). Results: `checkpoint.json` and `checkpoint.md`.

use std::path::Path;
use std::time::{Duration, Instant};

use weir::connectors::{Blackhole, Generator};
use weir::{CheckpointConfig, RestoreFrom, RuntimeConfig, StreamEnv};

/// Per-key state: ~64 bytes encoded.
type State = (u64, u64, [u8; 24], [u8; 24]);

#[derive(Clone, Copy)]
struct Rec {
    key: u64,
    value: u64,
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

struct RunResult {
    records_per_s: f64,
    sync_ms: Vec<f64>,
    durations_ms: Vec<f64>,
    bytes: Vec<u64>,
}

fn env(workers: usize) -> StreamEnv {
    StreamEnv::new(RuntimeConfig {
        workers,
        parallelism: workers,
        ..RuntimeConfig::default()
    })
}

fn checkpoint_config(dir: &Path) -> CheckpointConfig {
    let mut c = CheckpointConfig::new(format!("file://{}", dir.join("store").display()));
    c.interval = Duration::from_secs(1);
    c.local_dir = dir.join("local");
    c.retained = 1;
    c
}

/// Builds the job: `records` records over `keys` keys; each key holds a `State`.
fn build(env: &StreamEnv, keys: u64, records: u64) {
    let gen = Generator::new(move |i| Rec {
        key: i % keys,
        value: i,
    })
    .count(records);
    env.source("gen", move |info| gen.reader(info))
        .key_by(|r: &Rec| r.key)
        .map_with_state("state", |s: &mut Option<State>, r: Rec| {
            let st = s.get_or_insert((0, 0, [7u8; 24], [9u8; 24]));
            st.0 += 1;
            st.1 = st.1.wrapping_add(r.value);
            st.2[(r.value % 24) as usize] ^= 1;
            Ok(Some(st.1))
        })
        .sink("blackhole", |_| Ok(Blackhole));
}

/// Runs the (unbounded) job, waits until every key has state plus a warm-up, then measures
/// the steady-state rate over `window`; checkpoints completed in the window are reported.
fn run(dir: Option<&Path>, workers: usize, keys: u64, window: Duration) -> RunResult {
    let env = env(workers);
    if let Some(d) = dir {
        env.enable_checkpointing(checkpoint_config(d));
    }
    build(&env, keys, u64::MAX);
    let h = env.start("bench").unwrap();
    while h.metrics().source_records() < keys {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(2));
    let (t0, r0, c0) = (
        Instant::now(),
        h.metrics().source_records(),
        h.checkpoints().len(),
    );
    std::thread::sleep(window);
    let (t1, r1) = (Instant::now(), h.metrics().source_records());
    let cps: Vec<_> = h.checkpoints().into_iter().skip(c0).collect();
    h.cancel();
    let _ = h.join();
    RunResult {
        records_per_s: (r1 - r0) as f64 / (t1 - t0).as_secs_f64(),
        sync_ms: cps.iter().map(|c| c.sync_max.as_secs_f64() * 1e3).collect(),
        durations_ms: cps.iter().map(|c| c.duration.as_secs_f64() * 1e3).collect(),
        bytes: cps.iter().map(|c| c.bytes).collect(),
    }
}

/// Restores the job's latest checkpoint and returns the time until records flow again.
fn restore_time(dir: &Path, workers: usize, keys: u64) -> (f64, u64) {
    let env = env(workers);
    env.enable_checkpointing(checkpoint_config(dir));
    env.restore_from(RestoreFrom::Latest);
    build(&env, keys, u64::MAX);
    let t = Instant::now();
    let h = env.start("bench").unwrap();
    let restored = h.restored_from().expect("a checkpoint to restore");
    while h.metrics().source_records() == 0 && !h.is_finished() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = t.elapsed().as_secs_f64();
    h.cancel();
    let _ = h.join();
    (secs, restored)
}

fn write_speeds(dir: &Path, mb: u64) -> (f64, f64) {
    // Sections like a worker's: 64 sections of keyed state.
    let section: Vec<u8> = (0..(mb << 20) / 64).map(|i| (i * 31 % 251) as u8).collect();
    let names: Vec<String> = (0..64).map(|i| format!("{i}/0/state")).collect();
    let sections: Vec<(&str, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), section.as_slice()))
        .collect();
    let header = weir_storage::SnapshotHeader {
        checkpoint_id: 1,
        worker: 0,
    };
    let total = (section.len() * 64) as f64;
    let mut mmap = Vec::new();
    let mut plain = Vec::new();
    for i in 0..3 {
        let p = dir.join(format!("m{i}.snap"));
        let t = Instant::now();
        weir_storage::write_snapshot_mmap(&p, &header, &sections).unwrap();
        mmap.push(total / t.elapsed().as_secs_f64());
        std::fs::remove_file(&p).unwrap();
        let p = dir.join(format!("b{i}.snap"));
        let t = Instant::now();
        weir_storage::write_snapshot_buffered(&p, &header, &sections).unwrap();
        plain.push(total / t.elapsed().as_secs_f64());
        std::fs::remove_file(&p).unwrap();
    }
    (percentile(mmap, 0.5), percentile(plain, 0.5))
}

fn main() {
    let quick = std::env::var("WEIR_BENCH_QUICK").is_ok();
    let mb: u64 = std::env::var("WEIR_BENCH_STATE_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 16 } else { 1024 });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // ~64 encoded bytes per key.
    let keys = (mb << 20) / 64;
    let window = Duration::from_secs(if quick { 3 } else { 15 });
    let tmp = tempfile::tempdir().unwrap();

    println!("state ~{mb} MB: {keys} keys, {workers} workers, steady-state window {window:?}");
    let base = run(None, workers, keys, window);
    println!(
        "  without checkpoints: {:.2} M rec/s",
        base.records_per_s / 1e6
    );
    let dir = tmp.path().join("job");
    let with = run(Some(&dir), workers, keys, window);
    let ratio = with.records_per_s / base.records_per_s;
    let state_bytes = with.bytes.last().copied().unwrap_or(0);
    println!(
        "  with 1 s checkpoints: {:.2} M rec/s (ratio {ratio:.3}); {} checkpoints of {:.0} MB",
        with.records_per_s / 1e6,
        with.sync_ms.len(),
        state_bytes as f64 / 1e6
    );
    let sync_p99 = percentile(with.sync_ms.clone(), 0.99);
    let sync_p50 = percentile(with.sync_ms.clone(), 0.5);
    let dur_p50 = percentile(with.durations_ms.clone(), 0.5);
    println!("  sync pause p50 {sync_p50:.2} ms, p99 {sync_p99:.2} ms; checkpoint duration p50 {dur_p50:.0} ms");
    let (restore_s, restored) = restore_time(&dir, workers, keys);
    println!("  restore of checkpoint {restored} from the local copy: {restore_s:.2} s");
    let (mmap, plain) = write_speeds(tmp.path(), mb.min(1024));
    let write_ratio = mmap / plain;
    println!(
        "  snapshot write: mmap {:.0} MB/s, buffered {:.0} MB/s, ratio {write_ratio:.2}",
        mmap / 1e6,
        plain / 1e6
    );

    let rows = serde_json::json!({
        "quick": quick,
        "state_mb_target": mb,
        "state_bytes_checkpoint": state_bytes,
        "keys": keys,
        "window_seconds": window.as_secs(),
        "workers": workers,
        "throughput_without_checkpoints": base.records_per_s,
        "throughput_with_1s_checkpoints": with.records_per_s,
        "throughput_ratio": ratio,
        "checkpoints": with.sync_ms.len(),
        "sync_pause_ms_p50": sync_p50,
        "sync_pause_ms_p99": sync_p99,
        "checkpoint_duration_ms_p50": dur_p50,
        "checkpoint_durations_ms": with.durations_ms,
        "restore_seconds_local": restore_s,
        "mmap_write_bytes_per_s": mmap,
        "buffered_write_bytes_per_s": plain,
        "mmap_vs_buffered": write_ratio,
        "targets": {"throughput_ratio": ">= 0.95", "sync_pause_ms_p99": "<= 10", "mmap_vs_buffered": ">= 0.8", "restore_seconds_local": "<= 2"},
    });
    let out = std::env::var("WEIR_BENCH_OUT")
        .unwrap_or_else(|_| format!("{}/target/bench-results", env!("CARGO_MANIFEST_DIR")));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        format!("{out}/checkpoint.json"),
        serde_json::to_string_pretty(&rows).unwrap(),
    )
    .unwrap();
    let md = format!(
        "| metric | value | target |\n|---|---|---|\n| state in checkpoint | {:.0} MB | ~1 GB |\n| throughput with 1 s checkpoints / without | {ratio:.3} ({:.2} / {:.2} M rec/s) | >= 0.95 |\n| sync pause p99 (p50) | {sync_p99:.2} ms ({sync_p50:.2} ms) | <= 10 ms |\n| checkpoint duration p50 | {dur_p50:.0} ms | |\n| mmap write / buffered write | {write_ratio:.2} ({:.0} / {:.0} MB/s) | >= 0.8 |\n| restore from local copy | {restore_s:.2} s | <= 2 s |\n",
        state_bytes as f64 / 1e6,
        with.records_per_s / 1e6,
        base.records_per_s / 1e6,
        mmap / 1e6,
        plain / 1e6
    );
    std::fs::write(format!("{out}/checkpoint.md"), md).unwrap();
    println!("results written to {out}/checkpoint.json and checkpoint.md");
}
