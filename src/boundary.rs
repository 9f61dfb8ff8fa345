//! No user input may print a Rust backtrace (issue 25), `RUST_BACKTRACE=1` included:
//!
//! - [`install_panic_hook`] replaces the default panic message (and its backtrace) with
//!   one line naming the panic as an internal error; `main` runs each command inside
//!   [`catch`] and exits 1 after such a line. Panics that our code catches on purpose
//!   (the Parquet decoder guard, a decoder crash on one input image) keep their own
//!   handling: the guard in `formats` chains to this hook.
//! - [`Guarded`], the global allocator, is the system allocator except that a failed
//!   allocation ends the process with one line ("out of memory: could not allocate N
//!   bytes") and exit 1, instead of Rust's abort (exit 134). Model dimensions are
//!   checked before anything is built (`ModelSpec::check_limits`), so this is the last
//!   line of defence, not the way sizes are refused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::AssertUnwindSafe;

/// Exit status after an internal error or an allocation failure (as for any error).
const EXIT_ERROR: i32 = 1;

/// Prints panics as one line without a backtrace, whatever `RUST_BACKTRACE` says.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        let at = info
            .location()
            .map(|l| format!(" ({}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("deit-pipe: internal error: {msg}{at}; this is a bug, please report it");
    }));
}

/// Runs one command; a panic that reaches here (already printed by the hook) becomes an
/// error exit instead of Rust's exit 101.
pub fn catch(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "stopped on an internal error (the line above); no input should cause this"
        )),
    }
}

/// The system allocator, with a one-line exit 1 instead of an abort when memory runs out.
pub struct Guarded;

fn out_of_memory(size: usize) -> ! {
    // No formatting machinery (it may allocate): digits into a stack buffer.
    let mut buf = [0u8; 160];
    let head = b"error: out of memory: could not allocate ";
    let tail = b" bytes (see docs/LIMITS.md for the sizes deit-pipe checks)\n";
    let mut n = 0;
    buf[..head.len()].copy_from_slice(head);
    n += head.len();
    let mut digits = [0u8; 20];
    let mut d = 0;
    let mut v = size;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &digit in digits[..d].iter().rev() {
        buf[n] = digit;
        n += 1;
    }
    buf[n..n + tail.len()].copy_from_slice(tail);
    n += tail.len();
    // SAFETY: writes `n` initialised bytes of `buf` to stderr, then ends the process
    // without running destructors or allocating.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::_exit(EXIT_ERROR);
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; only a null
// result (allocation failure) is turned into a process exit.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            out_of_memory(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            out_of_memory(new_size);
        }
        p
    }
}
