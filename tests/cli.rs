//! The `weir` binary end to end on files: results equal a sequential reference, and bad job
//! files are rejected before the job starts with the documented messages.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn run(job: &Path, args: &[&str]) -> Output {
    weir()
        .arg("run")
        .arg(job)
        .args(args)
        .output()
        .expect("run weir")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Visible output records of a file sink (files not starting with `.` or `_`).
fn read_output(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with('_') {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            out.push(serde_json::from_str(line).unwrap());
        }
    }
    out
}

fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.starts_with('_'))
        .collect()
}

/// Deterministic pseudo-random input spread over several files.
fn write_input(dir: &Path, n: usize, keys: u64) -> Vec<Value> {
    std::fs::create_dir_all(dir).unwrap();
    let mut all = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut files: Vec<String> = vec![String::new(); 5];
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let rec = json!({"id": i, "key": format!("k{}", x % keys), "value": (x >> 20) % 1000, "ts": i as u64 * 3 + (x % 5)});
        files[i % 5].push_str(&format!("{rec}\n"));
        all.push(rec);
    }
    for (f, text) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("in-{f}.jsonl")), text).unwrap();
    }
    all
}

fn write_job(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("job.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn keyed_running_sum_end_to_end_matches_reference() {
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), 20_000, 37);
    let job = write_job(
        d.path(),
        r#"
name = "sums"
[source]
type = "file"
path = "in"
[[transform]]
type = "filter"
expr = "value % 10 != 3"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "file"
path = "out"
overwrite = true
"#,
    );
    // The reference: per key, the multiset of running sums (order across files is not fixed,
    // but each key's final sum and the number of outputs are).
    let mut total: HashMap<String, u64> = HashMap::new();
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &input {
        if r["value"].as_u64().unwrap() % 10 == 3 {
            continue;
        }
        let k = r["key"].as_str().unwrap().to_string();
        *total.entry(k.clone()).or_default() += r["value"].as_u64().unwrap();
        *count.entry(k).or_default() += 1;
    }
    for p in ["1", "2", "4"] {
        let o = run(&job, &["--parallelism", p, "--quiet"]);
        assert!(o.status.success(), "p={p}: {}", stderr(&o));
        let out = read_output(&d.path().join("out"));
        assert_eq!(out.len(), count.values().sum::<usize>(), "p={p}");
        let mut max: HashMap<String, u64> = HashMap::new();
        let mut n: HashMap<String, usize> = HashMap::new();
        let mut ids: Vec<u64> = Vec::new();
        for r in &out {
            let k = r["key"].as_str().unwrap().to_string();
            let v = r["value"].as_u64().unwrap();
            let m = max.entry(k.clone()).or_default();
            *m = (*m).max(v);
            *n.entry(k).or_default() += 1;
            ids.push(r["id"].as_u64().unwrap());
        }
        assert_eq!(max, total, "p={p}: final sums");
        assert_eq!(n, count, "p={p}: outputs per key");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), out.len(), "p={p}: every input exactly once");
        assert!(
            hidden_files(&d.path().join("out")).is_empty(),
            "p={p}: in-progress files left"
        );
    }
}

#[test]
fn tumbling_window_end_to_end_matches_reference() {
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), 5_000, 7);
    let job = write_job(
        d.path(),
        r#"
name = "win"
parallelism = 2
[source]
type = "file"
path = "in"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "tumbling"
size = "100ms"
time_field = "ts"
aggregate = "sum"
field = "value"
out_of_orderness = "1h"
output = "total"
[sink]
type = "file"
path = "out"
"#,
    );
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for r in &input {
        let ts = r["ts"].as_i64().unwrap();
        let k = r["key"].as_str().unwrap().to_string();
        *expected.entry((k, ts - ts % 100)).or_default() += r["value"].as_u64().unwrap();
    }
    let o = run(&job, &["--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: BTreeMap<(String, i64), u64> = read_output(&d.path().join("out"))
        .into_iter()
        .map(|r| {
            assert_eq!(
                r["window_end"].as_i64().unwrap() - r["window_start"].as_i64().unwrap(),
                100
            );
            (
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["window_start"].as_i64().unwrap(),
                ),
                r["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn project_dedupe_and_generator_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(
        d.path(),
        r#"
name = "gen"
parallelism = 3
[source]
type = "generator"
count = 3000
keys = 50
max_drift = 8
[[transform]]
type = "project"
keep = ["key", "value"]
rename = { value = "v" }
compute = { double = "v * 2", big = "v >= 50" }
[[transform]]
type = "dedupe"
fields = ["key"]
[sink]
type = "file"
path = "out"
"#,
    );
    let o = run(&job, &["--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = read_output(&d.path().join("out"));
    assert_eq!(out.len(), 50, "one record per distinct key");
    for r in &out {
        let m = r.as_object().unwrap();
        let keys: Vec<&str> = m.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, vec!["big", "double", "key", "v"]);
        assert_eq!(r["double"].as_u64().unwrap(), 2 * r["v"].as_u64().unwrap());
        assert_eq!(r["big"].as_bool().unwrap(), r["v"].as_u64().unwrap() >= 50);
    }
    // Rerunning refuses to mix with the previous output.
    let o = run(&job, &["--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("sink.path") && stderr(&o).contains("overwrite = true"),
        "{}",
        stderr(&o)
    );
    // A negative drift is refused, naming the key.
    let text = std::fs::read_to_string(&job)
        .unwrap()
        .replace("max_drift = 8", "max_drift = -1");
    std::fs::write(&job, text).unwrap();
    let o = run(&job, &["--quiet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("source.max_drift"), "{}", stderr(&o));
}

/// Each bad job file is rejected with exit code 2 and a message naming the file, the key and
/// what was expected, before anything runs (no output directory is created).
#[test]
fn bad_job_files_are_rejected_with_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("in")).unwrap();
    std::fs::write(d.path().join("blocker"), "").unwrap();
    let base = |transform: &str, sink_path: &str| {
        format!(
            "name = \"bad\"\n[source]\ntype = \"file\"\npath = \"in\"\n{transform}\n[sink]\ntype = \"file\"\npath = \"{sink_path}\"\n"
        )
    };
    let cases: Vec<(String, Vec<&str>)> = vec![
        (base("[[transform]]\ntype = \"filter\"\nexpr = \"value >\"", "out"), vec!["transform[0].expr", "invalid expression"]),
        (base("[[transform]]\ntype = \"filter\"\nexprr = \"x\"", "out"), vec!["transform[0].exprr", "unknown key"]),
        (base("[[transform]]\ntype = \"sum\"\nfield = \"v\"", "out"), vec!["transform[0]", "key_by"]),
        (
            base("[[transform]]\ntype = \"key_by\"\nfield = \"k\"\n[[transform]]\ntype = \"tumbling\"\nsize = \"10x\"\ntime_field = \"ts\"\naggregate = \"count\"", "out"),
            vec!["transform[1].size", "invalid duration"],
        ),
        (base("", "blocker/out"), vec!["sink.path", "not writable"]),
        (base("", "out").replace("path = \"in\"", "path = \"missing\""), vec!["source.path", "missing"]),
        (base("", "out").replace("name = \"bad\"", "name = \"bad\"\nparallelism = \"two\""), vec!["parallelism", "expected"]),
        (base("", "out").replace("type = \"file\"\npath = \"out\"", "type = \"kafkaa\""), vec!["sink.type", "kafkaa", "expected one of"]),
    ];
    for (i, (text, needles)) in cases.iter().enumerate() {
        let job = d.path().join(format!("bad-{i}.toml"));
        std::fs::write(&job, text).unwrap();
        let o = run(&job, &[]);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "case {i}: {e}");
        assert!(
            e.contains(&format!("bad-{i}.toml")),
            "case {i} must name the file: {e}"
        );
        for n in needles {
            assert!(e.contains(n), "case {i}: expected `{n}` in: {e}");
        }
        assert!(!e.contains("panicked"), "case {i}: {e}");
    }
    assert!(
        !d.path().join("out").exists(),
        "nothing may run for a rejected job"
    );
    // Overrides reach the job file and are validated the same way.
    let job = d.path().join("bad-1.toml");
    let o = run(&job, &["--set", "parallelism=0"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A record that breaks an operator fails the job with a message naming the operator and the
/// record, and exit code 1; no partial output becomes visible.
#[test]
fn bad_records_fail_the_job_clearly() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("in")).unwrap();
    std::fs::write(
        d.path().join("in/a.jsonl"),
        "{\"key\":\"a\",\"value\":1}\n{\"key\":\"a\",\"value\":\"x\"}\n",
    )
    .unwrap();
    let job = write_job(
        d.path(),
        "name = \"j\"\n[source]\ntype = \"file\"\npath = \"in\"\n[[transform]]\ntype = \"key_by\"\nfield = \"key\"\n[[transform]]\ntype = \"sum\"\nfield = \"value\"\n[sink]\ntype = \"file\"\npath = \"out\"\n",
    );
    let o = run(&job, &["--quiet"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("transform[1] (sum)") && e.contains("expected a number") && e.contains("\"x\""),
        "{e}"
    );
    assert!(read_output(&d.path().join("out")).is_empty());

    std::fs::write(d.path().join("in/a.jsonl"), "{\"key\":\"a\"}\n{oops\n").unwrap();
    let o = run(&job, &["--quiet", "--set", "sink.overwrite=true"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("a.jsonl line 2") && e.contains("invalid JSON"),
        "{e}"
    );
}

/// SIGTERM stops an unbounded job gracefully: in-flight data drains and the sink commits, so
/// every record read is in the visible output exactly once.
#[test]
fn sigterm_stops_gracefully_and_commits_output() {
    let d = tempfile::tempdir().unwrap();
    let job = write_job(
        d.path(),
        "name = \"unbounded\"\nparallelism = 2\n[source]\ntype = \"generator\"\nrate = 20000\n[[transform]]\ntype = \"key_by\"\nfield = \"key\"\n[[transform]]\ntype = \"count\"\nfield = \"n\"\n[sink]\ntype = \"file\"\npath = \"out\"\n",
    );
    let child = weir()
        .arg("run")
        .arg(&job)
        .arg("--quiet")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = read_output(&d.path().join("out"));
    assert!(out.len() > 1000, "only {} records", out.len());
    let mut ids: Vec<u64> = out.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicates in output");
    // Per key, counts are 1..=c without gaps.
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for r in &out {
        per_key
            .entry(r["key"].as_str().unwrap().to_string())
            .or_default()
            .push(r["n"].as_u64().unwrap());
    }
    for (k, mut v) in per_key {
        v.sort();
        assert_eq!(v, (1..=v.len() as u64).collect::<Vec<_>>(), "key {k}");
    }
}

/// count, min, max and avg as running aggregates, chained, checked record by record against a
/// sequential reference (one input file, so each key's order is the file order), and a sliding
/// window average.
#[test]
fn all_running_aggregates_and_sliding_windows_match_reference() {
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), 6_000, 11);
    // Keep only the first input file: per-key order is then fixed.
    for f in 1..5 {
        std::fs::remove_file(d.path().join(format!("in/in-{f}.jsonl"))).unwrap();
    }
    let input: Vec<Value> = input
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 5 == 0)
        .map(|(_, r)| r)
        .collect();
    let job = write_job(
        d.path(),
        r#"
name = "aggs"
[source]
type = "file"
path = "in"
[[transform]]
type = "project"
compute = { lo = "value", hi = "value", mean = "value" }
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "count"
field = "n"
[[transform]]
type = "min"
field = "lo"
[[transform]]
type = "max"
field = "hi"
[[transform]]
type = "avg"
field = "mean"
[sink]
type = "file"
path = "out"
overwrite = true
"#,
    );
    let mut state: HashMap<String, (u64, u64, u64, u64)> = HashMap::new();
    let mut expected: BTreeMap<u64, (u64, u64, u64, f64)> = BTreeMap::new();
    for r in &input {
        let v = r["value"].as_u64().unwrap();
        let s = state
            .entry(r["key"].as_str().unwrap().to_string())
            .or_insert((0, u64::MAX, 0, 0));
        s.0 += 1;
        s.1 = s.1.min(v);
        s.2 = s.2.max(v);
        s.3 += v;
        expected.insert(
            r["id"].as_u64().unwrap(),
            (s.0, s.1, s.2, s.3 as f64 / s.0 as f64),
        );
    }
    for p in ["1", "4"] {
        let o = run(&job, &["--quiet", "--parallelism", p]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = read_output(&d.path().join("out"));
        assert_eq!(out.len(), expected.len());
        for r in out {
            let (n, lo, hi, mean) = expected[&r["id"].as_u64().unwrap()];
            assert_eq!(r["n"].as_u64().unwrap(), n, "{r}");
            assert_eq!(r["lo"].as_u64().unwrap(), lo, "{r}");
            assert_eq!(r["hi"].as_u64().unwrap(), hi, "{r}");
            assert!(
                (r["mean"].as_f64().unwrap() - mean).abs() < 1e-9,
                "{r} vs {mean}"
            );
        }
    }

    // Sliding windows: 100 ms windows every 50 ms, average of value per key.
    let job = write_job(
        d.path(),
        r#"
name = "sliding"
parallelism = 3
[source]
type = "file"
path = "in"
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sliding"
size = "100ms"
slide = "50ms"
time_field = "ts"
aggregate = "avg"
field = "value"
out_of_orderness = "10ms"
[sink]
type = "file"
path = "out"
overwrite = true
"#,
    );
    let mut sums: BTreeMap<(String, i64), (u64, u64)> = BTreeMap::new();
    for r in &input {
        let ts = r["ts"].as_i64().unwrap();
        let k = r["key"].as_str().unwrap().to_string();
        let mut start = ts - ts % 50;
        while start > ts - 100 {
            let e = sums.entry((k.clone(), start)).or_default();
            e.0 += r["value"].as_u64().unwrap();
            e.1 += 1;
            start -= 50;
        }
    }
    let o = run(&job, &["--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: BTreeMap<(String, i64), f64> = read_output(&d.path().join("out"))
        .into_iter()
        .map(|r| {
            (
                (
                    r["key"].as_str().unwrap().to_string(),
                    r["window_start"].as_i64().unwrap(),
                ),
                r["avg"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got.len(), sums.len());
    for (k, (s, c)) in sums {
        assert!((got[&k] - s as f64 / c as f64).abs() < 1e-9, "{k:?}");
    }
}
