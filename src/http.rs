//! The monitoring HTTP server of `weir run --http ADDR`: a JSON API under `/api/v1` and
//! `GET /metrics` in Prometheus' text format, read-only, on one thread of its own (never a
//! worker). Loopback by default; with a token every request must carry
//! `Authorization: Bearer <token>`.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard (`src/dashboard.html`: job graph, throughput, checkpoint tab) |
//! | `/api/v1/job` | name, status, attempt, uptime, restore, record totals and rates |
//! | `/api/v1/operators` | per operator: parallelism, chain, records in, rate, share of time backpressured, late records, watermark |
//! | `/api/v1/checkpoints` | counts, the latest restore, completed (every stat) and failed ones |
//! | `/api/v1/throughput` | records in per second, all sources, each second of the last five minutes |
//! | `/api/v1/config` | the job file (path, text, `--set` overrides), workers, parallelism |
//! | `/metrics` | the same figures for Prometheus |
//!
//! The server samples the counters once a second; rates are over the last sample interval.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde_json::{json, Value};
use weir_runtime::JobMonitor;

/// Where the job is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Building or restoring.
    Starting,
    Running,
    /// Failed; a restart from the latest checkpoint is pending.
    Restarting,
    Finished,
    Cancelled,
    /// Failed for good, with the error.
    Failed(String),
}

impl JobStatus {
    fn name(&self) -> &'static str {
        match self {
            JobStatus::Starting => "starting",
            JobStatus::Running => "running",
            JobStatus::Restarting => "restarting",
            JobStatus::Finished => "finished",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Failed(_) => "failed",
        }
    }
}

/// What the CLI tells the server about the job, and what the server samples.
pub struct Live {
    config: Value,
    name: String,
    state: Mutex<State>,
}

struct State {
    status: JobStatus,
    /// Restarts so far.
    restarts: u32,
    /// The current (or last) run.
    run: Option<JobMonitor>,
    /// Counter samples of the current run, oldest first (the last five minutes).
    samples: VecDeque<Sample>,
}

struct Sample {
    at: Instant,
    /// `records_in` per operator, in graph order.
    records: Vec<u64>,
    /// `backpressured_ns` per operator, in graph order.
    backpressured: Vec<u64>,
}

/// Samples kept: five minutes at one per second.
const SAMPLES: usize = 300;

impl Live {
    /// `config`: what `/api/v1/config` shows.
    pub fn new(name: &str, config: Value) -> Arc<Live> {
        Arc::new(Live {
            config,
            name: name.to_string(),
            state: Mutex::new(State {
                status: JobStatus::Starting,
                restarts: 0,
                run: None,
                samples: VecDeque::new(),
            }),
        })
    }

    /// A run started.
    pub fn started(&self, run: JobMonitor) {
        let mut s = self.state.lock();
        s.status = JobStatus::Running;
        s.run = Some(run);
        s.samples.clear();
    }

    /// The job failed and will restart.
    pub fn restarting(&self) {
        let mut s = self.state.lock();
        s.status = JobStatus::Restarting;
        s.restarts += 1;
    }

    /// The job ended for good.
    pub fn ended(&self, status: JobStatus) {
        self.state.lock().status = status;
    }

    fn sample(&self) {
        let mut s = self.state.lock();
        let Some(run) = &s.run else { return };
        use std::sync::atomic::Ordering::Relaxed;
        let nodes = &run.metrics().nodes;
        let records = nodes.iter().map(|n| n.records_in.load(Relaxed)).collect();
        let backpressured = nodes
            .iter()
            .map(|n| n.backpressured_ns.load(Relaxed))
            .collect();
        if s.samples.len() == SAMPLES {
            s.samples.pop_front();
        }
        s.samples.push_back(Sample {
            at: Instant::now(),
            records,
            backpressured,
        });
    }
}

/// Increase per second of a counter (`pick` from a sample) over the last sample interval.
fn per_second(samples: &VecDeque<Sample>, pick: impl Fn(&Sample) -> u64) -> f64 {
    let n = samples.len();
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&samples[n - 2], &samples[n - 1]);
    let dt = b.at.duration_since(a.at).as_secs_f64();
    let d = pick(b) as f64 - pick(a) as f64;
    if dt > 0.0 {
        d.max(0.0) / dt
    } else {
        0.0
    }
}

/// Records per second of operator `i` over the last sample interval.
fn rate(samples: &VecDeque<Sample>, i: usize) -> f64 {
    per_second(samples, |s| s.records.get(i).copied().unwrap_or(0))
}

/// Share of the last sample interval (0..1) that the instances of the chain headed by
/// operator `head` (of `parallelism` instances) spent backpressured.
fn backpressure(samples: &VecDeque<Sample>, head: usize, parallelism: usize) -> f64 {
    let ns = per_second(samples, |s| s.backpressured.get(head).copied().unwrap_or(0));
    (ns / 1e9 / parallelism.max(1) as f64).clamp(0.0, 1.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The JSON answers, built from one consistent look at the state.
impl Live {
    fn job(&self) -> Value {
        let s = self.state.lock();
        let run = s.run.as_ref();
        let m = run.map(|r| r.metrics());
        let sources: Vec<usize> = m.map_or(Vec::new(), |m| {
            (0..m.nodes.len())
                .filter(|&i| m.nodes[i].is_source)
                .collect()
        });
        json!({
            "name": self.name,
            "status": s.status.name(),
            "error": match &s.status { JobStatus::Failed(e) => Some(e.clone()), _ => None },
            "restarts": s.restarts,
            "uptime_seconds": run.map_or(0.0, |r| r.uptime().as_secs_f64()),
            "restored_from": run.and_then(|r| r.restored_from()),
            "records_in": m.map_or(0, |m| m.source_records()),
            "records_out": m.map_or(0, |m| m.sink_records()),
            "records_in_per_second": sources.iter().map(|&i| rate(&s.samples, i)).sum::<f64>(),
            "now_ms": now_ms(),
        })
    }

    fn operators(&self) -> Value {
        let s = self.state.lock();
        let Some(run) = &s.run else {
            return json!([]);
        };
        let nodes = &run.metrics().nodes;
        let ops: Vec<Value> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                use std::sync::atomic::Ordering::Relaxed;
                let wm = n.watermark.load(Relaxed);
                // What this operator's consumers received from it (a sink has none).
                let consumers = nodes.iter().filter(|c| c.inputs.contains(&i));
                let records_out: u64 = consumers.map(|c| c.records_in.load(Relaxed)).sum();
                let head = &run.metrics().nodes[n.chain_head];
                json!({
                    "name": n.name,
                    "kind": if n.is_source { "source" } else if n.is_sink { "sink" } else { "operator" },
                    "parallelism": n.parallelism,
                    "chained_to": (n.chain_head != i).then(|| head.name.clone()),
                    "backpressured_ratio": backpressure(&s.samples, n.chain_head, head.parallelism),
                    "inputs": n.inputs,
                    "records_in": n.records_in.load(Relaxed),
                    "records_out": (!n.is_sink).then_some(records_out),
                    "records_in_per_second": rate(&s.samples, i),
                    "late_records": n.late_records.load(Relaxed),
                    "watermark_ms": (wm != i64::MIN).then_some(wm),
                })
            })
            .collect();
        Value::Array(ops)
    }

    /// Records in per second, all sources, over the samples kept (the last five minutes).
    fn throughput(&self) -> Value {
        let s = self.state.lock();
        let Some(run) = &s.run else {
            return json!([]);
        };
        let sources: Vec<usize> = (0..run.metrics().nodes.len())
            .filter(|&i| run.metrics().nodes[i].is_source)
            .collect();
        let now = Instant::now();
        let wall = now_ms();
        let total = |x: &Sample| {
            sources
                .iter()
                .map(|&i| x.records.get(i).copied().unwrap_or(0))
                .sum::<u64>()
        };
        let points: Vec<Value> = s
            .samples
            .iter()
            .zip(s.samples.iter().skip(1))
            .map(|(a, b)| {
                let dt = b.at.duration_since(a.at).as_secs_f64();
                let rate = if dt > 0.0 {
                    total(b).saturating_sub(total(a)) as f64 / dt
                } else {
                    0.0
                };
                let ago = now.duration_since(b.at).as_millis() as u64;
                json!({"at_ms": wall.saturating_sub(ago), "records_in_per_second": rate})
            })
            .collect();
        Value::Array(points)
    }

    fn checkpoints(&self) -> Value {
        let s = self.state.lock();
        let Some(run) = &s.run else {
            return json!({"completed_total": 0, "failed_total": 0, "restored_from": null, "completed": [], "failed": []});
        };
        let (completed_total, failed_total) = run.checkpoint_counts();
        let completed: Vec<Value> = run
            .checkpoints()
            .iter()
            .map(|c| {
                json!({
                    "id": c.id,
                    "status": "completed",
                    "triggered_at_ms": c.triggered_at_ms,
                    "duration_ms": ms(c.duration),
                    "sync_ms": ms(c.sync_max),
                    "async_ms": ms(c.async_max),
                    "alignment_ms": ms(c.alignment_max),
                    "bytes": c.bytes,
                    "files": c.files,
                    "bytes_uploaded": c.bytes_uploaded,
                    "requests": c.requests,
                    "files_referenced": c.files_referenced,
                    "bytes_referenced": c.bytes_referenced,
                    "local_cached_bytes": c.local_cached_bytes,
                    "is_final": c.is_final,
                    "location": c.location,
                })
            })
            .collect();
        let failed: Vec<Value> = run
            .failed_checkpoints()
            .iter()
            .map(|f| json!({"id": f.id, "status": "failed", "failed_at_ms": f.failed_at_ms, "reason": f.reason}))
            .collect();
        json!({
            "completed_total": completed_total,
            "failed_total": failed_total,
            "restored_from": run.restored_from(),
            "completed": completed,
            "failed": failed,
        })
    }

    /// Prometheus text format (version 0.0.4).
    fn metrics(&self) -> String {
        use std::fmt::Write;
        let job = self.job();
        let ops = self.operators();
        let cps = self.checkpoints();
        let mut out = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let jl = format!("job=\"{}\"", esc(&self.name));
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
        let f = |v: &Value| v.as_f64().unwrap_or(0.0);
        let status = self.state.lock().status.name();
        metric("weir_job_up", "gauge", "1 while the job runs (status label: starting, running, restarting, finished, cancelled, failed).",
            vec![(format!("{jl},status=\"{status}\""), f64::from(u8::from(status == "running")))]);
        metric(
            "weir_job_restarts_total",
            "counter",
            "Restarts from the latest checkpoint after failures.",
            vec![(jl.clone(), f(&job["restarts"]))],
        );
        metric(
            "weir_job_uptime_seconds",
            "gauge",
            "Time since the current run started.",
            vec![(jl.clone(), f(&job["uptime_seconds"]))],
        );
        let op_rows = |key: &str| -> Vec<(String, f64)> {
            ops.as_array()
                .into_iter()
                .flatten()
                .filter(|o| !o[key].is_null())
                .map(|o| {
                    (
                        format!(
                            "{jl},operator=\"{}\",kind=\"{}\"",
                            esc(o["name"].as_str().unwrap_or("")),
                            o["kind"].as_str().unwrap_or("")
                        ),
                        f(&o[key]),
                    )
                })
                .collect()
        };
        metric(
            "weir_operator_records_in_total",
            "counter",
            "Records that entered the operator (sources: records produced), all subtasks.",
            op_rows("records_in"),
        );
        metric(
            "weir_operator_records_in_per_second",
            "gauge",
            "Rate of weir_operator_records_in_total over the last second.",
            op_rows("records_in_per_second"),
        );
        metric(
            "weir_operator_backpressured_ratio",
            "gauge",
            "Share of the last second the operator's chain could not be fed because its output was full (0..1, averaged over instances).",
            op_rows("backpressured_ratio"),
        );
        metric(
            "weir_operator_late_records_total",
            "counter",
            "Records dropped because they came after their window fired.",
            op_rows("late_records"),
        );
        metric(
            "weir_operator_watermark_milliseconds",
            "gauge",
            "Latest event-time watermark of the operator's input (ms since the Unix epoch).",
            op_rows("watermark_ms"),
        );
        metric(
            "weir_checkpoints_completed_total",
            "counter",
            "Checkpoints completed in the current run.",
            vec![(jl.clone(), f(&cps["completed_total"]))],
        );
        metric(
            "weir_checkpoints_failed_total",
            "counter",
            "Checkpoints failed (timed out, declined, not written) in the current run.",
            vec![(jl.clone(), f(&cps["failed_total"]))],
        );
        let last = cps["completed"]
            .as_array()
            .and_then(|a| a.last())
            .cloned()
            .unwrap_or(Value::Null);
        if !last.is_null() {
            for (name, key, help) in [
                (
                    "weir_last_checkpoint_id",
                    "id",
                    "Id of the newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_duration_milliseconds",
                    "duration_ms",
                    "Trigger to metadata written, newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_sync_milliseconds",
                    "sync_ms",
                    "Longest synchronous pause of any worker, newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_async_milliseconds",
                    "async_ms",
                    "Longest asynchronous part (write and upload), newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_alignment_milliseconds",
                    "alignment_ms",
                    "Longest barrier alignment, newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_bytes",
                    "bytes",
                    "Bytes written by the newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_bytes_uploaded",
                    "bytes_uploaded",
                    "Bytes sent to the store by the newest completed checkpoint.",
                ),
                (
                    "weir_last_checkpoint_requests",
                    "requests",
                    "Store requests of the newest completed checkpoint.",
                ),
                (
                    "weir_local_cache_bytes",
                    "local_cached_bytes",
                    "Bytes of local snapshot copies kept in the page cache (checkpoint.local_cache bounds it), at the newest completed checkpoint.",
                ),
            ] {
                metric(name, "gauge", help, vec![(jl.clone(), f(&last[key]))]);
            }
        }
        out
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("--http {addr}: cannot listen there: {message}; expected a free local host:port, e.g. 127.0.0.1:8081 (port 0 picks one)")]
    Bind { addr: String, message: String },
}

/// A running server; stops when dropped.
pub struct Server {
    server: Arc<tiny_http::Server>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Server {
    /// The address it listens on (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the server on `addr` (`host:port`); with `token`, requests need it as a bearer
/// token.
pub fn serve(addr: &str, token: Option<String>, live: Arc<Live>) -> Result<Server, HttpError> {
    let server = tiny_http::Server::http(addr).map_err(|e| HttpError::Bind {
        addr: addr.to_string(),
        message: e.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| HttpError::Bind {
            addr: addr.to_string(),
            message: "not an IP address".into(),
        })?;
    let server = Arc::new(server);
    let srv = server.clone();
    let auth = token.is_some();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let thread = std::thread::Builder::new()
        .name("weir-http".into())
        .spawn(move || {
            let mut next_sample = Instant::now();
            // `unblock` wakes a waiting `recv_timeout`, which then returns `Ok(None)`: the
            // flag says whether that was the end.
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                if Instant::now() >= next_sample {
                    live.sample();
                    next_sample = Instant::now() + Duration::from_secs(1);
                }
                let wait = next_sample.saturating_duration_since(Instant::now());
                match srv.recv_timeout(wait) {
                    Ok(Some(req)) => answer(req, token.as_deref(), &live),
                    Ok(None) => {}
                    // Unblocked (the server is being dropped) or the socket failed.
                    Err(_) => break,
                }
            }
        })
        .map_err(|e| HttpError::Bind {
            addr: addr.to_string(),
            message: format!("cannot start its thread: {e}"),
        })?;
    tracing::info!(addr = %bound, auth, "HTTP API listening");
    Ok(Server {
        server,
        stop,
        thread: Some(thread),
        addr: bound,
    })
}

fn answer(req: tiny_http::Request, token: Option<&str>, live: &Live) {
    let (code, content_type, body) = route(&req, token, live);
    let resp = tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(
            tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes())
                .expect("a valid header"),
        );
    // A client that went away is no concern of the job's.
    let _ = req.respond(resp);
}

const JSON: &str = "application/json";

/// The dashboard: one self-contained page (no CDN) that polls the JSON API.
const DASHBOARD: &str = include_str!("dashboard.html");

fn route(
    req: &tiny_http::Request,
    token: Option<&str>,
    live: &Live,
) -> (u16, &'static str, String) {
    let error = |code: u16, msg: &str| (code, JSON, json!({ "error": msg }).to_string());
    let path = req.url().split('?').next().unwrap_or("");
    // The page holds no data (what it shows comes from the API, with the token given as
    // `/?token=...`), so a browser can open it without sending a header.
    if path == "/" && *req.method() == tiny_http::Method::Get {
        return (200, "text/html; charset=utf-8", DASHBOARD.to_string());
    }
    if let Some(t) = token {
        let given = req
            .headers()
            .iter()
            .find(|h| h.field.equiv("Authorization"))
            .map(|h| h.value.as_str());
        if given != Some(&format!("Bearer {t}")) {
            return error(
                401,
                "missing or wrong bearer token: send `Authorization: Bearer <token>`",
            );
        }
    }
    if *req.method() != tiny_http::Method::Get {
        return error(405, "read-only API: only GET");
    }
    let body = match path {
        "/api/v1/job" => live.job(),
        "/api/v1/operators" => live.operators(),
        "/api/v1/checkpoints" => live.checkpoints(),
        "/api/v1/config" => live.config.clone(),
        "/api/v1/throughput" => live.throughput(),
        "/metrics" => return (200, "text/plain; version=0.0.4", live.metrics()),
        _ => {
            return error(
                404,
                &format!("no such path `{path}`; try / (the dashboard), /api/v1/job, /api/v1/operators, /api/v1/checkpoints, /api/v1/throughput, /api/v1/config or /metrics"),
            )
        }
    };
    (200, JSON, body.to_string())
}
