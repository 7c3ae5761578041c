//! Property tests: the readers never panic, whatever the input.

use proptest::collection::vec;
use proptest::prelude::*;

use super::{sample_metadata_bytes, small_snapshot};
use crate::*;

/// Applies `(position, xor)` edits, then optionally truncates or appends.
fn mutate(mut b: Vec<u8>, edits: &[(usize, u8)], cut: Option<usize>, extra: &[u8]) -> Vec<u8> {
    if !b.is_empty() {
        let n = b.len();
        for &(at, x) in edits {
            b[at % n] ^= x;
        }
    }
    if let Some(c) = cut {
        b.truncate(c % (b.len() + 1));
    }
    b.extend_from_slice(extra);
    b
}

/// Exercises everything a reader of a snapshot can do.
fn read_all(b: Vec<u8>) {
    if let Ok(s) = Snapshot::from_bytes(b) {
        let names: Vec<String> = s.section_names().map(str::to_owned).collect();
        for n in &names {
            let _ = s.section(n);
        }
        let _ = s.sections();
        let _ = s.verify();
    }
}

fn sections_strategy() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    vec(("[a-z0-9/]{1,12}", vec(any::<u8>(), 0..64)), 0..6)
}

proptest! {
    #[test]
    fn snapshot_reader_never_panics_on_arbitrary_bytes(b in vec(any::<u8>(), 0..512)) {
        read_all(b);
    }

    #[test]
    fn snapshot_reader_never_panics_behind_a_valid_magic(b in vec(any::<u8>(), 0..512)) {
        let mut v = b"WEIRSNAP\x01\x00".to_vec();
        v.extend_from_slice(&b);
        read_all(v);
    }

    #[test]
    fn snapshot_reader_never_panics_on_mutated_files(
        edits in vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        extra in vec(any::<u8>(), 0..8),
    ) {
        read_all(mutate(small_snapshot(), &edits, cut, &extra));
    }

    #[test]
    fn snapshots_round_trip(sections in sections_strategy(), id in any::<u64>(), worker in any::<u32>()) {
        let mut seen = std::collections::HashSet::new();
        let sections: Vec<(&str, &[u8])> = sections
            .iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let header = SnapshotHeader { checkpoint_id: id, worker };
        let b = encode_snapshot(&header, &sections).unwrap();
        let s = Snapshot::from_bytes(b).unwrap();
        prop_assert_eq!(s.header(), &header);
        prop_assert_eq!(s.section_names().count(), sections.len());
        for (n, d) in &sections {
            prop_assert_eq!(s.section(n).unwrap(), Some(*d));
        }
    }

    #[test]
    fn metadata_reader_never_panics_on_arbitrary_bytes(b in vec(any::<u8>(), 0..512)) {
        let _ = decode_metadata(&b);
        let mut v = b"WEIRMETA\x01\x00".to_vec();
        v.extend_from_slice(&b);
        let _ = decode_metadata(&v);
    }

    #[test]
    fn metadata_reader_never_panics_on_mutated_files(
        edits in vec((any::<usize>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<usize>()),
        extra in vec(any::<u8>(), 0..8),
    ) {
        let b = mutate(sample_metadata_bytes(), &edits, cut, &extra);
        if let Ok(m) = decode_metadata(&b) {
            prop_assert_eq!(decode_metadata(&encode_metadata(&m)).unwrap(), m);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn writers_agree_on_random_sections(sections in sections_strategy()) {
        let mut seen = std::collections::HashSet::new();
        let sections: Vec<(&str, &[u8])> = sections
            .iter()
            .filter(|(n, _)| seen.insert(n.clone()))
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let h = SnapshotHeader { checkpoint_id: 1, worker: 2 };
        let ia = write_snapshot_mmap(&a, &h, &sections).unwrap();
        let ib = write_snapshot_buffered(&b, &h, &sections).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        prop_assert_eq!(&bytes, &std::fs::read(&b).unwrap());
        prop_assert_eq!(&bytes, &encode_snapshot(&h, &sections).unwrap());
        prop_assert_eq!(ia.crc32, ib.crc32);
        prop_assert_eq!((ia.bytes, ia.crc32), (bytes.len() as u64, crc32fast::hash(&bytes)));
    }
}
