//! bf16 mixed precision of the DeiT student (`ForwardCtx::precision`, `[run] precision`):
//! the logits and the gradients of the bf16 forward pass against the f32 ones, the f32
//! gradients reaching the f32 variables through the casts, and a few AdamW steps in bf16
//! that lower the loss as the f32 steps do. The logit and gradient checks run on both op
//! paths: the fused CPU kernels and the composite ops that CUDA runs.
//!
//! Bounds: bf16 keeps 8 significant bits, unit roundoff u = 2^-9 ~ 1.95e-3. In the bf16
//! forward pass the operands of 14 matrix products in series (patch embedding; qkv,
//! q k^T, attn v, proj, fc1, fc2 in each of 2 blocks; head; all with f32 accumulation)
//! are rounded, each adding a relative error of at most ~2u to its output. The errors are
//! independent, so the logits end a few u from f32 (measured 6e-3 to 9e-3, max-norm
//! relative). The test allows 3e-2 (about 15u, half the worst case of all 14 roundings
//! adding up in one direction), and asks for at least 1e-5 so that a forward pass that
//! ignored the precision (bit-equal to f32) fails. Gradients go back through the same
//! roundings twice (forward and backward products): per tensor they must point the same
//! way as the f32 ones (cosine > 0.99) with a norm within 10%.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::BTreeMap;

#[allow(dead_code)]
mod common;
use common::small_resnet;

use kernels::fused;
use trainer::grads::NamedGrads;
use trainer::models::{
    self, Classifier, DeitConfig, ForwardCtx, ModelSpec, Precision, ResNetBlock,
};
use trainer::optim::{AdamW, AdamWConfig};
use trainer::weights::{self, LoadOptions};

/// The tiny DeiT of these tests: 32 px, patch 8 (16 patches + 2 tokens), width 64,
/// 2 blocks, 2 heads of 32 (so the attention scale 1/sqrt(32) is not a power of two).
fn tiny_deit(drop_path: f64) -> ModelSpec {
    ModelSpec::deit(
        DeitConfig {
            img_size: 32,
            patch_size: 8,
            embed_dim: 64,
            depth: 2,
            num_heads: 2,
            mlp_ratio: 4,
            distilled: true,
        },
        10,
        drop_path,
    )
}

fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// A seeded standard-normal image batch `(b, 3, 32, 32)`.
fn images(b: usize, seed: u64) -> Tensor {
    Tensor::from_vec(normal(b * 3 * 32 * 32, seed), (b, 3, 32, 32), &Device::Cpu).unwrap()
}

fn labels(b: usize) -> Tensor {
    Tensor::from_vec(
        (0..b as u32).map(|i| (i * 7) % 10).collect(),
        b,
        &Device::Cpu,
    )
    .unwrap()
}

/// The model with timm's init, then every variable moved by seeded noise (std 0.05) so
/// that biases, LayerNorm shifts and tokens are not zero and the logits are not tiny.
fn build(spec: &ModelSpec) -> (VarMap, Box<dyn Classifier>) {
    let (vm, model, _) =
        weights::build_model(spec, None, &LoadOptions::default(), &Device::Cpu, 7).unwrap();
    for (i, (_, var)) in models::trainable_vars(&vm).into_iter().enumerate() {
        let t = var.as_tensor();
        let noise = Tensor::from_vec(
            normal(t.elem_count(), 100 + i as u64),
            t.shape(),
            t.device(),
        )
        .unwrap();
        var.set(&(t + (noise * 0.05).unwrap()).unwrap()).unwrap();
    }
    (vm, model)
}

/// 0.5 CE(cls) + 0.5 CE(dist) in f32 (the loss functions widen bf16 logits anyway).
fn loss_of(model: &dyn Classifier, x: &Tensor, y: &Tensor, ctx: &ForwardCtx) -> Tensor {
    let out = model.forward(x, ctx).unwrap();
    assert_eq!(out.cls.dtype(), DType::F32, "logits must come back in f32");
    let dist = out.dist.expect("train mode gives the dist head");
    assert_eq!(dist.dtype(), DType::F32, "logits must come back in f32");
    let a = trainer::loss::cross_entropy(&out.cls, y).unwrap();
    let b = trainer::loss::cross_entropy(&dist, y).unwrap();
    ((a + b).unwrap() * 0.5).unwrap()
}

fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |a - b| / max |b| over all elements.
fn max_rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (to_f64(a), to_f64(b));
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(0.0, f64::max).max(1e-30)
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

#[test]
fn cast_is_differentiable_and_gives_f32_gradients() {
    // y = sum((x_bf16 @ w_bf16^T) as f32 + b): dy/dw[o, i] = sum_r x[r, i], dy/db = rows.
    let x = Tensor::from_vec(normal(6 * 4, 1), (6, 4), &Device::Cpu).unwrap();
    let w = Var::from_tensor(&Tensor::from_vec(normal(3 * 4, 2), (3, 4), &Device::Cpu).unwrap())
        .unwrap();
    let b = Var::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let y = models::layers::matmul_bias_in(&x, w.as_tensor(), Some(b.as_tensor()), DType::BF16)
        .unwrap();
    assert_eq!(y.dtype(), DType::F32);
    let grads = y.sum_all().unwrap().backward().unwrap();
    let gw = grads
        .get(w.as_tensor())
        .expect("a gradient reaches the f32 weight");
    let gb = grads
        .get(b.as_tensor())
        .expect("a gradient reaches the f32 bias");
    assert_eq!(gw.dtype(), DType::F32);
    assert_eq!(gb.dtype(), DType::F32);
    let col_sums = to_f64(&x.sum(0).unwrap());
    for (k, g) in to_f64(gw).iter().enumerate() {
        let want = col_sums[k % 4];
        // x went through bf16: each sum is off by at most 6 roundings of 2^-9.
        assert!(
            (g - want).abs() <= 6.0 * 2f64.powi(-9) * 4.0 + 1e-6,
            "dw[{k}] = {g}, want {want}"
        );
    }
    assert_eq!(to_f64(gb), vec![6.0; 3]);
}

fn check_logits(fused_on: bool) -> f64 {
    fused::set_enabled(fused_on);
    let spec = tiny_deit(0.0);
    let (_vm, model) = build(&spec);
    let x = images(8, 11);
    let mut worst = 0.0f64;
    for ctx in [ForwardCtx::eval(), ForwardCtx::train(3)] {
        let f = model.forward(&x, &ctx).unwrap();
        let h = model
            .forward(&x, &ctx.with_precision(Precision::Bf16))
            .unwrap();
        let pairs = [(Some(h.cls), Some(f.cls)), (h.dist, f.dist)];
        for (a, b) in pairs.into_iter().filter_map(|(a, b)| Some((a?, b?))) {
            assert_eq!(a.dtype(), DType::F32, "bf16 logits must come back in f32");
            let e = max_rel_err(&a, &b);
            eprintln!(
                "fused={fused_on} train={}: max logit rel err {e:.3e}",
                ctx.train
            );
            assert!(e < 3e-2, "bf16 logits off by {e:.3e} (fused={fused_on})");
            assert!(
                e > 1e-5,
                "bf16 logits equal the f32 ones (rel err {e:.1e}): bf16 was not used"
            );
            worst = worst.max(e);
        }
    }
    fused::set_enabled(true);
    worst
}

#[test]
fn bf16_logits_match_f32_fused_kernels() {
    check_logits(true);
}

#[test]
fn bf16_logits_match_f32_composite_ops() {
    check_logits(false);
}

/// Gradients of every trainable variable after one backward pass at `precision`.
fn grads_at(
    vm: &VarMap,
    model: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    precision: Precision,
) -> (f64, BTreeMap<String, Tensor>) {
    let ctx = ForwardCtx::train(5).with_precision(precision);
    let loss = loss_of(model, x, y, &ctx);
    let l = loss.to_scalar::<f32>().unwrap() as f64;
    let store = loss.backward().unwrap();
    let mut out = BTreeMap::new();
    for (name, var) in models::trainable_vars(vm) {
        let g = store
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{precision}: no gradient reaches {name}"));
        out.insert(name, g.clone());
    }
    (l, out)
}

fn check_gradients(fused_on: bool) {
    fused::set_enabled(fused_on);
    // Drop path on: the same seed draws the same masks in both precisions.
    let spec = tiny_deit(0.1);
    let (vm, model) = build(&spec);
    let x = images(8, 12);
    let y = labels(8);
    let (l32, g32) = grads_at(&vm, model.as_ref(), &x, &y, Precision::F32);
    let (l16, g16) = grads_at(&vm, model.as_ref(), &x, &y, Precision::Bf16);
    assert!(
        (l16 - l32).abs() / l32 < 1e-2,
        "loss {l16} (bf16) vs {l32} (f32)"
    );
    assert_eq!(g32.len(), g16.len());
    let (mut min_cos, mut worst) = (f64::INFINITY, String::new());
    let mut max_ratio_err = 0.0f64;
    for (name, g) in &g16 {
        assert_eq!(
            g.dtype(),
            DType::F32,
            "{name}: the gradient must reach the f32 variable in f32"
        );
        let a = to_f64(g);
        let b = to_f64(&g32[name]);
        assert!(
            a.iter().all(|v| v.is_finite()),
            "{name}: non-finite gradient"
        );
        let norm_a = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let norm_b = b.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(norm_a > 0.0, "{name}: zero gradient in bf16");
        let c = cosine(&a, &b);
        assert!(
            c > 0.99,
            "{name}: bf16 gradient has cosine {c:.5} with the f32 one (fused={fused_on})"
        );
        let r = (norm_a / norm_b - 1.0).abs();
        assert!(
            r < 0.1,
            "{name}: bf16 gradient norm {norm_a:.4e} vs f32 {norm_b:.4e}"
        );
        max_ratio_err = max_ratio_err.max(r);
        if c < min_cos {
            min_cos = c;
            worst = name.clone();
        }
    }
    eprintln!(
        "fused={fused_on}: {} gradients, loss {l16:.5} vs {l32:.5}, min cosine {min_cos:.5} \
         ({worst}), max norm ratio error {max_ratio_err:.2e}",
        g16.len()
    );
    fused::set_enabled(true);
}

#[test]
fn bf16_gradients_are_f32_and_agree_with_f32_fused_kernels() {
    check_gradients(true);
}

#[test]
fn bf16_gradients_are_f32_and_agree_with_f32_composite_ops() {
    check_gradients(false);
}

/// Losses before each of `steps` AdamW steps on one fixed batch, then the final loss.
fn train_losses(precision: Precision, steps: usize) -> (Vec<f64>, VarMap) {
    let spec = tiny_deit(0.0);
    let (vm, model) = build(&spec);
    let params = models::trainable_vars(&vm);
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            lr: 1e-3,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let x = images(16, 13);
    let y = labels(16);
    let ctx = ForwardCtx::train(0).with_precision(precision);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = loss_of(model.as_ref(), &x, &y, &ctx);
        losses.push(loss.to_scalar::<f32>().unwrap() as f64);
        let store = loss.backward().unwrap();
        opt.step(&NamedGrads::from_store(&store, &params)).unwrap();
    }
    let loss = loss_of(model.as_ref(), &x, &y, &ctx);
    losses.push(loss.to_scalar::<f32>().unwrap() as f64);
    (losses, vm)
}

#[test]
fn bf16_training_steps_lower_the_loss_like_f32() {
    let steps = 8;
    let (l16, vm) = train_losses(Precision::Bf16, steps);
    let (l32, _) = train_losses(Precision::F32, steps);
    eprintln!("bf16 losses {l16:.4?}\nf32  losses {l32:.4?}");
    let (first, last) = (l16[0], l16[steps]);
    assert!(
        last < 0.7 * first,
        "{steps} bf16 AdamW steps took the loss from {first:.4} to {last:.4} only"
    );
    // The bf16 run follows the f32 one.
    let gap = (last - l32[steps]).abs() / l32[steps];
    assert!(
        gap < 0.1,
        "after {steps} steps: bf16 loss {last:.4}, f32 loss {:.4}",
        l32[steps]
    );
    // Master weights stay f32 and finite.
    for (name, var) in models::trainable_vars(&vm) {
        assert_eq!(var.dtype(), DType::F32, "{name} left f32");
        let s = var.as_tensor().abs().unwrap().sum_all().unwrap();
        assert!(
            s.to_scalar::<f32>().unwrap().is_finite(),
            "{name} not finite"
        );
    }
}

#[test]
fn convnets_refuse_bf16() {
    let spec = small_resnet(ResNetBlock::Basic, [1, 1, 1, 1], [8, 8, 8, 8], true);
    let (_vm, model, _) =
        weights::build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 1).unwrap();
    let x = images(2, 14);
    assert!(model.forward(&x, &ForwardCtx::eval()).is_ok());
    let e = model
        .forward(&x, &ForwardCtx::eval().with_precision(Precision::Bf16))
        .expect_err("a ConvNet must refuse bf16")
        .to_string();
    assert!(e.contains("f32 only"), "{e}");
}
