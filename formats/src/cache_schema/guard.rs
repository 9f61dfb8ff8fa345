//! The file boundary between our code and the Parquet decoder: a panic inside the
//! `parquet`/`arrow` crates (they index and `unwrap` on some malformed inputs, e.g.
//! `MAX_VLQ_BYTE_LEN` or `Decoder for dict should have been set`) becomes a
//! [`CacheError::Corrupt`] naming the file, and its panic message is not printed.
//!
//! The checksums ([`super::integrity`]) verify every byte before the decoder sees it, so
//! a damaged file never reaches this path; it remains for files whose checksums were
//! forged or recomputed after an edit.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use super::error::{CacheError, Result};

thread_local! {
    /// Depth of [`guarded`] calls on this thread (the hook stays quiet while > 0).
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Message of the last panic caught on this thread.
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs (once per process) a panic hook that records, instead of printing, panics on
/// a thread inside [`guarded`], and defers to the previous hook everywhere else.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) > 0 {
                let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                    (*s).to_string()
                } else if let Some(s) = info.payload().downcast_ref::<String>() {
                    s.clone()
                } else {
                    "unknown panic".to_string()
                };
                LAST.with(|l| *l.borrow_mut() = Some(msg));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, turning a panic inside it into [`CacheError::Corrupt`] for `path` (`what`
/// says what was being read). The caller must not use any state `f` touched after an
/// `Err` (it may be half-updated).
pub(crate) fn guarded<T>(path: &Path, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    DEPTH.with(|d| d.set(d.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    DEPTH.with(|d| d.set(d.get() - 1));
    match r {
        Ok(r) => r,
        Err(_) => {
            let msg = LAST
                .with(|l| l.borrow_mut().take())
                .unwrap_or_else(|| "unknown panic".into());
            Err(CacheError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("the Parquet decoder failed while reading {what} ({msg})"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_file() {
        let e = guarded::<()>(Path::new("x/epoch-00000.parquet"), "row group 0", || {
            panic!("index out of bounds")
        })
        .expect_err("panic caught");
        let msg = e.to_string();
        assert!(msg.contains("x/epoch-00000.parquet"), "{msg}");
        assert!(msg.contains("corrupt"), "{msg}");
        assert!(msg.contains("index out of bounds"), "{msg}");
        // Nesting and ordinary results pass through.
        assert_eq!(
            guarded(Path::new("a"), "b", || guarded(Path::new("a"), "c", || Ok(
                3
            )))
            .expect("ok"),
            3
        );
    }
}
