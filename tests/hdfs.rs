//! Checkpoints in HDFS, against a real MiniDFSCluster on loopback (started by
//! scripts/services/hdfs.sh): the store's operations, and a crash loop restoring from HDFS with
//! the local copies deleted, leaving exactly the files the retained checkpoints list.

mod common;

use std::time::Duration;

use common::*;
use weir_storage::hdfs::HdfsStore;
use weir_storage::{CheckpointStore, StorageError};

/// Bound of a metadata write in these tests.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

#[test]
fn hdfs_store_round_trip() {
    let url = hdfs();
    let root = format!("/weir-store-{}", std::process::id());
    let d = tempfile::tempdir().unwrap();
    let s = HdfsStore::open(&format!("{url}{root}"), "job").unwrap();
    s.probe().unwrap();
    assert_eq!(s.list().unwrap(), Vec::<u64>::new());
    assert_eq!(s.get_metadata(1).unwrap(), None);

    let small = file(d.path(), "small", 1000);
    let large = file(d.path(), "large", 20 << 20);
    assert_eq!(s.put_file(1, "worker-0.snap", &small).unwrap().bytes, 1000);
    assert_eq!(
        s.put_file(1, "worker-1.snap", &large).unwrap().bytes,
        20 << 20
    );
    s.put_file(2, "worker-0.snap", &small).unwrap();
    assert_eq!(s.list().unwrap(), [1, 2]);
    assert_eq!(s.location(1), format!("{url}{root}/job/chk-1"));
    let back = d.path().join("back/large");
    s.get_file(1, "worker-1.snap", &back).unwrap();
    assert_eq!(
        std::fs::read(&back).unwrap(),
        std::fs::read(&large).unwrap()
    );
    // A missing file is damage (a restore falls back), not an outage.
    let e = s.get_file(1, "worker-9.snap", &back).unwrap_err();
    assert!(
        e.is_damage() && e.to_string().contains("worker-9.snap"),
        "{e:?}"
    );

    // The metadata is published once: a second write is refused by the NameNode.
    s.put_metadata(1, b"meta", WITHIN).unwrap();
    assert_eq!(s.get_metadata(1).unwrap().as_deref(), Some(&b"meta"[..]));
    assert!(matches!(
        s.put_metadata(1, b"again", WITHIN).unwrap_err(),
        StorageError::AlreadyComplete { id: 1, .. }
    ));
    assert_eq!(s.get_metadata(1).unwrap().as_deref(), Some(&b"meta"[..]));

    s.delete(1, &["worker-1.snap"]).unwrap();
    assert_eq!(s.get_metadata(1).unwrap(), None);
    assert_eq!(s.list().unwrap(), [1, 2], "retired, still listed");
    s.delete(1, &[]).unwrap();
    s.delete(2, &[]).unwrap();
    assert_eq!(s.list().unwrap(), Vec::<u64>::new());

    // An aborted checkpoint stops its upload and leaves no temp file.
    let huge = file(d.path(), "huge", 300 << 20);
    abort_mid_upload(std::sync::Arc::new(s), huge, Duration::from_millis(200));
    assert_no_hdfs_orphans(&url, &format!("{root}/job"), &d.path().join("none"));

    // An unreachable NameNode: a clear error before anything runs.
    let e = HdfsStore::open("hdfs://127.0.0.1:1/x", "job")
        .and_then(|s| s.probe())
        .unwrap_err()
        .to_string();
    assert!(e.contains("127.0.0.1:1") && e.contains("NameNode"), "{e}");
}

/// SIGKILL at random moments, the local directory deleted before every restart, so every
/// restore reads from HDFS; the output is exactly once and HDFS holds exactly the files the
/// retained checkpoints list.
#[test]
fn crash_loop_restores_from_hdfs_with_local_copies_deleted() {
    let url = hdfs();
    let root = format!("/weir-crash-{}", std::process::id());
    let d = tempfile::tempdir().unwrap();
    let input = write_input(&d.path().join("in"), 60_000, 6);
    let job = sum_job(d.path(), "hdfscrash", &format!("{url}{root}"));
    kill_rounds(&job, 8, (400, 1200), &d.path().join("local"), &[]);
    let o = weir()
        .args(["run", job.to_str().unwrap(), "--restore", "latest"])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("restoring from checkpoint") && err.contains("local_files=0"),
        "{err}"
    );
    check_exactly_once(&read_visible(&d.path().join("out")), &input);
    assert_no_hdfs_orphans(
        &url,
        &format!("{root}/hdfscrash"),
        &d.path().join("local/hdfscrash"),
    );
}
