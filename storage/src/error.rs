//! The errors of the storage layer: [`StorageError`] for anything that touches a file system,
//! [`FormatError`] for bytes that are not a valid snapshot or metadata file.

use std::io;
use std::path::{Path, PathBuf};

/// An error of the storage layer. Its `Display` names the operation and the path involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O error with the operation and path it happened on.
    #[error("{op} `{}`: {source}", path.display())]
    Io {
        /// What was being done, e.g. "fsync of directory".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file's bytes are not a valid Weir snapshot or metadata file (or a writer was asked to
    /// produce one that would not be valid).
    #[error("`{}`: {source}", path.display())]
    Format {
        /// The file read or written.
        path: PathBuf,
        /// What is wrong with its bytes.
        #[source]
        source: FormatError,
    },
    /// The storage URI names a scheme or form this Weir cannot use.
    #[error("checkpoint storage `{uri}`: {reason}")]
    UnsupportedUri {
        /// The URI as given.
        uri: String,
        /// Why it cannot be used and what is expected instead.
        reason: String,
    },
    /// A job or file name that cannot be used as a single path component of a checkpoint.
    #[error("invalid {what} `{name}`: {reason}")]
    InvalidName {
        /// "job name" or "checkpoint file name".
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Metadata for the checkpoint exists already: a checkpoint is never completed twice.
    #[error("checkpoint {id} is already complete: `{}` exists", path.display())]
    AlreadyComplete {
        /// The checkpoint id.
        id: u64,
        /// Its metadata file.
        path: PathBuf,
    },
    /// A request to a remote store (S3, HDFS) failed, after the retries transient errors get.
    #[error("{op} `{location}`: {message}")]
    Remote {
        /// What was being done, e.g. "upload".
        op: &'static str,
        /// The object or directory, e.g. `s3://bucket/job/chk-7/worker-0.snap`.
        location: String,
        /// What the store answered (status, code, message) or why it could not be reached.
        message: String,
    },
    /// A checkpoint file the metadata lists is not in the store (deleted, or never
    /// written there): the checkpoint is damaged, unlike a store that cannot be reached.
    #[error("`{location}` does not exist")]
    NotFound {
        /// The file or object, e.g. `s3://bucket/job/chk-7/worker-0.snap`.
        location: String,
    },
    /// An upload stopped because its checkpoint was aborted.
    #[error("upload to `{location}` stopped: checkpoint {id} was aborted")]
    Aborted {
        /// The checkpoint.
        id: u64,
        /// The object or file.
        location: String,
    },
    /// A file is larger than this layer accepts for its kind.
    #[error("`{}` is {len} bytes, more than the {limit} bytes accepted for {what}", path.display())]
    TooLarge {
        /// What kind of file, e.g. "checkpoint metadata".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The limit.
        limit: u64,
    },
}

impl StorageError {
    /// Whether this says something about the bytes in the store (a file missing, too large,
    /// or not a valid snapshot or metadata file), rather than that the store or the local
    /// disk could not be used: the first makes a checkpoint damaged, the second may pass.
    pub fn is_damage(&self) -> bool {
        match self {
            StorageError::NotFound { .. }
            | StorageError::Format { .. }
            | StorageError::TooLarge { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// The OS error kind if this is an I/O error, e.g. to tell `NotFound` apart.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StorageError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

/// Returns a closure that wraps an `io::Error` into [`StorageError::Io`].
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Returns a closure that wraps a [`FormatError`] into [`StorageError::Format`].
pub(crate) fn format_err(path: &Path) -> impl FnOnce(FormatError) -> StorageError + '_ {
    move |source| StorageError::Format {
        path: path.to_path_buf(),
        source,
    }
}

/// What exactly is wrong with the bytes of a snapshot or metadata file. Every reader returns
/// one of these for any input it cannot accept; none of them panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start with the expected magic bytes.
    #[error("bad magic: not a Weir {kind}")]
    BadMagic {
        /// "snapshot" or "checkpoint metadata file".
        kind: &'static str,
    },
    /// A version this Weir does not read.
    #[error("unsupported {kind} format version {found}; this Weir reads version {supported}")]
    UnsupportedVersion {
        /// "snapshot", "checkpoint metadata" or "checkpoint".
        kind: &'static str,
        /// The version in the file.
        found: u32,
        /// The version this Weir reads.
        supported: u32,
    },
    /// The input ends before a fixed-size part is complete.
    #[error("truncated: {what} needs {need} bytes, the file has {have}")]
    Truncated {
        /// The part, e.g. "snapshot header".
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// A length field points past the end of the file.
    #[error("{what} length {len} exceeds file size {file_size}")]
    LengthExceedsFile {
        /// The part, e.g. "index".
        what: &'static str,
        /// The length read from the file.
        len: u64,
        /// The size of the file.
        file_size: u64,
    },
    /// Bytes after the last part the header describes.
    #[error("{count} unexpected bytes after the {what}")]
    TrailingBytes {
        /// The last valid part.
        what: &'static str,
        /// How many bytes follow it.
        count: u64,
    },
    /// A header field has a value this version does not allow.
    #[error("invalid header field {field}: {value} (expected {expected})")]
    BadHeaderField {
        /// The field name.
        field: &'static str,
        /// Its value in the file.
        value: u64,
        /// What this version expects.
        expected: &'static str,
    },
    /// A checksum over a whole part (header, index, metadata) does not match.
    #[error("{what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    ChecksumMismatch {
        /// The part, e.g. "header".
        what: &'static str,
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// A section's bytes do not match the checksum in the index.
    #[error(
        "section `{name}` checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    SectionChecksum {
        /// The section name.
        name: String,
        /// The checksum in the index.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// More sections than the format allows.
    #[error("section count {count} exceeds the limit of {limit}")]
    TooManySections {
        /// The count found.
        count: u64,
        /// The limit.
        limit: u32,
    },
    /// The index holds a different number of sections than the header says.
    #[error("index holds {index} sections but the header says {header}")]
    SectionCountMismatch {
        /// Count in the header.
        header: u32,
        /// Entries in the index.
        index: u64,
    },
    /// A section name that is empty or too long.
    #[error("invalid section name of {len} bytes (must be 1 to {limit} bytes)")]
    BadSectionName {
        /// Its length in bytes.
        len: usize,
        /// The longest allowed.
        limit: usize,
    },
    /// Two sections with one name.
    #[error("duplicate section `{name}`")]
    DuplicateSection {
        /// The name.
        name: String,
    },
    /// A section whose place in the data region is not where the format puts it.
    #[error("section `{name}` at offset {offset} with length {len} does not fit the data region (expected offset {expected}, data region ends at {end})")]
    SectionOutOfPlace {
        /// The section name.
        name: String,
        /// Its offset in the index.
        offset: u64,
        /// Its length in the index.
        len: u64,
        /// Where it should start (right after the previous section).
        expected: u64,
        /// The end of the data region.
        end: u64,
    },
    /// The sections do not fill the data region exactly.
    #[error("sections cover {covered} bytes but the data region has {data_len}")]
    DataRegionMismatch {
        /// Bytes covered by sections.
        covered: u64,
        /// The data length in the header.
        data_len: u64,
    },
    /// A postcard-encoded part cannot be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode {
        /// The part, e.g. "section index".
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// A value too large to be written in this format.
    #[error("{what} of {len} bytes is too large for the format")]
    TooLarge {
        /// The part.
        what: &'static str,
        /// Its size.
        len: u64,
    },
}
