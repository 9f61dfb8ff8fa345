//! pipeline crate of deit-pipe: decode, DeiT train/eval transforms, augmentation config,
//! deterministic epoch plans, view hashes and the streaming loader.

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
