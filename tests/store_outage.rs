//! The checkpoint store goes away during a job (MinIO or the HDFS MiniDFSCluster killed with
//! SIGKILL, restarted with its data seconds later): checkpoints fail meanwhile, processing goes
//! on, checkpoints succeed again once the store is back, and a restore uses a complete
//! checkpoint, never a partial one. (A test binary of its own: it stops the servers the other
//! remote-storage tests use; its two tests take turns.)

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

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

/// Runs the job (restoring the latest checkpoint if `restore`) with info logs, calls `during`
/// meanwhile, stops it with SIGTERM after `total`; returns whether it exited cleanly, and its log.
fn run_for(
    env: &[(String, String)],
    job: &std::path::Path,
    restore: bool,
    total: Duration,
    during: impl FnOnce(),
) -> (bool, String) {
    let mut cmd = weir();
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["run", job.to_str().unwrap(), "--quiet"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if restore {
        cmd.args(["--restore", "latest"]);
    }
    let mut child = cmd.spawn().unwrap();
    let t = std::time::Instant::now();
    during();
    std::thread::sleep(total.saturating_sub(t.elapsed()));
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    (child.wait().unwrap().success(), log)
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
        // A restarted NameNode leaves safe mode and its DataNode registers again only after
        // a few seconds: give the job time to checkpoint after that.
        20,
    );
}

/// A generator job checkpointing to `storage` every 200 ms for `secs` seconds; `script` kills
/// the store after 2 s and restarts it 3 s later.
fn outage(storage: &str, env: &[(String, String)], script: &str, secs: u64) {
    let d = tempfile::tempdir().unwrap();
    let job = d.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "outage"
parallelism = 2
[source]
type = "generator"
keys = 5000
rate = 200000
[[transform]]
type = "key_by"
field = "key"
[[transform]]
type = "sum"
field = "value"
[sink]
type = "blackhole"
[checkpoint]
interval = "200ms"
timeout = "3s"
tolerable_failures = 1000
storage = "{storage}"
local_dir = "local"
"#
        ),
    )
    .unwrap();
    let (ok, log) = run_for(env, &job, false, Duration::from_secs(secs), || {
        std::thread::sleep(Duration::from_secs(2));
        service(script, "kill", false);
        std::thread::sleep(Duration::from_secs(3));
        service(script, "start", true);
    });
    assert!(ok, "the job must survive the outage: {log}");
    let completed = ids(&log, "checkpoint completed");
    let failed: Vec<u64> = ids(&log, "checkpoint aborted")
        .into_iter()
        .chain(ids(&log, "snapshot failed"))
        .collect();
    assert!(
        !failed.is_empty(),
        "no checkpoint failed during the outage: {log}"
    );
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
    let (ok, log) = run_for(env, &job, true, Duration::from_secs(2), || {});
    assert!(ok, "{log}");
    assert_eq!(ids(&log, "restoring from checkpoint"), [newest], "{log}");
}
