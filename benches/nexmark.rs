//! The Nexmark suite: every query with checkpoints off, every 1 s and every 10 s; the state
//! size over time of the stateful queries; recovery after `kill -9` for the large-state
//! queries (q9, q18, q20). Results go to `docs/benchmarks/nexmark/` (override with
//! `WEIR_BENCH_OUT`): `nexmark.json`, `nexmark.md` and three SVG plots.
//!
//! `cargo bench --bench nexmark` (also `scripts/nexmark.sh`). Environment:
//! `WEIR_NEXMARK_EVENTS` (events per run, default 50 000 000), `WEIR_NEXMARK_QUERIES`
//! (comma-separated, default all), `WEIR_NEXMARK_ROUNDS` (runs per query and mode, default 1;
//! medians are reported), `WEIR_NEXMARK_RECOVERY=0` to skip the kill -9 runs,
//! `WEIR_NEXMARK_LOCAL_CACHE` (`checkpoint.local_cache` of the runs with checkpoints, e.g.
//! `0` or `512MiB`; default unlimited).
//!
//! Per-core throughput is events per CPU second of the whole process (workers, checkpoint
//! writers, coordinator): what the reference reports as throughput divided by cores used.
//! Each run is a `weir nexmark run --json` process of its own; every other round runs the
//! modes in reverse order.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde_json::{json, Value};
use weir::nexmark::queries::QUERIES;
use weir::nexmark::RunReport;

mod common;
use common::median;

/// Flink's published events per second per core (nexmark/nexmark GUIDE_V1: 8 x 1-slot
/// TaskManagers on 3 x 8-core machines, 10M events/s of event time, RocksDB).
const FLINK_PER_CORE: [(&str, f64); 16] = [
    ("q0", 155_020.0),
    ("q1", 157_940.0),
    ("q2", 175_210.0),
    ("q3", 152_120.0),
    ("q4", 34_330.0),
    ("q5", 22_140.0),
    ("q7", 12_330.0),
    ("q8", 146_140.0),
    ("q9", 14_240.0),
    ("q11", 39_700.0),
    ("q12", 75_670.0),
    ("q18", 53_700.0),
    ("q19", 44_040.0),
    ("q20", 18_980.0),
    ("q21", 98_490.0),
    ("q22", 129_960.0),
];

/// Feldera's published q0: about 1.4M events per CPU second.
const FELDERA_Q0_PER_CORE: f64 = 1_400_000.0;

const MODES: [(&str, Option<Duration>); 3] = [
    ("off", None),
    ("1s", Some(Duration::from_secs(1))),
    ("10s", Some(Duration::from_secs(10))),
];

/// Queries whose state grows or churns, plotted over time.
const STATEFUL: [&str; 10] = [
    "q3", "q4", "q5", "q7", "q8", "q9", "q11", "q18", "q19", "q20",
];

fn flink(q: &str) -> f64 {
    FLINK_PER_CORE
        .iter()
        .find(|(n, _)| *n == q)
        .map_or(f64::NAN, |(_, v)| *v)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `--local-cache` for the runs with checkpoints, from `WEIR_NEXMARK_LOCAL_CACHE` (checked
/// here, so that a bad value stops the suite at once).
fn local_cache() -> Option<String> {
    std::env::var("WEIR_NEXMARK_LOCAL_CACHE").ok().inspect(|v| {
        if let Err(e) = weir::job::parse_local_cache(v) {
            panic!("WEIR_NEXMARK_LOCAL_CACHE: {e}")
        }
    })
}

fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs one query in a `weir nexmark run --json` process of its own: every run measures the
/// shipped binary (its allocator included) and starts from a fresh process, not from the
/// heap and threads an earlier run left behind.
fn run(query: &str, events: u64, interval: Option<Duration>, dir: &Path) -> RunReport {
    let _ = std::fs::remove_dir_all(dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.args(["nexmark", "run", "--query", query, "--json"])
        .args(["--events", &events.to_string()])
        .arg("--checkpoint-dir")
        .arg(dir);
    if let Some(i) = interval {
        cmd.args(["--checkpoint-interval", &format!("{}ms", i.as_millis())]);
        if let Some(c) = local_cache() {
            cmd.args(["--local-cache", &c]);
        }
    }
    let out = cmd.output().expect("start weir");
    assert!(
        out.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{query}: --json output: {e}"))
}

struct QueryResult {
    query: String,
    /// Per mode: the runs.
    runs: Vec<(&'static str, Vec<RunReport>)>,
}

impl QueryResult {
    fn per_cpu(&self, mode: &str) -> f64 {
        median(
            self.reports(mode)
                .map(|r| r.events_per_cpu_second)
                .collect(),
        )
    }
    fn per_wall(&self, mode: &str) -> f64 {
        median(self.reports(mode).map(|r| r.events_per_second).collect())
    }
    fn reports<'a>(&'a self, mode: &'a str) -> impl Iterator<Item = &'a RunReport> + 'a {
        self.runs
            .iter()
            .filter(move |(m, _)| *m == mode)
            .flat_map(|(_, r)| r.iter())
    }
    /// Per round: events per CPU second in mode `a` divided by that in mode `b`.
    fn round_ratios(&self, a: &str, b: &str) -> Vec<f64> {
        self.reports(a)
            .zip(self.reports(b))
            .map(|(x, y)| x.events_per_cpu_second / y.events_per_cpu_second)
            .collect()
    }
    fn checkpoint_ms(&self, mode: &str, p99: bool) -> Option<f64> {
        let v: Vec<f64> = self
            .reports(mode)
            .filter_map(|r| {
                if p99 {
                    r.checkpoint_duration_p99_ms
                } else {
                    r.checkpoint_duration_p50_ms
                }
            })
            .collect();
        (!v.is_empty()).then(|| median(v))
    }
}

struct Recovery {
    query: String,
    killed_after_s: f64,
    restored_from: Option<u64>,
    restore_seconds: Option<f64>,
    rerun_wall_seconds: f64,
}

/// Runs `query` with 1 s checkpoints in a separate `weir` process, kills it with SIGKILL
/// after `kill_after`, then restarts it with `--restore-latest` and reports how long the
/// restore took until the job read events again.
fn recovery(query: &str, events: u64, kill_after: Duration, dir: &Path) -> Recovery {
    let _ = std::fs::remove_dir_all(dir);
    let bin = env!("CARGO_BIN_EXE_weir");
    let args = |restore: bool| {
        let mut a = vec![
            "nexmark".to_string(),
            "run".into(),
            "--query".into(),
            query.into(),
            "--events".into(),
            events.to_string(),
            "--checkpoint-interval".into(),
            "1s".into(),
            "--checkpoint-dir".into(),
            dir.display().to_string(),
            "--json".into(),
        ];
        if restore {
            a.push("--restore-latest".into());
        }
        a
    };
    let mut child = Command::new(bin)
        .args(args(false))
        .stdout(Stdio::null())
        .spawn()
        .expect("start weir");
    let t = Instant::now();
    std::thread::sleep(kill_after);
    let killed_after_s = t.elapsed().as_secs_f64();
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let t = Instant::now();
    let out = Command::new(bin)
        .args(args(true))
        .output()
        .expect("restart weir");
    let rerun_wall_seconds = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{query} restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json output");
    let _ = std::fs::remove_dir_all(dir);
    Recovery {
        query: query.to_string(),
        killed_after_s,
        restored_from: v["restored_from"].as_u64(),
        restore_seconds: v["restore_seconds"].as_f64(),
        rerun_wall_seconds,
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else {
        format!("{:.0}K", v / 1e3)
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn markdown(results: &[QueryResult], recoveries: &[Recovery], events: u64) -> String {
    let mut md = format!(
        "# Nexmark on Weir (`cargo bench --bench nexmark`)\n\n\
         {events} events per run at 10M events/s of event time (the reference's setting), \
         {w} workers and parallelism {w} on {w} cores; rows to a blackhole sink. Per core = \
         events per CPU second of the whole process. Checkpoints: local file store, \
         incremental, exactly-once. Each run is a `weir nexmark run` process of its own; every \
         other round runs the modes in reverse order. Medians of the rounds; `1 s / off` is \
         the ratio of the medians, and each round's own ratio follows it.\n\n\
         | query | off: per core | 1 s: per core | 10 s: per core | 1 s / off (per round) | checkpoint p50 / p99 (1 s) | Flink per core | 1 s vs Flink | target 10x Flink |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        w = workers()
    );
    for r in results {
        let (off, one, ten) = (r.per_cpu("off"), r.per_cpu("1s"), r.per_cpu("10s"));
        let f = flink(&r.query);
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} ({}) | {} / {} ms | {} | {:.0}x | {} |\n",
            r.query,
            fmt_rate(off),
            fmt_rate(one),
            fmt_rate(ten),
            one / off,
            r.round_ratios("1s", "off")
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            opt_ms(r.checkpoint_ms("1s", false)),
            opt_ms(r.checkpoint_ms("1s", true)),
            fmt_rate(f),
            one / f,
            if one >= 10.0 * f { "met" } else { "missed" },
        ));
    }
    if let Some(q0) = results.iter().find(|r| r.query == "q0") {
        md.push_str(&format!(
            "\nq0 against Feldera's ~1.4M events per CPU second: {:.1}x (target >= 2x).\n",
            q0.per_cpu("1s") / FELDERA_Q0_PER_CORE
        ));
    }
    md.push_str(
        "\nThroughput (events per second of wall time, all cores):\n\n\
         | query | off | 1 s | 10 s |\n|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.query,
            fmt_rate(r.per_wall("off")),
            fmt_rate(r.per_wall("1s")),
            fmt_rate(r.per_wall("10s"))
        ));
    }
    if !recoveries.is_empty() {
        md.push_str(
            "\nRecovery after `kill -9` (1 s checkpoints; restart with `--restore-latest`):\n\n\
             | query | killed after | restored checkpoint | restore until events flow | rerun to the end |\n\
             |---|---|---|---|---|\n",
        );
        for r in recoveries {
            md.push_str(&format!(
                "| {} | {:.1} s | {} | {} | {:.1} s |\n",
                r.query,
                r.killed_after_s,
                r.restored_from.map_or("none".into(), |c| c.to_string()),
                r.restore_seconds
                    .map_or("-".into(), |s| format!("{s:.2} s")),
                r.rerun_wall_seconds
            ));
        }
    }
    md.push_str(
        "\nPlots: `throughput.svg` (per core with 1 s checkpoints against 10x Flink), \
         `checkpoint-cost.svg` (1 s / off), `state.svg` (state size over time, 1 s \
         checkpoints).\n",
    );
    md
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// The name of the query drawn at `x` (queries sit at 0, 1, ...; nothing between them).
fn query_at(names: &[String], x: f64) -> String {
    let i = x.round();
    if (x - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn plot_throughput(path: &Path, results: &[QueryResult]) -> PlotResult {
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = results.len();
    let names: Vec<String> = results.iter().map(|r| r.query.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Nexmark on Weir: events per CPU second, 1 s checkpoints (bars) vs 10x Flink (dots)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, (1e4f64..1e8f64).log_scale())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| query_at(&names, *x))
        .y_desc("events per CPU second")
        .y_label_formatter(&|v| fmt_rate(*v))
        .draw()?;
    chart.draw_series(results.iter().enumerate().map(|(i, r)| {
        let x = i as f64;
        Rectangle::new(
            [(x - 0.35, 1e4), (x + 0.35, r.per_cpu("1s").max(1e4))],
            BLUE.mix(0.7).filled(),
        )
    }))?;
    chart.draw_series(
        results
            .iter()
            .enumerate()
            .map(|(i, r)| Circle::new((i as f64, 10.0 * flink(&r.query)), 5, RED.filled())),
    )?;
    root.present()?;
    Ok(())
}

fn plot_cost(path: &Path, results: &[QueryResult]) -> PlotResult {
    let root = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = results.len();
    let names: Vec<String> = results.iter().map(|r| r.query.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Cost of 1 s checkpoints: per-core throughput with / without (target line 0.95)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..1.3f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| query_at(&names, *x))
        .y_desc("1 s / off")
        .draw()?;
    chart.draw_series(results.iter().enumerate().map(|(i, r)| {
        let x = i as f64;
        let ratio = r.per_cpu("1s") / r.per_cpu("off");
        let color = if ratio >= 0.95 { GREEN } else { RED };
        Rectangle::new(
            [(x - 0.35, 0.0), (x + 0.35, ratio)],
            color.mix(0.7).filled(),
        )
    }))?;
    chart.draw_series(LineSeries::new(
        [(-0.5, 0.95), (n as f64 - 0.5, 0.95)],
        BLACK.stroke_width(1),
    ))?;
    root.present()?;
    Ok(())
}

fn plot_state(path: &Path, results: &[QueryResult]) -> PlotResult {
    let series: Vec<(&str, Vec<(f64, f64)>)> = results
        .iter()
        .filter(|r| STATEFUL.contains(&r.query.as_str()))
        .filter_map(|r| {
            let run = r.reports("1s").next()?;
            let pts: Vec<(f64, f64)> = run
                .state_bytes
                .iter()
                .map(|(t, b)| (*t, *b as f64 / 1e6))
                .collect();
            (!pts.is_empty()).then_some((r.query.as_str(), pts))
        })
        .collect();
    let max_t = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .fold(1.0, f64::max);
    let max_b = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, b)| *b))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1100, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "State size over time (checkpointed state, 1 s checkpoints)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..max_t * 1.05, 0f64..max_b * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("MB")
        .draw()?;
    for (i, (q, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*q)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // Quick mode (the test script): checks that the suite runs, on small inputs.
    let quick = env_u64("WEIR_BENCH_QUICK", 0) != 0;
    let events = env_u64(
        "WEIR_NEXMARK_EVENTS",
        if quick { 1_000_000 } else { 50_000_000 },
    );
    let rounds = env_u64("WEIR_NEXMARK_ROUNDS", 1).max(1);
    let queries: Vec<String> = match std::env::var("WEIR_NEXMARK_QUERIES") {
        Ok(q) => q.split(',').map(|s| s.trim().to_string()).collect(),
        Err(_) => QUERIES.iter().map(|s| s.to_string()).collect(),
    };
    let out = PathBuf::from(
        std::env::var("WEIR_BENCH_OUT")
            .unwrap_or_else(|_| format!("{}/docs/benchmarks/nexmark", env!("CARGO_MANIFEST_DIR"))),
    );
    std::fs::create_dir_all(&out).expect("create the results directory");
    let scratch = std::env::temp_dir().join(format!("weir-nexmark-bench-{}", std::process::id()));
    let mut results = Vec::new();
    for q in &queries {
        let mut runs: Vec<(&'static str, Vec<RunReport>)> =
            MODES.iter().map(|(m, _)| (*m, Vec::new())).collect();
        for round in 0..rounds {
            // Every other round runs the modes in reverse order, so that a machine that
            // slows down or speeds up during a query's runs favours no mode.
            let mut order: Vec<usize> = (0..MODES.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (mode, interval) = &MODES[i];
                let r = run(q, events, *interval, &scratch);
                println!(
                    "{q} {mode:>3}: {:.2} s, {} events/s, {} per CPU second, {} checkpoints (p50 {} ms)",
                    r.wall_seconds,
                    fmt_rate(r.events_per_second),
                    fmt_rate(r.events_per_cpu_second),
                    r.checkpoints,
                    opt_ms(r.checkpoint_duration_p50_ms),
                );
                runs[i].1.push(r);
            }
        }
        results.push(QueryResult {
            query: q.clone(),
            runs,
        });
    }
    let mut recoveries = Vec::new();
    if env_u64("WEIR_NEXMARK_RECOVERY", 1) != 0 {
        let (scale, kill_after) = if quick { (20, 2) } else { (1, 8) };
        for (q, n) in [("q9", 40_000_000), ("q18", 80_000_000), ("q20", 60_000_000)] {
            if queries.iter().any(|x| x == q) {
                let r = recovery(q, n / scale, Duration::from_secs(kill_after), &scratch);
                println!(
                    "{q} recovery: checkpoint {:?} restored, events flow after {:?} s",
                    r.restored_from, r.restore_seconds
                );
                recoveries.push(r);
            }
        }
    }
    let md = markdown(&results, &recoveries, events);
    let json = json!({
        "events": events,
        "workers": workers(),
        "rounds": rounds,
        "queries": results.iter().map(|r| json!({
            "query": r.query,
            "flink_per_core": flink(&r.query),
            "per_cpu_second": {"off": r.per_cpu("off"), "1s": r.per_cpu("1s"), "10s": r.per_cpu("10s")},
            "per_second": {"off": r.per_wall("off"), "1s": r.per_wall("1s"), "10s": r.per_wall("10s")},
            "runs": r.runs.iter().map(|(m, rs)| json!({"mode": m, "reports": rs})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "recovery": recoveries.iter().map(|r| json!({
            "query": r.query,
            "killed_after_s": r.killed_after_s,
            "restored_from": r.restored_from,
            "restore_seconds": r.restore_seconds,
            "rerun_wall_seconds": r.rerun_wall_seconds,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("nexmark.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .expect("write nexmark.json");
    std::fs::write(out.join("nexmark.md"), &md).expect("write nexmark.md");
    for (name, f) in [
        (
            "throughput.svg",
            plot_throughput as fn(&Path, &[QueryResult]) -> PlotResult,
        ),
        ("checkpoint-cost.svg", plot_cost),
        ("state.svg", plot_state),
    ] {
        if let Err(e) = f(&out.join(name), &results) {
            eprintln!("plot {name}: {e}");
        }
    }
    println!("{md}");
    println!("results written to {}", out.display());
}
