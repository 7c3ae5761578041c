//! The monitoring API of `weir run --http` against a running job: JSON under `/api/v1`,
//! Prometheus text under `/metrics`, errors for unknown paths and methods, and the bearer
//! token.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A running `weir run --http 127.0.0.1:0` and the address it reported.
struct Job {
    child: Spawned,
    addr: String,
}

fn start(dir: &std::path::Path, token: Option<&str>) -> Job {
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        generator_sum_job("http", 1000, 50_000, "checkpoints", ""),
    )
    .unwrap();
    let mut cmd = weir();
    cmd.current_dir(dir)
        .args(["run", "job.toml", "--quiet", "--http", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("WEIR_HTTP_TOKEN", t);
    }
    let mut child = Spawned::new(&mut cmd);
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the job printed where its HTTP API listens");
        if let Some(rest) = line.strip_prefix("weir: HTTP API on http://") {
            break rest.trim_end_matches("/api/v1/job").to_string();
        }
    };
    Job { child, addr }
}

/// A GET (or `method`) request; returns the status code and the body.
fn request(addr: &str, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{headers}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let code = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {raw}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn get_json(addr: &str, path: &str) -> Value {
    let (code, body) = request(addr, "GET", path, "");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

fn stop(job: Job) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &job.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let o = job.child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn rest_and_metrics_of_a_running_job() {
    let d = tempfile::tempdir().unwrap();
    let job = start(d.path(), None);
    let a = job.addr.clone();
    // Wait for a few checkpoints and two counter samples.
    let deadline = Instant::now() + Duration::from_secs(60);
    let cps = loop {
        let c = get_json(&a, "/api/v1/checkpoints");
        if c["completed_total"].as_u64().unwrap() >= 3 {
            break c;
        }
        assert!(Instant::now() < deadline, "no checkpoints: {c}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let completed = cps["completed"].as_array().unwrap();
    assert!(completed.len() >= 3);
    let ids: Vec<u64> = completed
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for c in completed {
        assert_eq!(c["status"], "completed");
        for key in ["duration_ms", "sync_ms", "async_ms", "alignment_ms"] {
            assert!(c[key].as_f64().unwrap() >= 0.0, "{key}: {c}");
        }
        assert!(c["bytes"].as_u64().unwrap() > 0, "{c}");
        assert!(c["files"].as_u64().unwrap() >= 2, "{c}");
        assert!(
            c["triggered_at_ms"].as_u64().unwrap() > 1_700_000_000_000,
            "{c}"
        );
        assert!(c["location"].as_str().unwrap().contains("chk-"), "{c}");
    }
    assert_eq!(cps["failed_total"], 0);
    assert!(cps["restored_from"].is_null());

    std::thread::sleep(Duration::from_millis(2500));
    let j = get_json(&a, "/api/v1/job");
    assert_eq!(j["name"], "http");
    assert_eq!(j["status"], "running");
    assert_eq!(j["restarts"], 0);
    assert!(j["records_in"].as_u64().unwrap() > 0, "{j}");
    // 50 000 records/s per subtask, two subtasks.
    let rate = j["records_in_per_second"].as_f64().unwrap();
    assert!(rate > 10_000.0 && rate < 1_000_000.0, "{j}");

    let ops = get_json(&a, "/api/v1/operators");
    let ops = ops.as_array().unwrap();
    let kinds: Vec<&str> = ops.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"source"), "{ops:?}");
    assert_eq!(kinds.last(), Some(&"sink"), "{ops:?}");
    assert!(
        ops.iter().all(|o| o["records_in"].as_u64().unwrap() > 0),
        "{ops:?}"
    );
    // The graph's edges, and what each operator's consumers received from it.
    assert_eq!(ops[0]["inputs"], serde_json::json!([]));
    for (i, o) in ops.iter().enumerate().skip(1) {
        assert_eq!(o["inputs"], serde_json::json!([i - 1]), "{o}");
    }
    assert!(ops[0]["records_out"].as_u64().unwrap() > 0);
    assert!(ops.last().unwrap()["records_out"].is_null());
    let tput = get_json(&a, "/api/v1/throughput");
    let tput = tput.as_array().unwrap();
    assert!(!tput.is_empty());
    assert!(tput
        .iter()
        .all(|p| p["records_in_per_second"].as_f64().unwrap() >= 0.0
            && p["at_ms"].as_u64().unwrap() > 1_700_000_000_000));
    for o in ops {
        let bp = o["backpressured_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&bp), "{o}");
        assert_eq!(o["parallelism"], 2, "{o}");
    }

    let config = get_json(&a, "/api/v1/config");
    assert_eq!(config["parallelism"], 2);
    assert!(config["toml"].as_str().unwrap().contains("[checkpoint]"));

    let (code, metrics) = request(&a, "GET", "/metrics", "");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("weir_checkpoints_completed_total") >= 3.0);
    assert_eq!(value("weir_checkpoints_failed_total"), 0.0);
    assert_eq!(value("weir_job_up"), 1.0);
    assert!(value("weir_last_checkpoint_bytes") > 0.0);
    assert!(value("weir_operator_records_in_total") > 0.0);
    assert!(value("weir_operator_backpressured_ratio") >= 0.0);
    // Every sample line is `name{labels} number`, and every metric has HELP and TYPE.
    for l in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = l.rsplit_once(' ').unwrap();
        assert!(series.contains('{') && series.ends_with('}'), "{l}");
        assert!(v.parse::<f64>().is_ok(), "{l}");
        let name = series.split('{').next().unwrap();
        assert!(metrics.contains(&format!("# TYPE {name} ")), "{name}");
    }

    let (code, body) = request(&a, "GET", "/api/v1/nope", "");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("/api/v1/checkpoints"), "{body}");
    let (code, _) = request(&a, "POST", "/api/v1/job", "");
    assert_eq!(code, 405);
    stop(job);
}

#[test]
fn a_token_is_required_when_set() {
    let d = tempfile::tempdir().unwrap();
    let job = start(d.path(), Some("s3cret"));
    let a = job.addr.clone();
    let (code, body) = request(&a, "GET", "/api/v1/job", "");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("bearer token"), "{body}");
    let (code, _) = request(&a, "GET", "/metrics", "Authorization: Bearer wrong\r\n");
    assert_eq!(code, 401);
    let (code, body) = request(&a, "GET", "/api/v1/job", "Authorization: Bearer s3cret\r\n");
    assert_eq!(code, 200, "{body}");
    stop(job);
}

#[test]
fn an_address_that_cannot_be_bound_is_refused_before_the_start() {
    let d = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(
        d.path().join("job.toml"),
        "name = \"t\"\n[source]\ntype = \"generator\"\ncount = 10\n[sink]\ntype = \"blackhole\"\n",
    )
    .unwrap();
    let o = weir()
        .current_dir(d.path())
        .args(["run", "job.toml", "--quiet", "--http", &addr])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("--http {addr}: cannot listen there")),
        "{err}"
    );
}

/// The dashboard, loaded in headless Chromium (Debian's package, installed by
/// scripts/test.sh), renders the checkpoint table with the job's real checkpoints; a
/// screenshot is kept in `target/test-artifacts/dashboard.png`.
#[test]
fn the_dashboard_renders_real_checkpoints_in_chromium() {
    let chromium = std::path::Path::new("/usr/bin/chromium");
    assert!(
        chromium.exists(),
        "/usr/bin/chromium is missing: scripts/test.sh installs Debian's chromium package (apt-get install chromium)"
    );
    let d = tempfile::tempdir().unwrap();
    let job = start(d.path(), Some("t0ken"));
    let a = job.addr.clone();
    let auth = "Authorization: Bearer t0ken\r\n";
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids: Vec<u64> = loop {
        let (_, body) = request(&a, "GET", "/api/v1/checkpoints", auth);
        let c: Value = serde_json::from_str(&body).unwrap();
        if c["completed_total"].as_u64().unwrap() >= 3 {
            break c["completed"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_u64().unwrap())
                .collect();
        }
        assert!(Instant::now() < deadline, "no checkpoints: {c}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let (code, page) = request(&a, "GET", "/", "");
    assert_eq!(code, 200);
    assert!(page.contains("<title>Weir</title>") && !page.contains("http://cdn"));
    let chrome = |extra: &[&str]| {
        let profile = tempfile::tempdir().unwrap();
        // Bounded: a browser that hangs fails the test instead of stalling the suite.
        let mut c = std::process::Command::new("timeout");
        c.arg("120")
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,900",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(format!("http://{a}/?token=t0ken#checkpoints"));
        let o = c.output().expect("run chromium");
        assert_ne!(
            o.status.code(),
            Some(124),
            "chromium did not finish within 120 s"
        );
        assert!(
            o.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let dom = chrome(&["--dump-dom"]);
    // The checkpoint table's rows: one per checkpoint, with its id in the first cell.
    let rows: Vec<&str> = dom.split("<tr class=\"completed\">").skip(1).collect();
    assert!(
        rows.len() >= ids.len(),
        "{} rows for {ids:?}:\n{dom}",
        rows.len()
    );
    for id in &ids {
        assert!(
            rows.iter()
                .any(|r| r.starts_with(&format!("<td>{id}</td>"))),
            "checkpoint {id} is not in the table:\n{dom}"
        );
    }
    assert!(
        dom.contains("<span id=\"status\" class=\"status running\">running</span>"),
        "{dom}"
    );
    assert!(!dom.contains("HTTP 401"), "{dom}");
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chrome(&[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    stop(job);
}
