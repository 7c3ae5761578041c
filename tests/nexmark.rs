//! Every Nexmark query on Weir (2 workers, parallelism 2) against the plain sequential
//! reference of `weir::nexmark::reference`, on inputs small enough for the reference's
//! nested loops. The generator runs at 1000 events per second of event time, so that the
//! inputs span many 10 s windows and sessions, auctions stay open for seconds and collect
//! bids (at the benchmark's 10M events/s they last a few milliseconds).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use weir::nexmark::model::Event;
use weir::nexmark::queries::{self, Q19, Q4, Q9};
use weir::nexmark::{reference, GeneratorConfig, NexmarkGenerator};
use weir::{DataStream, RuntimeConfig, StreamEnv};

const EVENTS: u64 = 30_000;

fn config() -> GeneratorConfig {
    GeneratorConfig {
        event_rate: 1000.0,
        ..GeneratorConfig::default()
    }
}

fn events() -> Vec<Event> {
    let g = NexmarkGenerator::new(config());
    (0..EVENTS).map(|k| g.event(k)).collect()
}

/// Runs `query` on the generated events and returns every row it emitted.
fn run<T: Clone + Send + 'static>(query: fn(&DataStream<Event>) -> DataStream<T>) -> Vec<T> {
    let env = StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism: 2,
        ..Default::default()
    });
    // Subtasks kept close (a few batches apart), so the queries also run with sources that
    // wait for each other.
    let events = weir::nexmark::source(&env, NexmarkGenerator::new(config()), EVENTS, Some(2_000));
    let rows = query(&queries::with_event_time(&events)).collect();
    env.execute("nexmark-test").expect("job runs");
    rows.take()
}

fn counts<T: Hash + Eq>(rows: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
    let mut m = HashMap::new();
    for r in rows {
        *m.entry(r).or_default() += 1;
    }
    m
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

#[test]
fn stateless_queries_match_the_reference() {
    let ev = events();
    assert_eq!(sorted(run(queries::q0)), reference::q0(&ev));
    assert_eq!(sorted(run(queries::q1)), reference::q1(&ev));
    let q2 = sorted(run(queries::q2));
    assert!(!q2.is_empty());
    assert_eq!(q2, reference::q2(&ev));
    let q21 = sorted(run(queries::q21));
    assert!(q21.iter().any(|r| r.channel_id == "1") && q21.iter().any(|r| r.channel_id.len() > 3));
    assert_eq!(q21, reference::q21(&ev));
    assert_eq!(sorted(run(queries::q22)), reference::q22(&ev));
}

#[test]
fn q3_joins_sellers_and_auctions() {
    let rows = sorted(run(queries::q3));
    assert!(rows.len() > 10, "{} rows", rows.len());
    assert_eq!(rows, reference::q3(&events()));
}

#[test]
fn q4_averages_the_winning_prices_per_category() {
    let mut last: BTreeMap<i64, Q4> = BTreeMap::new();
    for r in run(queries::q4) {
        last.insert(r.category, r);
    }
    let want = reference::q4(&events());
    assert_eq!(want.len(), 5, "every category has auctions with bids");
    assert_eq!(last.into_values().collect::<Vec<_>>(), want);
}

#[test]
fn q5_finds_the_hot_items_of_each_sliding_window() {
    let rows = sorted(run(queries::q5));
    assert!(rows.len() > 20);
    assert_eq!(rows, reference::q5(&events()));
}

#[test]
fn q7_finds_the_highest_bids_of_each_window() {
    let rows = sorted(run(queries::q7));
    assert!(rows.len() >= 3);
    assert_eq!(rows, reference::q7(&events()));
}

#[test]
fn q8_finds_new_users_who_sold_in_the_same_window() {
    let rows = sorted(run(queries::q8));
    assert!(!rows.is_empty());
    assert_eq!(rows, reference::q8(&events()));
}

#[test]
fn q9_finds_each_auctions_winning_bid() {
    let mut last: BTreeMap<i64, Q9> = BTreeMap::new();
    for r in run(queries::q9) {
        assert!(r.bid.auction == r.auction.id);
        last.insert(r.auction.id, r);
    }
    let got: Vec<_> = last
        .values()
        .map(|r| (r.auction.id, r.bid.price, r.bid.date_time))
        .collect();
    let want = reference::q9(&events());
    assert!(want.len() > 100, "{} auctions with bids", want.len());
    assert_eq!(got, want);
}

#[test]
fn q11_counts_bids_per_session() {
    let rows = sorted(run(queries::q11));
    let want = reference::q11(&events());
    assert!(want.iter().any(|s| s.bid_count > 1) && want.len() > 100);
    assert_eq!(rows, want);
}

#[test]
fn q12_counts_every_bid_once() {
    let mut got: BTreeMap<i64, u64> = BTreeMap::new();
    for r in run(queries::q12) {
        assert_eq!(r.endtime - r.starttime, 10_000);
        *got.entry(r.bidder).or_default() += r.bid_count;
    }
    assert_eq!(got, reference::q12_bids_per_bidder(&events()));
}

#[test]
fn q18_keeps_the_last_bid_per_bidder_and_auction() {
    let mut last = BTreeMap::new();
    for b in run(queries::q18) {
        last.insert((b.bidder, b.auction), b.date_time);
    }
    let got: Vec<_> = last.into_iter().map(|((b, a), t)| (b, a, t)).collect();
    assert_eq!(got, reference::q18(&events()));
}

#[test]
fn q19_keeps_the_ten_highest_bids_per_auction() {
    let mut table: BTreeMap<(i64, u32), Q19> = BTreeMap::new();
    for r in run(queries::q19) {
        table.insert((r.bid.auction, r.rank_number), r);
    }
    let got: Vec<_> = table
        .values()
        .map(|r| (r.bid.auction, r.rank_number, r.bid.price))
        .collect();
    let want = reference::q19(&events());
    assert!(want.iter().any(|r| r.1 == 10));
    assert_eq!(got, want);
}

#[test]
fn q20_joins_bids_with_category_10_auctions() {
    let got = counts(run(queries::q20).into_iter().map(|r| {
        assert_eq!(r.auction.category, 10);
        assert_eq!(r.bid.auction, r.auction.id);
        (r.bid, r.auction.id)
    }));
    let want = counts(reference::q20(&events()));
    assert!(want.len() > 100);
    assert_eq!(got, want);
}

#[test]
fn generated_events_are_the_same_for_any_parallelism() {
    let env = StreamEnv::new(RuntimeConfig {
        workers: 2,
        parallelism: 3,
        ..Default::default()
    });
    // The subtasks may run at most 10 events apart: they wait for each other, and still
    // produce every event once.
    let rows =
        weir::nexmark::source(&env, NexmarkGenerator::new(config()), 5000, Some(10)).collect();
    env.execute("nexmark-gen").unwrap();
    let mut got = rows.take();
    got.sort_by_key(|e| (e.date_time(), e.to_json_line()));
    let mut want: Vec<Event> = events().into_iter().take(5000).collect();
    want.sort_by_key(|e| (e.date_time(), e.to_json_line()));
    assert_eq!(got, want);
}

/// Every line of `path`, parsed as JSON.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn weir() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[test]
fn generate_writes_the_events_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let out = weir()
        .args([
            "nexmark",
            "generate",
            "--events",
            "2000",
            "--event-rate",
            "1000",
        ])
        .arg("--output")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&path);
    assert_eq!(lines.len(), 2000);
    // The same events as the library generates, in order.
    let g = NexmarkGenerator::new(config());
    for (k, line) in lines.iter().enumerate() {
        let want: serde_json::Value =
            serde_json::from_str(&g.event(k as u64).to_json_line()).unwrap();
        assert_eq!(*line, want);
    }
    assert_eq!(lines[0]["event_type"], 1);
    assert_eq!(lines[0]["auction"]["id"], 1001);
    assert!(lines[0]["auction"]["expires"]
        .as_str()
        .unwrap()
        .starts_with("2020-09-13 "));
}

#[test]
fn run_reports_json_and_writes_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("q2.jsonl");
    let out = weir()
        .args(["nexmark", "run", "--query", "q2", "--events", "200000"])
        .args(["--checkpoint-interval", "50ms", "--json", "--workers", "2"])
        .arg("--output")
        .arg(&rows)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "query",
        "events",
        "wall_seconds",
        "cpu_seconds",
        "events_per_cpu_second",
        "checkpoints",
        "checkpoint_duration_p50_ms",
        "checkpoint_duration_p99_ms",
    ] {
        assert!(!r[key].is_null(), "{key} missing in {r}");
    }
    assert_eq!(r["query"], "q2");
    assert_eq!(r["events"], 200_000);
    assert!(r["checkpoints"].as_u64().unwrap() >= 1);
    // The CPU time is measured (getrusage), not left at zero.
    let cpu = r["cpu_seconds"].as_f64().unwrap();
    assert!(cpu > 0.0 && cpu < 600.0, "cpu_seconds {cpu}");
    assert!(r["events_per_cpu_second"].as_f64().unwrap() > 0.0, "{r}");
    let lines = json_lines(&rows);
    assert_eq!(lines.len() as u64, r["rows_out"].as_u64().unwrap());
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l["auction"].as_i64().unwrap() % 123 == 0));
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let out = weir()
        .args(["nexmark", "run", "--query", "q6", "--events", "10"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown Nexmark query `q6`") && err.contains("q22"),
        "{err}"
    );
    let out = weir()
        .args(["nexmark", "generate", "--events", "10", "--event-rate", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a positive number"));
}

/// `--io-cores N` reserves cores for the snapshot writers: the workers default to the other
/// cores, the report says so, and reserving every core is refused with the setting's name.
#[test]
fn io_cores_reserve_cores_for_the_snapshot_writers() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = |io: usize| {
        weir()
            .args(["nexmark", "run", "--query", "q18", "--events", "200000"])
            .args(["--checkpoint-interval", "50ms", "--json"])
            .args(["--io-cores", &io.to_string()])
            .output()
            .unwrap()
    };
    if cores >= 2 {
        let out = run(1);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["io_cores"], 1, "{r}");
        assert_eq!(r["workers"].as_u64(), Some(cores as u64 - 1), "{r}");
        assert!(r["checkpoints"].as_u64().unwrap() >= 1, "{r}");
    }
    let out = run(cores);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("io_cores") && err.contains("every one of"),
        "{err}"
    );
}

/// `--max-drift` aligns the source's subtasks by default and reports it; "none" turns it off;
/// anything else is refused with what was expected.
#[test]
fn max_drift_is_reported_and_checked() {
    let run = |extra: &[&str]| {
        weir()
            .args([
                "nexmark", "run", "--query", "q20", "--events", "100000", "--json",
            ])
            .args(["--workers", "2"])
            .args(extra)
            .output()
            .unwrap()
    };
    for (extra, want) in [
        (&[][..], serde_json::json!(100_000)),
        (&["--max-drift", "50"][..], serde_json::json!(50)),
        (&["--max-drift", "none"][..], serde_json::Value::Null),
    ] {
        let out = run(extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["max_drift"], want, "{r}");
        assert_eq!(r["events"], 100_000, "{r}");
    }
    let out = run(&["--max-drift", "soon"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a number of events"), "{err}");
}
