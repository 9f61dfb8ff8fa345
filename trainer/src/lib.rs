//! The training side of deit-pipe: models, weights into tensors, losses, the optimizer
//! and the loop that trains and evaluates a DeiT student from shards and cached teacher
//! targets.
//!
//! Its one job is to turn views (from `pipeline`) and cached targets (read through the
//! schema in `formats`, never through `cache`) into trained weights and evaluation
//! figures: [`models`] (the DeiT student, ResNet / RegNetY teachers; plain structs built
//! from a `VarBuilder`, as candle-transformers writes models), [`weights`] (the host
//! arrays `formats::weights` reads, turned into tensors; safetensors saved), [`loss`],
//! [`optim`] (AdamW), [`schedule`], [`ema`], [`clip`], [`grads`], [`tensor_file`]
//! (optimizer and EMA state files), [`dist`] (the collective a data-parallel step
//! calls), [`report`], and [`train`] (config, loop, checkpoints, evaluation, DeiT
//! `main.py` compatibility in [`train::mainpy`]).
//!
//! It must not parse a user's file itself (the bounded readers of shards, caches and
//! weight files live in `formats`, and the trainer reads through them), hold compute
//! kernels (the GEMM and fused ops are the `kernels` crate), build views (`pipeline`),
//! or depend on `cache` or the binary (they depend on it).

pub mod clip;
pub mod dist;
pub mod ema;
pub mod grads;
pub mod loss;
pub mod models;
pub mod optim;
pub mod report;
pub mod schedule;
pub mod tensor_file;
pub mod train;
pub mod weights;
