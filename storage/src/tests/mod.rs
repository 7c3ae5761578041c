//! Unit and property tests of the storage layer (kept out of the modules to keep them short).

mod metadata;
mod props;
mod snapshot;
mod spare;
mod store;

use crate::{encode_metadata, CheckpointMetadata, CheckpointStats, FileEntry, OperatorEntry};
use crate::{encode_snapshot, SnapshotHeader, CHECKPOINT_FORMAT_VERSION};

/// A small valid snapshot with an empty section, a binary one and a text one.
pub(crate) fn small_snapshot() -> Vec<u8> {
    encode_snapshot(&HEADER, SECTIONS).expect("valid sections")
}

pub(crate) const HEADER: SnapshotHeader = SnapshotHeader {
    checkpoint_id: 7,
    worker: 3,
};

pub(crate) const SECTIONS: &[(&str, &[u8])] = &[
    ("op1/s0/state", b"hello world"),
    ("empty", b""),
    ("op3/s1/state", &[0, 1, 2, 255, 254, 0, 0, 9]),
];

pub(crate) fn sample_metadata() -> CheckpointMetadata {
    CheckpointMetadata {
        format_version: CHECKPOINT_FORMAT_VERSION,
        job: "clicks".into(),
        checkpoint_id: 42,
        triggered_at_ms: 1_700_000_000_000,
        completed_at_ms: 1_700_000_000_250,
        max_parallelism: 128,
        files: vec![
            FileEntry {
                name: "worker-0.snap".into(),
                checkpoint: 42,
                worker: 0,
                bytes: 1234,
                crc32: 0xdead_beef,
            },
            FileEntry {
                name: "worker-1.snap".into(),
                checkpoint: 40,
                worker: 1,
                bytes: 99,
                crc32: 7,
            },
        ],
        stats: CheckpointStats {
            duration_ms: 250,
            sync_ms_max: 3,
            async_ms_max: 200,
            alignment_ms_max: 12,
            bytes_written: 1234,
            files_written: 2,
            bytes_uploaded: 1234,
            requests: 2,
            files_referenced: 1,
            bytes_referenced: 99,
        },
        operators: vec![OperatorEntry {
            name: "count".into(),
            parallelism: 2,
            state_bytes: 1300,
        }],
    }
}

pub(crate) fn sample_metadata_bytes() -> Vec<u8> {
    encode_metadata(&sample_metadata())
}

/// The fuzz seeds are written by `fuzz/make_seeds.py`, an independent encoder that follows
/// `docs/checkpoint-format.md`; they must be exactly what the Rust writers produce.
#[test]
fn documented_layout_matches_the_writers() {
    let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let read = |p: &str| std::fs::read(seeds.join(p)).expect("fuzz seed (run fuzz/make_seeds.py)");
    assert_eq!(read("snapshot_reader/three.snap"), small_snapshot());
    assert_eq!(
        read("metadata_reader/two-files.meta"),
        sample_metadata_bytes()
    );
    for f in ["empty.snap", "big-ids.snap"] {
        let s = crate::Snapshot::from_bytes(read(&format!("snapshot_reader/{f}"))).unwrap();
        s.verify().unwrap();
    }
    crate::decode_metadata(&read("metadata_reader/empty.meta")).unwrap();
    // Versions 2 to 4 have version 5's layout and keep their numbers (window state and
    // timers differ).
    for (seed, version) in [
        ("v2-two-files.meta", 2),
        ("v3-two-files.meta", 3),
        ("v4-two-files.meta", 4),
    ] {
        let m = crate::decode_metadata(&read(&format!("metadata_reader/{seed}"))).unwrap();
        assert_eq!(
            (m.format_version, m.files.len(), m.files[1].checkpoint),
            (version, 2, 40)
        );
    }
    // Version 1 (full checkpoints only) is still read: its files belong to the checkpoint.
    let v1 = crate::decode_metadata(&read("metadata_reader/v1-two-files.meta")).unwrap();
    assert_eq!(v1.format_version, 1);
    assert_eq!(v1.files.len(), 2);
    assert!(v1.files.iter().all(|f| f.checkpoint == 42), "{v1:?}");
    assert_eq!(v1.stats.bytes_written, 1333);
    assert_eq!(v1.stats.requests, 0);
}
