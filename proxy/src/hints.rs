//! Hints about memory to the CPU (load this line soon) and to the kernel (back this range with
//! huge pages). They are the only `unsafe` of this crate. Neither reads or writes memory the
//! program can see, and neither can fault or change what any memory holds, whatever the address
//! (a stale or wild address only wastes the hint), so no precondition is left to the caller: the
//! functions are safe.

/// Starts loading the cache line holding `address`; a no-op on targets without the hint.
#[inline(always)]
pub fn prefetch_line(address: usize) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` only hints the cache; it never dereferences in the language's sense
    // and does not fault on any address. SSE is part of the x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Asks the kernel to back `len` bytes from `address` with transparent huge pages where it can
/// (Linux `MADV_HUGEPAGE`; elsewhere, or when the kernel declines, nothing happens). Call it
/// before the range is first written: pages faulted in afterwards come as huge pages. For a
/// large table read at random, that spares most TLB misses and their page walks (a third of
/// the time of reaching a cold entry on a virtual machine).
pub fn advise_huge_pages(address: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE_PAGE: usize = 2 * 1024 * 1024;
        // madvise wants a page-aligned start: advise the whole huge pages inside the range.
        let start = address.next_multiple_of(HUGE_PAGE);
        let end = (address + len) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            #[allow(unsafe_code)]
            // SAFETY: `MADV_HUGEPAGE` only changes how the kernel backs the pages of the range
            // (mapped memory of this process, or else the call fails with an error we ignore); it
            // never changes their contents or whether they are mapped.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (address, len);
}
