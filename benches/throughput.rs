//! Throughput per worker core vs a hand-written single-threaded loop doing the same work,
//! measured in the same run (ratios, since these machines are noisy).
//!
//! (a) generator -> map -> filter -> blackhole
//! (b) generator -> key_by -> running sum over 1M keys -> blackhole
//!
//! `cargo bench --bench throughput` (env: WEIR_BENCH_RECORDS, WEIR_BENCH_OUT). Results go to
//! `target/bench-results/throughput.json` and `.md` unless WEIR_BENCH_OUT names a directory.

use std::hint::black_box;
use std::time::Instant;

use rustc_hash::FxHashMap;
use weir::connectors::{Blackhole, Generator};
use weir::{RuntimeConfig, StreamEnv};

#[derive(Clone, Copy, Debug)]
struct Rec {
    #[allow(dead_code)] // carried like a real record's payload
    id: u64,
    key: u64,
    value: i64,
}

const KEYS: u64 = 1_000_000;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[inline]
fn gen(i: u64) -> Rec {
    let h = mix(i);
    Rec {
        id: i,
        key: h % KEYS,
        value: (h >> 40) as i64 % 1000,
    }
}

#[inline]
fn map_fn(r: Rec) -> Rec {
    Rec {
        value: r.value * 3 + 1,
        ..r
    }
}

#[inline]
fn filter_fn(r: &Rec) -> bool {
    r.value % 4 != 0
}

fn baseline_a(n: u64) -> f64 {
    let t = Instant::now();
    let mut kept = 0u64;
    for i in 0..n {
        let r = map_fn(gen(black_box(i)));
        if filter_fn(&r) {
            black_box(r);
            kept += 1;
        }
    }
    black_box(kept);
    n as f64 / t.elapsed().as_secs_f64()
}

fn baseline_b(n: u64) -> f64 {
    let t = Instant::now();
    let mut sums: FxHashMap<u64, i64> = FxHashMap::default();
    for i in 0..n {
        let mut r = gen(black_box(i));
        let s = sums.entry(r.key).or_insert(0);
        *s += r.value;
        r.value = *s;
        black_box(r);
    }
    black_box(sums.len());
    n as f64 / t.elapsed().as_secs_f64()
}

fn env(workers: usize) -> StreamEnv {
    StreamEnv::new(RuntimeConfig {
        workers,
        parallelism: workers,
        ..RuntimeConfig::default()
    })
}

fn engine_a(n: u64, workers: usize) -> f64 {
    let env = env(workers);
    let g = Generator::new(gen).count(n);
    env.source("gen", move |info| g.reader(info))
        .map(map_fn)
        .filter(filter_fn)
        .sink("blackhole", |_| Ok(Blackhole));
    let s = env.execute("bench-a").unwrap();
    assert_eq!(s.records_in, n);
    n as f64 / s.duration.as_secs_f64()
}

fn engine_b(n: u64, workers: usize) -> f64 {
    let env = env(workers);
    let g = Generator::new(gen).count(n);
    env.source("gen", move |info| g.reader(info))
        .key_by(|r: &Rec| r.key)
        .sum(|r: &mut Rec| &mut r.value)
        .sink("blackhole", |_| Ok(Blackhole));
    let s = env.execute("bench-b").unwrap();
    assert_eq!(s.records_out, n);
    n as f64 / s.duration.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we use.
    let quick =
        std::env::args().any(|a| a == "--test") || std::env::var("WEIR_BENCH_QUICK").is_ok();
    let records: Option<u64> = std::env::var("WEIR_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let runs = if quick { 1 } else { 3 };

    let mut rows = Vec::new();
    // Sized so that each engine run lasts around a second (startup is then negligible).
    for (name, target, full, base, eng) in [
        (
            "a: generator -> map -> filter -> blackhole",
            0.5,
            300_000_000u64,
            baseline_a as fn(u64) -> f64,
            engine_a as fn(u64, usize) -> f64,
        ),
        (
            "b: generator -> key_by -> running sum (1M keys) -> blackhole",
            0.3,
            30_000_000,
            baseline_b,
            engine_b,
        ),
    ] {
        let n = records.unwrap_or(if quick { 200_000 } else { full });
        // Interleave baseline and engine runs so that both see the same machine state.
        let mut b = Vec::new();
        let mut e = Vec::new();
        for _ in 0..runs {
            b.push(base(n));
            e.push(eng(n, workers));
        }
        let (b, e) = (median(b), median(e));
        let per_core = e / workers as f64;
        let ratio = per_core / b;
        println!(
            "{name}\n  baseline (1 thread): {:.2} M rec/s\n  engine ({workers} workers): {:.2} M rec/s = {:.2} M rec/s per core\n  ratio per core: {ratio:.2} (target >= {target})",
            b / 1e6,
            e / 1e6,
            per_core / 1e6
        );
        rows.push(serde_json::json!({
            "benchmark": name, "records": n, "workers": workers,
            "baseline_records_per_s": b, "engine_records_per_s": e,
            "engine_records_per_s_per_core": per_core, "ratio_per_core": ratio, "target": target,
            "met": ratio >= target,
        }));
    }
    let dir = std::env::var("WEIR_BENCH_OUT")
        .unwrap_or_else(|_| format!("{}/target/bench-results", env!("CARGO_MANIFEST_DIR")));
    std::fs::create_dir_all(&dir).expect("create results directory");
    let json = serde_json::json!({ "quick": quick, "results": rows });
    std::fs::write(
        format!("{dir}/throughput.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write results");
    let mut md = String::from("| benchmark | records | workers | baseline M/s | engine M/s | per core M/s | ratio | target |\n|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            r["benchmark"].as_str().unwrap(),
            r["records"],
            r["workers"],
            r["baseline_records_per_s"].as_f64().unwrap() / 1e6,
            r["engine_records_per_s"].as_f64().unwrap() / 1e6,
            r["engine_records_per_s_per_core"].as_f64().unwrap() / 1e6,
            r["ratio_per_core"].as_f64().unwrap(),
            r["target"]
        ));
    }
    std::fs::write(format!("{dir}/throughput.md"), md).expect("write results");
    println!("results written to {dir}/throughput.json and throughput.md");
}
