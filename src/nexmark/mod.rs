//! Nexmark, the streaming benchmark of Flink, RisingWave, Arroyo and Feldera, on Weir: an
//! event generator faithful to the reference ([`generator`]), the queries written with
//! Weir's public API ([`queries`]), plain sequential versions of them to check results
//! against ([`reference`]), and a runner that measures one query ([`run`]).
//!
//! `weir nexmark generate --events N` writes events as JSON lines; `weir nexmark run --query
//! qN --events N` runs a query (see `docs/nexmark.md`).

pub mod generator;
pub mod model;
pub mod queries;
pub mod reference;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::connectors::{Blackhole, Generator};
use crate::{
    BoxError, CheckpointConfig, DataStream, JobError, RuntimeConfig, SinkWriter, StreamEnv,
    TaskInfo, Timestamp,
};
pub use generator::{GeneratorConfig, NexmarkGenerator};
pub use model::{Auction, Bid, Event, Person};

/// How far apart, in events, the source's subtasks may run by default
/// ([`Generator::max_drift`]): 10 ms of event time at the reference's 10M events per second.
pub const DEFAULT_MAX_DRIFT: u64 = 100_000;

/// The events `0..count` of `generator` as a parallel source (event `k` goes to subtask
/// `k % parallelism`; its read position is checkpointed), its subtasks at most `max_drift`
/// events apart (`None`: unaligned).
pub fn source(
    env: &StreamEnv,
    generator: NexmarkGenerator,
    count: u64,
    max_drift: Option<u64>,
) -> DataStream<Event> {
    let mut gen = Generator::new(move |k| generator.event(k)).count(count);
    if let Some(d) = max_drift {
        gen = gen.max_drift(d);
    }
    env.source("nexmark", move |info| gen.reader(info))
}

/// Where a query's rows go.
#[derive(Clone)]
pub enum Output {
    /// Dropped (the benchmark's sink, as the reference's `blackhole` connector).
    Blackhole,
    /// Written as JSON lines to one file (all subtasks).
    JsonLines(Arc<Mutex<BufWriter<File>>>),
}

struct JsonLines {
    file: Arc<Mutex<BufWriter<File>>>,
    line: Vec<u8>,
}

impl<T: Serialize> SinkWriter<T> for JsonLines {
    fn write(&mut self, batch: &mut Vec<(Timestamp, T)>) -> Result<(), BoxError> {
        self.line.clear();
        for (_, row) in batch.drain(..) {
            serde_json::to_writer(&mut self.line, &row)?;
            self.line.push(b'\n');
        }
        self.file.lock().write_all(&self.line)?;
        Ok(())
    }
    fn finish(&mut self) -> Result<(), BoxError> {
        self.file.lock().flush()?;
        Ok(())
    }
}

fn finish<T: Serialize + Clone + Send + 'static>(rows: DataStream<T>, output: &Output) {
    match output {
        Output::Blackhole => rows.sink("blackhole", |_: &TaskInfo| Ok(Blackhole)),
        Output::JsonLines(file) => {
            let file = file.clone();
            rows.sink("json-lines", move |_: &TaskInfo| {
                Ok(JsonLines {
                    file: file.clone(),
                    line: Vec::new(),
                })
            })
        }
    }
}

/// Adds query `name` (`q0`, `q1`, ... see [`queries::QUERIES`]) reading `events` (without
/// event time yet) and writing to `output`.
pub fn build(name: &str, events: &DataStream<Event>, output: &Output) -> Result<(), String> {
    use queries::*;
    let e = with_event_time(events);
    match name {
        "q0" => finish(q0(&e), output),
        "q1" => finish(q1(&e), output),
        "q2" => finish(q2(&e), output),
        "q3" => finish(q3(&e), output),
        "q4" => finish(q4(&e), output),
        "q5" => finish(q5(&e), output),
        "q7" => finish(q7(&e), output),
        "q8" => finish(q8(&e), output),
        "q9" => finish(q9(&e), output),
        "q11" => finish(q11(&e), output),
        "q12" => finish(q12(&e), output),
        "q18" => finish(q18(&e), output),
        "q19" => finish(q19(&e), output),
        "q20" => finish(q20(&e), output),
        "q21" => finish(q21(&e), output),
        "q22" => finish(q22(&e), output),
        other => {
            return Err(format!(
                "unknown Nexmark query `{other}`; expected one of {}",
                QUERIES.join(", ")
            ))
        }
    }
    Ok(())
}

/// How to run one query.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub query: String,
    pub events: u64,
    pub generator: GeneratorConfig,
    /// Worker threads (one per core).
    pub workers: usize,
    pub parallelism: usize,
    /// Cores reserved for the snapshot writers ([`RuntimeConfig::io_cores`]); the workers
    /// run on the others.
    pub io_cores: usize,
    /// `None`: no checkpoints.
    pub checkpoint_interval: Option<Duration>,
    /// Checkpoint storage and local copies go under this directory.
    pub checkpoint_dir: PathBuf,
    /// [`CheckpointConfig::local_cache`].
    pub local_cache: Option<u64>,
    /// How far apart (events) the source's subtasks may run ([`DEFAULT_MAX_DRIFT`]; `None`:
    /// unaligned).
    pub max_drift: Option<u64>,
    /// Rows as JSON lines to this file (else they are dropped).
    pub output: Option<PathBuf>,
    /// Restore the newest checkpoint under `checkpoint_dir` (after a crash); the generator
    /// resumes from its checkpointed position.
    pub restore: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunReport {
    pub query: String,
    pub events: u64,
    pub workers: usize,
    pub parallelism: usize,
    /// Cores reserved for the snapshot writers.
    pub io_cores: usize,
    /// Checkpoint interval in ms (absent: checkpoints off).
    pub checkpoint_interval_ms: Option<u64>,
    /// `checkpoint.local_cache` in bytes (absent: unlimited, or checkpoints off).
    pub local_cache_bytes: Option<u64>,
    /// How far apart (events) the source's subtasks could run (absent: unaligned).
    #[serde(default)]
    pub max_drift: Option<u64>,
    pub wall_seconds: f64,
    /// CPU time of the whole process (user + system) during the job.
    pub cpu_seconds: f64,
    pub events_per_second: f64,
    pub events_per_cpu_second: f64,
    pub rows_out: u64,
    pub checkpoints: usize,
    pub checkpoint_duration_p50_ms: Option<f64>,
    pub checkpoint_duration_p99_ms: Option<f64>,
    /// Per completed checkpoint: seconds since the start and the size of the state it
    /// describes (bytes it wrote plus bytes of earlier files it references).
    pub state_bytes: Vec<(f64, u64)>,
    /// The checkpoint restored, if any.
    pub restored_from: Option<u64>,
    /// With a restore: seconds from the start until the restored job read its first event.
    pub restore_seconds: Option<f64>,
}

/// CPU time (user + system) this process used so far (zero if the system cannot say).
pub fn process_cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    use nix::sys::time::TimeValLike;
    let Ok(u) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let micros = u.user_time().num_microseconds() + u.system_time().num_microseconds();
    Duration::from_micros(micros.max(0) as u64)
}

fn percentile(mut v: Vec<f64>, p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[((v.len() - 1) as f64 * p).round() as usize])
}

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Query(String),
    #[error("cannot create output file `{path}`: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Job(#[from] JobError),
}

/// Runs one query over `events` generated events and measures it.
pub fn run(opts: &RunOptions) -> Result<RunReport, RunError> {
    let env = StreamEnv::new(RuntimeConfig {
        workers: opts.workers,
        parallelism: opts.parallelism,
        io_cores: opts.io_cores,
        ..Default::default()
    });
    if let Some(interval) = opts.checkpoint_interval {
        let mut c = CheckpointConfig::new(format!(
            "file://{}",
            opts.checkpoint_dir.join("storage").display()
        ));
        c.interval = interval;
        c.local_dir = opts.checkpoint_dir.join("local");
        c.local_cache = opts.local_cache;
        c.on_cancel = crate::OnCancel::Delete;
        env.enable_checkpointing(c);
        if opts.restore {
            env.restore_from(crate::RestoreFrom::Latest);
        }
    } else if opts.restore {
        return Err(RunError::Query(
            "restoring needs checkpoints: give a checkpoint interval".into(),
        ));
    }
    let output = match &opts.output {
        None => Output::Blackhole,
        Some(path) => {
            let f = File::create(path).map_err(|source| RunError::Output {
                path: path.clone(),
                source,
            })?;
            Output::JsonLines(Arc::new(Mutex::new(BufWriter::with_capacity(1 << 20, f))))
        }
    };
    let events = source(
        &env,
        NexmarkGenerator::new(opts.generator),
        opts.events,
        opts.max_drift,
    );
    build(&opts.query, &events, &output).map_err(RunError::Query)?;
    let cpu = process_cpu_time();
    let t = Instant::now();
    let started_ms = queries::wall_ms() as u64;
    let handle = env.start(&format!("nexmark-{}", opts.query))?;
    let restored_from = handle.restored_from();
    let mut restore_seconds = None;
    if restored_from.is_some() {
        while handle.metrics().source_records() == 0 && !handle.is_finished() {
            std::thread::sleep(Duration::from_micros(200));
        }
        restore_seconds = Some(t.elapsed().as_secs_f64());
    }
    let monitor = handle.monitor();
    let summary = handle.join()?;
    let wall = t.elapsed().as_secs_f64();
    let cpu = (process_cpu_time() - cpu).as_secs_f64();
    let checkpoints = monitor.checkpoints();
    let durations: Vec<f64> = checkpoints
        .iter()
        .map(|c| c.duration.as_secs_f64() * 1000.0)
        .collect();
    Ok(RunReport {
        query: opts.query.clone(),
        events: opts.events,
        workers: opts.workers,
        parallelism: opts.parallelism,
        io_cores: opts.io_cores,
        checkpoint_interval_ms: opts.checkpoint_interval.map(|d| d.as_millis() as u64),
        local_cache_bytes: opts.checkpoint_interval.and(opts.local_cache),
        max_drift: opts.max_drift,
        wall_seconds: wall,
        cpu_seconds: cpu,
        events_per_second: opts.events as f64 / wall,
        events_per_cpu_second: opts.events as f64 / cpu.max(1e-9),
        rows_out: summary.records_out,
        checkpoints: checkpoints.len(),
        checkpoint_duration_p50_ms: percentile(durations.clone(), 0.5),
        checkpoint_duration_p99_ms: percentile(durations, 0.99),
        state_bytes: checkpoints
            .iter()
            .map(|c| {
                (
                    c.triggered_at_ms.saturating_sub(started_ms) as f64 / 1000.0,
                    c.bytes + c.bytes_referenced,
                )
            })
            .collect(),
        restored_from,
        restore_seconds,
    })
}
