use std::path::Path;
use std::sync::Arc;

use crate::*;

/// Bound of a metadata write in these tests.
const WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

fn store(root: &Path) -> FsStore {
    FsStore::new(root, "job").unwrap()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn put_get_list_delete() {
    let d = tempfile::tempdir().unwrap();
    let s = store(&d.path().join("store"));
    assert_eq!(s.list().unwrap(), Vec::<u64>::new());
    assert_eq!(s.get_metadata(1).unwrap(), None);

    let local = d.path().join("local.snap");
    std::fs::write(&local, b"snapshot bytes").unwrap();
    s.put_file(7, "worker-0.snap", &local).unwrap();
    s.put_file(7, "worker-1.snap", &local).unwrap();
    s.put_file(10, "worker-0.snap", &local).unwrap();
    let chk7 = d.path().join("store/job/chk-7");
    assert_eq!(s.checkpoint_dir(7), chk7);
    assert_eq!(
        entries(&chk7),
        ["worker-0.snap", "worker-1.snap"],
        "no temp files left"
    );
    assert_eq!(s.get_metadata(7).unwrap(), None, "incomplete");
    assert_eq!(s.list().unwrap(), [7, 10]);

    s.put_metadata(7, b"meta", WITHIN).unwrap();
    assert_eq!(s.get_metadata(7).unwrap().as_deref(), Some(&b"meta"[..]));
    assert_eq!(
        entries(&chk7),
        ["_metadata", "worker-0.snap", "worker-1.snap"]
    );

    let dest = d.path().join("restore/job/chk-7/worker-1.snap");
    s.get_file(7, "worker-1.snap", &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"snapshot bytes");
    assert_eq!(entries(dest.parent().unwrap()), ["worker-1.snap"]);

    let e = s.get_file(7, "worker-9.snap", &dest).unwrap_err();
    assert!(matches!(e, StorageError::NotFound { .. }), "{e:?}");
    assert!(e.is_damage());
    assert!(e.to_string().contains("worker-9.snap"), "{e}");
    // A store that answers nothing, or a local file system error, says nothing about the
    // checkpoint.
    let outage = StorageError::Remote {
        op: "download",
        location: "s3://b/j/chk-7/worker-0.snap".into(),
        message: "no answer within 60.0 s".into(),
    };
    assert!(!outage.is_damage());
    let denied = StorageError::Io {
        op: "read",
        path: dest.clone(),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    assert!(!denied.is_damage());

    s.delete(7, &[]).unwrap();
    assert!(!chk7.exists());
    assert_eq!(s.list().unwrap(), [10]);
    s.delete(7, &[]).unwrap(); // idempotent
    s.delete(12345, &[]).unwrap();
    assert_eq!(
        s.location(7),
        format!("file://{}", d.path().join("store/job/chk-7").display())
    );
}

#[test]
fn put_file_of_missing_local_file_names_it() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let e = s
        .put_file(1, "w.snap", &d.path().join("absent.snap"))
        .unwrap_err();
    assert!(e.to_string().contains("absent.snap"), "{e}");
    assert_eq!(entries(&s.checkpoint_dir(1)), Vec::<String>::new());
}

#[test]
fn put_file_replaces_an_earlier_attempt() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let local = d.path().join("l");
    std::fs::write(&local, b"first").unwrap();
    s.put_file(1, "w", &local).unwrap();
    std::fs::write(&local, b"second").unwrap();
    s.put_file(1, "w", &local).unwrap();
    assert_eq!(
        std::fs::read(s.checkpoint_dir(1).join("w")).unwrap(),
        b"second"
    );
}

#[test]
fn metadata_is_written_once() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    s.put_metadata(3, b"first", WITHIN).unwrap();
    let e = s.put_metadata(3, b"second", WITHIN).unwrap_err();
    assert!(
        matches!(e, StorageError::AlreadyComplete { id: 3, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("checkpoint 3 is already complete"),
        "{e}"
    );
    assert_eq!(s.get_metadata(3).unwrap().unwrap(), b"first");
    assert_eq!(entries(&s.checkpoint_dir(3)), ["_metadata"]);
}

#[test]
fn concurrent_metadata_writers_exactly_one_wins() {
    let d = tempfile::tempdir().unwrap();
    let s = Arc::new(store(d.path()));
    for id in 0..20 {
        let handles: Vec<_> = (0..4u8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || s.put_metadata(id, &vec![t; 200_000], WITHIN).is_ok())
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1, "checkpoint {id}");
        let m = s.get_metadata(id).unwrap().unwrap();
        assert_eq!(m.len(), 200_000, "checkpoint {id}: torn metadata");
        assert!(
            m.iter().all(|b| *b == m[0]),
            "checkpoint {id}: mixed metadata"
        );
        assert_eq!(
            entries(&s.checkpoint_dir(id)),
            ["_metadata"],
            "temp files left"
        );
    }
}

#[test]
fn oversized_metadata_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    std::fs::create_dir_all(s.checkpoint_dir(1)).unwrap();
    let f = std::fs::File::create(s.checkpoint_dir(1).join("_metadata")).unwrap();
    f.set_len(MAX_METADATA_BYTES + 1).unwrap();
    let e = s.get_metadata(1).unwrap_err();
    assert!(matches!(e, StorageError::TooLarge { .. }), "{e}");
}

#[test]
fn list_ignores_everything_but_checkpoint_directories() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let job = d.path().join("job");
    for dir in [
        "chk-10", "chk-9", "chk-0", "chk-", "chk-abc", "chk-+5", "chk--1", "x", ".chk-3",
    ] {
        std::fs::create_dir_all(job.join(dir)).unwrap();
    }
    std::fs::write(job.join("chk-11"), b"a file").unwrap();
    std::fs::create_dir_all(job.join("chk-99999999999999999999999")).unwrap(); // > u64
    assert_eq!(s.list().unwrap(), [0, 9, 10]);
}

#[test]
fn delete_removes_metadata_and_files() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let local = d.path().join("l");
    std::fs::write(&local, b"x").unwrap();
    s.put_file(5, "w", &local).unwrap();
    s.put_metadata(5, b"m", WITHIN).unwrap();
    std::fs::write(s.checkpoint_dir(5).join(".w.inprogress"), b"leftover").unwrap();
    s.delete(5, &[]).unwrap();
    assert_eq!(s.get_metadata(5).unwrap(), None);
    assert!(!s.checkpoint_dir(5).exists());
    assert_eq!(s.list().unwrap(), Vec::<u64>::new());
}

#[test]
fn delete_keeping_referenced_files_retires_the_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let s = store(&d.path().join("store"));
    let local = d.path().join("l");
    std::fs::write(&local, b"x").unwrap();
    s.put_file(5, "worker-0.snap", &local).unwrap();
    s.put_file(5, "worker-1.snap", &local).unwrap();
    s.put_metadata(5, b"m", WITHIN).unwrap();
    std::fs::write(s.checkpoint_dir(5).join(".w.inprogress"), b"leftover").unwrap();
    // A later checkpoint still references worker-1.snap: metadata and the rest go.
    s.delete(5, &["worker-1.snap"]).unwrap();
    assert_eq!(s.get_metadata(5).unwrap(), None, "no longer restorable");
    assert_eq!(entries(&s.checkpoint_dir(5)), ["worker-1.snap"]);
    assert_eq!(
        s.list().unwrap(),
        [5],
        "listed as incomplete until unreferenced"
    );
    s.delete(5, &["worker-1.snap"]).unwrap(); // idempotent
    s.delete(5, &[]).unwrap();
    assert!(!s.checkpoint_dir(5).exists());
}

#[test]
fn invalid_names_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let local = d.path().join("l");
    std::fs::write(&local, b"x").unwrap();
    let long = "a".repeat(201);
    for name in [
        "",
        "../x",
        "a/b",
        ".hidden",
        "..",
        "_metadata",
        "a\\b",
        long.as_str(),
    ] {
        let e = s.put_file(1, name, &local).unwrap_err();
        assert!(matches!(e, StorageError::InvalidName { .. }), "{name}: {e}");
        let e = s.get_file(1, name, &d.path().join("out")).unwrap_err();
        assert!(matches!(e, StorageError::InvalidName { .. }), "{name}: {e}");
    }
    for job in ["", "a/b", "..", ".x"] {
        let e = FsStore::new(d.path(), job).unwrap_err();
        assert!(e.to_string().starts_with("invalid job name"), "{e}");
    }
}

#[test]
fn open_store_accepts_file_uris_and_paths() {
    let d = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", d.path().display());
    let s = open_store(&uri, "j").unwrap();
    assert_eq!(
        s.location(3),
        format!("file://{}/j/chk-3", d.path().display())
    );
    s.put_metadata(3, b"m", WITHIN).unwrap();
    assert!(d.path().join("j/chk-3/_metadata").exists());

    let short = open_store(&format!("file:{}", d.path().display()), "j").unwrap();
    assert_eq!(short.list().unwrap(), [3]);
    let plain = open_store(d.path().to_str().unwrap(), "j").unwrap();
    assert_eq!(plain.list().unwrap(), [3]);

    // A relative path is made absolute at open time.
    let rel = open_store("some/relative/dir", "j").unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        rel.location(1),
        format!("file://{}/some/relative/dir/j/chk-1", cwd.display())
    );
}

#[test]
fn open_store_uri_errors_are_clear() {
    let cases = [
        ("hdfs://nn/a//b", "empty component"),
        ("HDFS://nn/x", "in lowercase: hdfs://"),
        ("S3://bucket", "in lowercase: s3://"),
        ("s3a://bucket/x", "use s3://"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("s3://bucket//x", "empty path component"),
        ("ftp://host/x", "unknown scheme `ftp://`"),
        ("file://host/x", "needs an absolute path"),
        ("file:relative", "needs an absolute path"),
        ("", "empty"),
    ];
    for (uri, want) in cases {
        let e = match open_store(uri, "j") {
            Err(e) => e,
            Ok(_) => panic!("{uri} accepted"),
        };
        let msg = e.to_string();
        assert!(msg.contains(want), "{uri}: {msg}");
        assert!(msg.contains(&format!("`{uri}`")), "{uri}: {msg}");
        // Errors about the form of a URI list the accepted forms.
        if want.starts_with("unknown") || want.contains("absolute") || want == "empty" {
            assert!(msg.contains("file:///absolute/path"), "{msg}");
        }
    }
    let e = match open_store("/tmp/x", "bad/job") {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    };
    assert!(matches!(e, StorageError::InvalidName { .. }), "{e}");
}

#[test]
fn retention_keeps_newest_complete() {
    assert_eq!(retention_plan(&[1, 2, 3, 4], &[], 2), [1, 2]);
    assert_eq!(
        retention_plan(&[4, 1, 3, 2], &[], 1),
        [1, 2, 3],
        "unsorted input"
    );
    assert_eq!(retention_plan(&[1, 2], &[], 5), Vec::<u64>::new());
    assert_eq!(retention_plan(&[1, 2, 3], &[], 0), [1, 2], "0 keeps one");
    assert_eq!(retention_plan(&[3, 3, 1], &[], 1), [1], "duplicates");
}

#[test]
fn retention_of_incomplete_checkpoints() {
    // Nothing complete: nothing is deleted, not even incomplete ones (they may be in progress,
    // and are all the evidence there is).
    assert_eq!(retention_plan(&[], &[1, 2, 3], 1), Vec::<u64>::new());
    // Incomplete older than the newest complete go, newer ones may be in progress and stay.
    assert_eq!(retention_plan(&[3, 5], &[1, 4, 6], 1), [1, 3, 4]);
    assert_eq!(retention_plan(&[3, 5], &[1, 4, 6], 2), [1, 4]);
    // An id listed as both counts as complete.
    assert_eq!(retention_plan(&[5], &[5, 2], 1), [2]);
}
