//! Backward pass checks: the gradients of one train step of a small DeiT against
//! PyTorch's (loss = 0.5 CE(cls head, y) + 0.5 CE(dist head, y_dist)) and of a small
//! CIFAR-stem ResNet (CE, train-mode BatchNorm), and a guard
//! that after one backward() every trainable variable of every model family has a
//! non-zero gradient (candle has ops that silently drop gradients).

use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;

mod common;
use common::{fixtures, small_resnet};

use kernels::fused;
use trainer::models::{
    self, Arch, DeitConfig, ForwardCtx, ModelSpec, RegNetConfig, ResNetBlock, ResNetConfig,
};
use trainer::weights::{self, LoadOptions};

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let num = (&a - &b).unwrap().sqr().unwrap().sum_all().unwrap();
    let den = b.sqr().unwrap().sum_all().unwrap();
    (num.to_scalar::<f64>().unwrap() / den.to_scalar::<f64>().unwrap().max(1e-30)).sqrt()
}

fn small_deit(drop_path: f64) -> ModelSpec {
    ModelSpec::deit(
        DeitConfig {
            img_size: 32,
            patch_size: 8,
            embed_dim: 48,
            depth: 2,
            num_heads: 3,
            mlp_ratio: 4,
            distilled: true,
        },
        10,
        drop_path,
    )
}

fn labels(t: &Tensor) -> Tensor {
    t.to_dtype(DType::U32).unwrap()
}

/// Every trainable variable's gradient equals the fixture's `grad.<name>` (relative
/// error at most 1e-4), and the fixture has no gradient we lack.
fn assert_grads_match(
    vm: &candle_nn::VarMap,
    grads: &candle_core::backprop::GradStore,
    io: &BTreeMap<String, Tensor>,
    fused_on: bool,
) {
    let vars = models::trainable_vars(vm);
    assert_eq!(
        vars.len(),
        io.keys().filter(|k| k.starts_with("grad.")).count()
    );
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let e = rel_err(g, &io[&format!("grad.{name}")]);
        assert!(
            e <= 1e-4,
            "gradient of {name} (fused={fused_on}): rel err {e:.3e}"
        );
    }
}

/// Gradients of one step against PyTorch, on the fused or the composite path.
fn check_deit_gradients(fused_on: bool) {
    fused::set_enabled(fused_on);
    let spec = small_deit(0.0);
    let (vm, model, _) = weights::build_model(
        &spec,
        Some(&fixtures().join("deit_distilled_small.safetensors")),
        &LoadOptions::default(),
        &Device::Cpu,
        0,
    )
    .unwrap();
    let io: BTreeMap<String, Tensor> = candle_core::safetensors::load(
        fixtures().join("deit_distilled_small.io.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .collect();
    let out = model.forward(&io["x"], &ForwardCtx::train(3)).unwrap();
    let dist = out.dist.expect("train mode returns the dist head");
    let loss = ((candle_nn::loss::cross_entropy(&out.cls, &labels(&io["y"])).unwrap() * 0.5)
        .unwrap()
        + (candle_nn::loss::cross_entropy(&dist, &labels(&io["y_dist"])).unwrap() * 0.5).unwrap())
    .unwrap();
    let l = loss.to_scalar::<f32>().unwrap() as f64;
    let want = io["loss"].to_vec1::<f32>().unwrap()[0] as f64;
    assert!((l - want).abs() / want < 1e-5, "loss {l} vs {want}");
    assert_grads_match(&vm, &loss.backward().unwrap(), &io, fused_on);
    fused::set_enabled(true);
}

#[test]
fn deit_gradients_match_pytorch() {
    check_deit_gradients(true);
    check_deit_gradients(false);
}

/// One train step of the CIFAR-stem ResNet fixture (train-mode BatchNorm, 3x3 and 1x1
/// convolutions with stride, shortcut) against PyTorch: loss and every gradient, on the
/// im2col/fused-BatchNorm path and on candle's own ops.
fn check_resnet_gradients(fused_on: bool) {
    fused::set_enabled(fused_on);
    let spec = small_resnet(ResNetBlock::Basic, [1, 1, 1, 1], [16, 32, 64, 128], true);
    let (vm, model, _) = weights::build_model(
        &spec,
        Some(&fixtures().join("resnet_cifar_small.safetensors")),
        &LoadOptions::default(),
        &Device::Cpu,
        0,
    )
    .unwrap();
    let io: BTreeMap<String, Tensor> = candle_core::safetensors::load(
        fixtures().join("resnet_cifar_small.io.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .collect();
    let out = model
        .forward(&io["x_train"], &ForwardCtx::train(0))
        .unwrap();
    let loss = candle_nn::loss::cross_entropy(&out.cls, &labels(&io["y_train"])).unwrap();
    let l = f64::from(loss.to_scalar::<f32>().unwrap());
    let want = f64::from(io["train_loss"].to_vec1::<f32>().unwrap()[0]);
    assert!((l - want).abs() / want < 1e-5, "loss {l} vs {want}");
    assert_grads_match(&vm, &loss.backward().unwrap(), &io, fused_on);
    fused::set_enabled(true);
}

#[test]
fn resnet_gradients_match_pytorch() {
    check_resnet_gradients(true);
    check_resnet_gradients(false);
}

fn assert_all_grads_nonzero(spec: &ModelSpec, x: &Tensor) {
    let (vm, model, _) =
        weights::build_model(spec, None, &LoadOptions::default(), &Device::Cpu, 42).unwrap();
    // zero-init last BN weights would block gradients to earlier convs of a branch
    // only through the product; set every variable to a non-degenerate value first
    for (name, var) in models::trainable_vars(&vm) {
        let t = var.as_tensor();
        let n = t.elem_count();
        if name.ends_with(".weight") && t.rank() == 1 {
            let v: Vec<f32> = (0..n).map(|i| 1.0 + 0.01 * (i % 7) as f32).collect();
            var.set(&Tensor::from_vec(v, t.shape(), t.device()).unwrap())
                .unwrap();
        }
    }
    let b = x.dim(0).unwrap();
    let y = Tensor::from_vec(
        (0..b as u32).map(|i| i % 10).collect::<Vec<_>>(),
        b,
        &Device::Cpu,
    )
    .unwrap();
    let out = model.forward(x, &ForwardCtx::train(9)).unwrap();
    let mut loss = candle_nn::loss::cross_entropy(&out.cls, &y).unwrap();
    if let Some(d) = &out.dist {
        loss = (loss + candle_nn::loss::cross_entropy(d, &y).unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    for (name, var) in models::trainable_vars(&vm) {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{}: no gradient reaches {name}", spec.name));
        let norm = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{}: zero gradient for {name}", spec.name);
    }
}

/// A seeded standard-normal input (never candle's RNG).
fn input(b: usize, side: usize) -> Tensor {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((b * 1000 + side) as u64);
    let n = b * 3 * side * side;
    let d = rand_distr::StandardNormal;
    let v: Vec<f32> = (0..n).map(|_| d.sample(&mut rng)).collect();
    Tensor::from_vec(v, (b, 3, side, side), &Device::Cpu).unwrap()
}

#[test]
fn every_deit_variable_gets_a_gradient() {
    // drop path on: the masks must not cut any parameter off for this seed
    assert_all_grads_nonzero(&small_deit(0.1), &input(4, 32));
    fused::set_enabled(false);
    assert_all_grads_nonzero(&small_deit(0.0), &input(4, 32));
    fused::set_enabled(true);
}

/// With stochastic depth on (fused residual connections, per-sample masks drawn from the
/// step's seed), the fused path gives the composite path's loss and gradients.
#[test]
fn deit_with_drop_path_fused_equals_composite() {
    let spec = small_deit(0.3);
    let (vm, model, _) =
        weights::build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 5).unwrap();
    let x = input(6, 32);
    let y = Tensor::from_vec((0..6u32).collect::<Vec<_>>(), 6, &Device::Cpu).unwrap();
    let run = |fused_on: bool| {
        fused::set_enabled(fused_on);
        let out = model.forward(&x, &ForwardCtx::train(11)).unwrap();
        let loss = candle_nn::loss::cross_entropy(&out.cls, &y).unwrap();
        let grads = loss.backward().unwrap();
        fused::set_enabled(true);
        (loss.to_scalar::<f32>().unwrap(), grads)
    };
    let (lf, gf) = run(true);
    let (lc, gc) = run(false);
    assert!((lf - lc).abs() <= 1e-5 * lc.abs(), "loss {lf} vs {lc}");
    for (name, var) in models::trainable_vars(&vm) {
        let (a, b) = (gf.get(var.as_tensor()), gc.get(var.as_tensor()));
        match (a, b) {
            (Some(a), Some(b)) => {
                let e = rel_err(a, b);
                assert!(
                    e <= 1e-4,
                    "gradient of {name}: fused vs composite rel err {e:.3e}"
                );
            }
            (None, None) => {}
            _ => panic!("{name}: a gradient on one path only"),
        }
    }
}

#[test]
fn every_resnet_variable_gets_a_gradient() {
    for (block, small, side) in [
        (ResNetBlock::Basic, true, 32),
        (ResNetBlock::Bottleneck, false, 64),
    ] {
        let spec = ModelSpec {
            name: "resnet_test".into(),
            arch: Arch::ResNet(ResNetConfig {
                block,
                layers: [1, 2, 1, 1],
                channels: [8, 16, 32, 16],
                stem_width: 16,
                small_stem: small,
            }),
            num_classes: 10,
            drop_path: 0.0,
        };
        assert_all_grads_nonzero(&spec, &input(4, side));
    }
}

#[test]
fn every_regnet_variable_gets_a_gradient() {
    let spec = ModelSpec {
        name: "regnety_test".into(),
        arch: Arch::RegNet(RegNetConfig {
            depth: 6,
            w0: 8,
            wa: 8.0,
            wm: 1.5,
            group_size: 8,
            se_ratio: 0.25,
            stem_width: 8,
        }),
        num_classes: 10,
        drop_path: 0.0,
    };
    assert_all_grads_nonzero(&spec, &input(4, 64));
}

#[test]
fn drop_path_masks_follow_the_seed() {
    let spec = small_deit(0.5);
    let (_vm, model, _) =
        weights::build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 1).unwrap();
    let x = input(8, 32);
    let run = |seed: u64| -> Vec<Vec<f32>> {
        model
            .forward(&x, &ForwardCtx::train(seed))
            .unwrap()
            .cls
            .to_vec2()
            .unwrap()
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
    // eval ignores the seed and drop path
    let e1 = model
        .forward(
            &x,
            &ForwardCtx {
                train: false,
                seed: 1,
                ..ForwardCtx::eval()
            },
        )
        .unwrap()
        .cls;
    let e2 = model
        .forward(
            &x,
            &ForwardCtx {
                train: false,
                seed: 2,
                ..ForwardCtx::eval()
            },
        )
        .unwrap()
        .cls;
    assert_eq!(e1.to_vec2::<f32>().unwrap(), e2.to_vec2::<f32>().unwrap());
}
