//! The training loop of `deit-pipe train` and its parts: configuration (TOML + DeiT flag
//! overrides), checkpoints, metrics, evaluation and teacher targets.

pub mod checkpoint;
pub mod config;
pub mod dist_start;
pub mod eval;
pub mod eval_job;
pub mod mainpy;
pub mod metrics;
pub mod model_source;
#[path = "loop.rs"]
pub mod run;
pub mod teacher;
pub mod tensorboard;

pub use run::{train, train_with, NoProgress, TrainJob, TrainProgress, TrainSummary};

use candle_core::{Device, Tensor};
use pipeline::loader::Batch;

/// A batch's images as a `[N, 3, S, S]` tensor on `device`. On the CPU the tensor takes
/// the batch's buffer (no copy); on an accelerator the images are copied to the device
/// and the host buffer stays in the batch, which hands it back to the loader's buffer
/// pool when dropped (`pipeline::batch_pool`), so later batches reuse it.
pub fn batch_images(batch: &mut Batch, device: &Device) -> candle_core::Result<Tensor> {
    let shape = batch.shape();
    if device.is_cpu() {
        Tensor::from_vec(batch.take_images(), shape.as_slice(), device)
    } else {
        Tensor::from_slice(&batch.images, shape.as_slice(), device)
    }
}

/// File name of the resolved config inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// File name of the training split's class names (a JSON list, label order) inside a run
/// directory; `eval` checks a split's classes against it by name.
pub const CLASSES_FILE: &str = "classes.json";
