//! The `deit_pipe` Python package (README "From PyTorch"): `deit_pipe.Loader` and
//! `deit_pipe.TeacherCacheWriter`.
//!
//! Its one job is to hand PyTorch users the same batches and the same cache files as the
//! `deit-pipe` binary. It must not re-implement anything: loading, plans, views, targets
//! and cache bindings come from `pipeline`, `trainer`, `cache` and `formats`, the code
//! `train` and `teacher-cache` run, so Python and the binary cannot drift apart.
//!
//! [`core`] is plain Rust (built and tested by `cargo test --workspace`, no Python
//! needed); the PyO3 bindings live in `bindings`, compiled only with the `python` feature,
//! which maturin turns on (`pip install ./python`).

pub mod core;

#[cfg(feature = "python")]
mod bindings;
