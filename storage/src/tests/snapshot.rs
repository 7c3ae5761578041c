use serde::Serialize;

use super::{small_snapshot, HEADER, SECTIONS};
use crate::*;

/// Recomputes the header checksum after a test edited header fields.
fn reseal(b: &mut [u8]) {
    let crc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

type Sections<'a> = &'a [(&'a str, &'a [u8])];
type Edit = fn(&mut [u8]);

#[derive(Serialize)]
struct Entry<'a> {
    name: &'a str,
    offset: u64,
    len: u64,
    crc32: u32,
}

/// A file with a correct header (for `count` sections), `data` and an arbitrary `index` with a
/// correct index checksum: for reaching the checks behind the checksums.
fn raw(count: u32, data: &[u8], index: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..8].copy_from_slice(b"WEIRSNAP");
    set_u16(&mut b, 8, 1);
    set_u32(&mut b, 12, 64);
    set_u64(&mut b, 16, 1);
    set_u32(&mut b, 28, count);
    set_u64(&mut b, 32, 64 + data.len() as u64);
    set_u64(&mut b, 40, index.len() as u64);
    set_u64(&mut b, 48, data.len() as u64);
    reseal(&mut b);
    b.extend_from_slice(data);
    b.extend_from_slice(index);
    b.extend_from_slice(&crc32fast::hash(index).to_le_bytes());
    b
}

fn index(entries: &[Entry<'_>]) -> Vec<u8> {
    postcard::to_stdvec(entries).unwrap()
}

fn entry<'a>(name: &'a str, offset: u64, data: &[u8]) -> Entry<'a> {
    Entry {
        name,
        offset,
        len: data.len() as u64,
        crc32: crc32fast::hash(data),
    }
}

fn err(bytes: Vec<u8>) -> FormatError {
    Snapshot::from_bytes(bytes).expect_err("must be rejected")
}

#[test]
fn mmap_and_buffered_writers_produce_identical_valid_files() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a.snap"), d.path().join("b.snap"));
    let ia = write_snapshot_mmap(&a, &HEADER, SECTIONS).unwrap();
    let ib = write_snapshot_buffered(&b, &HEADER, SECTIONS).unwrap();
    let (ba, bb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ba, bb);
    assert_eq!(ba, small_snapshot());
    assert_eq!((ia.bytes, ia.crc32, ia.sections), (ib.bytes, ib.crc32, 3));
    assert_eq!(ia.path, a);
    assert_eq!(file_crc32(&a).unwrap(), (ia.bytes, ia.crc32));
    assert_eq!(ia.crc32, crc32fast::hash(&ba));
    assert_eq!(ia.bytes, ba.len() as u64);

    let s = Snapshot::open(&a).unwrap();
    assert_eq!(s.header(), &HEADER);
    assert_eq!(
        s.section_names().collect::<Vec<_>>(),
        ["op1/s0/state", "empty", "op3/s1/state"]
    );
    for (name, bytes) in SECTIONS {
        assert_eq!(s.section(name).unwrap(), Some(*bytes));
    }
    assert_eq!(s.section("nope").unwrap(), None);
    assert_eq!(
        s.sections(),
        vec![
            ("op1/s0/state".to_string(), 11),
            ("empty".to_string(), 0),
            ("op3/s1/state".to_string(), 8)
        ]
    );
    s.verify().unwrap();
}

/// A section written in several pieces is the same file as with the pieces concatenated,
/// whatever the size hint (windows of the map fall anywhere in the pieces).
#[test]
fn sections_written_in_pieces_are_as_if_concatenated() {
    let d = tempfile::tempdir().unwrap();
    // Every section split at every point into up to three pieces (empty ones included).
    for (i, (name, bytes)) in SECTIONS.iter().enumerate() {
        for cut in 0..=bytes.len() {
            let p = d.path().join(format!("{i}-{cut}.snap"));
            let mut w = SnapshotWriter::create(&p, &HEADER, None, cut as u64).unwrap();
            for (j, (n, b)) in SECTIONS.iter().enumerate() {
                w.section(n).unwrap();
                if i == j {
                    let (a, b) = b.split_at(cut);
                    for piece in [a, &[], b] {
                        w.write(piece).unwrap();
                    }
                } else {
                    w.write(b).unwrap();
                }
            }
            let info = w.finish().unwrap();
            let written = std::fs::read(&p).unwrap();
            assert_eq!(written, small_snapshot(), "{name} cut at {cut}");
            assert_eq!((info.bytes, info.crc32), file_crc32(&p).unwrap());
        }
    }
}

/// Sections that cross the boundaries of the file's extensions (1 MiB, then doubling), of
/// the prefaulted chunks and of the mapped windows (4 MiB in unit tests), written in pieces of
/// odd sizes, read back as written; a size hint far too large or too small changes nothing
/// about the bytes.
#[test]
fn pieces_across_map_windows_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..9_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let sections: [(&str, &[u8]); 3] = [("a", &big[..1_048_000]), ("b", &big), ("c", &big[..3])];
    let expected = encode_snapshot(&HEADER, &sections).unwrap();
    for hint in [0, 5 << 20, 1 << 40] {
        let p = d.path().join(format!("w{hint}.snap"));
        let mut w = SnapshotWriter::create(&p, &HEADER, None, hint).unwrap();
        for (name, bytes) in sections {
            w.section(name).unwrap();
            for piece in bytes.chunks(100_003) {
                w.write(piece).unwrap();
            }
        }
        let info = w.finish().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), expected, "hint {hint}");
        assert_eq!((info.bytes, info.crc32), file_crc32(&p).unwrap());
        assert_eq!(info.sections, 3);
    }
}

/// A writer dropped before `finish` (an encoder failed) leaves no file behind.
#[test]
fn an_unfinished_snapshot_is_removed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("u.snap");
    let mut w = SnapshotWriter::create(&p, &HEADER, None, 0).unwrap();
    w.section("a").unwrap();
    w.write(&[1; 3 << 20]).unwrap();
    assert!(p.exists());
    drop(w);
    assert!(!p.exists());
}

#[test]
fn snapshot_without_sections_round_trips() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("e.snap");
    let h = SnapshotHeader {
        checkpoint_id: u64::MAX,
        worker: u32::MAX,
    };
    let info = write_snapshot_mmap(&p, &h, &[]).unwrap();
    assert_eq!(info.sections, 0);
    let s = Snapshot::open(&p).unwrap();
    assert_eq!(s.header(), &h);
    assert_eq!(s.section_names().count(), 0);
}

#[test]
fn mmap_writer_truncates_a_longer_existing_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.snap");
    std::fs::write(&p, vec![0xaa; 10_000]).unwrap();
    write_snapshot_mmap(&p, &HEADER, SECTIONS).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), small_snapshot());
}

#[test]
fn large_sections_round_trip_through_mmap() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("big.snap");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let info = write_snapshot_mmap(&p, &HEADER, &[("a", &big), ("b", &big[..17])]).unwrap();
    assert_eq!(file_crc32(&p).unwrap(), (info.bytes, info.crc32));
    let s = Snapshot::open(&p).unwrap();
    assert_eq!(s.section("a").unwrap().unwrap(), &big[..]);
    assert_eq!(s.section("b").unwrap().unwrap(), &big[..17]);
}

#[test]
fn writers_reject_bad_section_names_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let long = "x".repeat(MAX_SECTION_NAME_LEN + 1);
    let cases: [(Sections<'_>, FormatError); 3] = [
        (
            &[("", b"")],
            FormatError::BadSectionName {
                len: 0,
                limit: 1024,
            },
        ),
        (
            &[(&long, b"")],
            FormatError::BadSectionName {
                len: 1025,
                limit: 1024,
            },
        ),
        (
            &[("a", b"1"), ("a", b"2")],
            FormatError::DuplicateSection { name: "a".into() },
        ),
    ];
    for (i, (sections, want)) in cases.iter().enumerate() {
        let p = d.path().join(format!("{i}.snap"));
        for r in [
            write_snapshot_mmap(&p, &HEADER, sections),
            write_snapshot_buffered(&p, &HEADER, sections),
        ] {
            match r {
                Err(StorageError::Format { path, source }) => {
                    assert_eq!(&source, want);
                    assert_eq!(path, p);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(!p.exists());
    }
    // The longest allowed name works.
    let ok = "y".repeat(MAX_SECTION_NAME_LEN);
    let b = encode_snapshot(&HEADER, &[(&ok, b"1")]).unwrap();
    assert_eq!(
        Snapshot::from_bytes(b).unwrap().section(&ok).unwrap(),
        Some(&b"1"[..])
    );
}

#[test]
fn writers_report_io_errors_with_the_path() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("missing-dir/a.snap");
    for e in [
        write_snapshot_mmap(&p, &HEADER, SECTIONS).unwrap_err(),
        write_snapshot_buffered(&p, &HEADER, SECTIONS).unwrap_err(),
    ] {
        assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound));
        let msg = e.to_string();
        assert!(
            msg.contains("create snapshot file") && msg.contains("missing-dir"),
            "{msg}"
        );
    }
    // A directory where the file should be.
    let e = write_snapshot_mmap(d.path(), &HEADER, SECTIONS).unwrap_err();
    assert!(e.io_kind().is_some(), "{e}");
}

#[test]
fn open_reports_path_and_reason() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("junk.snap");
    let e = Snapshot::open(&p).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::NotFound));
    std::fs::write(&p, b"hello, this is not a snapshot").unwrap();
    let e = Snapshot::open(&p).unwrap_err();
    assert!(matches!(
        e,
        StorageError::Format {
            source: FormatError::BadMagic { .. },
            ..
        }
    ));
    let msg = e.to_string();
    assert!(
        msg.contains("junk.snap") && msg.contains("bad magic: not a Weir snapshot"),
        "{msg}"
    );
}

#[test]
fn bad_magic_and_truncated_header() {
    assert_eq!(
        err(b"hello".to_vec()),
        FormatError::BadMagic { kind: "snapshot" }
    );
    assert_eq!(
        err(b"WEIRMETA".to_vec()),
        FormatError::BadMagic { kind: "snapshot" }
    );
    let e = err(Vec::new());
    assert!(
        matches!(
            e,
            FormatError::Truncated {
                need: 64,
                have: 0,
                ..
            }
        ),
        "{e}"
    );
    let e = err(small_snapshot()[..30].to_vec());
    assert_eq!(
        e.to_string(),
        "truncated: snapshot header needs 64 bytes, the file has 30"
    );
}

#[test]
fn unsupported_version_is_named() {
    let mut b = small_snapshot();
    set_u16(&mut b, 8, 7);
    // Checked before the header checksum: a future layout may checksum differently.
    assert_eq!(
        err(b).to_string(),
        "unsupported snapshot format version 7; this Weir reads version 1"
    );
}

#[test]
fn header_checksum_mismatch() {
    let mut b = small_snapshot();
    b[20] ^= 1;
    let e = err(b);
    assert!(
        matches!(e, FormatError::ChecksumMismatch { what: "header", .. }),
        "{e}"
    );
    assert!(e.to_string().starts_with("header checksum mismatch"), "{e}");
}

#[test]
fn bad_header_fields() {
    let cases: [(&str, Edit); 4] = [
        ("flags", |b| set_u16(b, 10, 1)),
        ("header_len", |b| set_u32(b, 12, 128)),
        ("reserved", |b| set_u32(b, 56, 5)),
        ("index_offset", |b| {
            let v = u64::from_le_bytes(b[32..40].try_into().unwrap());
            set_u64(b, 32, v - 1)
        }),
    ];
    for (field, edit) in cases {
        let mut b = small_snapshot();
        edit(&mut b);
        reseal(&mut b);
        match err(b) {
            FormatError::BadHeaderField { field: f, .. } => assert_eq!(f, field),
            e => panic!("{field}: {e}"),
        }
    }
}

#[test]
fn too_many_sections() {
    let mut b = small_snapshot();
    set_u32(&mut b, 28, MAX_SECTIONS + 1);
    reseal(&mut b);
    assert_eq!(
        err(b).to_string(),
        "section count 1000001 exceeds the limit of 1000000"
    );
}

#[test]
fn lengths_beyond_the_file_are_rejected_without_allocating() {
    let mut b = small_snapshot();
    let len = b.len();
    set_u64(&mut b, 40, 123_456_789);
    reseal(&mut b);
    assert_eq!(
        err(b).to_string(),
        format!("index length 123456789 exceeds file size {len}")
    );

    let mut b = small_snapshot();
    set_u64(&mut b, 40, u64::MAX);
    reseal(&mut b);
    assert!(matches!(
        err(b),
        FormatError::LengthExceedsFile { what: "index", .. }
    ));

    let mut b = small_snapshot();
    set_u64(&mut b, 48, u64::MAX - 10);
    set_u64(&mut b, 32, 53); // 64 + data_len wrapped
    reseal(&mut b);
    let e = err(b);
    assert!(
        matches!(
            e,
            FormatError::LengthExceedsFile {
                what: "data region",
                ..
            }
        ),
        "{e}"
    );

    // Index length leaving no room for the index checksum.
    let mut b = small_snapshot();
    let il = u64::from_le_bytes(b[40..48].try_into().unwrap());
    set_u64(&mut b, 40, il + 2);
    reseal(&mut b);
    assert!(matches!(
        err(b),
        FormatError::LengthExceedsFile { what: "index", .. }
    ));
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut b = small_snapshot();
    b.push(0);
    assert_eq!(
        err(b),
        FormatError::TrailingBytes {
            what: "index checksum",
            count: 1
        }
    );
}

#[test]
fn index_checksum_mismatch() {
    let mut b = small_snapshot();
    let n = b.len();
    b[n - 6] ^= 0x10; // inside the index
    assert!(matches!(
        err(b),
        FormatError::ChecksumMismatch {
            what: "section index",
            ..
        }
    ));
}

#[test]
fn undecodable_index() {
    let e = err(raw(1, b"", &[0xff, 0xff, 0xff]));
    assert!(
        matches!(
            e,
            FormatError::Decode {
                what: "section index",
                ..
            }
        ),
        "{e}"
    );
    // A huge declared entry count with few bytes fails without a huge allocation.
    let e = err(raw(1, b"", &[0xff, 0xff, 0xff, 0xff, 0x0f, 1, b'a']));
    assert!(matches!(e, FormatError::Decode { .. }), "{e}");
}

#[test]
fn index_with_bytes_after_the_entries() {
    let mut idx = index(&[entry("a", 64, b"xy")]);
    idx.push(0);
    assert_eq!(
        err(raw(1, b"xy", &idx)),
        FormatError::TrailingBytes {
            what: "section index",
            count: 1
        }
    );
}

#[test]
fn section_count_mismatch() {
    let idx = index(&[entry("a", 64, b"xy")]);
    assert_eq!(
        err(raw(2, b"xy", &idx)),
        FormatError::SectionCountMismatch {
            header: 2,
            index: 1
        }
    );
}

#[test]
fn bad_names_in_the_index() {
    let idx = index(&[entry("", 64, b"xy")]);
    assert!(matches!(
        err(raw(1, b"xy", &idx)),
        FormatError::BadSectionName { len: 0, .. }
    ));
    let long = "n".repeat(1025);
    let idx = index(&[entry(&long, 64, b"xy")]);
    assert!(matches!(
        err(raw(1, b"xy", &idx)),
        FormatError::BadSectionName { len: 1025, .. }
    ));
    let idx = index(&[entry("a", 64, b"x"), entry("a", 65, b"y")]);
    assert_eq!(
        err(raw(2, b"xy", &idx)),
        FormatError::DuplicateSection { name: "a".into() }
    );
}

#[test]
fn sections_out_of_place() {
    // Gap before the first section.
    let idx = index(&[entry("a", 65, b"y")]);
    let e = err(raw(1, b"xy", &idx));
    assert!(
        matches!(
            e,
            FormatError::SectionOutOfPlace {
                offset: 65,
                expected: 64,
                ..
            }
        ),
        "{e}"
    );
    // Overlap.
    let idx = index(&[entry("a", 64, b"xy"), entry("b", 65, b"y")]);
    assert!(matches!(
        err(raw(2, b"xy", &idx)),
        FormatError::SectionOutOfPlace { .. }
    ));
    // Past the data region, and a length that overflows.
    let idx = index(&[Entry {
        name: "a",
        offset: 64,
        len: 3,
        crc32: 0,
    }]);
    assert!(matches!(
        err(raw(1, b"xy", &idx)),
        FormatError::SectionOutOfPlace { .. }
    ));
    let idx = index(&[Entry {
        name: "a",
        offset: 64,
        len: u64::MAX,
        crc32: 0,
    }]);
    assert!(matches!(
        err(raw(1, b"xy", &idx)),
        FormatError::SectionOutOfPlace { .. }
    ));
}

#[test]
fn data_region_not_covered() {
    let idx = index(&[entry("a", 64, b"x")]);
    assert_eq!(
        err(raw(1, b"xy", &idx)),
        FormatError::DataRegionMismatch {
            covered: 1,
            data_len: 2
        }
    );
}

#[test]
fn section_checksum_checked_on_read() {
    let mut b = small_snapshot();
    b[64 + 3] ^= 0x40; // inside "hello world"
    let s = Snapshot::from_bytes(b).unwrap();
    let e = s.section("op1/s0/state").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("section `op1/s0/state` checksum mismatch"),
        "{e}"
    );
    assert!(s.section("op3/s1/state").unwrap().is_some());
    assert!(s.verify().is_err());
}

#[test]
fn every_truncation_is_an_error() {
    let b = small_snapshot();
    for n in 0..b.len() {
        assert!(
            Snapshot::from_bytes(b[..n].to_vec()).is_err(),
            "prefix of {n} bytes accepted"
        );
    }
}

#[test]
fn every_single_bit_flip_is_detected() {
    let b = small_snapshot();
    for bit in 0..b.len() * 8 {
        let mut m = b.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        let detected = match Snapshot::from_bytes(m) {
            Err(_) => true,
            Ok(s) => s.verify().is_err(),
        };
        assert!(detected, "flip of bit {bit} not detected");
    }
}

#[test]
fn file_crc32_streams_large_files() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("f");
    let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&p, &data).unwrap();
    assert_eq!(
        file_crc32(&p).unwrap(),
        (data.len() as u64, crc32fast::hash(&data))
    );
    let e = file_crc32(&d.path().join("nope")).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

/// A full disk is an error from the writer (before mapping), not a SIGBUS, and leaves no file.
/// Needs a small file system: `mount -t tmpfs -o size=1m tmpfs /mnt/small` and
/// `WEIR_TEST_SMALL_FS=/mnt/small cargo test -p weir-storage -- --ignored full_disk`.
#[test]
#[ignore = "needs a small file system in WEIR_TEST_SMALL_FS"]
fn full_disk_is_an_error_not_a_crash() {
    let dir = std::path::PathBuf::from(
        std::env::var_os("WEIR_TEST_SMALL_FS").expect("WEIR_TEST_SMALL_FS"),
    );
    let big = vec![7u8; 4 << 20];
    let p = dir.join("too-big.snap");
    let e = write_snapshot_mmap(&p, &HEADER, &[("a", &big)]).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::StorageFull), "{e}");
    assert!(e.to_string().contains("posix_fallocate"), "{e}");
    assert!(!p.exists());
    let e = write_snapshot_buffered(&p, &HEADER, &[("a", &big)]).unwrap_err();
    assert_eq!(e.io_kind(), Some(std::io::ErrorKind::StorageFull), "{e}");
    assert!(!p.exists());
}

#[test]
fn whole_file_crc_check_matches_the_writer() {
    let bytes = small_snapshot();
    let crc = crc32fast::hash(&bytes);
    let s = Snapshot::from_bytes(bytes.clone()).unwrap();
    assert!(matches!(
        s.verify_file_crc(crc ^ 1).unwrap_err(),
        FormatError::ChecksumMismatch { .. }
    ));
    s.verify_file_crc(crc).unwrap();
    assert_eq!(
        s.section("op1/s0/state").unwrap(),
        Some(&b"hello world"[..])
    );
    // A damaged section is still caught by a file crc check against the writer's crc.
    let mut bad = bytes;
    let at = bad.windows(5).position(|w| w == b"hello").unwrap();
    bad[at] ^= 1;
    let s = Snapshot::from_bytes(bad).unwrap();
    assert!(s.verify_file_crc(crc).is_err());
    assert!(
        s.section("op1/s0/state").is_err(),
        "unverified: section crc checked"
    );
}
