//! The data side of deit-pipe: from shard records to the exact pixels a model sees.
//!
//! Its one job is to turn a record and a seed into a view, the same bytes every time and
//! on every machine: ingest (folders and list files into records, decoders with one
//! policy), DeiT's train and eval transforms and RandAugment (bit-exact with timm and
//! Pillow), the deterministic epoch plans, view hashes, and the streaming loader that
//! batches views for training, caching and evaluation.
//!
//! It must not know about models, tensors, teachers or losses: it uses `formats` (the
//! on-disk records) and no other crate of ours, and `trainer`, `cache` and the binary all
//! read their data through it. Every random choice flows from an explicit seed
//! ([`rng`], [`plan`]), never from thread timing, so a teacher cache written today
//! replays the views a student trains on tomorrow.

pub mod batch_pool;
pub mod bench;
pub mod config;
pub mod crop_rule;
pub mod error;
pub mod ingest;
pub mod loader;
pub mod plan;
pub mod preview;
pub mod randaugment;
pub mod rng;
pub mod source;
pub mod transforms;
pub mod view;
