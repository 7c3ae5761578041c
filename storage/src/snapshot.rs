//! The snapshot file: one file per worker per checkpoint holding many named sections of opaque
//! bytes. The byte layout is specified in `docs/checkpoint-format.md`; in short (little endian):
//!
//! ```text
//! 0   magic "WEIRSNAP"        8    version u16 (=1)     10  flags u16 (=0)
//! 12  header_len u32 (=64)    16   checkpoint_id u64    24  worker u32
//! 28  section_count u32       32   index_offset u64     40  index_len u64
//! 48  data_len u64            56   reserved u32 (=0)    60  crc32 of bytes 0..60
//! 64  data region: the sections back to back, in index order
//! index_offset (= 64 + data_len): postcard Vec<SectionEntry { name, offset, len, crc32 }>
//! index_offset + index_len: crc32 of the index bytes (u32); end of file
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{format_err, io_err, FormatError, StorageError};

/// The first eight bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"WEIRSNAP";
/// The snapshot format version this Weir writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
/// Length of the fixed header.
pub const SNAPSHOT_HEADER_LEN: usize = 64;
/// The longest section name, in bytes.
pub const MAX_SECTION_NAME_LEN: usize = 1024;
/// The most sections one snapshot may hold.
pub const MAX_SECTIONS: u32 = 1_000_000;

const HEADER_CRC_AT: usize = SNAPSHOT_HEADER_LEN - 4;
const INDEX_CRC_LEN: u64 = 4;

/// Identifies a snapshot: which checkpoint and which worker wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotHeader {
    /// The checkpoint the snapshot belongs to.
    pub checkpoint_id: u64,
    /// The worker (thread) that wrote it.
    pub worker: u32,
}

/// What a writer produced: enough to record the file in the checkpoint metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The file written.
    pub path: PathBuf,
    /// Its length in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE, as `crc32fast`) of the whole file, as [`file_crc32`] computes it.
    pub crc32: u32,
    /// Number of sections in it.
    pub sections: usize,
}

/// One entry of the section index. `offset` is from the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct SectionEntry {
    name: String,
    offset: u64,
    len: u64,
    crc32: u32,
}

/// The serialized form of [`SectionEntry`] with a borrowed name (same postcard bytes).
#[derive(Serialize)]
struct SectionEntryRef<'a> {
    name: &'a str,
    offset: u64,
    len: u64,
    crc32: u32,
}

/// The section index's bytes: postcard `Vec<SectionEntry>`, then their crc32 (4 bytes).
/// Returns them and the index length without the crc.
fn index_bytes(entries: &[SectionEntryRef<'_>]) -> Result<(Vec<u8>, u64), FormatError> {
    let mut index = postcard::to_stdvec(entries).map_err(|e| FormatError::Decode {
        what: "section index (encoding)",
        reason: e.to_string(),
    })?;
    let index_len = index.len() as u64;
    let index_crc = crc32fast::hash(&index);
    index.extend_from_slice(&index_crc.to_le_bytes());
    Ok((index, index_len))
}

/// The fixed header of a file with `count` sections of `data_len` bytes together and an index
/// of `index_len` bytes (without its crc).
fn header_bytes(
    header: &SnapshotHeader,
    count: u32,
    data_len: u64,
    index_len: u64,
) -> Result<[u8; SNAPSHOT_HEADER_LEN], FormatError> {
    let too_large = FormatError::TooLarge {
        what: "snapshot",
        len: u64::MAX,
    };
    let index_offset = data_len
        .checked_add(SNAPSHOT_HEADER_LEN as u64)
        .ok_or(too_large.clone())?;
    index_offset
        .checked_add(index_len + INDEX_CRC_LEN)
        .ok_or(too_large)?;
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    h[8..10].copy_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&0u16.to_le_bytes());
    h[12..16].copy_from_slice(&(SNAPSHOT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&header.checkpoint_id.to_le_bytes());
    h[24..28].copy_from_slice(&header.worker.to_le_bytes());
    h[28..32].copy_from_slice(&count.to_le_bytes());
    h[32..40].copy_from_slice(&index_offset.to_le_bytes());
    h[40..48].copy_from_slice(&index_len.to_le_bytes());
    h[48..56].copy_from_slice(&data_len.to_le_bytes());
    // 56..60 reserved, zero.
    let header_crc = crc32fast::hash(&h[..HEADER_CRC_AT]);
    h[HEADER_CRC_AT..].copy_from_slice(&header_crc.to_le_bytes());
    Ok(h)
}

/// The crc of a whole file: header, then the sections (`data_crc`), then index and its crc.
fn file_crc(header: &[u8], data_crc: &crc32fast::Hasher, index: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(header);
    crc.combine(data_crc);
    crc.update(index);
    crc.finalize()
}

/// Checks what every writer checks of the sections it is given, one at a time.
#[derive(Default)]
struct Names {
    seen: HashSet<String>,
}

impl Names {
    fn add(&mut self, name: &str) -> Result<(), FormatError> {
        check_name(name)?;
        if self.seen.len() >= MAX_SECTIONS as usize {
            return Err(FormatError::TooManySections {
                count: self.seen.len() as u64 + 1,
                limit: MAX_SECTIONS,
            });
        }
        if !self.seen.insert(name.to_owned()) {
            return Err(FormatError::DuplicateSection {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

/// Everything of a snapshot file except the section bytes, for sections given whole: what
/// [`write_snapshot_buffered`] and [`encode_snapshot`] write ([`SnapshotWriter`] writes the
/// same bytes as it goes).
struct Plan<'a> {
    header: [u8; SNAPSHOT_HEADER_LEN],
    sections: &'a [(&'a str, &'a [u8])],
    /// Index bytes followed by their crc32.
    index: Vec<u8>,
    total_len: u64,
    file_crc: u32,
}

fn check_name(name: &str) -> Result<(), FormatError> {
    if name.is_empty() || name.len() > MAX_SECTION_NAME_LEN {
        return Err(FormatError::BadSectionName {
            len: name.len(),
            limit: MAX_SECTION_NAME_LEN,
        });
    }
    Ok(())
}

impl<'a> Plan<'a> {
    fn new(
        header: &SnapshotHeader,
        sections: &'a [(&'a str, &'a [u8])],
    ) -> Result<Self, FormatError> {
        let mut names = Names::default();
        let mut entries = Vec::with_capacity(sections.len());
        let mut data_crc = crc32fast::Hasher::new();
        let mut offset = SNAPSHOT_HEADER_LEN as u64;
        for &(name, bytes) in sections {
            names.add(name)?;
            let mut h = crc32fast::Hasher::new();
            h.update(bytes);
            data_crc.combine(&h);
            entries.push(SectionEntryRef {
                name,
                offset,
                len: bytes.len() as u64,
                crc32: h.finalize(),
            });
            offset = offset
                .checked_add(bytes.len() as u64)
                .ok_or(FormatError::TooLarge {
                    what: "data region",
                    len: u64::MAX,
                })?;
        }
        let data_len = offset - SNAPSHOT_HEADER_LEN as u64;
        let (index, index_len) = index_bytes(&entries)?;
        let header = header_bytes(header, entries.len() as u32, data_len, index_len)?;
        Ok(Plan {
            file_crc: file_crc(&header, &data_crc, &index),
            header,
            sections,
            total_len: offset + index.len() as u64,
            index,
        })
    }

    /// Copies the whole file into `out`, which is exactly `total_len` bytes long.
    fn copy_into(&self, out: &mut [u8]) {
        let pieces = std::iter::once(&self.header[..])
            .chain(self.sections.iter().map(|(_, b)| *b))
            .chain(std::iter::once(&self.index[..]));
        let mut at = 0;
        for bytes in pieces {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        }
    }

    fn info(&self, path: &Path) -> SnapshotInfo {
        SnapshotInfo {
            path: path.to_path_buf(),
            bytes: self.total_len,
            crc32: self.file_crc,
            sections: self.sections.len(),
        }
    }
}

/// Encodes a snapshot in memory: the exact bytes [`write_snapshot_mmap`] and
/// [`write_snapshot_buffered`] write to a file. For tests, fuzzing seeds and small snapshots.
pub fn encode_snapshot(
    header: &SnapshotHeader,
    sections: &[(&str, &[u8])],
) -> Result<Vec<u8>, FormatError> {
    let plan = Plan::new(header, sections)?;
    let len = usize::try_from(plan.total_len).map_err(|_| FormatError::TooLarge {
        what: "snapshot",
        len: plan.total_len,
    })?;
    let mut out = vec![0u8; len];
    plan.copy_into(&mut out);
    Ok(out)
}

/// Writes a snapshot file through memory maps as its sections are produced, so that a
/// snapshot writer can encode state straight into the file in small pieces, without holding
/// the encoded state in memory first: [`SnapshotWriter::section`] starts a section,
/// [`SnapshotWriter::write`] appends bytes to it, [`SnapshotWriter::finish`] writes the index
/// and header and makes the file durable.
///
/// The file is written front to back through maps of consecutive windows of it, each sized and
/// its blocks reserved (`posix_fallocate` on Linux) before it is mapped, so that a full disk is
/// an ordinary error and not a `SIGBUS`; the bytes go in through non-temporal stores on x86-64
/// (see `docs/checkpoint-format.md`). When `finish` returns `Ok` the file is complete and
/// durable (fsynced), ready to be uploaded; its directory entry is not synced (the upload makes
/// the checkpoint durable, not the local copy). On any error, and when the writer is dropped
/// unfinished, the incomplete file is removed.
///
/// Section names must be 1 to [`MAX_SECTION_NAME_LEN`] bytes and unique, at most
/// [`MAX_SECTIONS`] of them; otherwise the error is [`StorageError::Format`].
pub struct SnapshotWriter {
    out: crate::mmap::MapWriter,
    path: PathBuf,
    header: SnapshotHeader,
    names: Names,
    /// The sections so far, the last one open while `open`: name, offset, length, crc.
    entries: Vec<(String, u64, u64, u32)>,
    open: bool,
    /// crc of the open section's bytes so far.
    crc: crc32fast::Hasher,
    /// crc of the closed sections' bytes, back to back.
    data_crc: crc32fast::Hasher,
}

impl std::fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("path", &self.path)
            .field("sections", &self.entries.len())
            .field("bytes", &self.out.position())
            .finish()
    }
}

impl SnapshotWriter {
    /// Creates (or truncates) the snapshot file `path`. With `spare`, a spare file is moved to
    /// `path` and overwritten when there is one (its pages are still cached: see
    /// [`SpareFiles`](crate::SpareFiles)), the one that fits `size_hint` bytes best;
    /// `size_hint` (the length the file is expected to reach, e.g. the previous snapshot's)
    /// also sizes the first window mapped.
    pub fn create(
        path: &Path,
        header: &SnapshotHeader,
        spare: Option<&crate::SpareFiles>,
        size_hint: u64,
    ) -> Result<SnapshotWriter, StorageError> {
        let mut out = crate::mmap::MapWriter::create(path, spare, size_hint)?;
        // The header, known only at the end, is written over these.
        out.write(&[0; SNAPSHOT_HEADER_LEN])?;
        Ok(SnapshotWriter {
            out,
            path: path.to_path_buf(),
            header: *header,
            names: Names::default(),
            entries: Vec::new(),
            open: false,
            crc: crc32fast::Hasher::new(),
            data_crc: crc32fast::Hasher::new(),
        })
    }

    /// Starts section `name` (ending the one before): the next [`SnapshotWriter::write`]s
    /// append to it.
    pub fn section(&mut self, name: &str) -> Result<(), StorageError> {
        self.end_section();
        self.names.add(name).map_err(format_err(&self.path))?;
        self.entries
            .push((name.to_owned(), self.out.position(), 0, 0));
        self.open = true;
        Ok(())
    }

    /// Appends `bytes` to the current section.
    ///
    /// # Panics
    /// Before the first [`SnapshotWriter::section`].
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        assert!(self.open, "snapshot bytes written before any section");
        self.crc.update(bytes);
        self.out.write(bytes)?;
        self.entries.last_mut().expect("open").2 += bytes.len() as u64;
        Ok(())
    }

    fn end_section(&mut self) {
        if std::mem::take(&mut self.open) {
            let crc = std::mem::take(&mut self.crc);
            self.data_crc.combine(&crc);
            self.entries.last_mut().expect("open").3 = crc.finalize();
        }
    }

    /// Ends the last section, writes the index and the header, and makes the file durable:
    /// unmaps it, cuts it to its length and `fsync`s it.
    pub fn finish(mut self) -> Result<SnapshotInfo, StorageError> {
        self.end_section();
        let entries: Vec<SectionEntryRef<'_>> = self
            .entries
            .iter()
            .map(|(name, offset, len, crc32)| SectionEntryRef {
                name,
                offset: *offset,
                len: *len,
                crc32: *crc32,
            })
            .collect();
        let data_len = self.out.position() - SNAPSHOT_HEADER_LEN as u64;
        let (index, index_len) = index_bytes(&entries).map_err(format_err(&self.path))?;
        let header = header_bytes(&self.header, entries.len() as u32, data_len, index_len)
            .map_err(format_err(&self.path))?;
        let crc32 = file_crc(&header, &self.data_crc, &index);
        let sections = entries.len();
        drop(entries);
        self.out.write(&index)?;
        let bytes = self.out.position();
        self.out.finish(&header)?;
        Ok(SnapshotInfo {
            path: self.path,
            bytes,
            crc32,
            sections,
        })
    }
}

/// Writes a snapshot of the given sections through a [`SnapshotWriter`].
pub fn write_snapshot_mmap(
    path: &Path,
    header: &SnapshotHeader,
    sections: &[(&str, &[u8])],
) -> Result<SnapshotInfo, StorageError> {
    write_snapshot_mmap_reusing(path, header, sections, None)
}

/// [`write_snapshot_mmap`], overwriting a spare file from `spare` when there is one instead of
/// creating a new file: the same bytes, written several times faster when the spare file's
/// pages are still in the page cache (see [`SpareFiles`](crate::SpareFiles)).
pub fn write_snapshot_mmap_reusing(
    path: &Path,
    header: &SnapshotHeader,
    sections: &[(&str, &[u8])],
    spare: Option<&crate::SpareFiles>,
) -> Result<SnapshotInfo, StorageError> {
    // Header and sections: all but the index (the spare file that fits best is at least
    // this long).
    let hint =
        sections.iter().map(|(_, b)| b.len() as u64).sum::<u64>() + SNAPSHOT_HEADER_LEN as u64;
    let mut w = SnapshotWriter::create(path, header, spare, hint)?;
    for (name, bytes) in sections {
        w.section(name)?;
        w.write(bytes)?;
    }
    w.finish()
}

/// Writes the same bytes as [`write_snapshot_mmap`] with plain buffered writes, then `fsync`s
/// the file. Kept for the benchmark comparison and for file systems that cannot be mapped. On an
/// error the incomplete file is removed.
pub fn write_snapshot_buffered(
    path: &Path,
    header: &SnapshotHeader,
    sections: &[(&str, &[u8])],
) -> Result<SnapshotInfo, StorageError> {
    let plan = Plan::new(header, sections).map_err(format_err(path))?;
    let file = File::create(path).map_err(io_err("create snapshot file", path))?;
    let write = || -> Result<(), StorageError> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let result = (|| {
            w.write_all(&plan.header)?;
            for (_, bytes) in sections {
                w.write_all(bytes)?;
            }
            w.write_all(&plan.index)?;
            w.flush()
        })();
        result.map_err(io_err("write snapshot file", path))?;
        let file = w
            .into_inner()
            .map_err(|e| io_err("write snapshot file", path)(e.into_error()))?;
        file.sync_all()
            .map_err(io_err("fsync of snapshot file", path))
    };
    if let Err(e) = write() {
        // The file is incomplete; its removal failing changes nothing about the error.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(plan.info(path))
}

/// Streams a file and returns `(length, crc32)` of its bytes, the same CRC as
/// [`SnapshotInfo::crc32`]. Used to verify local and downloaded copies.
pub fn file_crc32(path: &Path) -> Result<(u64, u32), StorageError> {
    let mut f = File::open(path).map_err(io_err("open for checksum", path))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut h = crc32fast::Hasher::new();
    let mut len = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read for checksum", path)(e)),
        };
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.finalize()))
}

/// A snapshot read into memory with its header and index validated. Section bytes are verified
/// against their checksums when read with [`Snapshot::section`].
#[derive(Debug)]
pub struct Snapshot {
    bytes: crate::mmap::Bytes,
    header: SnapshotHeader,
    entries: Vec<SectionEntry>,
    by_name: HashMap<String, usize>,
    /// Every byte was checked against a whole-file crc the writer computed (see
    /// [`Snapshot::verify_file_crc`]), so section crcs need not be checked again.
    verified: std::sync::atomic::AtomicBool,
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Snapshot {
    /// Opens a snapshot file (memory-mapped read-only: no copy of the file is made, its pages
    /// are the page cache's) and validates its header and index.
    pub fn open(path: &Path) -> Result<Snapshot, StorageError> {
        let bytes = crate::mmap::read_file(path)?;
        Snapshot::parse(bytes).map_err(format_err(path))
    }

    /// Validates the header and index of a snapshot held in memory. Any input gives a
    /// [`FormatError`] or a `Snapshot`, never a panic; every length is checked against the
    /// input's size before it is used.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Snapshot, FormatError> {
        Snapshot::parse(crate::mmap::Bytes::Owned(bytes))
    }

    fn parse(bytes: crate::mmap::Bytes) -> Result<Snapshot, FormatError> {
        let file_size = bytes.len() as u64;
        let magic_len = bytes.len().min(SNAPSHOT_MAGIC.len());
        if bytes[..magic_len] != SNAPSHOT_MAGIC[..magic_len] {
            return Err(FormatError::BadMagic { kind: "snapshot" });
        }
        if bytes.len() < SNAPSHOT_HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "snapshot header",
                need: SNAPSHOT_HEADER_LEN as u64,
                have: file_size,
            });
        }
        let b = &bytes[..SNAPSHOT_HEADER_LEN];
        let version = le_u16(b, 8);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                kind: "snapshot",
                found: version.into(),
                supported: SNAPSHOT_FORMAT_VERSION.into(),
            });
        }
        let stored = le_u32(b, HEADER_CRC_AT);
        let computed = crc32fast::hash(&b[..HEADER_CRC_AT]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                what: "header",
                stored,
                computed,
            });
        }
        let flags = le_u16(b, 10);
        if flags != 0 {
            return Err(FormatError::BadHeaderField {
                field: "flags",
                value: flags.into(),
                expected: "0 in version 1",
            });
        }
        let header_len = le_u32(b, 12);
        if header_len as usize != SNAPSHOT_HEADER_LEN {
            return Err(FormatError::BadHeaderField {
                field: "header_len",
                value: header_len.into(),
                expected: "64 in version 1",
            });
        }
        let reserved = le_u32(b, 56);
        if reserved != 0 {
            return Err(FormatError::BadHeaderField {
                field: "reserved",
                value: reserved.into(),
                expected: "0 in version 1",
            });
        }
        let header = SnapshotHeader {
            checkpoint_id: le_u64(b, 16),
            worker: le_u32(b, 24),
        };
        let section_count = le_u32(b, 28);
        let index_offset = le_u64(b, 32);
        let index_len = le_u64(b, 40);
        let data_len = le_u64(b, 48);
        if section_count > MAX_SECTIONS {
            return Err(FormatError::TooManySections {
                count: section_count.into(),
                limit: MAX_SECTIONS,
            });
        }

        // Bound every length by the file size before using it.
        let body = file_size - SNAPSHOT_HEADER_LEN as u64;
        if data_len > body {
            return Err(FormatError::LengthExceedsFile {
                what: "data region",
                len: data_len,
                file_size,
            });
        }
        let expected_index_offset = SNAPSHOT_HEADER_LEN as u64 + data_len;
        if index_offset != expected_index_offset {
            return Err(FormatError::BadHeaderField {
                field: "index_offset",
                value: index_offset,
                expected: "64 + data_len",
            });
        }
        let room = file_size - index_offset;
        if index_len > room || room - index_len < INDEX_CRC_LEN {
            return Err(FormatError::LengthExceedsFile {
                what: "index",
                len: index_len,
                file_size,
            });
        }
        let index_end = index_offset + index_len;
        let file_end = index_end + INDEX_CRC_LEN;
        if file_end != file_size {
            return Err(FormatError::TrailingBytes {
                what: "index checksum",
                count: file_size - file_end,
            });
        }
        // All of these are <= file_size, which is a usize.
        let (io, ie) = (index_offset as usize, index_end as usize);
        let index = &bytes[io..ie];
        let stored = le_u32(&bytes, ie);
        let computed = crc32fast::hash(index);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch {
                what: "section index",
                stored,
                computed,
            });
        }
        let (entries, rest): (Vec<SectionEntry>, _) =
            postcard::take_from_bytes(index).map_err(|e| FormatError::Decode {
                what: "section index",
                reason: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(FormatError::TrailingBytes {
                what: "section index",
                count: rest.len() as u64,
            });
        }
        if entries.len() as u64 != u64::from(section_count) {
            return Err(FormatError::SectionCountMismatch {
                header: section_count,
                index: entries.len() as u64,
            });
        }
        let mut by_name = HashMap::with_capacity(entries.len());
        let mut expected = SNAPSHOT_HEADER_LEN as u64;
        for (i, e) in entries.iter().enumerate() {
            check_name(&e.name)?;
            let fits = e.offset == expected
                && e.offset
                    .checked_add(e.len)
                    .is_some_and(|end| end <= index_offset);
            if !fits {
                return Err(FormatError::SectionOutOfPlace {
                    name: e.name.clone(),
                    offset: e.offset,
                    len: e.len,
                    expected,
                    end: index_offset,
                });
            }
            expected = e.offset + e.len;
            if by_name.insert(e.name.clone(), i).is_some() {
                return Err(FormatError::DuplicateSection {
                    name: e.name.clone(),
                });
            }
        }
        if expected != index_offset {
            return Err(FormatError::DataRegionMismatch {
                covered: expected - SNAPSHOT_HEADER_LEN as u64,
                data_len,
            });
        }
        Ok(Snapshot {
            bytes,
            header,
            entries,
            by_name,
            verified: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The checkpoint and worker this snapshot belongs to.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Length of the whole file, in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Always false: a valid snapshot has at least a header.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// crc32 of the whole file (what checkpoint metadata records for it).
    pub fn file_crc32(&self) -> u32 {
        crc32fast::hash(&self.bytes)
    }

    /// The section names, in file order.
    pub fn section_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The bytes of section `name`, verified against its checksum; `Ok(None)` if there is no
    /// such section.
    pub fn section(&self, name: &str) -> Result<Option<&[u8]>, FormatError> {
        let Some(&i) = self.by_name.get(name) else {
            return Ok(None);
        };
        self.checked(&self.entries[i]).map(Some)
    }

    /// Names and lengths of all sections, in file order (for `inspect`).
    pub fn sections(&self) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.len))
            .collect()
    }

    /// Checks the whole file against `expected`, the crc its writer computed from the bytes it
    /// wrote (as checkpoint metadata records it). On a match every byte is as written, so the
    /// section crcs are not checked again when sections are read; on a mismatch, an error.
    pub fn verify_file_crc(&self, expected: u32) -> Result<(), FormatError> {
        let computed = self.file_crc32();
        if computed != expected {
            return Err(FormatError::ChecksumMismatch {
                what: "snapshot file",
                stored: expected,
                computed,
            });
        }
        self.verified
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Verifies the checksum of every section.
    pub fn verify(&self) -> Result<(), FormatError> {
        self.entries
            .iter()
            .try_for_each(|e| self.checked(e).map(drop))
    }

    fn checked(&self, e: &SectionEntry) -> Result<&[u8], FormatError> {
        // Validated in `from_bytes`; `get` keeps this panic-free regardless.
        let bytes = usize::try_from(e.offset)
            .ok()
            .zip(usize::try_from(e.len).ok())
            .and_then(|(o, l)| self.bytes.get(o..o.checked_add(l)?))
            .ok_or(FormatError::LengthExceedsFile {
                what: "section",
                len: e.len,
                file_size: self.bytes.len() as u64,
            })?;
        if self.verified.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(bytes);
        }
        let computed = crc32fast::hash(bytes);
        if computed != e.crc32 {
            return Err(FormatError::SectionChecksum {
                name: e.name.clone(),
                stored: e.crc32,
                computed,
            });
        }
        Ok(bytes)
    }
}
