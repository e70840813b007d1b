//! A global allocator for tests that measures how much memory a piece of code
//! holds at its peak, so tests of parsers of untrusted bytes can assert that
//! memory stays bounded.
//!
//! Counters are per thread (libtest runs tests on parallel threads) and live
//! in `const`-initialised thread-locals of `Cell<isize>`: such thread-locals
//! need no lazy initialisation and no destructor, so the allocator never
//! allocates while counting. Memory freed on another thread than the one that
//! allocated it makes the counts drift, which [`measure`] tolerates by only
//! looking at the growth during the closure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Bytes allocated by this thread and not yet freed (by it).
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    /// Highest `CURRENT` since the innermost running [`measure`] began.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// [`System`], counting.
pub struct Meter;

#[global_allocator]
static METER: Meter = Meter;

fn record(delta: isize) {
    // `try_with`: allocations during thread teardown, after the thread-locals
    // are gone, are not counted rather than a panic inside the allocator.
    let _ = CURRENT.try_with(|current| {
        let now = current.get() + delta;
        current.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the counting touches
// only `Cell`s of this thread and does not allocate.
unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            record(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            record(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        record(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            record(new_size as isize - layout.size() as isize);
        }
        new
    }
}

/// Runs `f` and returns its result with the most memory (in bytes) this
/// thread held at any moment during `f` beyond what it held before. What `f`
/// returns is included (it is still allocated when `f` ends).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = CURRENT.with(Cell::get);
    let outer_peak = PEAK.with(|peak| peak.replace(start));
    let result = f();
    let peak = PEAK.with(|peak| {
        let inner = peak.get();
        // A measure inside another must not hide its peak from the outer one.
        peak.set(inner.max(outer_peak));
        inner
    });
    (result, (peak - start).max(0) as usize)
}

/// Peak memory a parser of untrusted text may use: a few times the input
/// (a parser holds a scalar while it grows) plus a constant.
pub fn parser_peak_allowed(input_len: usize) -> usize {
    4 * input_len + 64 * 1024
}

/// Runs `parse` over each worst case (each at most `max_bytes` long) and
/// asserts that its peak allocation stays within [`parser_peak_allowed`];
/// prints the figures (`cargo test -- --nocapture` shows them).
pub fn assert_worst_cases_bounded<T, E: std::fmt::Display>(
    cases: Vec<(&str, String)>,
    max_bytes: usize,
    parse: impl Fn(&str) -> Result<T, E>,
) {
    for (what, input) in cases {
        assert!(input.len() <= max_bytes, "{what}");
        let start = std::time::Instant::now();
        let (result, peak) = measure(|| parse(&input));
        let outcome = match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string().chars().take(80).collect(),
        };
        eprintln!(
            "{what} ({} bytes): peak {peak} bytes, {:?}: {outcome}",
            input.len(),
            start.elapsed()
        );
        assert!(
            peak <= parser_peak_allowed(input.len()),
            "{what}: peak {peak} bytes for {} bytes of input",
            input.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_held_at_the_peak() {
        let ((), peak) = measure(|| {
            let a = vec![0u8; 100_000];
            drop(a);
            let b = vec![0u8; 10_000];
            drop(b);
        });
        assert!((100_000..110_000).contains(&peak), "{peak}");

        let (kept, peak) = measure(|| vec![1u8; 50_000]);
        assert!((50_000..60_000).contains(&peak), "{peak}");
        drop(kept);

        let ((), peak) = measure(|| {});
        assert_eq!(peak, 0);
    }

    #[test]
    fn growth_by_realloc_counts() {
        let (v, peak) = measure(|| {
            let mut v = Vec::with_capacity(1);
            v.extend(std::iter::repeat_n(7u8, 1 << 20));
            v
        });
        assert!(peak >= 1 << 20, "{peak}");
        drop(v);
    }

    #[test]
    fn nested_measures_report_to_the_outer_one() {
        let ((inner, _), outer) = measure(|| {
            let big = vec![0u8; 200_000];
            drop(big);
            measure(|| vec![0u8; 1000].len())
        });
        assert_eq!(inner, 1000);
        assert!(outer >= 200_000, "{outer}");
    }

    #[test]
    fn other_threads_do_not_count() {
        let ((), peak) = measure(|| {
            std::thread::scope(|s| {
                s.spawn(|| drop(vec![0u8; 4 << 20]));
            });
        });
        // Spawning a thread allocates a little on this one, never 4 MiB.
        assert!(peak < 1 << 20, "{peak}");
    }
}
