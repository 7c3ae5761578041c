//! Writing a file through a memory map. All of the crate's `unsafe` code lives here.
//!
//! A store through a mapping cannot return an error: a failed page-in (disk full, I/O error)
//! becomes `SIGBUS`, and write-back errors appear only at `msync`. So [`write_file`]
//! 1. creates the file and sizes it (`set_len`),
//! 2. reserves its blocks (`posix_fallocate` on Linux), so that a full disk is an ordinary
//!    error *before* anything is mapped,
//! 3. maps it, lets the caller fill the mapping,
//! 4. flushes the mapping (`msync(MS_SYNC)`), which reports write-back errors, and
//! 5. `fsync`s the file, so that its size and metadata are durable too.
//!
//! What remains is a media error while copying, which still raises `SIGBUS`; no memory map can
//! avoid that, which is why the format carries checksums.

use std::fs::{File, OpenOptions};
use std::path::Path;

use memmap2::MmapOptions;

use crate::error::{io_err, StorageError};

/// Creates (or truncates) `path`, sizes it to `len` bytes, maps it read-write, calls `fill` with
/// the mapped bytes (all `len` of them, zeroed), then flushes and fsyncs it. `len` must be
/// non-zero. On any error the file is removed again.
pub(crate) fn write_file(
    path: &Path,
    len: u64,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), StorageError> {
    let map_len = usize::try_from(len).map_err(|_| StorageError::Io {
        op: "map (file larger than the address space)",
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("create snapshot file", path))?;
    let result = map_fill_sync(&file, path, len, map_len, fill);
    if result.is_err() {
        drop(file);
        // The file is incomplete; its removal failing changes nothing about the error.
        let _ = std::fs::remove_file(path);
    }
    result
}

fn map_fill_sync(
    file: &File,
    path: &Path,
    len: u64,
    map_len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), StorageError> {
    size_and_reserve(file, path, len)?;
    // SAFETY: `MmapMut` is unsound only if the mapped file is changed or truncated by someone
    // else while the map is alive (the map would then alias bytes we do not control, or touching
    // it would raise SIGBUS). The file was just created/truncated by us at a path that belongs to
    // this worker's checkpoint (no other Weir code opens it until `write_file` returns), it
    // has been sized to `map_len` bytes (and its blocks reserved) above, and the map is dropped
    // before this function returns. A non-Weir process writing the same path concurrently is
    // outside what Weir supports.
    let mut map = unsafe { MmapOptions::new().len(map_len).populate().map_mut(file) }
        .map_err(io_err("memory-map snapshot file", path))?;
    fill(&mut map[..]);
    map.flush()
        .map_err(io_err("msync of snapshot file", path))?;
    drop(map);
    file.sync_all()
        .map_err(io_err("fsync of snapshot file", path))
}

/// Sets the file's length and reserves its blocks so that a full disk fails here.
fn size_and_reserve(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    file.set_len(len)
        .map_err(io_err("size snapshot file (set_len)", path))?;
    reserve(file, path, len)
}

#[cfg(target_os = "linux")]
fn reserve(file: &File, path: &Path, len: u64) -> Result<(), StorageError> {
    use std::os::fd::AsRawFd;
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(StorageError::Io {
            op: "reserve blocks of snapshot file",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    };
    // SAFETY: `posix_fallocate` takes a file descriptor and two integers and touches no memory
    // of this process. The descriptor is valid: it is owned by `file`, which is borrowed for the
    // whole call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match rc {
        0 => Ok(()),
        // File systems without fallocate support (glibc emulates it on most; musl does not):
        // fall back to the sparse file from `set_len`.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(StorageError::Io {
            op: "reserve blocks of snapshot file (posix_fallocate)",
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(errno),
        }),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _path: &Path, _len: u64) -> Result<(), StorageError> {
    Ok(())
}
