//! timm's weight initialization, drawn from a seeded ChaCha8 stream (never candle's RNG).
//!
//! Variables are visited in sorted name order, each drawing from its own stream
//! seeded from (seed, name), so the result does not depend on HashMap order.
//! - DeiT: trunc_normal(std .02, cut at +-2) for `pos_embed`, `cls_token`,
//!   `dist_token` and Linear weights; biases 0; LayerNorm 1/0; the patch-embedding
//!   conv keeps PyTorch's default (uniform +-1/sqrt(fan_in), weight and bias).
//! - ResNet: convs kaiming_normal(fan_out, relu); BN 1/0, the last BN of each
//!   residual branch 0 (timm `zero_init_last`); `fc` PyTorch default uniform.
//!   The CIFAR-stem ResNets (`resnet_small`, `resnet_tiny`; not timm models) keep that
//!   last BN at 1, as common CIFAR ResNet code does: on the quickstart's short schedule
//!   (1000 synth images, 10 epochs, AdamW 1e-3) zero-init held train loss at 2.03 and val
//!   top-1 at 16-19% after 10 epochs, against 1.72 and 41% without it, the same in
//!   PyTorch as here (2026-11-29).
//! - RegNet: convs normal(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups, conv
//!   biases 0; BN 1/0, `conv3.bn.weight` 0; Linear normal(std .01), bias 0.
//! - Running statistics: mean 0, var 1.

use super::{Arch, ModelSpec};
use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Initializes every variable of `varmap` (built by [`super::build`] for `spec`).
pub fn init_weights(spec: &ModelSpec, varmap: &VarMap, seed: u64) -> Result<()> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let shape = var.as_tensor().shape().clone();
        let dims = shape.dims().to_vec();
        let n = shape.elem_count();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fnv1a(name.as_bytes()));
        let values = init_values(spec, name, &dims, n, &mut rng);
        let t = Tensor::from_vec(values, shape, var.as_tensor().device())?
            .to_dtype(var.as_tensor().dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn normal(n: usize, std: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let d = Normal::new(0.0, std).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("unit normal"));
    (0..n).map(|_| d.sample(rng) as f32).collect()
}

/// timm `trunc_normal_(std, a=-2, b=2)`: redraw values outside [-2, 2].
fn trunc_normal(n: usize, std: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let d = Normal::new(0.0, std).unwrap_or_else(|_| Normal::new(0.0, 1.0).expect("unit normal"));
    (0..n)
        .map(|_| loop {
            let v: f64 = d.sample(rng);
            if (-2.0..=2.0).contains(&v) {
                break v as f32;
            }
        })
        .collect()
}

fn uniform(n: usize, bound: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect()
}

fn init_values(
    spec: &ModelSpec,
    name: &str,
    dims: &[usize],
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<f32> {
    let last = name.rsplit('.').next().unwrap_or(name);
    if last == "running_mean" {
        return vec![0.0; n];
    }
    if last == "running_var" {
        return vec![1.0; n];
    }
    match &spec.arch {
        Arch::Deit(_) => {
            if matches!(last, "pos_embed" | "cls_token" | "dist_token") {
                return trunc_normal(n, 0.02, rng);
            }
            if name.starts_with("patch_embed.proj.") {
                // PyTorch Conv2d default: kaiming_uniform(a=sqrt 5) == U(+-1/sqrt(fan_in)).
                let bound = 1.0 / ((3 * dims_patch(spec)) as f64).sqrt();
                return uniform(n, bound, rng);
            }
            if last == "bias" {
                return vec![0.0; n];
            }
            if dims.len() == 1 {
                return vec![1.0; n]; // LayerNorm weight
            }
            trunc_normal(n, 0.02, rng)
        }
        Arch::ResNet(_) => {
            if name.starts_with("fc.") {
                let bound = 1.0 / (resnet_features(spec) as f64).sqrt();
                return uniform(n, bound, rng);
            }
            if dims.len() == 4 {
                let fan_out = dims[0] * dims[2] * dims[3];
                return normal(n, (2.0 / fan_out as f64).sqrt(), rng);
            }
            if last == "bias" {
                return vec![0.0; n];
            }
            // BN weight; zero for the last BN of each residual branch
            let timm_zero_init = matches!(&spec.arch, Arch::ResNet(c) if !c.small_stem);
            let zero_last = timm_zero_init
                && (name.ends_with("bn3.weight")
                    || (name.ends_with("bn2.weight")
                        && matches!(&spec.arch, Arch::ResNet(c) if c.block == super::ResNetBlock::Basic)
                        && name.starts_with("layer")));
            if zero_last {
                vec![0.0; n]
            } else {
                vec![1.0; n]
            }
        }
        Arch::RegNet(_) => {
            if name.starts_with("head.fc.") {
                return if last == "bias" {
                    vec![0.0; n]
                } else {
                    normal(n, 0.01, rng)
                };
            }
            if dims.len() == 4 {
                let groups = regnet_groups(name, dims);
                let fan_out = dims[0] * dims[2] * dims[3] / groups.max(1);
                return normal(n, (2.0 / fan_out as f64).sqrt(), rng);
            }
            if last == "bias" {
                return vec![0.0; n];
            }
            if name.ends_with("conv3.bn.weight") {
                vec![0.0; n]
            } else {
                vec![1.0; n]
            }
        }
    }
}

fn dims_patch(spec: &ModelSpec) -> usize {
    match &spec.arch {
        Arch::Deit(c) => c.patch_size * c.patch_size,
        _ => 1,
    }
}

/// Input features of a ResNet's `fc`.
fn resnet_features(spec: &ModelSpec) -> usize {
    match &spec.arch {
        Arch::ResNet(c) => match c.block {
            super::ResNetBlock::Basic => c.channels[3],
            super::ResNetBlock::Bottleneck => c.channels[3] * 4,
        },
        _ => 1,
    }
}

/// Groups of a RegNet conv: the 3x3 `conv2` is grouped (in = out, so groups =
/// out / (in per group)); the others are dense.
fn regnet_groups(name: &str, dims: &[usize]) -> usize {
    if name.ends_with("conv2.conv.weight") && dims[1] > 0 {
        dims[0] / dims[1]
    } else {
        1
    }
}
