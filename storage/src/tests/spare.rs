//! Spare snapshot files: what retention hands over, what a writer takes, and that a snapshot
//! written over a spare file is the same bytes as one written to a new file.

use crate::{encode_snapshot, write_snapshot_mmap_reusing, Snapshot, SnapshotHeader, SpareFiles};

const HEADER: SnapshotHeader = SnapshotHeader {
    checkpoint_id: 9,
    worker: 1,
};

fn local_copy(dir: &std::path::Path, chk: u64, len: usize) -> std::path::PathBuf {
    let d = dir.join(format!("chk-{chk}"));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("worker-0.snap");
    std::fs::write(&p, vec![0xAB; len]).unwrap();
    p
}

fn spare_lens(s: &SpareFiles) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(s.dir())
        .map(|e| e.flatten().map(|e| e.metadata().unwrap().len()).collect())
        .unwrap_or_default();
    v.sort_unstable();
    v
}

#[test]
fn a_retired_file_is_kept_up_to_the_bound_then_deleted() {
    let d = tempfile::tempdir().unwrap();
    let spare = SpareFiles::new(d.path().join("spare"), 2);
    for (chk, len) in [(1, 10), (2, 20), (3, 30)] {
        let p = local_copy(d.path(), chk, len);
        let kept = spare.retire(&p).unwrap();
        assert_eq!(kept, chk < 3, "checkpoint {chk}");
        assert!(
            !p.exists(),
            "checkpoint {chk}: the local copy is still there"
        );
    }
    assert_eq!(spare_lens(&spare), [10, 20]);
}

#[cfg(unix)]
#[test]
fn a_file_with_another_link_is_deleted_not_reused() {
    // A `file://` store hard-links the local copy: overwriting it would change the stored
    // checkpoint.
    let d = tempfile::tempdir().unwrap();
    let spare = SpareFiles::new(d.path().join("spare"), 4);
    let p = local_copy(d.path(), 1, 100);
    let stored = d.path().join("stored.snap");
    std::fs::hard_link(&p, &stored).unwrap();
    assert!(!spare.retire(&p).unwrap());
    assert!(!p.exists());
    assert_eq!(spare_lens(&spare), Vec::<u64>::new());
    assert_eq!(std::fs::read(&stored).unwrap(), vec![0xAB; 100]);
}

#[test]
fn a_snapshot_over_a_spare_file_is_exactly_the_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let spare = SpareFiles::new(d.path().join("spare"), 8);
    let big = vec![7u8; 300_000];
    let sections: &[(&str, &[u8])] = &[("a", &big), ("b", b"tail")];
    let want = encode_snapshot(&HEADER, sections).unwrap();
    // Spare files longer and shorter than the snapshot: the best fit is taken first (the
    // shortest long enough), then the longest of the rest; each result is exact.
    let lens = [want.len() * 3, want.len() + 1, want.len() / 2, 10];
    for (i, len) in lens.into_iter().enumerate() {
        spare.retire(&local_copy(d.path(), i as u64, len)).unwrap();
    }
    let mut taken = Vec::new();
    for n in 0..5 {
        let before = spare_lens(&spare);
        let p = d.path().join(format!("out-{n}.snap"));
        let info = write_snapshot_mmap_reusing(&p, &HEADER, sections, Some(&spare)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want, "write {n}");
        assert_eq!(info.bytes, want.len() as u64);
        Snapshot::open(&p).unwrap();
        let after = spare_lens(&spare);
        taken.push(before.iter().find(|l| !after.contains(l)).copied());
    }
    let w = want.len() as u64;
    assert_eq!(
        taken,
        [Some(w + 1), Some(3 * w), Some(w / 2), Some(10), None],
        "the order spare files were taken in"
    );
}

#[test]
fn without_spare_files_a_new_file_is_written() {
    let d = tempfile::tempdir().unwrap();
    let spare = SpareFiles::new(d.path().join("never-created"), 8);
    let p = d.path().join("out.snap");
    write_snapshot_mmap_reusing(&p, &HEADER, &[("a", b"xyz")], Some(&spare)).unwrap();
    assert_eq!(
        std::fs::read(&p).unwrap(),
        encode_snapshot(&HEADER, &[("a", b"xyz")]).unwrap()
    );
}
