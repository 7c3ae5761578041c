//! Encoding buffers kept by the snapshot writer thread from one checkpoint to the next.
//!
//! A fresh buffer of tens of megabytes costs more than its bytes: the allocator maps new pages,
//! the kernel zeroes each one on first touch, and those zeroes sweep the last-level cache the
//! workers' hot state lives in; a buffer that outgrows its capacity is copied into a new one.
//! The writer encodes every checkpoint into about as many bytes as the one before, so it keeps
//! its buffers instead, within a bound: at most [`MAX_KEPT`] buffers per thread, together at
//! most what the thread's last checkpoint used, or [`MAX_KEPT_BYTES`] if that was less, and
//! never more than [`MAX_KEPT_CAP`]. So keeping them never raises the writer's peak memory
//! (the next checkpoint of the same size would allocate as much again), only holds it between
//! checkpoints. (With a fixed 128 MB, Nexmark q9, whose state grows by ~150 MB per second,
//! freed its buffers after every checkpoint and zeroed fresh ones: 13% of its CPU time.)

use std::cell::RefCell;

/// Buffers kept per thread.
const MAX_KEPT: usize = 64;

/// Capacity a thread may keep even when its last checkpoint used less.
const MAX_KEPT_BYTES: usize = 128 << 20;

/// Capacity a thread never keeps more of, whatever its last checkpoint used (larger ones, e.g.
/// full snapshots of big state, are freed).
const MAX_KEPT_CAP: usize = 1 << 30;

thread_local! {
    /// Smallest first.
    static KEPT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: the largest one this thread kept, or a new one.
pub(crate) fn take() -> Vec<u8> {
    KEPT.with(|k| k.borrow_mut().pop()).unwrap_or_default()
}

/// Keeps the buffers one checkpoint used (emptied) for the next [`take`]s on this thread, within
/// the bound (see the module docs): the largest first, then those kept before that this
/// checkpoint did not take.
pub(crate) fn give(used: impl IntoIterator<Item = Vec<u8>>) {
    let mut bufs: Vec<Vec<u8>> = used.into_iter().filter(|b| b.capacity() > 0).collect();
    let bound = bufs
        .iter()
        .map(Vec::capacity)
        .sum::<usize>()
        .clamp(MAX_KEPT_BYTES, MAX_KEPT_CAP);
    bufs.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let older = std::mem::take(&mut *k);
        let mut kept = 0;
        for mut b in bufs.into_iter().chain(older.into_iter().rev()) {
            if k.len() < MAX_KEPT && kept + b.capacity() <= bound {
                kept += b.capacity();
                b.clear();
                k.push(b);
            }
        }
        k.sort_unstable_by_key(Vec::capacity);
    });
}

/// A postcard output that appends to a `Vec<u8>`: single bytes with `push`, slices with
/// `extend_from_slice`. (`postcard::to_extend` goes through `Extend` for every byte; this
/// encodes keyed state 7-9% faster.)
struct Append(Vec<u8>);

impl postcard::ser_flavors::Flavor for Append {
    type Output = Vec<u8>;

    #[inline(always)]
    fn try_push(&mut self, b: u8) -> postcard::Result<()> {
        self.0.push(b);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

/// Appends the postcard encoding of `value` to `buf` (the same bytes as `postcard::to_extend`).
pub(crate) fn append<T: serde::Serialize + ?Sized>(
    value: &T,
    buf: Vec<u8>,
) -> postcard::Result<Vec<u8>> {
    postcard::serialize_with_flavor(value, Append(buf))
}

/// A section's bytes in pieces: ranges of a few buffers, to be written back to back (so
/// parts encoded into different buffers need not be copied together first).
#[derive(Default)]
pub(crate) struct Pieces {
    bufs: Vec<Vec<u8>>,
    /// `(buffer, range)`, in write order.
    at: Vec<(usize, std::ops::Range<usize>)>,
}

impl Pieces {
    /// Adds `buf` (whose ranges [`Pieces::push`] can then name) and returns its number.
    pub(crate) fn buffer(&mut self, buf: Vec<u8>) -> usize {
        self.bufs.push(buf);
        self.bufs.len() - 1
    }

    /// Appends `range` of buffer `buf` to the section.
    pub(crate) fn push(&mut self, buf: usize, range: std::ops::Range<usize>) {
        assert!(
            range.end <= self.bufs[buf].len(),
            "piece {range:?} beyond buffer {buf} of {} bytes",
            self.bufs[buf].len()
        );
        if !range.is_empty() {
            self.at.push((buf, range));
        }
    }

    /// The pieces in write order.
    pub(crate) fn slices(&self) -> Vec<&[u8]> {
        self.at
            .iter()
            .map(|(b, r)| &self.bufs[*b][r.clone()])
            .collect()
    }

    /// The section's bytes in one buffer (tests).
    #[cfg(test)]
    pub(crate) fn concat(&self) -> Vec<u8> {
        self.slices().concat()
    }

    /// The buffers, to hand back with [`give`].
    pub(crate) fn into_buffers(self) -> Vec<Vec<u8>> {
        self.bufs
    }
}

impl From<Vec<u8>> for Pieces {
    fn from(bytes: Vec<u8>) -> Self {
        let mut p = Pieces::default();
        let len = bytes.len();
        let b = p.buffer(bytes);
        p.push(b, 0..len);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_within_the_bound() {
        std::thread::spawn(|| {
            let mut a = take();
            a.extend_from_slice(&[1; 1000]);
            let cap = a.capacity();
            let ptr = a.as_ptr();
            give([a]);
            let b = take();
            assert!(b.is_empty());
            assert_eq!((b.capacity(), b.as_ptr()), (cap, ptr));
            // The largest comes back first.
            give([Vec::with_capacity(10), b]);
            assert_eq!(take().capacity(), cap);
            assert_eq!(take().capacity(), 10);
            assert_eq!(take().capacity(), 0);
            // A checkpoint that used more than MAX_KEPT_BYTES keeps what it used (capacity is
            // only reserved, never touched, so these cost no memory)...
            let big = MAX_KEPT_BYTES / 2 + 1;
            give([Vec::with_capacity(10)]);
            give([Vec::with_capacity(big), Vec::with_capacity(big)]);
            assert_eq!(take().capacity(), big);
            assert_eq!(take().capacity(), big);
            // ...and drops older buffers that no longer fit beside them.
            assert_eq!(take().capacity(), 0);
            // Never more than MAX_KEPT_CAP.
            give([Vec::with_capacity(MAX_KEPT_CAP + 1)]);
            assert_eq!(take().capacity(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn append_writes_postcards_bytes_after_what_is_there() {
        let value = (
            7u32,
            u64::MAX,
            [3u8; 24],
            "text",
            vec![1u16, 300],
            Some(-5i64),
        );
        let out = append(&value, vec![9, 9]).unwrap();
        assert_eq!(out[..2], [9, 9]);
        assert_eq!(out[2..], postcard::to_stdvec(&value).unwrap()[..]);
    }

    #[test]
    fn pieces_are_written_in_the_order_pushed() {
        let mut p = Pieces::default();
        let a = p.buffer(b"abcdef".to_vec());
        let b = p.buffer(b"XYZ".to_vec());
        p.push(b, 1..3);
        p.push(a, 0..2);
        p.push(a, 4..4);
        p.push(a, 5..6);
        assert_eq!(p.slices().concat(), b"YZabf");
        assert_eq!(Pieces::from(b"one".to_vec()).slices().concat(), b"one");
    }
}
