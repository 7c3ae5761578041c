//! Checkpoint costs with large keyed state (about 1 GB encoded by default), measured in one run:
//!
//! 1. throughput of a keyed job with checkpoints every 1 s divided by the same job without
//!    checkpoints (target >= 0.95), for two workloads over the same 1 GB of state:
//!    - `hot-1pct`: once every key has its state, records go to a hot set of 1% of the keys
//!      that moves on to the next 1% every second (about 1% of the keys change per second,
//!      the shape of most large-state jobs: sessions, users, devices);
//!    - `all-keys`: records cycle through every key (every key changes every ~2 s), the worst
//!      case, where incremental checkpoints fall back to writing key groups in full;
//! 2. synchronous pause per checkpoint (max over workers), p99 (target <= 10 ms);
//! 3. snapshot write speed through the memory map vs a plain buffered write of the same bytes
//!    (target >= 0.8): the snapshot writers' steady state, over a spare file (a retired local
//!    copy, whose pages are still cached), and, reported beside it, into a new file;
//! 4. restore time of that state from the local copy (target <= 2 s), for the checkpoints of
//!    each workload (an incremental checkpoint restores its key groups' full copies plus their
//!    deltas).
//!
//! This machine class is noisy (the same run varies by up to a quarter from one job to the
//! next), so runs without and with checkpoints alternate (`WEIR_BENCH_ROUNDS` pairs, default 2;
//! odd rounds start without checkpoints, even rounds with them) and the ratio is that of the
//! medians; restores are timed 3 times and writes 5 times (medians). Each run also reports how
//! much of its memory got transparent huge pages. Full runs end with the speed at which fresh
//! memory is backed, on small and huge pages, cold (after 10 s idle) and warm: what a restore
//! pays to build its tables.
//!
//! Measured windows are the steady state: 20 s after a warm-up of 10 s (80 s with checkpoints,
//! so that local copies are recycled: see `run`).
//!
//! `cargo bench --bench checkpoint` (env: WEIR_BENCH_STORE=s3 to checkpoint to a local MinIO;
//! WEIR_BENCH_STATE_MB, default 1024; WEIR_BENCH_QUICK=1 for a small smoke run;
//! WEIR_BENCH_WORKLOADS=hot-1pct or all-keys for one workload (`none`: only the write speeds);
//! WEIR_BENCH_LAYOUTS=all-cores or io-core for one layout, default both: `all-cores` runs a
//! worker on every core and the snapshot writers share the cores with them, `io-core` reserves
//! one core for the writers (`io_cores = 1`) and runs a worker on each other core;
//! WEIR_BENCH_ROUNDS; WEIR_BENCH_WINDOWS=1 prints the monotonic clock readings of each
//! measured window and each restore, to cut a `perf record -k mono` profile to them;
//! WEIR_BENCH_RESTORES=<n> restores timed per case, default 3 (0 for throughput alone);
//! WEIR_BENCH_RESTORE_DIR=<dir> keeps the checkpoints in <dir>, or, if it exists, only times
//! restores from it; WEIR_BENCH_WARMUP=<seconds> sets the warm-up of runs with checkpoints
//! (default 80); WEIR_BENCH_SERIES=1 prints the bytes each checkpoint wrote since the load,
//! to see when full rewrites of key groups settle;
//! WEIR_BENCH_OUT for the results directory, default `target/bench-results`). Results:
//! `checkpoint.json` and `checkpoint.md`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// The allocator of the `weir` binary: large state tables on transparent huge pages.
#[global_allocator]
static ALLOC: weir::HugePageAlloc = weir::HugePageAlloc;

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

use common::median;

struct RunResult {
    records_per_s: f64,
    /// Records per second of the process's CPU time (user + system) in the window: unlike
    /// the rate, not lowered by time the VM's host takes the cores away (steal).
    records_per_cpu_s: f64,
    /// CPU time of the snapshot writer threads in the window, per checkpoint completed in it.
    writer_cpu_ms: f64,
    /// The process's memory on transparent huge pages at the end of the window (MB): runs of
    /// the same code differ by up to a quarter in throughput, and how much of the state got
    /// huge pages is one thing that differs between them.
    huge_mb: f64,
    sync_ms: Vec<f64>,
    durations_ms: Vec<f64>,
    bytes: Vec<u64>,
    referenced: Vec<u64>,
    uploaded: Vec<u64>,
    requests: Vec<u64>,
}

impl RunResult {
    /// The checkpoints of several runs together.
    fn merge(runs: &[RunResult]) -> RunResult {
        let cat = |f: fn(&RunResult) -> Vec<f64>| runs.iter().flat_map(f).collect();
        let cat_u =
            |f: fn(&RunResult) -> &Vec<u64>| runs.iter().flat_map(|r| f(r).clone()).collect();
        RunResult {
            records_per_s: median(runs.iter().map(|r| r.records_per_s).collect()),
            records_per_cpu_s: median(runs.iter().map(|r| r.records_per_cpu_s).collect()),
            writer_cpu_ms: median(runs.iter().map(|r| r.writer_cpu_ms).collect()),
            huge_mb: median(runs.iter().map(|r| r.huge_mb).collect()),
            sync_ms: cat(|r| r.sync_ms.clone()),
            durations_ms: cat(|r| r.durations_ms.clone()),
            bytes: cat_u(|r| &r.bytes),
            referenced: cat_u(|r| &r.referenced),
            uploaded: cat_u(|r| &r.uploaded),
            requests: cat_u(|r| &r.requests),
        }
    }
}

/// Which keys the records update once every key has state.
#[derive(Clone, Copy, PartialEq)]
enum Workload {
    /// A hot 1% of the keys, moving to the next 1% every second.
    Hot1Pct,
    /// Every key in turn.
    AllKeys,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Hot1Pct => "hot-1pct",
            Workload::AllKeys => "all-keys",
        }
    }
}

/// Where the job runs: how many workers, and how many cores are reserved for the snapshot
/// writers (`io_cores`).
#[derive(Clone, Copy, PartialEq)]
struct Layout {
    workers: usize,
    io_cores: usize,
}

impl Layout {
    /// `all-cores`: a worker on every core, the writers share the cores with them;
    /// `io-core`: one core reserved for the writers, a worker on each other core.
    fn named(name: &str, cores: usize) -> Option<Layout> {
        match name {
            "all-cores" => Some(Layout {
                workers: cores,
                io_cores: 0,
            }),
            "io-core" if cores >= 2 => Some(Layout {
                workers: cores - 1,
                io_cores: 1,
            }),
            _ => None,
        }
    }
    fn name(self) -> &'static str {
        if self.io_cores == 0 {
            "all-cores"
        } else {
            "io-core"
        }
    }
}

/// Moves the hot window once a second until it is set back to `LOADING`.
fn tick(window: &Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    window.store(0, Ordering::Relaxed);
    let w = window.clone();
    std::thread::spawn(move || {
        while w.load(Ordering::Relaxed) != LOADING {
            std::thread::sleep(Duration::from_secs(1));
            let _ = w.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v != LOADING).then_some(v + 1)
            });
        }
    })
}

/// The hot window's position while every key gets its first state.
const LOADING: u64 = u64::MAX;

fn env(layout: Layout) -> StreamEnv {
    StreamEnv::new(RuntimeConfig {
        workers: layout.workers,
        parallelism: layout.workers,
        io_cores: layout.io_cores,
        ..RuntimeConfig::default()
    })
}

/// `WEIR_BENCH_STORE=s3`: checkpoints go to a MinIO on loopback (started by
/// scripts/services/minio.sh), bucket `weir-bench`; otherwise to a local directory.
static S3: std::sync::OnceLock<Option<weir::S3Options>> = std::sync::OnceLock::new();

fn s3() -> Option<&'static weir::S3Options> {
    S3.get_or_init(|| {
        if std::env::var("WEIR_BENCH_STORE").ok().as_deref() != Some("s3") {
            return None;
        }
        Some(common::minio("weir-bench"))
    })
    .as_ref()
}

fn checkpoint_config(dir: &Path) -> CheckpointConfig {
    let mut c = match s3() {
        Some(o) => {
            // A fresh prefix per run directory.
            let mut c = CheckpointConfig::new(format!(
                "s3://weir-bench/{}-{}",
                std::process::id(),
                dir.file_name().unwrap().to_string_lossy()
            ));
            c.store.s3 = o.clone();
            c
        }
        None => CheckpointConfig::new(format!("file://{}", dir.join("store").display())),
    };
    c.interval = Duration::from_secs(1);
    c.local_dir = dir.join("local");
    c.retained = 1;
    c
}

/// Builds the job: `records` records over `keys` keys; each key holds a `State`.
fn build(env: &StreamEnv, keys: u64, records: u64, workload: Workload, window: Arc<AtomicU64>) {
    let hot = (keys / 100).max(1);
    let gen = Generator::new(move |i| {
        let w = window.load(Ordering::Relaxed);
        let key = if workload == Workload::AllKeys || w == LOADING {
            i % keys
        } else {
            (w * hot + i % hot) % keys
        };
        Rec { key, value: i }
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
fn run(
    dir: Option<&Path>,
    layout: Layout,
    keys: u64,
    window: Duration,
    workload: Workload,
) -> RunResult {
    let env = env(layout);
    if let Some(d) = dir {
        env.enable_checkpointing(checkpoint_config(d));
    }
    let hot = Arc::new(AtomicU64::new(LOADING));
    build(&env, keys, u64::MAX, workload, hot.clone());
    let h = env.start("bench").unwrap();
    while h.metrics().source_records() < keys {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ticker = tick(&hot);
    // Warm-up: 10 s; with checkpoints 80 s and at least 3 checkpoints after the load (the
    // first one writes all the state just loaded), so that what gets measured is the steady
    // state: deltas, with full rewrites of key groups spread over checkpoints once the deltas a
    // restore would apply reach their bound (after ~25 checkpoints at 2% of keys changing),
    // and local copies recycled. A local copy is retired (and becomes a spare file that a
    // later snapshot overwrites, its pages still cached) only once every key group it holds a
    // part of has been rewritten in full after it: up to `max_delta_chain` (64) checkpoints
    // after it was written. Until then each snapshot goes into a new file, whose pages the
    // kernel must allocate and zero (a quarter to half of the writer's time in profiles of
    // the first minute after the load).
    let loaded_at = h.checkpoints().len();
    let warm_up = Instant::now();
    let min = Duration::from_secs(if window.as_secs() > 5 { 10 } else { 2 });
    let min_with = match std::env::var("WEIR_BENCH_WARMUP")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(secs) if dir.is_some() => Duration::from_secs(secs),
        _ if dir.is_some() => 8 * min,
        _ => min,
    };
    while warm_up.elapsed() < min_with
        || (dir.is_some() && h.checkpoints().len() < loaded_at + 3 && warm_up.elapsed() < 16 * min)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (t0, r0, c0, cpu0, w0) = (
        Instant::now(),
        h.metrics().source_records(),
        h.checkpoints().len(),
        weir::nexmark::process_cpu_time(),
        threads_cpu_s(WRITER_THREADS),
    );
    std::thread::sleep(window);
    let (t1, r1, cpu1, w1) = (
        Instant::now(),
        h.metrics().source_records(),
        weir::nexmark::process_cpu_time(),
        threads_cpu_s(WRITER_THREADS),
    );
    if std::env::var_os("WEIR_BENCH_WINDOWS").is_some() {
        // CLOCK_MONOTONIC readings, to cut a `perf record -k mono` profile to the window.
        println!("    window {t0:?} .. {t1:?}");
    }
    let huge_mb = anon_huge_mb();
    if std::env::var_os("WEIR_BENCH_SERIES").is_some() {
        let all = h.checkpoints();
        let mb: Vec<String> = all
            .iter()
            .skip(loaded_at)
            .map(|c| format!("{:.0}", c.bytes as f64 / 1e6))
            .collect();
        println!("    MB per checkpoint since the load: {}", mb.join(" "));
    }
    let cps: Vec<_> = h.checkpoints().into_iter().skip(c0).collect();
    h.cancel();
    let _ = h.join();
    hot.store(LOADING, Ordering::Relaxed);
    let _ = ticker.join();
    RunResult {
        records_per_s: (r1 - r0) as f64 / (t1 - t0).as_secs_f64(),
        records_per_cpu_s: (r1 - r0) as f64 / (cpu1 - cpu0).as_secs_f64().max(1e-3),
        writer_cpu_ms: (w1 - w0) * 1e3 / cps.len().max(1) as f64,
        huge_mb,
        sync_ms: cps.iter().map(|c| c.sync_max.as_secs_f64() * 1e3).collect(),
        durations_ms: cps.iter().map(|c| c.duration.as_secs_f64() * 1e3).collect(),
        bytes: cps.iter().map(|c| c.bytes).collect(),
        referenced: cps.iter().map(|c| c.bytes_referenced).collect(),
        uploaded: cps.iter().map(|c| c.bytes_uploaded).collect(),
        requests: cps.iter().map(|c| c.requests).collect(),
    }
}

/// `AnonHugePages` of this process in MB, from `/proc/self/smaps_rollup` (0 where that is not
/// readable).
fn anon_huge_mb() -> f64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("AnonHugePages:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The snapshot writer threads' names (`weir-snapshot-writer-<w>`) as `/proc` shows them (15
/// bytes).
const WRITER_THREADS: &str = "weir-snapshot-w";

/// CPU time (user + system) of this process's threads whose name starts with `prefix`, from
/// `/proc/self/task/*/stat` (0 where that is not readable).
fn threads_cpu_s(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces, so split at the last `)`.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        // After the name: state is field 3, utime field 14 and stime field 15.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    // Clock ticks per second (`getconf CLK_TCK`; 100 on Linux unless configured otherwise).
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    });
    ticks as f64 / hz
}

/// Restores the job's latest checkpoint and returns the time until records flow again.
fn restore_time(dir: &Path, layout: Layout, keys: u64) -> (f64, u64) {
    let env = env(layout);
    env.enable_checkpointing(checkpoint_config(dir));
    env.restore_from(RestoreFrom::Latest);
    build(
        &env,
        keys,
        u64::MAX,
        Workload::AllKeys,
        Arc::new(AtomicU64::new(LOADING)),
    );
    let t = Instant::now();
    let h = env.start("bench").unwrap();
    let loaded = t.elapsed().as_secs_f64();
    let restored = h.restored_from().expect("a checkpoint to restore");
    while h.metrics().source_records() == 0 && !h.is_finished() {
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = t.elapsed().as_secs_f64();
    println!("    restore: files read and checked in {loaded:.2} s, state decoded by {secs:.2} s");
    if std::env::var_os("WEIR_BENCH_WINDOWS").is_some() {
        println!("    restore window {t:?} .. {:?}", Instant::now());
    }
    h.cancel();
    let _ = h.join();
    (secs, restored)
}

/// How fast this machine backs memory the process touches for the first time (bytes/s), on
/// ordinary 4 KiB pages and on transparent huge pages, right after the same amount was freed
/// ("warm") and after `idle` without it ("cold"). A restore in a new process builds its
/// tables in such memory (the bench's restores, in the process that ran the job, reuse the
/// tables it freed, which `HugePageAlloc` keeps for a while). On virtual machines that return
/// free memory to the host (free page reporting, which works on free blocks of 2 MiB and
/// more), cold huge pages can cost several times more to fault in than small ones. The maps
/// here are made directly, not through the allocator, so they are always fresh.
fn fresh_memory(bytes: usize, idle: Duration) -> FreshMemory {
    use memmap2::{Advice, MmapMut};
    let fill = |huge: bool| -> f64 {
        let mut m = MmapMut::map_anon(bytes).unwrap();
        if huge {
            // THP `madvise` mode (the usual default) needs the advice; `never` ignores it.
            let _ = m.advise(Advice::HugePage);
        }
        let t = Instant::now();
        m.fill(1);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(&m);
        bytes as f64 / secs
    };
    let cold_warm = |huge: bool, name: &str| {
        std::thread::sleep(idle);
        let (cold, warm) = (fill(huge), fill(huge));
        println!(
            "  fresh memory, {name}: {:.2} GB/s after {idle:?} idle, {:.2} GB/s right after a free",
            cold / 1e9,
            warm / 1e9
        );
        (cold, warm)
    };
    FreshMemory {
        small: cold_warm(false, "4 KiB pages"),
        huge: cold_warm(true, "huge pages"),
    }
}

/// [`fresh_memory`]'s fill speeds (bytes/s), each `(cold, warm)`.
struct FreshMemory {
    small: (f64, f64),
    huge: (f64, f64),
}

/// Write speeds (bytes/s, medians of 5): through the memory map into a new file, through the
/// memory map over a spare file (a retired local copy: what the snapshot writers do once
/// checkpoints retire files), and with plain buffered writes into a new file.
fn write_speeds(dir: &Path, mb: u64) -> (f64, f64, f64) {
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
    let (mut mmap, mut reusing, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    let spare = weir_storage::SpareFiles::new(dir.join("spare"), 1);
    let reused = |i: usize| dir.join(format!("r{i}.snap"));
    weir_storage::write_snapshot_mmap(&reused(9), &header, &sections).unwrap();
    spare.retire(&reused(9)).unwrap();
    for i in 0..5 {
        let p = dir.join(format!("m{i}.snap"));
        let t = Instant::now();
        weir_storage::write_snapshot_mmap(&p, &header, &sections).unwrap();
        mmap.push(total / t.elapsed().as_secs_f64());
        std::fs::remove_file(&p).unwrap();
        let t = Instant::now();
        weir_storage::write_snapshot_mmap_reusing(&reused(i), &header, &sections, Some(&spare))
            .unwrap();
        reusing.push(total / t.elapsed().as_secs_f64());
        assert!(
            spare.retire(&reused(i)).unwrap(),
            "the spare file comes back"
        );
        let p = dir.join(format!("b{i}.snap"));
        let t = Instant::now();
        weir_storage::write_snapshot_buffered(&p, &header, &sections).unwrap();
        plain.push(total / t.elapsed().as_secs_f64());
        std::fs::remove_file(&p).unwrap();
    }
    (median(mmap), median(reusing), median(plain))
}

/// Each round's ratio of throughputs with / without checkpoints (a pair runs back to back, so
/// slow drifts of the machine cancel within a pair but not between medians taken over minutes).
fn pair_ratios(with: &[f64], without: &[f64]) -> Vec<f64> {
    with.iter().zip(without).map(|(w, b)| w / b).collect()
}

/// The workload's name, with the layout when it is not the default one.
fn case_name(workload: Workload, layout: Layout) -> String {
    match layout.io_cores {
        0 => workload.name().to_string(),
        _ => format!("{} {}", workload.name(), layout.name()),
    }
}

/// One workload's figures in one layout.
struct Measured {
    workload: Workload,
    layout: Layout,
    /// Medians over the rounds (`with` also holds every round's checkpoints).
    base: RunResult,
    with: RunResult,
    base_rounds: Vec<f64>,
    with_rounds: Vec<f64>,
    restore_s: f64,
    restores: Vec<f64>,
    restored: u64,
}

impl Measured {
    fn ratio(&self) -> f64 {
        self.with.records_per_s / self.base.records_per_s
    }
    fn cpu_ratio(&self) -> f64 {
        self.with.records_per_cpu_s / self.base.records_per_cpu_s
    }
    fn name(&self) -> String {
        case_name(self.workload, self.layout)
    }
    fn pair_ratios(&self) -> Vec<f64> {
        pair_ratios(&self.with_rounds, &self.base_rounds)
    }
    fn mb(v: &[u64], p: f64) -> f64 {
        percentile(v.iter().map(|b| *b as f64 / 1e6).collect(), p)
    }
    fn json(&self) -> serde_json::Value {
        let w = &self.with;
        serde_json::json!({
            "workers": self.layout.workers,
            "io_cores": self.layout.io_cores,
            "throughput_without_checkpoints": self.base.records_per_s,
            "throughput_with_1s_checkpoints": w.records_per_s,
            "throughput_ratio": self.ratio(),
            "throughput_ratio_per_round": self.pair_ratios(),
            "throughput_ratio_median_of_rounds": median(self.pair_ratios()),
            "records_per_cpu_second_without_checkpoints": self.base.records_per_cpu_s,
            "records_per_cpu_second_with_1s_checkpoints": w.records_per_cpu_s,
            "records_per_cpu_second_ratio": self.cpu_ratio(),
            "writer_cpu_ms_per_checkpoint": w.writer_cpu_ms,
            "huge_page_mb_without_checkpoints": self.base.huge_mb,
            "huge_page_mb_with_1s_checkpoints": w.huge_mb,
            "rounds_without_checkpoints": self.base_rounds,
            "rounds_with_1s_checkpoints": self.with_rounds,
            "checkpoints": w.sync_ms.len(),
            "sync_pause_ms_p50": percentile(w.sync_ms.clone(), 0.5),
            "sync_pause_ms_p99": percentile(w.sync_ms.clone(), 0.99),
            "sync_pause_ms": w.sync_ms,
            "checkpoint_duration_ms_p50": percentile(w.durations_ms.clone(), 0.5),
            "checkpoint_duration_ms_p99": percentile(w.durations_ms.clone(), 0.99),
            "checkpoint_durations_ms": w.durations_ms,
            "bytes_written_per_checkpoint": w.bytes,
            "bytes_referenced_per_checkpoint": w.referenced,
            "bytes_uploaded_per_checkpoint": w.uploaded,
            "requests_per_checkpoint": w.requests,
            "restore_seconds_local": self.restore_s,
            "restore_seconds_local_runs": self.restores,
            "restored_checkpoint": self.restored,
        })
    }
    fn md_rows(&self) -> String {
        let w = &self.with;
        let n = self.name();
        format!(
            "| {n}: throughput with 1 s checkpoints / without (medians of {} rounds) | {:.3} ({:.2} / {:.2} M rec/s; per round {}) | >= 0.95 |\n\
             | {n}: records per CPU-second with 1 s checkpoints / without (medians) | {:.3} ({:.2} / {:.2} M) | |\n\
             | {n}: sync pause p99 (p50) | {:.2} ms ({:.2} ms) | <= 10 ms |\n\
             | {n}: checkpoint duration p50 / p99; snapshot writer CPU per checkpoint (median of rounds) | {:.0} / {:.0} ms; {:.1} ms | |\n\
             | {n}: written per checkpoint p50 (referenced) | {:.1} MB ({:.0} MB) | |\n\
             | {n}: uploaded per checkpoint p50, requests p50 / max | {:.1} MB, {:.0} / {:.0} | |\n\
             | {n}: restore from local copy, median ({}) | {:.2} s | <= 2 s |\n",
            self.with_rounds.len(),
            self.ratio(),
            w.records_per_s / 1e6,
            self.base.records_per_s / 1e6,
            self.pair_ratios()
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.cpu_ratio(),
            w.records_per_cpu_s / 1e6,
            self.base.records_per_cpu_s / 1e6,
            percentile(w.sync_ms.clone(), 0.99),
            percentile(w.sync_ms.clone(), 0.5),
            percentile(w.durations_ms.clone(), 0.5),
            percentile(w.durations_ms.clone(), 0.99),
            w.writer_cpu_ms,
            Self::mb(&w.bytes, 0.5),
            Self::mb(&w.referenced, 0.5),
            Self::mb(&w.uploaded, 0.5),
            percentile(w.requests.iter().map(|r| *r as f64).collect(), 0.5),
            percentile(w.requests.iter().map(|r| *r as f64).collect(), 1.0),
            self.restores
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.restore_s,
        )
    }
}

fn measure(
    tmp: &Path,
    layout: Layout,
    keys: u64,
    window: Duration,
    workload: Workload,
    rounds: usize,
) -> Measured {
    let name = case_name(workload, layout);
    // WEIR_BENCH_RESTORE_DIR=<dir>: the checkpoints go to <dir> and stay there; when <dir>
    // already holds some, the runs are skipped and only restores are timed (to compare
    // restore code on the same checkpoints).
    let kept = std::env::var_os("WEIR_BENCH_RESTORE_DIR").map(std::path::PathBuf::from);
    if let Some(d) = kept.as_ref().filter(|d| d.exists()) {
        let times: Vec<f64> = (0..rounds.max(3))
            .map(|_| restore_time(d, layout, keys).0)
            .collect();
        println!(
            "  {name}: restores only, median {:.2} s ({times:.2?})",
            median(times.clone())
        );
        std::process::exit(0);
    }
    let dir = kept
        .clone()
        .unwrap_or_else(|| tmp.join(name.replace(' ', "-")));
    let (mut bases, mut withs) = (Vec::new(), Vec::new());
    // Odd rounds run without checkpoints first, even rounds with them first: whatever drifts
    // over a run of several minutes (the host's load, memory the VM got back) then falls on
    // both sides alike instead of always on the second run of a pair.
    for round in 1..=rounds {
        for with_checkpoints in [round % 2 == 0, round % 2 == 1] {
            if !with_checkpoints {
                let base = run(None, layout, keys, window, workload);
                println!(
                    "  {name} round {round}: without checkpoints {:.2} M rec/s ({:.2} M per CPU-second); {:.0} MB on huge pages",
                    base.records_per_s / 1e6,
                    base.records_per_cpu_s / 1e6,
                    base.huge_mb,
                );
                bases.push(base);
                continue;
            }
            let _ = std::fs::remove_dir_all(&dir);
            let with = run(Some(&dir), layout, keys, window, workload);
            println!(
                "  {name} round {round}: with 1 s checkpoints {:.2} M rec/s ({:.2} M per CPU-second); {} checkpoints, written p50 {:.1} MB, referenced p50 {:.0} MB, writer CPU {:.1} ms per checkpoint; {:.0} MB on huge pages",
                with.records_per_s / 1e6,
                with.records_per_cpu_s / 1e6,
                with.sync_ms.len(),
                Measured::mb(&with.bytes, 0.5),
                Measured::mb(&with.referenced, 0.5),
                with.writer_cpu_ms,
                with.huge_mb,
            );
            withs.push(with);
        }
    }
    let (base, with) = (RunResult::merge(&bases), RunResult::merge(&withs));
    let base_rounds: Vec<f64> = bases.iter().map(|r| r.records_per_s).collect();
    let with_rounds: Vec<f64> = withs.iter().map(|r| r.records_per_s).collect();
    let pairs = pair_ratios(&with_rounds, &base_rounds);
    println!(
        "  {name}: ratio of medians {:.3} ({:.2} / {:.2} M rec/s); per round {:.2?}",
        with.records_per_s / base.records_per_s,
        with.records_per_s / 1e6,
        base.records_per_s / 1e6,
        pairs,
    );
    let cpu_pairs = pair_ratios(
        &withs
            .iter()
            .map(|r| r.records_per_cpu_s)
            .collect::<Vec<_>>(),
        &bases
            .iter()
            .map(|r| r.records_per_cpu_s)
            .collect::<Vec<_>>(),
    );
    println!(
        "  {name}: records per CPU-second, ratio of medians {:.3} ({:.2} / {:.2} M); per round {cpu_pairs:.2?}",
        with.records_per_cpu_s / base.records_per_cpu_s,
        with.records_per_cpu_s / 1e6,
        base.records_per_cpu_s / 1e6,
    );
    let mut longest = with.sync_ms.clone();
    longest.sort_by(|a, b| b.total_cmp(a));
    longest.truncate(3);
    println!(
        "  {name}: sync pause p50 {:.2} ms, p99 {:.2} ms (longest {longest:.2?}); checkpoint duration p50 {:.0} ms, p99 {:.0} ms",
        percentile(with.sync_ms.clone(), 0.5),
        percentile(with.sync_ms.clone(), 0.99),
        percentile(with.durations_ms.clone(), 0.5),
        percentile(with.durations_ms.clone(), 0.99),
    );
    // The last run's checkpoints, restored three times.
    let mut restores = Vec::new();
    let mut restored = 0;
    // WEIR_BENCH_RESTORES=0 skips them (comparisons of throughput alone).
    let restore_runs: usize = std::env::var("WEIR_BENCH_RESTORES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for _ in 0..restore_runs {
        let (s, id) = restore_time(&dir, layout, keys);
        restores.push(s);
        restored = id;
    }
    let restore_s = median(restores.clone());
    if restores.is_empty() {
        println!("  {name}: restores not timed (WEIR_BENCH_RESTORES=0)");
    } else {
        println!(
        "  {name}: restore of checkpoint {restored} from the local copy: median {restore_s:.2} s ({restores:.2?})"
    );
    }
    if kept.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Measured {
        workload,
        layout,
        base_rounds,
        with_rounds,
        base,
        with,
        restore_s,
        restores,
        restored,
    }
}

fn main() {
    let quick = std::env::var("WEIR_BENCH_QUICK").is_ok();
    let mb: u64 = std::env::var("WEIR_BENCH_STATE_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 16 } else { 1024 });
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // WEIR_BENCH_LAYOUTS=all-cores,io-core (comma-separated; both by default on 2+ cores).
    let layouts: Vec<Layout> = std::env::var("WEIR_BENCH_LAYOUTS")
        .unwrap_or_else(|_| "all-cores,io-core".into())
        .split(',')
        .filter_map(|n| {
            let l = Layout::named(n, cores);
            if l.is_none() {
                println!("layout `{n}` skipped: expected all-cores, or io-core on 2+ cores");
            }
            l
        })
        .collect();
    // ~64 encoded bytes per key.
    let keys = (mb << 20) / 64;
    let window = Duration::from_secs(if quick { 3 } else { 20 });
    let rounds: usize = std::env::var("WEIR_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 2 });
    let tmp = tempfile::tempdir().unwrap();

    println!(
        "state ~{mb} MB: {keys} keys, {cores} cores, steady-state window {window:?}, store {}",
        if s3().is_some() { "s3 (MinIO)" } else { "file" }
    );
    // WEIR_BENCH_WORKLOADS=hot-1pct (comma-separated) runs a subset.
    let only = std::env::var("WEIR_BENCH_WORKLOADS").ok();
    let results: Vec<Measured> = [Workload::Hot1Pct, Workload::AllKeys]
        .into_iter()
        .filter(|w| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == w.name()))
        })
        .flat_map(|w| layouts.iter().map(move |&l| (w, l)))
        .map(|(w, l)| measure(tmp.path(), l, keys, window, w, rounds))
        .collect();
    let (mmap, reusing, plain) = write_speeds(tmp.path(), mb.min(1024));
    // The target compares the snapshot writers' steady state (over spare files) with plain
    // writes of new files; the mmap write of a new file is reported beside it.
    let write_ratio = reusing / plain;
    let new_file_ratio = mmap / plain;
    println!(
        "  snapshot write: mmap over a spare file {:.0} MB/s, mmap into a new file {:.0} MB/s, buffered {:.0} MB/s; ratios {write_ratio:.2} (spare) and {new_file_ratio:.2} (new file)",
        reusing / 1e6,
        mmap / 1e6,
        plain / 1e6
    );

    // Not in quick runs: it idles for 20 s.
    let memory = (!quick).then(|| fresh_memory(1 << 30, Duration::from_secs(10)));

    let mut rows = serde_json::json!({
        "quick": quick,
        "state_mb_target": mb,
        "keys": keys,
        "window_seconds": window.as_secs(),
        "rounds": rounds,
        "cores": cores,
        "store": if s3().is_some() { "s3 (MinIO on loopback)" } else { "file" },
        "mmap_write_bytes_per_s": mmap,
        "mmap_spare_write_bytes_per_s": reusing,
        "buffered_write_bytes_per_s": plain,
        "mmap_vs_buffered": write_ratio,
        "mmap_new_file_vs_buffered": new_file_ratio,
        "targets": {"throughput_ratio": ">= 0.95", "sync_pause_ms_p99": "<= 10", "mmap_vs_buffered": ">= 0.8", "restore_seconds_local": "<= 2"},
    });
    if let Some(m) = &memory {
        rows["fresh_memory_bytes_per_s"] = serde_json::json!({
            "small_cold": m.small.0, "small_warm": m.small.1,
            "huge_cold": m.huge.0, "huge_warm": m.huge.1,
        });
    }
    let mut md = String::from("| metric | value | target |\n|---|---|---|\n");
    for r in &results {
        rows[r.name()] = r.json();
        md.push_str(&r.md_rows());
    }
    md.push_str(&format!(
        "| mmap write over a spare file / buffered write | {write_ratio:.2} ({:.0} / {:.0} MB/s) | >= 0.8 |\n| mmap write into a new file / buffered write | {new_file_ratio:.2} ({:.0} MB/s) | |\n",
        reusing / 1e6,
        plain / 1e6,
        mmap / 1e6
    ));
    if let Some(FreshMemory {
        small: (sc, sw),
        huge: (hc, hw),
    }) = memory
    {
        md.push_str(&format!(
            "| fresh memory filled, cold / warm: 4 KiB pages | {:.2} / {:.2} GB/s | |\n| fresh memory filled, cold / warm: huge pages | {:.2} / {:.2} GB/s | |\n",
            sc / 1e9,
            sw / 1e9,
            hc / 1e9,
            hw / 1e9
        ));
    }
    let out = common::out_dir();
    let name = if s3().is_some() {
        "checkpoint-s3"
    } else {
        "checkpoint"
    };
    std::fs::write(
        format!("{out}/{name}.json"),
        serde_json::to_string_pretty(&rows).unwrap(),
    )
    .unwrap();
    std::fs::write(format!("{out}/{name}.md"), md).unwrap();
    println!("results written to {out}/{name}.json and {name}.md");
}
