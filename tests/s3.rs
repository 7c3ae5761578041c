//! Checkpoints in S3, against a real MinIO on loopback (started by scripts/services/minio.sh):
//! the store's operations, a crash loop restoring from S3 with the local copies deleted, and
//! incremental checkpoints of unchanged state uploading next to nothing. No orphaned objects.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;
use weir_storage::s3::{S3Options, S3Store};
use weir_storage::{CheckpointStore, StorageError};

/// Bound of a metadata write in these tests.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

fn options(m: &Minio) -> S3Options {
    // Credentials and endpoint from the job file's options, not the environment.
    let var = |k: &str| m.env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    S3Options {
        endpoint: Some(var("AWS_ENDPOINT_URL")),
        access_key_id: Some(var("AWS_ACCESS_KEY_ID")),
        secret_access_key: Some(var("AWS_SECRET_ACCESS_KEY")),
        part_size: 5 << 20,
        concurrency: 2,
        ..S3Options::default()
    }
}

#[test]
fn s3_store_round_trip() {
    let m = minio();
    let bucket = m.bucket("store");
    let d = tempfile::tempdir().unwrap();
    let s = S3Store::open(&format!("s3://{bucket}/pre/fix"), "job", &options(&m)).unwrap();
    s.probe().unwrap();
    assert_eq!(s.list().unwrap(), Vec::<u64>::new());
    assert_eq!(s.get_metadata(1).unwrap(), None);

    // One PutObject for a small file, a multipart upload (3 parts) for a large one.
    let small = file(d.path(), "small", 1000);
    let large = file(d.path(), "large", 12 << 20);
    let put = s.put_file(1, "worker-0.snap", &small).unwrap();
    assert_eq!((put.bytes, put.requests), (1000, 1));
    let put = s.put_file(1, "worker-1.snap", &large).unwrap();
    assert_eq!((put.bytes, put.requests), (12 << 20, 3 + 2));
    assert_eq!(m.uploads(&bucket), 0, "the multipart upload completed");
    s.put_file(2, "worker-0.snap", &small).unwrap();
    assert_eq!(s.list().unwrap(), [1, 2]);
    assert_eq!(s.location(1), format!("s3://{bucket}/pre/fix/job/chk-1"));

    let back = d.path().join("back/large");
    s.get_file(1, "worker-1.snap", &back).unwrap();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&large).unwrap()
    );
    let e = s.get_file(1, "worker-9.snap", &back).unwrap_err();
    assert!(e.to_string().contains("worker-9.snap"), "{e}");
    // A missing object is damage (a restore falls back), not an outage.
    assert!(e.is_damage(), "{e:?}");

    // The metadata is written once: a second write is refused by the server (If-None-Match).
    s.put_metadata(1, b"meta", WITHIN).unwrap();
    assert_eq!(s.get_metadata(1).unwrap().as_deref(), Some(&b"meta"[..]));
    assert!(matches!(
        s.put_metadata(1, b"again", WITHIN).unwrap_err(),
        StorageError::AlreadyComplete { id: 1, .. }
    ));
    assert_eq!(s.get_metadata(1).unwrap().as_deref(), Some(&b"meta"[..]));

    // Delete keeps what later checkpoints reference, metadata first.
    s.delete(1, &["worker-1.snap"]).unwrap();
    assert_eq!(s.get_metadata(1).unwrap(), None);
    assert_eq!(
        m.keys(&bucket, "pre/fix/job/chk-1/"),
        ["pre/fix/job/chk-1/worker-1.snap"]
    );
    s.delete(1, &[]).unwrap();
    s.delete(2, &[]).unwrap();
    assert!(m.keys(&bucket, "pre/fix/job/").is_empty());

    // An aborted checkpoint stops its upload and leaves no multipart upload behind.
    let mut slow = options(&m);
    slow.concurrency = 1;
    let s = std::sync::Arc::new(S3Store::open(&format!("s3://{bucket}"), "job", &slow).unwrap());
    let huge = file(d.path(), "huge", 200 << 20);
    abort_mid_upload(s.clone(), huge, Duration::from_millis(300));
    s.delete(7, &[]).unwrap();
    assert_eq!(
        m.uploads(&bucket),
        0,
        "aborted multipart uploads are cleaned up"
    );
    assert!(m.keys(&bucket, "job/").is_empty());

    // Wrong credentials and a missing bucket: clear errors before anything runs.
    let mut wrong = options(&m);
    wrong.secret_access_key = Some("not-the-secret".into());
    let e = S3Store::open(&format!("s3://{bucket}"), "job", &wrong)
        .unwrap()
        .probe()
        .unwrap_err()
        .to_string();
    assert!(e.contains("403") && e.contains("credentials"), "{e}");
    let e = S3Store::open("s3://weir-no-such-bucket", "job", &options(&m))
        .unwrap()
        .probe()
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

fn job_file(dir: &Path, bucket: &str) -> std::path::PathBuf {
    sum_job(dir, "s3crash", &format!("s3://{bucket}/ck"))
}

/// SIGKILL at random moments, the local directory deleted before every restart, so every
/// restore downloads from S3; the output is exactly once and the bucket holds exactly the files
/// the retained checkpoints list.
#[test]
fn crash_loop_restores_from_s3_with_local_copies_deleted() {
    let m = minio();
    let bucket = m.bucket("crash");
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), 60_000, 6);
    let job = job_file(d.path(), &bucket);
    let kills: u64 = std::env::var("WEIR_S3_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    kill_rounds(&job, kills, (300, 900), &d.path().join("local"), &m.env);
    let o = m
        .apply(&mut weir())
        .args(["run", job.to_str().unwrap(), "--restore", "latest"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    eprintln!("{err}");
    check_exactly_once(&read_visible(&d.path().join("out")), &input);
    m.assert_no_orphans(&bucket, "ck/s3crash/", &d.path().join("local/s3crash"));
}

/// A checkpoint of state that did not change uploads next to nothing: rerunning a finished job
/// from its last checkpoint takes a final checkpoint that references the keyed state.
#[test]
fn unchanged_state_uploads_next_to_nothing() {
    let m = minio();
    let bucket = m.bucket("incr");
    let d = tempfile::tempdir().unwrap();
    // 50 000 distinct keys: keyed state far larger than what every checkpoint writes anyway
    // (source positions, sink state, headers).
    std::fs::create_dir_all(d.path().join("in")).unwrap();
    let text: String = (0..50_000)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"key\":\"key-{i}\",\"value\":{}}}\n",
                1 + i % 7
            )
        })
        .collect();
    std::fs::write(d.path().join("in/a.jsonl"), text).unwrap();
    let job = job_file(d.path(), &bucket);
    let run = |restore: bool| {
        let mut c = weir();
        m.apply(&mut c)
            .args(["run", job.to_str().unwrap(), "--quiet"]);
        if restore {
            c.args(["--restore", "latest"]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    run(false);
    run(true);
    let o = m
        .apply(&mut weir())
        .args(["checkpoints", "list", job.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let last = rows
        .iter()
        .rev()
        .find(|r| r["status"] == "completed")
        .unwrap();
    let uploaded = last["bytes_uploaded"].as_u64().unwrap();
    let referenced = last["bytes_referenced"].as_u64().unwrap();
    assert!(last["files_referenced"].as_u64().unwrap() >= 1, "{last}");
    assert!(
        uploaded * 4 < referenced,
        "unchanged state must not be uploaded again: {last}"
    );
    // Requests: one per worker file plus the metadata.
    assert_eq!(last["requests"], 3, "{last}");
    // `checkpoints inspect` reads it from S3 and shows the files it references.
    let o = m
        .apply(&mut weir())
        .args([
            "checkpoints",
            "inspect",
            last["location"].as_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let files = v["state_files"].as_array().unwrap();
    assert!(files.iter().any(|f| f["referenced"] == true), "{v}");
    assert!(
        files
            .iter()
            .all(|f| f["path"].as_str().unwrap().starts_with("s3://")),
        "{v}"
    );
    m.assert_no_orphans(&bucket, "ck/s3crash/", &d.path().join("local/s3crash"));
}
