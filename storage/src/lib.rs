//! Weir's storage layer. It knows files and bytes, nothing of operators or Kafka.
//!
//! - Durable file primitives every writer of Weir uses ([`commit_rename`], [`fsync_dir`],
//!   [`probe_writable`]). A file is durable once its bytes and its directory entry survive a
//!   power loss: write, `fsync` the file, rename it into place, `fsync` the directory.
//! - The snapshot file format ([`SnapshotWriter`], [`write_snapshot_mmap`],
//!   [`write_snapshot_buffered`], [`Snapshot`]): one file per worker per checkpoint holding named sections of opaque bytes;
//!   [`SpareFiles`] keeps retired local copies to be overwritten by later snapshots.
//! - The checkpoint metadata file ([`encode_metadata`], [`decode_metadata`]), the commit point
//!   of a checkpoint.
//! - Checkpoint stores ([`open_store`], [`CheckpointStore`], [`FsStore`], [`s3::S3Store`]) and
//!   the retention rule ([`retention_plan`]).
//!
//! The byte layouts and the crash analysis are in `docs/checkpoint-format.md`.

mod durable;
mod error;
pub mod hdfs;
mod metadata;
mod mmap;
pub mod s3;
mod snapshot;
mod spare;
mod store;

#[cfg(test)]
mod tests;

pub use durable::{commit_rename, fsync_dir, probe_writable};
pub use error::{FormatError, StorageError};
pub use metadata::{
    decode_metadata, encode_metadata, CheckpointMetadata, CheckpointStats, FileEntry,
    OperatorEntry, CHECKPOINT_FORMAT_VERSION, METADATA_FORMAT_VERSION, METADATA_MAGIC,
};
pub use mmap::{prefetch, HugePageAlloc, HUGE_PAGE_MIN};
pub use snapshot::{
    encode_snapshot, file_crc32, write_snapshot_buffered, write_snapshot_mmap,
    write_snapshot_mmap_reusing, Snapshot, SnapshotHeader, SnapshotInfo, SnapshotWriter,
    MAX_SECTIONS, MAX_SECTION_NAME_LEN, SNAPSHOT_FORMAT_VERSION, SNAPSHOT_HEADER_LEN,
    SNAPSHOT_MAGIC,
};
pub use spare::SpareFiles;
pub use store::{
    open_store, open_store_with, retention_plan, CheckpointStore, FsStore, PutStats, StoreOptions,
    MAX_METADATA_BYTES, METADATA_FILE,
};
