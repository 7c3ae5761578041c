use super::{sample_metadata, sample_metadata_bytes};
use crate::*;

fn reseal(b: &mut [u8]) {
    let n = b.len() - 4;
    let crc = crc32fast::hash(&b[..n]);
    b[n..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn round_trip() {
    let m = sample_metadata();
    let b = encode_metadata(&m);
    assert_eq!(&b[..8], b"WEIRMETA");
    assert_eq!(decode_metadata(&b).unwrap(), m);
    assert_eq!(encode_metadata(&m), b, "deterministic");
    let empty = CheckpointMetadata {
        job: String::new(),
        files: vec![],
        operators: vec![],
        stats: CheckpointStats::default(),
        ..m
    };
    assert_eq!(decode_metadata(&encode_metadata(&empty)).unwrap(), empty);
}

#[test]
fn each_error_class() {
    assert_eq!(
        decode_metadata(b"WEIRSNAP....").unwrap_err().to_string(),
        "bad magic: not a Weir checkpoint metadata file"
    );
    assert!(matches!(
        decode_metadata(b"WEIRMETA").unwrap_err(),
        FormatError::Truncated { .. }
    ));

    let mut b = sample_metadata_bytes();
    b[8] = 9;
    assert_eq!(
        decode_metadata(&b).unwrap_err().to_string(),
        "unsupported checkpoint metadata format version 9; this Weir reads version 1"
    );

    let mut b = sample_metadata_bytes();
    b[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
    let len = b.len();
    assert_eq!(
        decode_metadata(&b).unwrap_err().to_string(),
        format!("metadata payload length 4294967295 exceeds file size {len}")
    );

    let mut b = sample_metadata_bytes();
    b.push(0);
    assert!(matches!(
        decode_metadata(&b).unwrap_err(),
        FormatError::TrailingBytes { count: 1, .. }
    ));

    let mut b = sample_metadata_bytes();
    b[20] ^= 4;
    assert!(matches!(
        decode_metadata(&b).unwrap_err(),
        FormatError::ChecksumMismatch {
            what: "metadata",
            ..
        }
    ));

    // Garbage payload behind a valid checksum.
    let mut b = b"WEIRMETA\x01\x00\x03\x00\x00\x00\xff\xff\xff\0\0\0\0".to_vec();
    reseal(&mut b);
    assert!(matches!(
        decode_metadata(&b).unwrap_err(),
        FormatError::Decode { .. }
    ));

    // A shorter payload_len that still decodes leaves payload bytes over.
    let mut b = sample_metadata_bytes();
    b.insert(b.len() - 4, 0);
    let pl = u32::from_le_bytes(b[10..14].try_into().unwrap()) + 1;
    b[10..14].copy_from_slice(&pl.to_le_bytes());
    reseal(&mut b);
    assert!(matches!(
        decode_metadata(&b).unwrap_err(),
        FormatError::TrailingBytes {
            what: "checkpoint metadata payload",
            count: 1
        }
    ));

    let m = CheckpointMetadata {
        format_version: 6,
        ..sample_metadata()
    };
    assert_eq!(
        decode_metadata(&encode_metadata(&m))
            .unwrap_err()
            .to_string(),
        "unsupported checkpoint format version 6; this Weir reads version 5"
    );
}

/// Versions 2 to 4 have version 5's metadata layout; they decode with their version kept, so
/// that readers of sections know which layout the window operators' state and the timers
/// have.
#[test]
fn version_2_to_4_metadata_is_read_with_its_version() {
    for format_version in [2, 3, 4] {
        let m = CheckpointMetadata {
            format_version,
            ..sample_metadata()
        };
        assert_eq!(decode_metadata(&encode_metadata(&m)).unwrap(), m);
    }
}

#[test]
fn every_truncation_and_bit_flip_is_an_error() {
    let b = sample_metadata_bytes();
    for n in 0..b.len() {
        assert!(decode_metadata(&b[..n]).is_err(), "prefix {n} accepted");
    }
    for bit in 0..b.len() * 8 {
        let mut m = b.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        assert!(decode_metadata(&m).is_err(), "flip of bit {bit} accepted");
    }
}
