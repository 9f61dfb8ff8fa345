//! formats crate of deit-pipe.

pub mod atomic;
#[cfg(feature = "parquet")]
pub mod cache_schema;
#[cfg(unix)]
pub mod lock;
pub mod open;
pub mod shard;
