//! Writing and reading files through memory maps, the allocator for large state tables
//! ([`HugePageAlloc`]) and a prefetch hint ([`prefetch`]). All of the crate's `unsafe` code
//! lives here.
//!
//! Reading ([`read_file`]) maps a snapshot file read-only: a restore of gigabytes of state
//! reads the page cache's pages in place instead of copying them into freshly zeroed memory.
//!
//! Writing:
//!
//! A store through a mapping cannot return an error: a failed page-in (disk full, I/O error)
//! becomes `SIGBUS`, and write-back errors appear only at `msync`. And a snapshot writer
//! streams what it encodes straight into the file, so the file's length is known only at the
//! end. So [`MapWriter`] writes a file front to back through a map of a 1 GiB *window* of
//! addresses (then of the next one), and
//! 1. extends the file a step at a time (`set_len`: first to about the length the caller
//!    expects, then by as much as it holds, 1 to 64 MiB) and reserves the step's blocks
//!    (`posix_fallocate` on Linux), so that a full disk is an ordinary error *before* anything
//!    is written there; the map reaches beyond the end of the file, but only bytes within it
//!    are ever touched,
//! 2. copies the caller's bytes into the map in chunks of [`CHUNK`] bytes, each prefaulted for
//!    writing just before it is filled (`MADV_POPULATE_WRITE`): the kernel zeroes a new page of
//!    the file before mapping it, and zeroing one chunk at a time keeps those zeroes in the
//!    cache where the copy overwrites them (prefaulting the whole file up front sends every
//!    zeroed page to memory first, and faulting page by page costs a fault each); the copy uses
//!    non-temporal stores on x86-64 ([`copy_streaming`]), so the snapshot's bytes do not
//!    displace the workers' state from the shared cache,
//! 3. unmaps a window when it is full.
//!
//! Then [`MapWriter::finish`] writes the header into the first bytes (through a map of its
//! own), cuts the file to the bytes written (the last step's reserved tail), and `fsync`s
//! it, which writes the dirty pages back, reports write-back errors, and makes its size and
//! metadata durable.
//!
//! Unmapping *before* the write-back matters: `msync` on a live mapping write-protects every
//! page it cleans, and each of those TLB flushes interrupts the other cores running this
//! process (the workers) with an inter-processor interrupt. After `munmap` the page cache
//! holds the same dirty pages, with one TLB flush per window.
//!
//! What remains is a media error while copying, which still raises `SIGBUS`; no memory map can
//! avoid that, which is why the format carries checksums.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::MmapOptions;

use crate::error::{io_err, StorageError};

/// Bytes prefaulted and filled at a time.
const CHUNK: usize = 4 << 20;

/// The file is extended by at least this much at a time (and at first to the length the
/// caller expects).
const MIN_GROWTH: u64 = 1 << 20;

/// The file is extended by at most this much at a time beyond what the caller expects (each
/// extension by as much as the file already holds, up to this).
const MAX_GROWTH: u64 = 64 << 20;

/// The address range mapped at a time. Only the part within the file is ever touched, so a
/// window costs page tables only for what is written; unmapping and mapping again every few
/// megabytes instead made writing a 1 GB snapshot over a cached file 15-20% slower.
/// (Unit tests use 4 MiB, so that their files cross windows.)
const WINDOW: u64 = if cfg!(test) {
    4 << 20
} else if cfg!(target_pointer_width = "64") {
    1 << 30
} else {
    64 << 20
};

/// Writes a file front to back through a memory map, so that its length need not be known up
/// front: the map covers a *window* of [`WINDOW`] bytes of addresses from the start of the
/// file (then the next window, and so on), and the file under it is extended (and its blocks
/// reserved) a step at a time, before the bytes that need it are written; only bytes within
/// the file are ever touched. [`MapWriter::finish`] cuts the file to the bytes written (see
/// the module docs). Dropped unfinished, it removes the file.
pub(crate) struct MapWriter {
    file: File,
    path: PathBuf,
    /// Bytes written: the file offset of the next byte.
    at: u64,
    /// The file's length so far (set and reserved).
    len: u64,
    /// The mapped window: its map, file offset, and how much of it is prefaulted (never
    /// beyond the file's length).
    window: Option<(memmap2::MmapMut, u64, usize)>,
    /// The length the caller expects (the first extension's).
    size_hint: u64,
    /// Set once the file is complete and synced.
    done: bool,
}

impl MapWriter {
    /// Creates (or truncates) `path`, or, with `spare`, moves there the spare file that fits
    /// `size_hint` bytes best (its pages are still cached: see [`crate::SpareFiles`]).
    pub(crate) fn create(
        path: &Path,
        spare: Option<&crate::SpareFiles>,
        size_hint: u64,
    ) -> Result<Self, StorageError> {
        // A reused file keeps its blocks and cached pages; `finish` cuts it to the bytes
        // written, and every byte up to there is written.
        let reused = spare.is_some_and(|s| s.take(path, size_hint));
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(!reused)
            .open(path)
            .and_then(|f| f.metadata().map(|m| (f, m.len())));
        let (file, len) = opened.map_err(|e| {
            // A spare file was renamed here, or a new one created: neither is a snapshot.
            let _ = std::fs::remove_file(path);
            io_err("create snapshot file", path)(e)
        })?;
        Ok(MapWriter {
            file,
            path: path.to_path_buf(),
            at: 0,
            len,
            window: None,
            size_hint,
            done: false,
        })
    }

    /// Bytes written so far.
    pub(crate) fn position(&self) -> u64 {
        self.at
    }

    /// Appends `bytes`.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) -> Result<(), StorageError> {
        while !bytes.is_empty() {
            let mapped = match &self.window {
                Some((map, start, _)) => self.at < start + map.len() as u64,
                None => false,
            };
            if !mapped {
                self.next_window()?;
            }
            if self.at == self.len {
                self.grow()?;
            }
            let (map, start, ready) = self.window.as_mut().expect("mapped above");
            let off = (self.at - *start) as usize;
            if off == *ready {
                // Within the window and the file (`len` > `at` here).
                let in_file = (self.len - self.at).min(map.len() as u64 - off as u64);
                let n = CHUNK.min(in_file as usize);
                // Only a hint: on kernels without MADV_POPULATE_WRITE (before 5.14) the copy
                // faults the pages in one by one instead.
                let _ = map.advise_range(memmap2::Advice::PopulateWrite, off, n);
                *ready += n;
            }
            let n = bytes.len().min(*ready - off);
            copy_streaming(&mut map[off..off + n], &bytes[..n]);
            self.at += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    /// Extends the file from `len` (= `at`) on: the first time to about the length the
    /// caller expects, then by as much as it holds, within [`MIN_GROWTH`]..[`MAX_GROWTH`]
    /// and the current window; sets the length and reserves the blocks, so that a full disk
    /// is an error here and not a SIGBUS when the mapped pages are written.
    fn grow(&mut self) -> Result<(), StorageError> {
        let (_, start, _) = self.window.as_ref().expect("mapped before growing");
        let window_end = start + WINDOW;
        let step = self.len.clamp(MIN_GROWTH, MAX_GROWTH);
        let end = (self.len + step)
            .max(self.size_hint.next_multiple_of(MIN_GROWTH))
            .min(window_end);
        debug_assert!(end > self.len, "the window ends after `at`");
        self.file
            .set_len(end)
            .map_err(io_err("size snapshot file (set_len)", &self.path))?;
        reserve(&self.file, &self.path, self.len, end)?;
        self.len = end;
        Ok(())
    }

    /// Unmaps the current window (if any) and maps the next one, from `at` on.
    fn next_window(&mut self) -> Result<(), StorageError> {
        self.unmap();
        // Windows are WINDOW bytes long, so `at` is a page boundary here, as mapping offsets
        // must be.
        let map_len = usize::try_from(WINDOW).expect("a window fits the address space");
        // SAFETY: `MmapMut` is unsound only if the mapped file is changed or truncated by
        // someone else while the map is alive (the map would then alias bytes we do not
        // control, or touching it would raise SIGBUS). The file was just created/truncated by
        // us at a path that belongs to this worker's checkpoint (no other Weir code opens it
        // until the snapshot is finished), or it is a spare file just moved there: a local
        // copy of a checkpoint that the store no longer has, that no retained checkpoint
        // names and no other link points to, in a `chk-<id>` directory with `id` at or after
        // the running job's first checkpoint (the only files this process maps for reading
        // are those of the checkpoint it was restored from, all older). The window may reach
        // beyond the end of the file, which mapping allows; `write` touches only bytes within
        // the file's length (set, and its blocks reserved, by `grow`), and this writer
        // shortens the file only after unmapping every window. A non-Weir process writing the
        // same path concurrently is outside what Weir supports.
        let map = unsafe {
            MmapOptions::new()
                .offset(self.at)
                .len(map_len)
                .map_mut(&self.file)
        }
        .map_err(io_err("memory-map snapshot file", &self.path))?;
        self.window = Some((map, self.at, 0));
        Ok(())
    }

    /// Orders the streaming stores into the current window and unmaps it.
    fn unmap(&mut self) {
        if self.window.take().is_some() {
            fence_streaming();
        }
    }

    /// Writes `bytes` at the start of the file, over what was written there (the header,
    /// known only at the end), cuts the file to the bytes written, and fsyncs it.
    pub(crate) fn finish(mut self, head: &[u8]) -> Result<(), StorageError> {
        assert!(
            head.len() as u64 <= self.at,
            "the head overwrites bytes already written"
        );
        self.unmap();
        if !head.is_empty() {
            // SAFETY: as in `next_window`: the file is ours and at least `at` >= `head.len()`
            // bytes long (its blocks reserved) while this map lives.
            let mut map = unsafe { MmapOptions::new().len(head.len()).map_mut(&self.file) }
                .map_err(io_err("memory-map snapshot file", &self.path))?;
            map.copy_from_slice(head);
        }
        if self.len != self.at {
            self.file
                .set_len(self.at)
                .map_err(io_err("size snapshot file (set_len)", &self.path))?;
        }
        self.file
            .sync_all()
            .map_err(io_err("fsync of snapshot file", &self.path))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for MapWriter {
    fn drop(&mut self) {
        if !self.done {
            self.unmap();
            // The file is incomplete; its removal failing changes nothing about the error.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Copies `src` into `dst` (of the same length). On x86-64 the bulk goes through
/// non-temporal stores, which write whole cache lines to memory without first reading them
/// into the cache: a snapshot's pages are written once and then only read by write-back, so
/// ordinary stores would fetch every destination line (twice the memory traffic) and push the
/// workers' hot state out of the shared last-level cache. [`fence_streaming`] must follow
/// before anyone else reads `dst`.
fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(
        dst.len(),
        src.len(),
        "copy between slices of different lengths"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        const LINE: usize = 64;
        if dst.len() >= 4 * LINE {
            // Ordinary stores up to the first line boundary of `dst` and after the last.
            let head = dst.as_ptr().align_offset(LINE).min(dst.len());
            let body = (dst.len() - head) / LINE * LINE;
            let (d_head, d_rest) = dst.split_at_mut(head);
            let (s_head, s_rest) = src.split_at(head);
            d_head.copy_from_slice(s_head);
            let (d_body, d_tail) = d_rest.split_at_mut(body);
            let (s_body, s_tail) = s_rest.split_at(body);
            for (d, s) in d_body.chunks_exact_mut(LINE).zip(s_body.chunks_exact(LINE)) {
                let (d, s) = (d.as_mut_ptr(), s.as_ptr());
                for i in (0..LINE).step_by(16) {
                    // SAFETY: `d` and `s` point to chunks of exactly LINE bytes, so
                    // `[i, i + 16)` is inside both (i <= LINE - 16); `d` is 64-byte aligned
                    // (`head` aligned the body, whose chunks are LINE bytes long), so `d + i`
                    // is 16-byte aligned as `_mm_stream_si128` requires; the unaligned load
                    // has no alignment requirement; SSE2 is part of every x86-64 CPU.
                    unsafe {
                        let v = _mm_loadu_si128(s.add(i).cast::<__m128i>());
                        _mm_stream_si128(d.add(i).cast::<__m128i>(), v);
                    }
                }
            }
            d_tail.copy_from_slice(s_tail);
            return;
        }
    }
    dst.copy_from_slice(src);
}

/// Orders the non-temporal stores of [`copy_streaming`] before every later store and before
/// the map is unmapped and the file written back.
fn fence_streaming() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` only orders stores; it has no operands and no preconditions.
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

/// Asks the CPU to start loading every cache line `value` occupies (its own bytes, not what
/// it points to), without waiting for them: a loop that looks up many entries of a large
/// table, then reads them, lets their misses overlap (used by the snapshot writers' delta
/// lookups, whose table entries straddle two cache lines). A hint only: it changes no value,
/// and does nothing on other architectures.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = (value as *const T).cast::<i8>();
        let size = std::mem::size_of::<T>();
        // Every 64 bytes from the start, then the last byte: one address in each line.
        let mut at = 0;
        while at < size {
            // SAFETY: `prefetch` reads nothing a program can observe and cannot fault, even on
            // an invalid address; these are inside `value`, which is borrowed and alive.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(at)) };
            at += 64;
        }
        if size > 0 {
            // SAFETY: as above.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(size - 1)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(target_os = "linux")]
/// Reserves the blocks of bytes `from..to` of `file`, so that a full disk fails here and not
/// as a SIGBUS when the mapped pages are written.
fn reserve(file: &File, path: &Path, from: u64, to: u64) -> Result<(), StorageError> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to - from),
    ) else {
        return Err(StorageError::Io {
            op: "reserve blocks of snapshot file",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    };
    // SAFETY: `posix_fallocate` takes a file descriptor and two integers and touches no memory
    // of this process. The descriptor is valid: it is owned by `file`, which is borrowed for the
    // whole call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), off, len) };
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
fn reserve(_file: &File, _path: &Path, _from: u64, _to: u64) -> Result<(), StorageError> {
    Ok(())
}

/// A file's bytes: read into memory, or mapped.
pub(crate) enum Bytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.len())
    }
}

/// Maps `path` read-only, populated up front. Empty files (which cannot be mapped) are read as
/// an empty buffer.
pub(crate) fn read_file(path: &Path) -> Result<Bytes, StorageError> {
    let file = File::open(path).map_err(io_err("open snapshot file", path))?;
    let len = file
        .metadata()
        .map_err(io_err("stat snapshot file", path))?
        .len();
    if len == 0 {
        return Ok(Bytes::Owned(Vec::new()));
    }
    // SAFETY: `Mmap` is unsound only if the mapped file is changed or truncated while the map
    // is alive. Snapshot files are written completely before any reader opens them (local
    // copies and `file://` stores name each file after its checkpoint and worker and never
    // write it under that name again; a download is written and closed before it is opened
    // here). Afterwards they are only deleted, which leaves an existing mapping intact, or, as
    // local copies of checkpoints deleted from the store, overwritten as spare files
    // (`SpareFiles`): only files in `chk-<id>` directories with `id` at or after the running
    // job's first checkpoint, never those it was restored from (all older), so no reader of
    // this process maps them (`weir checkpoints inspect` reads local checkpoint files instead
    // of mapping them, for the same reason). Another process truncating a checkpoint file
    // under a running job is outside what Weir supports (the same contract as for the write
    // path above); a media error while reading raises SIGBUS, as it would for any mapped file.
    let map = unsafe { MmapOptions::new().populate().map(&file) }
        .map_err(io_err("memory-map snapshot file", path))?;
    Ok(Bytes::Mapped(map))
}

/// A global allocator that backs large allocations with transparent huge pages.
///
/// Keyed state lives in hash tables of many megabytes whose entries are read and written at
/// random. On 4 KiB pages a gigabyte of such tables needs 2 MiB of page-table entries, far more
/// than the TLB covers, so nearly every lookup also walks the page tables (and the snapshot
/// writer's streaming evicts those entries from the shared cache). On 2 MiB pages the same
/// gigabyte needs 512 TLB entries, and restoring it takes 512 page faults instead of 262 144.
///
/// Allocations of at least [`HUGE_PAGE_MIN`] bytes are aligned to 2 MiB and advised with
/// `MADV_HUGEPAGE` (which works where transparent huge pages are `always` or `madvise`, the
/// usual default); smaller ones go to the system allocator unchanged. Where huge pages are
/// off or unavailable the advice fails silently and the memory stays on ordinary pages.
///
/// A large block that is freed is kept for reuse for a while instead of going back
/// to the system at once: the next allocation of the same size (hash tables come in powers of
/// two, so sizes repeat) gets memory that is already backed, where a new mapping has every
/// page zeroed by the kernel first. That matters most on virtual machines that hand free
/// memory back to their host (free page reporting): there, backing a fresh huge page can cost
/// several times more than the zeroing, and a restore that rebuilds gigabytes of tables after
/// an in-process restart pays it for every page. Kept blocks go back to the system after
/// 10 s unused (checked whenever a large block is allocated or freed), and at most a quarter
/// of the memory the process may use (the machine's, or its container's limit) is kept
/// (`WEIR_RETAIN_MB=<n>` sets another bound, 0 turns keeping off).
///
/// `WEIR_HUGE_PAGES=0` in the environment turns it off (every allocation then goes to the
/// system allocator as is). The `weir` binary uses it; an embedding program opts in with
/// `#[global_allocator] static A: weir::HugePageAlloc = weir::HugePageAlloc;`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HugePageAlloc;

/// Smallest allocation [`HugePageAlloc`] puts on huge pages.
pub const HUGE_PAGE_MIN: usize = 4 << 20;

const HUGE_PAGE: usize = 2 << 20;

impl HugePageAlloc {
    /// The layout a large allocation is made with: aligned to a huge page.
    fn huge(layout: std::alloc::Layout) -> Option<std::alloc::Layout> {
        if layout.size() < HUGE_PAGE_MIN || !Self::enabled() {
            return None;
        }
        std::alloc::Layout::from_size_align(layout.size(), layout.align().max(HUGE_PAGE)).ok()
    }

    /// False when the environment sets `WEIR_HUGE_PAGES=0`. Read at the first large allocation
    /// and fixed from then on, so that a block is always freed with the layout it was made with
    /// (reading the environment allocates only small blocks, which never come here).
    fn enabled() -> bool {
        use std::sync::atomic::{AtomicU8, Ordering};
        static STATE: AtomicU8 = AtomicU8::new(0);
        match STATE.load(Ordering::Acquire) {
            1 => true,
            2 => false,
            _ => {
                let on = std::env::var_os("WEIR_HUGE_PAGES").is_none_or(|v| v != "0");
                let new = if on { 1 } else { 2 };
                // The first thread to decide wins; every later call reads its decision.
                match STATE.compare_exchange(0, new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => on,
                    Err(prior) => prior == 1,
                }
            }
        }
    }

    /// Allocates `layout` with `System` through `how` (`alloc` or `alloc_zeroed`), on huge
    /// pages when it is large.
    ///
    /// # Safety
    /// `layout` has a non-zero size (the `GlobalAlloc` contract).
    unsafe fn make(
        layout: std::alloc::Layout,
        how: unsafe fn(&std::alloc::System, std::alloc::Layout) -> *mut u8,
        zeroed: bool,
    ) -> *mut u8 {
        match Self::huge(layout) {
            // SAFETY: `big` has the caller's non-zero size and a valid, larger alignment; a
            // kept block was made by `System` with exactly `big` and is no longer in use.
            Some(big) => unsafe {
                release(RETAINED.expired(Instant::now()));
                // During a restore a kept block still on small pages will do: it is noted
                // again for the move onto huge pages. Otherwise it would stay small.
                let restoring = RESTORING.load(std::sync::atomic::Ordering::Relaxed) > 0;
                // A kept block holds old bytes: zeroed allocations take fresh memory (the
                // system's zero pages cost nothing until touched).
                if !zeroed {
                    if let Some((p, small)) = RETAINED.take(big, restoring) {
                        if small && !RETAINED.note_small(p, big.size()) {
                            advise(p, big.size(), libc_advice::HUGEPAGE);
                        }
                        return p;
                    }
                }
                let p = how(&std::alloc::System, big);
                if !p.is_null() {
                    if restoring && RETAINED.note_small(p, big.size()) {
                        prefault_small(p, big.size());
                    } else {
                        advise(p, big.size(), libc_advice::HUGEPAGE);
                    }
                }
                p
            },
            // SAFETY: the caller's layout, forwarded.
            None => unsafe { how(&std::alloc::System, layout) },
        }
    }

    /// Marks a restore in progress until the returned guard (and every other one) is dropped.
    ///
    /// Meanwhile, large blocks that need fresh memory are put on ordinary 4 KiB pages and
    /// prefaulted in one call each (`MADV_POPULATE_WRITE`), instead of on huge pages; when the
    /// last guard is dropped, a background thread (`weir-huge-pages`) moves those still in use
    /// onto huge pages (`MADV_COLLAPSE`, which keeps their contents; concurrent access is
    /// safe, as it is with the kernel's own `khugepaged`). Kept blocks (see above) are used
    /// as always: they are backed already.
    ///
    /// Why: on a virtual machine that hands free memory back to its host (free page
    /// reporting), fresh huge pages are exactly what the host took back, and backing them
    /// again costs several times what small pages cost (0.5 against 3 GB/s here), so a
    /// restore in a new process spent most of its time waiting for the host. The collapse
    /// afterwards pays that cost off the restore's critical path, while the job already runs.
    ///
    /// Without this allocator installed, or with `WEIR_HUGE_PAGES=0`, the guard does nothing.
    pub fn restoring() -> Restoring {
        RESTORING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Restoring { _private: () }
    }
}

/// A restore in progress: see [`HugePageAlloc::restoring`].
#[derive(Debug)]
#[must_use = "the restore ends when the guard is dropped"]
pub struct Restoring {
    _private: (),
}

impl Drop for Restoring {
    fn drop(&mut self) {
        if RESTORING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) == 1 {
            start_collapse();
        }
    }
}

/// Restores in progress (guards of [`HugePageAlloc::restoring`] alive).
static RESTORING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// True while the `weir-huge-pages` thread runs.
static COLLAPSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The `madvise` advice this module gives (`libc` 0.2.191 lacks `MADV_COLLAPSE`).
mod libc_advice {
    pub(super) const HUGEPAGE: libc::c_int = libc::MADV_HUGEPAGE;
    pub(super) const NOHUGEPAGE: libc::c_int = libc::MADV_NOHUGEPAGE;
    pub(super) const POPULATE_WRITE: libc::c_int = 23;
    /// Linux 6.1 and later: makes the range's pages huge now, in the caller's thread.
    pub(super) const COLLAPSE: libc::c_int = 25;
}

/// Gives `advice` for the whole huge pages of `[ptr, ptr + size)`; errors are ignored (huge
/// pages off, an older kernel: the memory stays as it is).
fn advise(ptr: *mut u8, size: usize, advice: libc::c_int) {
    #[cfg(target_os = "linux")]
    // SAFETY: the advice given here (HUGEPAGE, NOHUGEPAGE, POPULATE_WRITE, COLLAPSE) only
    // changes how the kernel backs the range, never what a program reads from it, whatever
    // the range holds now: even a range that was freed and reused since it was noted (see
    // `collapse_noted`) is left with its contents. Unmapped addresses make it fail, harmlessly.
    unsafe {
        libc::madvise(ptr.cast(), size & !(HUGE_PAGE - 1), advice);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, size, advice);
}

/// Puts a fresh block on small pages and backs every page now (see
/// [`HugePageAlloc::restoring`]).
fn prefault_small(ptr: *mut u8, size: usize) {
    advise(ptr, size, libc_advice::NOHUGEPAGE);
    advise(ptr, size, libc_advice::POPULATE_WRITE);
}

/// Starts the `weir-huge-pages` thread unless it runs or nothing is noted.
fn start_collapse() {
    use std::sync::atomic::Ordering;
    if !RETAINED.with(|s| s.any_small()) {
        return;
    }
    if COLLAPSING.swap(true, Ordering::AcqRel) {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("weir-huge-pages".into())
        .spawn(|| loop {
            collapse_noted();
            COLLAPSING.store(false, Ordering::Release);
            // A restore that ended after the last look, while this thread still ran, found
            // it running and left its blocks here.
            let more = RESTORING.load(Ordering::Relaxed) == 0 && RETAINED.with(|s| s.any_small());
            if !more || COLLAPSING.swap(true, Ordering::AcqRel) {
                return;
            }
        });
    if let Err(e) = spawned {
        COLLAPSING.store(false, Ordering::Release);
        tracing::warn!(error = %e, "cannot start the thread that moves restored state onto huge pages; it stays on small pages");
    }
}

/// True where transparent huge pages are turned off for the whole system (`never`).
fn huge_pages_never() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[never]"))
}

/// Moves the noted small-page blocks onto huge pages, one at a time, while no restore runs,
/// unless transparent huge pages are `never` on this system.
fn collapse_noted() {
    let never = huge_pages_never();
    let started = Instant::now();
    let (mut blocks, mut bytes) = (0usize, 0usize);
    while RESTORING.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        let Some((ptr, size)) = RETAINED.with(|s| s.small.iter_mut().find_map(Option::take)) else {
            break;
        };
        if never {
            continue;
        }
        let ptr = ptr as *mut u8;
        advise(ptr, size, libc_advice::HUGEPAGE);
        advise(ptr, size, libc_advice::COLLAPSE);
        blocks += 1;
        bytes += size;
    }
    if blocks > 0 {
        tracing::info!(
            blocks,
            mb = bytes >> 20,
            seconds = started.elapsed().as_secs_f64(),
            "restored state moved onto huge pages"
        );
    }
}

/// How long a freed large block is kept for reuse by [`HugePageAlloc`] (jemalloc's default
/// decay of freed pages is the same).
const RETAIN_FOR: Duration = Duration::from_secs(10);

/// Largest number of blocks kept at once.
const RETAIN_SLOTS: usize = 512;

/// Largest number of expired blocks released by one allocation or free.
const RELEASE_AT_ONCE: usize = 8;

/// A freed block kept for reuse: its address and the layout `System` made it with.
#[derive(Clone, Copy)]
struct Kept {
    ptr: usize,
    layout: std::alloc::Layout,
    since: Instant,
    /// Made during a restore and not yet moved onto huge pages.
    small: bool,
}

/// Freed large blocks of [`HugePageAlloc`] kept for reuse. A spin lock guards it: large blocks
/// are allocated and freed a few times per second at most (a restore: a few hundred), and
/// an allocator cannot use a lock that might allocate.
struct Retained {
    lock: std::sync::atomic::AtomicBool,
    inner: std::cell::UnsafeCell<Shelf>,
    /// Most bytes kept; `usize::MAX` until read from the environment.
    limit: std::sync::atomic::AtomicUsize,
}

/// The state behind [`Retained`]'s lock.
struct Shelf {
    slots: [Option<Kept>; RETAIN_SLOTS],
    /// Blocks (address, size) made on small pages during a restore and not yet moved onto
    /// huge pages (see [`HugePageAlloc::restoring`]).
    small: [Option<(usize, usize)>; SMALL_SLOTS],
}

/// Largest number of small-page blocks noted at once; blocks beyond it go on huge pages.
const SMALL_SLOTS: usize = 1024;

impl Shelf {
    /// Bytes kept.
    fn bytes(&self) -> usize {
        self.slots.iter().flatten().map(|k| k.layout.size()).sum()
    }

    /// True if some block is noted as on small pages.
    fn any_small(&self) -> bool {
        self.small.iter().any(Option::is_some)
    }
}

// SAFETY: `inner` is only reached through `with`, which holds the spin lock, so at most one
// thread touches it at a time; the addresses it holds are plain numbers.
unsafe impl Sync for Retained {}

static RETAINED: Retained = Retained::new();

/// Expired blocks taken out of [`Retained`], to be freed outside its lock.
type Expired = [Option<Kept>; RELEASE_AT_ONCE];

impl Retained {
    const fn new() -> Self {
        Retained {
            lock: std::sync::atomic::AtomicBool::new(false),
            inner: std::cell::UnsafeCell::new(Shelf {
                slots: [None; RETAIN_SLOTS],
                small: [None; SMALL_SLOTS],
            }),
            limit: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shelf) -> R) -> R {
        use std::sync::atomic::Ordering;
        let mut spins = 0u32;
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the lock is held (taken above, released below), so this is the only
        // reference to `inner`.
        let r = f(unsafe { &mut *self.inner.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    /// Most bytes kept: `WEIR_RETAIN_MB`, or a quarter of the memory the process may use (the
    /// machine's, or its container's limit). Read once (reading the environment allocates only
    /// small blocks, which never come here).
    fn limit(&self) -> usize {
        use std::sync::atomic::Ordering;
        let l = self.limit.load(Ordering::Relaxed);
        if l != usize::MAX {
            return l;
        }
        let l = match std::env::var("WEIR_RETAIN_MB")
            .ok()
            .map(|v| v.trim().parse::<usize>())
        {
            Some(Ok(mb)) => mb.saturating_mul(1 << 20).min(usize::MAX - 1),
            _ => memory_bound() / 4,
        };
        self.limit.store(l, Ordering::Relaxed);
        l
    }

    /// Keeps a freed block made with `layout` (on small pages: `small`); false when there is
    /// no room (the caller frees it).
    fn keep(&self, ptr: *mut u8, layout: std::alloc::Layout, now: Instant, small: bool) -> bool {
        let limit = self.limit();
        self.with(|k| {
            if k.bytes() + layout.size() > limit {
                return false;
            }
            let Some(slot) = k.slots.iter_mut().find(|s| s.is_none()) else {
                return false;
            };
            *slot = Some(Kept {
                ptr: ptr as usize,
                layout,
                since: now,
                small,
            });
            true
        })
    }

    /// Notes a block made on small pages during a restore; false when there is no room.
    fn note_small(&self, ptr: *mut u8, size: usize) -> bool {
        self.with(|s| match s.small.iter_mut().find(|b| b.is_none()) {
            Some(free) => {
                *free = Some((ptr as usize, size));
                true
            }
            None => false,
        })
    }

    /// Forgets a freed block if it is noted as on small pages; true if it was.
    fn forget_small(&self, ptr: *mut u8) -> bool {
        self.with(|s| {
            s.small
                .iter_mut()
                .find(|b| b.is_some_and(|(p, _)| p == ptr as usize))
                .map(Option::take)
                .is_some()
        })
    }

    /// A kept block made with exactly `layout` (the most recently freed one; one on small
    /// pages only if `small_ok`), taken out, and whether it is on small pages.
    fn take(&self, layout: std::alloc::Layout, small_ok: bool) -> Option<(*mut u8, bool)> {
        self.with(|k| {
            let i = (0..RETAIN_SLOTS)
                .filter(|i| {
                    k.slots[*i].is_some_and(|s| s.layout == layout && (small_ok || !s.small))
                })
                .max_by_key(|i| k.slots[*i].map(|s| s.since))?;
            k.slots[i].take().map(|s| (s.ptr as *mut u8, s.small))
        })
    }

    /// Blocks kept for longer than [`RETAIN_FOR`] at `now` (up to [`RELEASE_AT_ONCE`]), taken
    /// out.
    fn expired(&self, now: Instant) -> Expired {
        let mut out: Expired = [None; RELEASE_AT_ONCE];
        self.with(|k| {
            let mut n = 0;
            for slot in k.slots.iter_mut() {
                if n == RELEASE_AT_ONCE {
                    break;
                }
                if slot.is_some_and(|s| now.saturating_duration_since(s.since) >= RETAIN_FOR) {
                    out[n] = slot.take();
                    n += 1;
                }
            }
        });
        out
    }
}

/// Gives expired blocks back to the system.
fn release(blocks: Expired) {
    for b in blocks.into_iter().flatten() {
        // SAFETY: a kept block was made by `System` with `b.layout`, freed by its owner, and
        // taken out of the cache, so nothing else refers to it.
        unsafe { std::alloc::GlobalAlloc::dealloc(&std::alloc::System, b.ptr as *mut u8, b.layout) }
    }
}

/// The memory this process may use: the machine's, or less where its control group sets a
/// limit (a container), in bytes (0 if unknown).
fn memory_bound() -> usize {
    // cgroup v2, then v1; "max" or an unreadable file means no limit.
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(f).ok())
    .filter_map(|v| v.trim().parse::<usize>().ok())
    .min();
    let machine = physical_memory();
    cgroup.map_or(machine, |c| c.min(machine))
}

/// The machine's memory in bytes (0 if unknown).
fn physical_memory() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: `sysconf` only reads system configuration.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        (pages.max(0) as usize).saturating_mul(page.max(0) as usize)
    }
    #[cfg(not(unix))]
    {
        0
    }
}

// SAFETY: every allocation is made by `System` with a layout that is the caller's or the same
// size with a larger alignment (a valid layout: `huge` only accepts what `Layout` accepts), and
// is freed by `System` with exactly the layout it was made with, which `huge` recomputes from
// the caller's layout. `realloc` stays with `System` while the block is small before and
// after, and otherwise allocates, copies and frees through these.
unsafe impl std::alloc::GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's layout, forwarded to `System::alloc`.
        unsafe { Self::make(layout, std::alloc::GlobalAlloc::alloc, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as in `alloc` (an over-aligned block is zeroed by `System` with a memset,
        // which large zeroed allocations, rare in the engine, pay once).
        unsafe { Self::make(layout, std::alloc::GlobalAlloc::alloc_zeroed, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `alloc`/`alloc_zeroed` with the caller's `layout`, hence from
        // `System` with the layout recomputed here; a block that is kept is freed the same way
        // later (`release`), and handed out again only with that layout (`take`).
        unsafe {
            match Self::huge(layout) {
                Some(big) => {
                    let now = Instant::now();
                    release(RETAINED.expired(now));
                    // A block still on small pages is kept as such: only a restore takes it.
                    let small = RETAINED.forget_small(ptr);
                    if !RETAINED.keep(ptr, big, now, small) {
                        std::alloc::System.dealloc(ptr, big)
                    }
                }
                None => std::alloc::System.dealloc(ptr, layout),
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let Ok(to) = std::alloc::Layout::from_size_align(new, layout.align()) else {
            return std::ptr::null_mut();
        };
        if Self::huge(layout).is_none() && Self::huge(to).is_none() {
            // SAFETY: small before and after: `ptr` was made by `System` with `layout`, and
            // `new` is a valid size for it (checked above); the system can grow in place.
            return unsafe { std::alloc::System.realloc(ptr, layout, new) };
        }
        // SAFETY: `to` is a valid non-zero layout (the caller's `new` is non-zero); the block
        // is copied up to the smaller size and the old one freed with its own layout.
        unsafe {
            let q = self.alloc(to);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new));
                self.dealloc(ptr, layout);
            }
            q
        }
    }
}

/// How many pages of `path` are in the page cache (tests of the cache bound of `SpareFiles`).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn resident_pages(path: &Path) -> std::io::Result<usize> {
    let file = File::open(path)?;
    let len = file.metadata()?.len() as usize;
    if len == 0 {
        return Ok(0);
    }
    // SAFETY: the tests map files they wrote, synced and closed; nothing changes them while
    // this map is alive. Without `populate` mapping faults nothing in, so it does not change
    // what it measures.
    let map = unsafe { MmapOptions::new().map(&file) }?;
    // One byte per page; 4 KiB is the smallest page size Linux has, so this is enough.
    let mut resident = vec![0u8; len.div_ceil(4096)];
    // SAFETY: `map` is a live mapping of `len` bytes at a page-aligned address, and `resident`
    // holds at least one byte per page of it, as mincore(2) requires.
    let r = unsafe {
        libc::mincore(
            map.as_ptr() as *mut libc::c_void,
            len,
            resident.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(resident.iter().filter(|&&b| b & 1 == 1).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests that use the process's allocator state ([`RETAINED`],
    /// [`RESTORING`]): a restore in one would change what another is handed.
    static ALLOCATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn allocator() -> std::sync::MutexGuard<'static, ()> {
        ALLOCATOR.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[test]
    fn the_huge_page_allocator_keeps_contents_and_aligns_large_blocks() {
        let _serial = allocator();
        use std::alloc::{GlobalAlloc, Layout};
        let a = HugePageAlloc;
        for (size, align) in [
            (1, 1),
            (4096, 8),
            (HUGE_PAGE_MIN - 1, 16),
            (HUGE_PAGE_MIN, 8),
            (9 << 20, 4096),
        ] {
            let l = Layout::from_size_align(size, align).unwrap();
            // SAFETY (test): a non-zero layout; the block is written and read within its
            // size, grown and shrunk with `realloc`, and freed with its current layout.
            unsafe {
                let z = a.alloc_zeroed(l);
                assert!(!z.is_null());
                assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                a.dealloc(z, l);
                let p = a.alloc(l);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                if size >= HUGE_PAGE_MIN {
                    assert_eq!(
                        p as usize % HUGE_PAGE,
                        0,
                        "large blocks start on a huge page"
                    );
                }
                for i in 0..size {
                    *p.add(i) = (i % 251) as u8;
                }
                // Across the threshold both ways: contents survive.
                let grown = size + HUGE_PAGE_MIN;
                let q = a.realloc(p, l, grown);
                assert!((0..size).all(|i| *q.add(i) == (i % 251) as u8));
                let gl = Layout::from_size_align(grown, align).unwrap();
                let r = a.realloc(q, gl, size);
                assert!((0..size).all(|i| *r.add(i) == (i % 251) as u8));
                a.dealloc(r, l);
                if size >= HUGE_PAGE_MIN {
                    // A freed large block is kept: the next allocation of its layout gets it
                    // back, but a zeroed one never sees its old bytes.
                    let z = a.alloc_zeroed(l);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|b| *b == 0));
                    let again = a.alloc(l);
                    assert_eq!(again, r, "the kept block is reused");
                    a.dealloc(again, l);
                    a.dealloc(z, l);
                }
            }
        }
    }

    /// The `Rss` and `AnonHugePages` (bytes) of the mapping that holds `addr`.
    #[cfg(target_os = "linux")]
    fn backing(addr: usize) -> (usize, usize) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        let (mut rss, mut huge) = (None, None);
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    if rss.is_some() && huge.is_some() {
                        break;
                    }
                    inside = (a..b).contains(&addr);
                    continue;
                }
            }
            if inside {
                let kb = || {
                    line.split_whitespace()
                        .nth(1)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                        << 10
                };
                if line.starts_with("Rss:") {
                    rss = Some(kb());
                } else if line.starts_with("AnonHugePages:") {
                    huge = Some(kb());
                }
            }
        }
        (
            rss.expect("a mapping holds the block"),
            huge.expect("AnonHugePages"),
        )
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn blocks_made_during_a_restore_are_prefaulted_on_small_pages_then_made_huge() {
        let _serial = allocator();
        use std::alloc::{GlobalAlloc, Layout};
        use std::sync::atomic::Ordering;
        let a = HugePageAlloc;
        // A size no other test allocates, so no kept block of another test is handed out.
        let size = 22 << 20;
        let l = Layout::from_size_align(size, 8).unwrap();
        let big = HugePageAlloc::huge(l).unwrap();
        let never = huge_pages_never();
        let restoring = HugePageAlloc::restoring();
        // SAFETY (test): non-zero layouts; blocks are written and read within their size and
        // freed with their layout.
        unsafe {
            // A block freed during the restore is kept as one on small pages, and given to
            // the next allocation of the restore, which notes it again.
            let first = a.alloc(l);
            assert!(!first.is_null());
            let noted = |p: *mut u8| RETAINED.with(|s| s.small.contains(&Some((p as usize, size))));
            assert!(noted(first));
            a.dealloc(first, l);
            assert!(!noted(first));
            assert!(RETAINED.with(|s| s
                .slots
                .iter()
                .flatten()
                .any(|k| k.ptr == first as usize && k.small)));
            let p = a.alloc(l);
            assert_eq!(p, first, "the kept block is reused by the restore");
            assert!(noted(p));
            let (rss, huge) = backing(p as usize);
            assert!(rss >= size, "prefaulted: {rss} bytes resident of {size}");
            assert_eq!(huge, 0, "on small pages while the restore runs");
            for i in (0..size).step_by(4096) {
                *p.add(i) = (i / 4096 % 253) as u8;
            }
            drop(restoring);
            // The background thread moves it onto huge pages (or leaves it where the system
            // has them off) before it ends: checked as soon as it has, so that the kernel's
            // own slow scan (`khugepaged`) cannot be what did it.
            let deadline = Instant::now() + Duration::from_secs(60);
            while noted(p) || COLLAPSING.load(Ordering::Acquire) {
                assert!(
                    Instant::now() < deadline,
                    "the move did not end within 60 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let (_, huge) = backing(p as usize);
            assert_eq!(huge, if never { 0 } else { size }, "bytes on huge pages");
            assert!(
                (0..size)
                    .step_by(4096)
                    .all(|i| *p.add(i) == (i / 4096 % 253) as u8),
                "contents survive the move"
            );
            a.dealloc(p, l);
            // On huge pages now: kept as such.
            assert_eq!(RETAINED.take(big, false), Some((p, false)));
            std::alloc::System.dealloc(p, big);
        }
    }

    #[test]
    fn freed_large_blocks_are_reused_by_exact_layout_within_bounds_and_expire() {
        use std::alloc::Layout;
        use std::sync::atomic::Ordering;
        let r = Retained::new();
        r.limit.store(10 << 20, Ordering::Relaxed);
        let t0 = Instant::now();
        let a = Layout::from_size_align(4 << 20, HUGE_PAGE).unwrap();
        let b = Layout::from_size_align(6 << 20, HUGE_PAGE).unwrap();
        // Addresses are only numbers to the cache: nothing is dereferenced.
        let (pa, pa2, pb) = (
            0x1000_0000 as *mut u8,
            0x2000_0000 as *mut u8,
            0x3000_0000 as *mut u8,
        );
        assert!(r.keep(pa, a, t0, false));
        assert!(r.keep(pb, b, t0 + Duration::from_secs(1), false));
        // 4 + 6 MiB kept: another 4 MiB is over the 10 MiB bound.
        assert!(!r.keep(pa2, a, t0 + Duration::from_secs(2), false));
        // Only the exact layout matches.
        let c = Layout::from_size_align(4 << 20, 2 * HUGE_PAGE).unwrap();
        assert_eq!(r.take(c, false), None);
        assert_eq!(r.take(a, false), Some((pa, false)));
        assert_eq!(r.take(a, false), None);
        assert!(r.keep(pa2, a, t0 + Duration::from_secs(3), false));
        // Nothing is released before it was kept for RETAIN_FOR.
        let none = r.expired(t0 + RETAIN_FOR);
        assert!(none.iter().all(|e| e.is_none()));
        let one = r.expired(t0 + Duration::from_secs(1) + RETAIN_FOR);
        let out: Vec<usize> = one.iter().flatten().map(|k| k.ptr).collect();
        assert_eq!(out, vec![pb as usize]);
        assert_eq!(r.take(b, false), None);
        assert_eq!(r.with(|k| k.bytes()), 4 << 20);
        assert_eq!(r.take(a, false), Some((pa2, false)));
        assert_eq!(r.with(|k| k.bytes()), 0);
        // A block on small pages (made during a restore) goes only to a restore.
        assert!(r.keep(pa, a, t0 + Duration::from_secs(4), true));
        assert_eq!(r.take(a, false), None);
        assert_eq!(r.take(a, true), Some((pa, true)));
    }

    #[test]
    fn a_kept_block_goes_to_one_thread_at_a_time() {
        let _serial = allocator();
        use std::alloc::{GlobalAlloc, Layout};
        // Sizes no other test uses, so that test's check of reuse is not disturbed.
        let layouts: Vec<Layout> = [5usize, 6, 7]
            .iter()
            .map(|mb| Layout::from_size_align(mb << 20, 64).unwrap())
            .collect();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let layouts = &layouts;
                s.spawn(move || {
                    let a = HugePageAlloc;
                    for i in 0..300usize {
                        let l = layouts[(i + t as usize) % layouts.len()];
                        let mark = t.wrapping_mul(61).wrapping_add(i as u8) | 1;
                        // SAFETY (test): a non-zero layout; bytes within the block are
                        // written and read, and it is freed with its layout.
                        unsafe {
                            let p = a.alloc(l);
                            assert!(!p.is_null());
                            let at = [0, l.size() / 2, l.size() - 1];
                            for o in at {
                                *p.add(o) = mark;
                            }
                            std::thread::yield_now();
                            for o in at {
                                assert_eq!(*p.add(o), mark, "another thread wrote to the block");
                            }
                            a.dealloc(p, l);
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn streaming_copies_are_exact_at_every_alignment_and_length() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut dst = vec![0u8; 5100];
        for offset in 0..70 {
            for len in [0, 1, 15, 63, 64, 255, 256, 257, 300, 1000, 4097] {
                dst.fill(0xAA);
                let from = (offset * 3) % 40;
                copy_streaming(&mut dst[offset..offset + len], &src[from..from + len]);
                fence_streaming();
                assert_eq!(
                    &dst[offset..offset + len],
                    &src[from..from + len],
                    "{offset}+{len}"
                );
                assert!(
                    dst[..offset].iter().all(|b| *b == 0xAA),
                    "before {offset}+{len}"
                );
                assert!(
                    dst[offset + len..].iter().all(|b| *b == 0xAA),
                    "after {offset}+{len}"
                );
            }
        }
    }
}
