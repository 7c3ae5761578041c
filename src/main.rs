//! The `weir` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir::{JobError, StreamEnv};

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
        /// No progress line on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run {
            job,
            parallelism,
            set,
            quiet,
        } => match run(&job, parallelism, &set, quiet) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("weir: error: {e:#}");
                ExitCode::from(1)
            }
        },
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
    path: &std::path::Path,
    parallelism: Option<u32>,
    set: &[String],
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let job = match weir::job::load_job_file(path, set) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("weir: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let config = weir::plan::runtime_config(&job, parallelism.map(|p| p as usize));
    if let Err(e) = config.validate() {
        eprintln!("weir: {}: {e}", job.path.display());
        return Ok(ExitCode::from(2));
    }
    let env = StreamEnv::new(config.clone());
    if let Err(e) = weir::plan::build(&job, &env) {
        eprintln!("weir: {e}");
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
    let handle = env
        .start(&job.name)
        .with_context(|| format!("cannot start job `{}`", job.name))?;
    if !quiet {
        eprintln!(
            "weir: job `{}` started: {} workers, parallelism {}",
            job.name, config.workers, config.parallelism
        );
    }
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
                    "\nweir: stopping: draining in-flight data (press Ctrl-C again to cancel)"
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
            let rate = (rin - last.1) as f64 / dt;
            last = (Instant::now(), rin);
            eprint!(
                "\rweir: {:>8} in ({:>8}/s)  {:>8} out  {:6.1}s ",
                human(rin as f64),
                human(rate),
                human(rout as f64),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    match handle.join() {
        Ok(summary) => {
            if !quiet {
                let secs = summary.duration.as_secs_f64();
                eprintln!(
                    "\rweir: job `{}` finished: {} records in, {} out, {:.2}s ({}/s)",
                    summary.job,
                    summary.records_in,
                    summary.records_out,
                    secs,
                    human(summary.records_in as f64 / secs.max(1e-9))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(JobError::Cancelled) => {
            eprintln!("weir: job `{}` cancelled", job.name);
            Ok(ExitCode::from(130))
        }
        Err(e) => {
            eprintln!("\nweir: job `{}` failed: {e}", job.name);
            Ok(ExitCode::from(1))
        }
    }
}
