//! How deferred state sections reach the snapshot file: encoded on the snapshot writer thread
//! straight into the file, through a small staging buffer.
//!
//! An encoder (e.g. a keyed table's, see [`crate::state::groups`]) serializes with postcard
//! into a [`Stream`], which stages the bytes in a buffer of [`STAGE`] bytes and hands each full
//! buffer to a [`SectionOut`]: the snapshot file's writer, which checksums the bytes and copies
//! them into the memory-mapped file (`weir_storage::SnapshotWriter`), or a vector in tests.
//! The staging buffer is reused by the thread from one section and checkpoint to the next.
//!
//! Encoding into the file in small pieces, instead of into buffers as large as the snapshot
//! that are then copied into the file, keeps the writer's memory at a few hundred KiB whatever
//! the state's size, and keeps what it writes in its core's own cache: the encoded bytes are
//! checksummed and copied while still there. Large buffers were written once, then read back
//! from memory twice (checksum, copy), and pushed the workers' hot state out of the shared
//! last-level cache on the way (tens of MB per checkpoint for the 1 GB keyed state of the
//! checkpoint benchmark); for state that grows, the buffers grew, and the kernel zeroed their
//! fresh pages at every checkpoint.

use std::cell::RefCell;

/// Bytes staged before they are handed on: a fraction of a core's L2 cache.
const STAGE: usize = if cfg!(test) { 64 } else { 256 << 10 };

/// Where a deferred section's bytes go, in order.
pub(crate) trait SectionOut {
    /// Appends `bytes` to the section.
    fn write(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl SectionOut for Vec<u8> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

impl SectionOut for weir_storage::SnapshotWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        weir_storage::SnapshotWriter::write(self, bytes).map_err(|e| e.to_string())
    }
}

/// A section encoded on the snapshot writer thread: writes its bytes to the output it is given.
pub(crate) type Deferred = Box<dyn FnOnce(&mut dyn SectionOut) -> Result<(), String> + Send>;

thread_local! {
    /// The staging buffer this thread used last, kept for the next [`Stream`].
    static KEPT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Postcard encoding into a [`SectionOut`] through a staging buffer (see the module docs).
/// [`Stream::finish`] hands on what is still staged.
pub(crate) struct Stream<'o> {
    /// The serializer holds the staging buffer by value, as postcard's own flavors hold
    /// theirs: each byte encoded then costs no more than a push onto a vector.
    ser: postcard::Serializer<Staged<'o>>,
}

/// The postcard output of a [`Stream`]: the staging buffer and where it goes when full.
struct Staged<'o> {
    buf: Vec<u8>,
    out: &'o mut dyn SectionOut,
    /// Bytes handed to `out` so far.
    handed: u64,
    /// The error of a failed hand-on, reported instead of postcard's.
    failed: Option<String>,
}

impl<'o> Stream<'o> {
    pub(crate) fn new(out: &'o mut dyn SectionOut) -> Self {
        let mut buf = KEPT.with(|k| std::mem::take(&mut *k.borrow_mut()));
        buf.clear();
        buf.reserve_exact(STAGE);
        Stream {
            ser: postcard::Serializer {
                output: Staged {
                    buf,
                    out,
                    handed: 0,
                    failed: None,
                },
            },
        }
    }

    /// Bytes encoded so far.
    pub(crate) fn position(&self) -> u64 {
        let s = &self.ser.output;
        s.handed + s.buf.len() as u64
    }

    /// Appends the postcard encoding of `value` (the same bytes as `postcard::to_stdvec`).
    pub(crate) fn put<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        match value.serialize(&mut self.ser) {
            Ok(()) => Ok(()),
            Err(e) => Err(self
                .ser
                .output
                .failed
                .take()
                .unwrap_or_else(|| format!("cannot encode state: {e}"))),
        }
    }

    /// Appends `bytes` as they are.
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s = &mut self.ser.output;
        if s.extend(bytes) {
            Ok(())
        } else {
            Err(s.failed.take().expect("set on failure"))
        }
    }

    /// Hands on what is staged.
    pub(crate) fn finish(mut self) -> Result<(), String> {
        self.ser.output.flush()
    }
}

impl Staged<'_> {
    fn flush(&mut self) -> Result<(), String> {
        if !self.buf.is_empty() {
            self.out.write(&self.buf)?;
            self.handed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Stages `bytes` (handing them on directly when they are more than a buffer); false
    /// (with `failed` set) when handing on failed.
    #[inline]
    fn extend(&mut self, bytes: &[u8]) -> bool {
        if self.buf.len() + bytes.len() > STAGE {
            let handed = self.flush().and_then(|()| {
                if bytes.len() >= STAGE {
                    self.out.write(bytes)?;
                    self.handed += bytes.len() as u64;
                }
                Ok(())
            });
            if let Err(e) = handed {
                self.failed = Some(e);
                return false;
            }
            if bytes.len() >= STAGE {
                return true;
            }
        }
        self.buf.extend_from_slice(bytes);
        true
    }
}

impl Drop for Stream<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.ser.output.buf);
        KEPT.with(|k| *k.borrow_mut() = buf);
    }
}

impl postcard::ser_flavors::Flavor for Staged<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        if self.buf.len() == STAGE {
            if let Err(e) = self.flush() {
                self.failed = Some(e);
                return Err(postcard::Error::SerializeBufferFull);
            }
        }
        self.buf.push(b);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.extend(bytes) {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write after the first `ok` ones.
    struct FailAfter {
        ok: usize,
        bytes: Vec<u8>,
    }

    impl SectionOut for FailAfter {
        fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
            if self.ok == 0 {
                return Err("disk on fire".into());
            }
            self.ok -= 1;
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Whatever the split into staged buffers (values smaller and larger than a buffer, raw
    /// bytes between them), the stream's bytes are postcard's bytes of the same values.
    #[test]
    fn a_stream_writes_postcards_bytes() {
        let small = (7u32, u64::MAX, [3u8; 24], "text", Some(-5i64));
        let large: Vec<u32> = (0..100).map(|i| i * 1000).collect();
        let mut want = postcard::to_stdvec(&small).unwrap();
        want.extend_from_slice(&[1, 2, 3]);
        want.extend(postcard::to_stdvec(&large).unwrap());
        want.extend_from_slice(&[9; 200]);
        want.extend(postcard::to_stdvec(&small).unwrap());
        let mut out = Vec::new();
        let mut s = Stream::new(&mut out);
        s.put(&small).unwrap();
        s.raw(&[1, 2, 3]).unwrap();
        assert_eq!(
            s.position(),
            postcard::to_stdvec(&small).unwrap().len() as u64 + 3
        );
        s.put(&large).unwrap();
        s.raw(&[9; 200]).unwrap();
        s.put(&small).unwrap();
        assert_eq!(s.position(), want.len() as u64);
        s.finish().unwrap();
        assert_eq!(out, want);
    }

    /// A failing output's error is what `put` and `raw` return, not postcard's.
    #[test]
    fn a_failing_output_is_reported() {
        let large: Vec<u64> = (0..1000).collect();
        let mut out = FailAfter {
            ok: 2,
            bytes: Vec::new(),
        };
        {
            let mut s = Stream::new(&mut out);
            assert_eq!(s.put(&large).unwrap_err(), "disk on fire");
        }
        assert_eq!(out.bytes.len(), 2 * STAGE);
        let mut s = Stream::new(&mut out);
        assert_eq!(s.raw(&[0; 1000]).unwrap_err(), "disk on fire");
    }
}
