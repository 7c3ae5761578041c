//! The checkpoint store goes away during a job (MinIO or the HDFS MiniDFSCluster killed with
//! SIGKILL, restarted with its data seconds later): checkpoints fail meanwhile, processing goes
//! on, checkpoints succeed again once the store is back, and a restore uses a complete
//! checkpoint, never a partial one. (A test binary of its own: it stops the servers the other
//! remote-storage tests use; its two tests take turns.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// One test at a time: each stops a server and measures a job.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn service(script: &str, arg: &str, keep_data: bool) {
    let script = format!("{}/scripts/services/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut c = std::process::Command::new("bash");
    c.arg(script).arg(arg);
    if keep_data {
        c.env("KEEP_DATA", "1");
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{arg}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Ids in `checkpoint=<id>` of log lines containing `what`.
fn ids(log: &str, what: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split("checkpoint=").nth(1))
        .filter_map(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

/// A running `weir run` with info logs; its stderr is collected while it runs.
struct Running {
    child: Spawned,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Running {
    /// Starts the job, restoring the latest checkpoint if `restore`.
    fn start(env: &[(String, String)], job: &std::path::Path, restore: bool) -> Running {
        let mut cmd = weir();
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(["run", job.to_str().unwrap(), "--quiet"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if restore {
            cmd.args(["--restore", "latest"]);
        }
        let mut child = Spawned::new(&mut cmd);
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Running {
            child,
            log,
            reader: Some(reader),
            started: Instant::now(),
        }
    }

    /// Waits until `ready` holds for the log so far; panics with the log after `timeout`.
    fn wait_until(&self, what: &str, timeout: Duration, ready: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log.lock().unwrap().clone();
            if ready(&log) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the job with SIGTERM once it has run for `at_least`; returns whether it exited
    /// cleanly, and its log.
    fn stop(mut self, at_least: Duration) -> (bool, String) {
        std::thread::sleep(at_least.saturating_sub(self.started.elapsed()));
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let log = self.log.lock().unwrap().clone();
        (status.success(), log)
    }
}

/// Ids of checkpoints that failed: aborted by the coordinator or failed in a snapshot.
fn failed(log: &str) -> Vec<u64> {
    ids(log, "checkpoint aborted")
        .into_iter()
        .chain(ids(log, "snapshot failed"))
        .collect()
}

/// Checkpoints completed after the last failed one.
fn completed_after_failures(log: &str) -> usize {
    let last_failed = failed(log).into_iter().max().unwrap_or(0);
    ids(log, "checkpoint completed")
        .into_iter()
        .filter(|&c| c > last_failed)
        .count()
}

#[test]
fn s3_outage_fails_checkpoints_not_the_job() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let m = minio();
    let bucket = m.bucket("outage");
    outage(&format!("s3://{bucket}/ck"), &m.env, "minio.sh", 10);
}

#[test]
fn hdfs_outage_fails_checkpoints_not_the_job() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let url = hdfs();
    outage(
        &format!("{url}/weir-outage-{}", std::process::id()),
        &[],
        "hdfs.sh",
        10,
    );
}

/// A generator job checkpointing to `storage` every 200 ms, for `secs` seconds at least;
/// `script` kills the store once a checkpoint has completed and restarts it (with its data)
/// once a checkpoint has failed.
fn outage(storage: &str, env: &[(String, String)], script: &str, secs: u64) {
    let d = tempfile::tempdir().unwrap();
    let job = d.path().join("job.toml");
    std::fs::write(
        &job,
        generator_sum_job(
            "outage",
            5000,
            200_000,
            storage,
            "timeout = \"3s\"\ntolerable_failures = 1000",
        ),
    )
    .unwrap();
    // Each step waits for what it needs to see rather than for a fixed time: on a loaded
    // machine a checkpoint can outlive a short outage, and a restart can take long.
    let job_run = Running::start(env, &job, false);
    job_run.wait_until(
        "a checkpoint completed before the outage",
        Duration::from_secs(120),
        |log| !ids(log, "checkpoint completed").is_empty(),
    );
    service(script, "kill", false);
    job_run.wait_until(
        "a checkpoint failed during the outage",
        Duration::from_secs(120),
        |log| !failed(log).is_empty(),
    );
    service(script, "start", true);
    job_run.wait_until(
        "two checkpoints completed after the store came back",
        Duration::from_secs(180),
        |log| completed_after_failures(log) >= 2,
    );
    let (ok, log) = job_run.stop(Duration::from_secs(secs));
    assert!(ok, "the job must survive the outage: {log}");
    let completed = ids(&log, "checkpoint completed");
    let failed = failed(&log);
    let first_failed = *failed.iter().min().unwrap();
    let last_failed = *failed.iter().max().unwrap();
    assert!(
        completed.iter().any(|&c| c < first_failed),
        "checkpoints completed before the outage: {completed:?} {failed:?}"
    );
    assert!(
        completed.iter().filter(|&&c| c > last_failed).count() >= 2,
        "checkpoints must succeed again after the store is back: {completed:?} {failed:?}\n{log}"
    );
    let records: u64 = log
        .lines()
        .find(|l| l.contains("job finished"))
        .and_then(|l| l.split("records_in=").nth(1))
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .expect("records_in in the log");
    // 10 s or more at 200 000 records/s: processing went on through the outage.
    assert!(
        records > 1_000_000,
        "records_in={records}: processing stalled"
    );

    // A restore takes the newest complete checkpoint (partial ones have no metadata).
    let newest = *completed.iter().max().unwrap();
    let (ok, log) = Running::start(env, &job, true).stop(Duration::from_secs(2));
    assert!(ok, "{log}");
    assert_eq!(ids(&log, "restoring from checkpoint"), [newest], "{log}");
}
