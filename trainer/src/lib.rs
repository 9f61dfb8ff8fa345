//! trainer crate of deit-pipe.

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
