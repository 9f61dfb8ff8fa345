//! Teacher-cache runs: replay the trainer's epoch plans, run the teacher once per view
//! (eval mode, in batches) and write the answers as Parquet through
//! `formats::cache_schema`.
//!
//! Its one job is to produce cache files. It uses all three of our other crates
//! (`formats` for the file schema, `pipeline` for the views, `trainer` for the teacher
//! model and the data binding) and none of them uses it: the trainer reads cached targets
//! through the schema in `formats`, never through this crate. It must not define its own
//! file layout, augmentation or plan: what it writes is bound by fingerprints to the views
//! `pipeline` rebuilds, so anything computed here differently would break the match.
//!
//! - [`run::CacheJob`] / [`run::run`]: `deit-pipe teacher-cache`, resumable and splittable
//!   into parts (`--part i/N`).
//! - [`binding`]: the cache binding of a job, built with the trainer's own
//!   `data_binding`, so writer and reader agree by construction.
//! - [`inspect`]: `deit-pipe cache inspect` (summary plus teacher-vs-label agreement).

pub mod binding;
pub mod inspect;
pub mod run;

pub use inspect::{inspect, InspectReport};
pub use run::{parse_epochs, run, CacheJob, JobProgress, JobReport, NoProgress};
