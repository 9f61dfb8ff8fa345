//! formats crate of deit-pipe.

pub mod atomic;
#[cfg(feature = "parquet")]
pub mod cache_schema;
pub mod open;
pub mod shard;
