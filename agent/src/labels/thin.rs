//! [`SharedBytes`]: an immutable, reference-counted byte string behind a one-word pointer.
//!
//! Every series keeps its label set (its symbols, `super::symbols`) in one shared allocation,
//! pointed at by the scrape cache, the instance's series table and each remote_write
//! endpoint's table. `Arc<[u8]>` is a
//! two-word pointer (address and length) with two counters in the allocation; this is one word
//! (the length lives in the allocation, next to one counter), so each holder of a series saves
//! 8 bytes and each allocation 8 more, per series, at no cost on access (the length is read
//! from the allocation whose bytes are read next anyway). Measured side by side with the
//! `Arc<[u8]>` build, together with the series table's 4-byte ref index
//! (bench/results/2026-12-06T013143Z-thin.json): RSS per series -6 % at 100k series, -8 % at
//! 500k; CPU per sample inside the run's spread.
//!
//! Layout of the allocation (align 4):
//!
//! ```text
//! count: AtomicU32 | len: u32 | len bytes
//! ```
//!
//! The counting follows `std::sync::Arc`'s: `Relaxed` increments, a `Release` decrement and
//! an `Acquire` fence before the free; a count that would pass `i32::MAX` aborts, as `Arc`
//! does past `isize::MAX` (only a leak of clones can get there).
//!
//! This module and `super::symbols` (the table of label pairs) are the crate's only `unsafe`
//! code (`agent/src/lib.rs` denies it everywhere
//! else; scripts/test checks that no other module allows it). Its tests were also run under
//! valgrind (the tests module names the command).

#![allow(unsafe_code)]

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

#[repr(C)]
struct Header {
    count: AtomicU32,
    len: u32,
}

/// Clones past this count abort (see the module docs).
const MAX_COUNT: u32 = i32::MAX as u32;

/// See the module docs.
pub(super) struct SharedBytes {
    ptr: NonNull<Header>,
}

// SAFETY: the bytes are never written after construction and the count is atomic, so sharing
// or sending a `SharedBytes` across threads is as safe as for `Arc<[u8]>`.
unsafe impl Send for SharedBytes {}
// SAFETY: as above.
unsafe impl Sync for SharedBytes {}

fn layout(len: usize) -> Layout {
    // A header plus `len` bytes: `len` is at most u32::MAX (checked by the caller), so this
    // cannot overflow isize on a 64-bit target.
    Layout::new::<Header>()
        .extend(Layout::array::<u8>(len).expect("label set size fits a layout"))
        .expect("label set size fits a layout")
        .0
}

impl SharedBytes {
    /// A new allocation holding a copy of `bytes`.
    ///
    /// # Panics
    /// When `bytes` is 4 GiB or longer (a label set is bounded far below that by the scrape's
    /// body limit and the WAL's record size).
    pub(super) fn new(bytes: &[u8]) -> Self {
        let len = u32::try_from(bytes.len()).expect("a label set is shorter than 4 GiB");
        let layout = layout(bytes.len());
        // SAFETY: `layout` has a non-zero size (the header).
        let raw = unsafe { alloc(layout) }.cast::<Header>();
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `ptr` is a fresh allocation of `layout`, aligned for `Header`, with `len`
        // bytes after the header; nothing else can see it yet.
        unsafe {
            ptr.as_ptr().write(Header {
                count: AtomicU32::new(1),
                len,
            });
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                ptr.as_ptr().cast::<u8>().add(size_of::<Header>()),
                bytes.len(),
            );
        }
        SharedBytes { ptr }
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while `self` holds a count.
        unsafe { self.ptr.as_ref() }
    }

    #[inline]
    pub(super) fn as_slice(&self) -> &[u8] {
        let len = self.header().len as usize;
        // SAFETY: `len` initialised bytes follow the header (written in `new`, never after),
        // and they live while `self` holds a count.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>().add(size_of::<Header>()), len)
        }
    }

    /// Whether both point at one allocation.
    #[inline]
    pub(super) fn ptr_eq(&self, other: &SharedBytes) -> bool {
        self.ptr == other.ptr
    }

    /// Bytes of the allocation (header included).
    pub(super) fn heap_size(&self) -> usize {
        layout(self.header().len as usize).size()
    }

    /// Gives up this reference: `Some` (holding the allocation's only count) when it was the
    /// last one, so the caller can read the bytes one last time before they are freed (the
    /// symbol table releases a set's pairs that way, `super::symbols`); `None` otherwise.
    pub(super) fn into_last(self) -> Option<SharedBytes> {
        let this = std::mem::ManuallyDrop::new(self);
        if this.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return None;
        }
        // As in `drop`: every other holder's use happens before this point.
        fence(Ordering::Acquire);
        // Nobody else can see the allocation any more; the returned value owns it.
        this.header().count.store(1, Ordering::Relaxed);
        Some(SharedBytes { ptr: this.ptr })
    }
}

impl Clone for SharedBytes {
    #[inline]
    fn clone(&self) -> Self {
        // Relaxed: a new reference is made from an existing one, which already orders any
        // access to the bytes (as `Arc::clone`).
        let old = self.header().count.fetch_add(1, Ordering::Relaxed);
        if old >= MAX_COUNT {
            std::process::abort();
        }
        SharedBytes { ptr: self.ptr }
    }
}

impl Drop for SharedBytes {
    fn drop(&mut self) {
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other holder's use of the bytes happens before their decrement (Release);
        // this fence makes them happen before the free.
        fence(Ordering::Acquire);
        let layout = layout(self.header().len as usize);
        // SAFETY: the count reached zero, so this is the last reference; the allocation was
        // made in `new` with this very layout.
        unsafe { dealloc(self.ptr.as_ptr().cast::<u8>(), layout) }
    }
}

#[cfg(test)]
mod tests {
    //! Also run under valgrind, which reports any invalid access or leak:
    //! `cargo test -p agentctl-agent --lib --no-run`, then
    //! `valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=1 <test binary>
    //! labels::thin` (the test harness leaves one block "possibly lost": std's own thread handle).

    use super::*;

    #[test]
    fn holds_a_copy_of_the_bytes_of_any_length() {
        for len in [0usize, 1, 7, 8, 9, 255, 4096] {
            let src: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let b = SharedBytes::new(&src);
            assert_eq!(b.as_slice(), &src[..]);
            assert_eq!(b.heap_size(), 8 + len);
        }
    }

    #[test]
    fn one_word_and_a_niche_for_option() {
        assert_eq!(size_of::<SharedBytes>(), 8);
        assert_eq!(size_of::<Option<SharedBytes>>(), 8);
    }

    #[test]
    fn clones_share_and_the_last_drop_frees() {
        let a = SharedBytes::new(b"abc");
        let b = a.clone();
        assert!(a.ptr_eq(&b));
        assert_eq!(a.header().count.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(b.header().count.load(Ordering::Relaxed), 1);
        assert_eq!(b.as_slice(), b"abc");
        let c = SharedBytes::new(b"abc");
        assert!(!b.ptr_eq(&c));
    }

    #[test]
    fn into_last_is_some_only_for_the_last_reference() {
        let a = SharedBytes::new(b"last");
        let b = a.clone();
        assert!(a.into_last().is_none());
        let last = b.into_last().expect("the last reference");
        assert_eq!(last.as_slice(), b"last");
        assert_eq!(last.header().count.load(Ordering::Relaxed), 1);
        // Dropping it frees the allocation (valgrind would report a leak otherwise).
        drop(last);
    }

    #[test]
    fn clones_dropped_on_other_threads() {
        let a = SharedBytes::new(b"shared across threads");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let mine = a.clone();
                std::thread::spawn(move || {
                    let more: Vec<SharedBytes> = (0..1000).map(|_| mine.clone()).collect();
                    assert!(more
                        .iter()
                        .all(|m| m.as_slice() == b"shared across threads"));
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert_eq!(a.header().count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_last_holder_to_drop_frees_whichever_thread_it_is_on() {
        // Every thread drops its clones while the others may still be reading; the original
        // goes first, so one of the threads frees (valgrind would report a bad free or a
        // read after it).
        for _ in 0..50 {
            let a = SharedBytes::new(b"freed by whoever drops last");
            let clones: Vec<SharedBytes> = (0..4).map(|_| a.clone()).collect();
            drop(a);
            let handles: Vec<_> = clones
                .into_iter()
                .map(|mine| {
                    std::thread::spawn(move || {
                        assert_eq!(mine.as_slice(), b"freed by whoever drops last");
                        drop(mine);
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("thread");
            }
        }
    }
}
