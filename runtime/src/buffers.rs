//! Encoding buffers kept by the snapshot writer thread from one checkpoint to the next.
//!
//! A fresh buffer of tens of megabytes costs more than its bytes: the allocator maps new pages,
//! the kernel zeroes each one on first touch (a page fault per 4 KiB), and those zeroes sweep
//! the last-level cache the workers' hot state lives in. The writer encodes every checkpoint
//! into about as many bytes as the one before, so it keeps its buffers instead, within a
//! bound: at most [`MAX_KEPT`] buffers of at most [`MAX_KEPT_BYTES`] together per thread
//! (larger ones, e.g. full snapshots of big state, are freed as before).

use std::cell::RefCell;

/// Buffers kept per thread.
const MAX_KEPT: usize = 64;

/// Capacity kept per thread, all buffers together.
const MAX_KEPT_BYTES: usize = 128 << 20;

thread_local! {
    static KEPT: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: the largest one this thread kept, or a new one.
pub(crate) fn take() -> Vec<u8> {
    KEPT.with(|k| k.borrow_mut().pop()).unwrap_or_default()
}

/// Keeps `buf` (emptied) for a later [`take`] on this thread, if it fits the bound.
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 {
        return;
    }
    buf.clear();
    KEPT.with(|k| {
        let mut k = k.borrow_mut();
        let kept: usize = k.iter().map(|b| b.capacity()).sum();
        if k.len() < MAX_KEPT && kept + buf.capacity() <= MAX_KEPT_BYTES {
            k.push(buf);
            // Smallest first, so that `take` hands out the largest.
            k.sort_unstable_by_key(|b| b.capacity());
        }
    });
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
            give(a);
            let b = take();
            assert!(b.is_empty());
            assert_eq!((b.capacity(), b.as_ptr()), (cap, ptr));
            // The largest comes back first; one beyond the bound is freed.
            give(Vec::with_capacity(10));
            give(b);
            give(Vec::with_capacity(MAX_KEPT_BYTES));
            assert_eq!(take().capacity(), cap);
            assert_eq!(take().capacity(), 10);
            assert_eq!(take().capacity(), 0);
        })
        .join()
        .unwrap();
    }
}
