//! formats crate of deit-pipe: every on-disk contract and every reader of a
//! user-supplied file, in one place: record shards, their index and manifest
//! (`shard`), the teacher-cache schema (`cache_schema`, feature `parquet`) and
//! weight files (`weights`, feature `weights`: safetensors and PyTorch checkpoints read
//! into named host arrays), with the bounded file opening (`open`), atomic writes
//! (`atomic`) and locks (`lock`) they share. Each reader checks what it reads against
//! the bytes the file holds and answers a damaged or hostile file with an error naming
//! it, never a panic; the fuzz targets of these readers live in this crate's tests.
//!
//! What it must not do: depend on candle or build tensors (the trainer turns host
//! arrays into tensors), decode images (the pipeline does), or depend on any other
//! crate of this workspace (every other crate depends on it).

pub mod atomic;
#[cfg(feature = "parquet")]
pub mod cache_schema;
#[cfg(unix)]
pub mod lock;
pub mod open;
pub mod shard;
#[cfg(feature = "weights")]
pub mod weights;
