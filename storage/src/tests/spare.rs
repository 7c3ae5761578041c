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

/// A directory on the disk the workspace is on: the page cache bound needs a file system with
/// a page cache to drop (the system's temp directory may be a `tmpfs`, whose pages are the
/// files themselves).
#[cfg(target_os = "linux")]
fn disk_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// A durable local copy of `kib` KiB, all of it in the page cache.
#[cfg(target_os = "linux")]
fn cached_copy(dir: &std::path::Path, chk: u64, kib: usize) -> std::path::PathBuf {
    use std::io::Write;
    let d = dir.join(format!("chk-{chk}"));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("worker-0.snap");
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(&vec![chk as u8; kib << 10]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::fs::read(&p).unwrap();
    assert_eq!(resident(&p), kib / 4, "{} is not all cached", p.display());
    p
}

#[cfg(target_os = "linux")]
fn resident(p: &std::path::Path) -> usize {
    crate::mmap::resident_pages(p).unwrap()
}

#[cfg(target_os = "linux")]
#[test]
fn over_the_cache_bound_the_oldest_files_pages_are_dropped() {
    let d = disk_dir();
    let spare = SpareFiles::new(d.path().join("spare"), 8).with_cache_limit(Some(600 << 10));
    let f: Vec<_> = (1..=4).map(|i| cached_copy(d.path(), i, 256)).collect();
    spare.admit(&f[0], 256 << 10);
    spare.admit(&f[1], 256 << 10);
    assert_eq!(spare.cached_bytes(), 512 << 10);
    assert_eq!(spare.dropped_bytes(), 0);
    assert_eq!([resident(&f[0]), resident(&f[1])], [64, 64]);
    // 768 KiB > 600 KiB: the oldest goes.
    spare.admit(&f[2], 256 << 10);
    assert_eq!(
        [resident(&f[0]), resident(&f[1]), resident(&f[2])],
        [0, 64, 64]
    );
    spare.admit(&f[3], 256 << 10);
    assert_eq!(
        f.iter().map(|p| resident(p)).collect::<Vec<_>>(),
        [0, 0, 64, 64]
    );
    assert_eq!(spare.cached_bytes(), 512 << 10);
    assert_eq!(spare.dropped_bytes(), 512 << 10);
    // The bytes are all still there.
    for (i, p) in f.iter().enumerate() {
        assert_eq!(std::fs::read(p).unwrap(), vec![i as u8 + 1; 256 << 10]);
    }
    // Files read back from disk are not reused (overwriting them would read them again):
    // deleted although there is room; cached ones are kept.
    assert!(!spare.retire(&f[0]).unwrap());
    assert!(!f[0].exists());
    assert!(spare.retire(&f[2]).unwrap());
    assert_eq!(spare.cached_bytes(), 256 << 10);
    // Deleted outright: out of the count.
    spare.discard(&f[3]).unwrap();
    assert!(!f[3].exists());
    assert_eq!(spare.cached_bytes(), 0);
    // A file deleted behind the bound's back is no error when its turn comes.
    let g: Vec<_> = (5..=7).map(|i| cached_copy(d.path(), i, 256)).collect();
    spare.admit(&g[0], 256 << 10);
    std::fs::remove_file(&g[0]).unwrap();
    spare.admit(&g[1], 256 << 10);
    spare.admit(&g[2], 256 << 10);
    assert_eq!(spare.cached_bytes(), 512 << 10);
    assert_eq!([resident(&g[1]), resident(&g[2])], [64, 64]);
}

#[cfg(target_os = "linux")]
#[test]
fn a_zero_bound_drops_each_file_once_durable_and_none_is_unbounded() {
    let d = disk_dir();
    let none = SpareFiles::new(d.path().join("spare"), 8).with_cache_limit(Some(0));
    let p = cached_copy(d.path(), 1, 128);
    none.admit(&p, 128 << 10);
    assert_eq!(resident(&p), 0);
    assert_eq!(none.cached_bytes(), 0);
    assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 128 << 10]);

    let all = SpareFiles::new(d.path().join("spare2"), 8);
    let f: Vec<_> = (2..=9).map(|i| cached_copy(d.path(), i, 128)).collect();
    for p in &f {
        all.admit(p, 128 << 10);
    }
    assert!(f.iter().all(|p| resident(p) == 32));
    assert_eq!(all.cached_bytes(), 8 * (128 << 10));
    assert_eq!(all.dropped_bytes(), 0);
}
