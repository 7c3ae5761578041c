//! The checkpoint metadata file `_metadata`: the commit point of a checkpoint, written last.
//!
//! ```text
//! 0   magic "WEIRMETA"   8   version u16 (=1)   10  payload_len u32
//! 14  payload: postcard-encoded CheckpointMetadata (payload_len bytes)
//! 14 + payload_len: crc32 (u32) of all preceding bytes; end of file
//! ```

use serde::{Deserialize, Serialize};

use crate::error::FormatError;

/// The first eight bytes of every metadata file.
pub const METADATA_MAGIC: [u8; 8] = *b"WEIRMETA";
/// The metadata envelope version this Weir writes and reads.
pub const METADATA_FORMAT_VERSION: u16 = 1;
/// The checkpoint format version ([`CheckpointMetadata::format_version`]) this Weir writes and
/// reads: the version of the layout of a checkpoint as a whole (directory layout, snapshot
/// files, meaning of the metadata fields).
///
/// Version 2 added incremental checkpoints: [`FileEntry::checkpoint`] (a checkpoint lists the
/// files of earlier checkpoints it references) and the I/O counters of [`CheckpointStats`].
/// Version 1 metadata is still read (its files all belong to the checkpoint itself).
///
/// Version 3 keeps version 2's metadata layout; what changed is the state section of window
/// operators, now a keyed table like keyed state (versions 1 and 2 held the panes, encoded at
/// the barrier). Readers of sections get the version from the metadata and still decode the
/// older panes.
///
/// Version 4 keeps version 2's metadata layout too; what changed is the state of keyed
/// process functions: their event-time timers are a keyed table of their own (section
/// `<node>/<subtask>/timers`), and their `state` section holds only the number of state
/// tables (versions 1 to 3 held that number and every timer, encoded at the barrier).
/// Readers still decode the older timers.
///
/// Version 5 keeps version 2's metadata layout too; what changed is the state of window
/// operators: each instance writes a section `<node>/<subtask>/window` (the length of an
/// accumulator's time range, its watermark, whether section `legacy` exists), and sliding
/// windows over mergeable aggregates keep one accumulator per slice instead of one per window.
/// Readers of version 1 to 4 window state treat its accumulators as whole windows.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 5;

const PREFIX_LEN: usize = 8 + 2 + 4;
const CRC_LEN: usize = 4;

/// Everything a restore needs to know about a completed checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMetadata {
    /// [`CHECKPOINT_FORMAT_VERSION`] of the Weir that wrote the checkpoint; readers reject
    /// versions they do not know.
    pub format_version: u32,
    /// The job name.
    pub job: String,
    /// The checkpoint id.
    pub checkpoint_id: u64,
    /// When the checkpoint was triggered (Unix ms).
    pub triggered_at_ms: u64,
    /// When the last file was durable and the metadata was written (Unix ms).
    pub completed_at_ms: u64,
    /// The job's max parallelism (number of key groups) when the checkpoint was taken.
    pub max_parallelism: u32,
    /// Every snapshot file a restore of this checkpoint reads, each with its length and
    /// checksum: the files written for it and, for an incremental checkpoint, files of earlier
    /// checkpoints it references ([`FileEntry::checkpoint`] names the owner).
    pub files: Vec<FileEntry>,
    /// Timing and size statistics.
    pub stats: CheckpointStats,
    /// The operators whose state is in the checkpoint.
    pub operators: Vec<OperatorEntry>,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name within its checkpoint directory, e.g. `worker-0.snap`.
    pub name: String,
    /// The checkpoint whose directory holds the file: the checkpoint itself, or an earlier one
    /// for a file an incremental checkpoint references.
    pub checkpoint: u64,
    /// The worker that wrote it.
    pub worker: u32,
    /// Its length in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file (see `file_crc32`).
    pub crc32: u32,
}

/// Timing and size statistics of one checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointStats {
    /// Trigger to metadata written.
    pub duration_ms: u64,
    /// The longest synchronous (operator-blocking) snapshot phase of any worker.
    pub sync_ms_max: u64,
    /// The longest asynchronous (write + upload) phase of any worker.
    pub async_ms_max: u64,
    /// The longest barrier alignment of any worker.
    pub alignment_ms_max: u64,
    /// Bytes of the files written for this checkpoint (not counting referenced ones).
    pub bytes_written: u64,
    /// Number of files written for this checkpoint, the metadata file included.
    pub files_written: u64,
    /// Bytes sent to the store for this checkpoint (0 for a file store that hard-links).
    pub bytes_uploaded: u64,
    /// Requests made to the store to write this checkpoint (creates/puts, multipart parts,
    /// completions, the metadata write).
    pub requests: u64,
    /// Files of earlier checkpoints this one references instead of writing their state again.
    pub files_referenced: u64,
    /// Bytes of those referenced files.
    pub bytes_referenced: u64,
}

/// One operator whose state is in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorEntry {
    /// Operator name as in the job file.
    pub name: String,
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// Bytes of its state over all workers.
    pub state_bytes: u64,
}

/// Encodes metadata into the bytes of a `_metadata` file.
///
/// # Panics
/// If the encoded metadata exceeds 4 GiB (it holds one entry per file and operator, so a few
/// kilobytes in practice).
pub fn encode_metadata(m: &CheckpointMetadata) -> Vec<u8> {
    // Encoding plain structs, strings and vectors into a Vec cannot fail.
    let payload = postcard::to_stdvec(m).expect("postcard encoding of CheckpointMetadata");
    let len = u32::try_from(payload.len()).expect("checkpoint metadata larger than 4 GiB");
    let mut out = Vec::with_capacity(PREFIX_LEN + payload.len() + CRC_LEN);
    out.extend_from_slice(&METADATA_MAGIC);
    out.extend_from_slice(&METADATA_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes and verifies the bytes of a `_metadata` file. Any input gives an error or the
/// metadata, never a panic; lengths are bounded by the input's size.
pub fn decode_metadata(bytes: &[u8]) -> Result<CheckpointMetadata, FormatError> {
    let magic_len = bytes.len().min(METADATA_MAGIC.len());
    if bytes[..magic_len] != METADATA_MAGIC[..magic_len] {
        return Err(FormatError::BadMagic {
            kind: "checkpoint metadata file",
        });
    }
    if bytes.len() < PREFIX_LEN + CRC_LEN {
        return Err(FormatError::Truncated {
            what: "checkpoint metadata header",
            need: (PREFIX_LEN + CRC_LEN) as u64,
            have: bytes.len() as u64,
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != METADATA_FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            kind: "checkpoint metadata",
            found: version.into(),
            supported: METADATA_FORMAT_VERSION.into(),
        });
    }
    let payload_len = u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as u64;
    let room = (bytes.len() - PREFIX_LEN - CRC_LEN) as u64;
    if payload_len > room {
        return Err(FormatError::LengthExceedsFile {
            what: "metadata payload",
            len: payload_len,
            file_size: bytes.len() as u64,
        });
    }
    if payload_len < room {
        return Err(FormatError::TrailingBytes {
            what: "metadata checksum",
            count: room - payload_len,
        });
    }
    let crc_at = bytes.len() - CRC_LEN;
    let stored = u32::from_le_bytes([
        bytes[crc_at],
        bytes[crc_at + 1],
        bytes[crc_at + 2],
        bytes[crc_at + 3],
    ]);
    let computed = crc32fast::hash(&bytes[..crc_at]);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch {
            what: "metadata",
            stored,
            computed,
        });
    }
    let payload = &bytes[PREFIX_LEN..crc_at];
    let decode_err = |e: postcard::Error| FormatError::Decode {
        what: "checkpoint metadata",
        reason: e.to_string(),
    };
    // The payload starts with `format_version`, which decides the layout of the rest.
    let (version, _) = postcard::take_from_bytes::<u32>(payload).map_err(decode_err)?;
    let (m, rest) = match version {
        2..=4 | CHECKPOINT_FORMAT_VERSION => {
            postcard::take_from_bytes::<CheckpointMetadata>(payload)
        }
        1 => postcard::take_from_bytes::<v1::CheckpointMetadata>(payload)
            .map(|(m, rest)| (m.upgrade(), rest)),
        found => {
            return Err(FormatError::UnsupportedVersion {
                kind: "checkpoint",
                found,
                supported: CHECKPOINT_FORMAT_VERSION,
            })
        }
    }
    .map_err(decode_err)?;
    if !rest.is_empty() {
        return Err(FormatError::TrailingBytes {
            what: "checkpoint metadata payload",
            count: rest.len() as u64,
        });
    }
    Ok(m)
}

/// The layout of checkpoint format version 1 (full checkpoints only), read for upgrades.
mod v1 {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct CheckpointMetadata {
        format_version: u32,
        job: String,
        checkpoint_id: u64,
        triggered_at_ms: u64,
        completed_at_ms: u64,
        max_parallelism: u32,
        files: Vec<FileEntry>,
        stats: CheckpointStats,
        operators: Vec<super::OperatorEntry>,
    }

    #[derive(Deserialize)]
    struct FileEntry {
        name: String,
        worker: u32,
        bytes: u64,
        crc32: u32,
    }

    #[derive(Deserialize)]
    struct CheckpointStats {
        duration_ms: u64,
        sync_ms_max: u64,
        async_ms_max: u64,
        alignment_ms_max: u64,
        bytes_written: u64,
        files_written: u64,
    }

    impl CheckpointMetadata {
        pub(super) fn upgrade(self) -> super::CheckpointMetadata {
            debug_assert_eq!(self.format_version, 1);
            let id = self.checkpoint_id;
            let s = self.stats;
            super::CheckpointMetadata {
                format_version: 1,
                job: self.job,
                checkpoint_id: id,
                triggered_at_ms: self.triggered_at_ms,
                completed_at_ms: self.completed_at_ms,
                max_parallelism: self.max_parallelism,
                files: self
                    .files
                    .into_iter()
                    .map(|f| super::FileEntry {
                        name: f.name,
                        checkpoint: id,
                        worker: f.worker,
                        bytes: f.bytes,
                        crc32: f.crc32,
                    })
                    .collect(),
                stats: super::CheckpointStats {
                    duration_ms: s.duration_ms,
                    sync_ms_max: s.sync_ms_max,
                    async_ms_max: s.async_ms_max,
                    alignment_ms_max: s.alignment_ms_max,
                    bytes_written: s.bytes_written,
                    files_written: s.files_written,
                    ..Default::default()
                },
                operators: self.operators,
            }
        }
    }
}
