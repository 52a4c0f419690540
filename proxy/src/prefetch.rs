//! A cache prefetch hint: asks the CPU to start loading a cache line that will be needed soon.
//!
//! The only `unsafe` of this crate. A prefetch instruction reads no memory the program can see and
//! cannot fault, whatever the address (a stale or wild address only wastes the hint), so no
//! precondition is left to the caller: the function is safe.

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
