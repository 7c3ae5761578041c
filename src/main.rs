//! The `weir` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir::job::JobFile;
use weir::{JobError, RestoreFrom, StreamEnv};

/// Keyed state's large hash tables on transparent huge pages (fewer TLB misses per lookup,
/// fewer page faults per restore).
#[global_allocator]
static ALLOC: weir::HugePageAlloc = weir::HugePageAlloc;

#[derive(Parser)]
#[command(name = "weir", version, about = "Weir stream-processing engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job described in a TOML file until its input ends (or Ctrl-C).
    Run {
        /// The job file.
        job: PathBuf,
        /// Parallelism of every operator (overrides the job file).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32768))]
        parallelism: Option<u32>,
        /// Override a job-file key, e.g. `--set source.count=1000` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Restore from a checkpoint: `latest`, or a checkpoint directory
        /// (`<storage>/<job>/chk-<n>`).
        #[arg(long, value_name = "latest|PATH")]
        restore: Option<String>,
        /// No progress line on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// Serve the monitoring API (`/api/v1/...`, `/metrics`) on ADDR (default
        /// 127.0.0.1:8081; port 0 picks a free one). Set WEIR_HTTP_TOKEN to require
        /// `Authorization: Bearer <token>`, which any address beyond loopback should.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8081")]
        http: Option<String>,
    },
    /// Look at a job's checkpoints.
    Checkpoints {
        #[command(subcommand)]
        command: CheckpointsCommand,
    },
    /// The Nexmark benchmark: generate its events, run its queries.
    Nexmark {
        #[command(subcommand)]
        command: NexmarkCommand,
    },
}

#[derive(Subcommand)]
enum NexmarkCommand {
    /// Write generated events as JSON lines (the reference's schema).
    Generate {
        /// Number of events.
        #[arg(long)]
        events: u64,
        /// Output file (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        generator: GeneratorArgs,
    },
    /// Run one query over generated events and report its throughput.
    Run {
        /// The query: q0, q1, q2, q3, q4, q5, q7, q8, q9, q11, q12, q18, q19, q20, q21, q22.
        #[arg(long)]
        query: String,
        /// Number of events.
        #[arg(long)]
        events: u64,
        /// Checkpoint every DURATION (e.g. 1s); no checkpoints without it.
        #[arg(long, value_name = "DURATION", value_parser = weir::job::parse_duration)]
        checkpoint_interval: Option<Duration>,
        /// Directory for checkpoint storage and local copies (default: a fresh temporary
        /// directory, removed afterwards).
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Bytes of local snapshot copies kept in the page cache (`checkpoint.local_cache`):
        /// "unlimited" (the default), 0 or a size such as 512MiB.
        #[arg(long, value_name = "SIZE", value_parser = local_cache_arg,
              requires = "checkpoint_interval")]
        local_cache: Option<LocalCache>,
        /// Write the query's rows to FILE as JSON lines (else they are dropped).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Print one JSON object with the measurements instead of text.
        #[arg(long)]
        json: bool,
        /// Resume from the newest checkpoint under --checkpoint-dir (after a crash).
        #[arg(long, requires_all = ["checkpoint_dir", "checkpoint_interval"])]
        restore_latest: bool,
        /// Worker threads (default: the cores not reserved by --io-cores).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
        workers: Option<u32>,
        /// Cores reserved for the snapshot writers (`io_cores`); the workers run on the others.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=4095))]
        io_cores: u32,
        /// Parallelism of every operator (default: the number of workers).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32768))]
        parallelism: Option<u32>,
        /// How many events apart the source's subtasks may run (Flink's watermark
        /// alignment): a subtask further ahead of the slowest waits for it. "none": unaligned.
        #[arg(long, value_name = "EVENTS", default_value = "100000", value_parser = max_drift_arg)]
        max_drift: MaxDrift,
        #[command(flatten)]
        generator: GeneratorArgs,
    },
}

/// `--max-drift`: a number of events, or `None` for "none".
#[derive(Clone, Copy)]
struct MaxDrift(Option<u64>);

fn max_drift_arg(s: &str) -> Result<MaxDrift, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(MaxDrift(None));
    }
    s.parse()
        .map(|n| MaxDrift(Some(n)))
        .map_err(|_| format!("`{s}` is not a number of events or \"none\""))
}

#[derive(clap::Args)]
struct GeneratorArgs {
    /// Events per second of event time (the reference's `first-event.rate`).
    #[arg(long, default_value_t = 10_000_000.0, value_parser = positive_rate)]
    event_rate: f64,
    /// Mixed into every event's random seed (0: the reference's seeds).
    #[arg(long, default_value_t = 0)]
    seed: i64,
}

impl GeneratorArgs {
    fn config(&self) -> weir::nexmark::GeneratorConfig {
        weir::nexmark::GeneratorConfig {
            event_rate: self.event_rate,
            seed: self.seed,
            ..Default::default()
        }
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "`{s}` is not a positive number of events per second"
        )),
    }
}

#[derive(Subcommand)]
enum CheckpointsCommand {
    /// List the checkpoints of a job: id, completed at, duration, size, files.
    List {
        /// The job file (its `[checkpoint] storage` and `name` locate the checkpoints).
        job: PathBuf,
        /// Override a job-file key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one checkpoint: operators, state sizes, source positions.
    Inspect {
        /// A checkpoint directory, `<storage>/<job>/chk-<n>`.
        path: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(
                    // The AWS SDK warns about every credential and region source it tries
                    // (instance metadata on a laptop...), the HDFS client about every
                    // reconnection attempt; Weir reports what matters itself.
                    "warn,aws_config=error,aws_smithy_runtime=error,aws_runtime=error,hdfs_native=error",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Run {
            job,
            parallelism,
            set,
            restore,
            quiet,
            http,
        } => run(&job, parallelism, &set, restore, quiet, http.as_deref()),
        Command::Checkpoints {
            command: CheckpointsCommand::List { job, set, json },
        } => weir::inspect::list(&job, &set, json),
        Command::Checkpoints {
            command: CheckpointsCommand::Inspect { path, json },
        } => weir::inspect::inspect(&path, json),
        Command::Nexmark {
            command:
                NexmarkCommand::Generate {
                    events,
                    output,
                    generator,
                },
        } => nexmark_generate(events, output.as_deref(), &generator),
        Command::Nexmark {
            command:
                NexmarkCommand::Run {
                    query,
                    events,
                    checkpoint_interval,
                    checkpoint_dir,
                    local_cache,
                    output,
                    json,
                    restore_latest,
                    workers,
                    io_cores,
                    parallelism,
                    max_drift,
                    generator,
                },
        } => {
            let io_cores = io_cores as usize;
            let workers = workers.map_or_else(
                || {
                    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                    cores.saturating_sub(io_cores).max(1)
                },
                |w| w as usize,
            );
            nexmark_run(
                weir::nexmark::RunOptions {
                    query,
                    events,
                    generator: generator.config(),
                    workers,
                    parallelism: parallelism.map_or(workers, |p| p as usize),
                    io_cores,
                    checkpoint_interval,
                    checkpoint_dir: PathBuf::new(),
                    local_cache: local_cache.and_then(|c| c.0),
                    max_drift: max_drift.0,
                    output,
                    restore: restore_latest,
                },
                checkpoint_dir,
                json,
            )
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A parsed `--local-cache` (`None` inside: unlimited).
#[derive(Debug, Clone, Copy)]
struct LocalCache(Option<u64>);

fn local_cache_arg(s: &str) -> Result<LocalCache, String> {
    weir::job::parse_local_cache(s).map(LocalCache)
}

fn nexmark_generate(
    events: u64,
    output: Option<&Path>,
    generator: &GeneratorArgs,
) -> anyhow::Result<ExitCode> {
    let g = weir::nexmark::NexmarkGenerator::new(generator.config());
    let out: Box<dyn Write> = match output {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create `{}`", p.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    for k in 0..events {
        let line = g.event(k).to_json_line();
        out.write_all(line.as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn nexmark_run(
    mut opts: weir::nexmark::RunOptions,
    checkpoint_dir: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !weir::nexmark::queries::QUERIES.contains(&opts.query.as_str()) {
        eprintln!(
            "weir: unknown Nexmark query `{}`; expected one of {}",
            opts.query,
            weir::nexmark::queries::QUERIES.join(", ")
        );
        return Ok(ExitCode::from(2));
    }
    // A temporary directory is removed when dropped; a given one is kept.
    let _temp;
    opts.checkpoint_dir = match checkpoint_dir {
        Some(d) => d,
        None => {
            let t = std::env::temp_dir().join(format!("weir-nexmark-{}", std::process::id()));
            _temp = RemoveOnDrop(t.clone());
            t
        }
    };
    let r = match weir::nexmark::run(&opts) {
        Ok(r) => r,
        Err(weir::nexmark::RunError::Query(e)) => {
            eprintln!("weir: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let ckpt = match (r.checkpoint_interval_ms, r.checkpoint_duration_p50_ms) {
            (None, _) => "checkpoints off".to_string(),
            (Some(i), Some(p50)) => format!(
                "{} checkpoints every {i} ms, duration p50 {p50:.0} ms, p99 {:.0} ms",
                r.checkpoints,
                r.checkpoint_duration_p99_ms.unwrap_or(p50)
            ),
            (Some(i), None) => format!("checkpoints every {i} ms, none completed"),
        };
        println!(
            "{}: {} events in {:.2} s ({}/s), {:.2} CPU s: {} events per CPU second; {} rows out; {ckpt}",
            r.query,
            r.events,
            r.wall_seconds,
            human(r.events_per_second),
            r.cpu_seconds,
            human(r.events_per_cpu_second),
            r.rows_out,
        );
    }
    Ok(ExitCode::SUCCESS)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        // Best effort: a leftover temporary directory is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Human-readable count: 1234567 -> "1.23M".
fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}G", n / 1e9),
        n if n >= 1e6 => format!("{:.2}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

fn run(
    path: &Path,
    parallelism: Option<u32>,
    set: &[String],
    restore: Option<String>,
    quiet: bool,
    http: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let job = match weir::job::load_job_file(path, set) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("weir: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let restore = match restore.as_deref() {
        None => None,
        Some(_) if job.checkpoint.is_none() => {
            eprintln!(
                "weir: {}: --restore needs checkpointing: add a [checkpoint] table with `storage` to the job file",
                job.path.display()
            );
            return Ok(ExitCode::from(2));
        }
        Some("latest") => Some(RestoreFrom::Latest),
        Some(p) => Some(RestoreFrom::Path(p.to_string())),
    };
    let config = weir::plan::runtime_config(&job, parallelism.map(|p| p as usize));
    if let Err(e) = config.validate() {
        eprintln!("weir: {}: {e}", job.path.display());
        return Ok(ExitCode::from(2));
    }

    // First Ctrl-C/SIGTERM: graceful stop (sources end, data drains, sinks commit).
    // Second: cancel at once.
    let signals = Arc::new(AtomicU8::new(0));
    {
        let signals = signals.clone();
        ctrlc::set_handler(move || {
            signals.fetch_add(1, Ordering::SeqCst);
        })
        .context("cannot install the Ctrl-C/SIGTERM handler")?;
    }

    // Everything that can be checked before starting (paths, expressions, output directory).
    if let Err(e) = weir::plan::build(&job, &StreamEnv::new(config.clone()), restore.is_some()) {
        eprintln!("weir: {e}");
        return Ok(ExitCode::from(2));
    }
    let checkpointing = job.checkpoint.is_some();
    let live = weir::http::Live::new(
        &job.name,
        serde_json::json!({
            "job_file": job.path.display().to_string(),
            "toml": std::fs::read_to_string(&job.path).unwrap_or_default(),
            "set": set,
            "workers": config.workers,
            "parallelism": config.parallelism,
            "max_parallelism": config.max_parallelism,
            "checkpointing": checkpointing,
            "restore": restore.as_ref().map(|r| format!("{r:?}")),
        }),
    );
    let _server = match http {
        None => None,
        Some(addr) => {
            let token = std::env::var("WEIR_HTTP_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            let server = match weir::http::serve(addr, token.clone(), live.clone()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("weir: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            if !server.addr().ip().is_loopback() && token.is_none() {
                eprintln!(
                    "weir: warning: the HTTP API on {} is open to anyone who can reach it; set WEIR_HTTP_TOKEN to require a bearer token",
                    server.addr()
                );
            }
            eprintln!("weir: HTTP API on http://{}/api/v1/job", server.addr());
            Some(server)
        }
    };
    let mut exit = ExitCode::SUCCESS;
    let result = weir::supervisor::run_with_restarts(
        &job.restart,
        checkpointing,
        restore,
        |restore| {
            let env = StreamEnv::new(config.clone());
            weir::plan::build(&job, &env, restore.is_some())
                .map_err(|e| JobError::Graph(e.to_string()))?;
            if let Some(r) = restore {
                env.restore_from(r.clone());
            }
            let handle = env.start(&job.name)?;
            live.started(handle.monitor());
            if !quiet {
                let from = match handle.restored_from() {
                    Some(id) => format!(", restored from checkpoint {id}"),
                    None if restore.is_some() => {
                        ", no checkpoint to restore: starting from the beginning".to_string()
                    }
                    None => String::new(),
                };
                eprintln!(
                    "weir: job `{}` started: {} workers, parallelism {}{from}",
                    job.name, config.workers, config.parallelism
                );
            }
            Ok(handle)
        },
        |handle| supervise(&job, handle, &signals, quiet),
        |e, attempt, delay| {
            live.restarting();
            eprintln!("\nweir: job `{}` failed: {e}", job.name);
            eprintln!(
                "weir: restarting from the latest checkpoint in {delay:?} (attempt {attempt} of {})",
                job.restart.attempts
            );
        },
        || signals.load(Ordering::SeqCst) > 0,
    );
    live.ended(match &result {
        Ok(_) => weir::http::JobStatus::Finished,
        Err(JobError::Cancelled) => weir::http::JobStatus::Cancelled,
        Err(e) => weir::http::JobStatus::Failed(e.to_string()),
    });
    match result {
        Ok(_) => {}
        Err(JobError::Cancelled) => {
            eprintln!("weir: job `{}` cancelled", job.name);
            exit = ExitCode::from(130);
        }
        Err(JobError::Graph(e)) => {
            eprintln!("weir: {e}");
            exit = ExitCode::from(2);
        }
        Err(e @ (JobError::Config(_) | JobError::Storage(_) | JobError::Restore(_))) => {
            eprintln!("weir: {}: {e}", job.path.display());
            exit = ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("\nweir: job `{}` failed: {e}", job.name);
            exit = ExitCode::from(1);
        }
    }
    Ok(exit)
}

fn supervise(
    job: &JobFile,
    handle: weir::JobHandle,
    signals: &AtomicU8,
    quiet: bool,
) -> Result<weir::JobSummary, JobError> {
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64);
    let mut seen_signals = 0;
    let mut next_report = Instant::now() + Duration::from_secs(1);
    while !handle.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let s = signals.load(Ordering::SeqCst);
        if s != seen_signals {
            seen_signals = s;
            if s == 1 {
                eprintln!(
                    "\nweir: stopping: processing in-flight records, then a final checkpoint if checkpoints are on (press Ctrl-C again to cancel)"
                );
                handle.stop();
            } else {
                eprintln!("\nweir: cancelling");
                handle.cancel();
            }
        }
        if !quiet && Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let m = handle.metrics();
            let (rin, rout) = (m.source_records(), m.sink_records());
            let dt = last.0.elapsed().as_secs_f64().max(1e-9);
            let rate = rin.saturating_sub(last.1) as f64 / dt;
            last = (Instant::now(), rin);
            let cp = handle
                .monitor()
                .last_checkpoint()
                .map_or(String::new(), |c| {
                    format!(
                        "  chk {} ({} ms, {})",
                        c.id,
                        c.duration.as_millis(),
                        human(c.bytes as f64)
                    )
                });
            eprint!(
                "\rweir: {:>8} in ({:>8}/s)  {:>8} out  {:6.1}s{cp} ",
                human(rin as f64),
                human(rate),
                human(rout as f64),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    let result = handle.join();
    if let Ok(summary) = &result {
        {
            if !quiet {
                let secs = summary.duration.as_secs_f64();
                eprintln!(
                    "\rweir: job `{}` finished: {} records in, {} out, {:.2}s ({}/s)",
                    job.name,
                    summary.records_in,
                    summary.records_out,
                    secs,
                    human(summary.records_in as f64 / secs.max(1e-9))
                );
            }
        }
    }
    result
}
