//! The `deit_pipe` Python package (README "From PyTorch"): `deit_pipe.Loader` and
//! `deit_pipe.TeacherCacheWriter`.
//!
//! [`core`] is plain Rust (built and tested by `cargo test --workspace`, no Python
//! needed); the PyO3 bindings live in `bindings`, compiled only with the `python` feature,
//! which maturin turns on (`pip install ./python`).

pub mod core;

#[cfg(feature = "python")]
mod bindings;
