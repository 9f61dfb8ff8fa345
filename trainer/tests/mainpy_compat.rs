//! DeiT main.py compatibility against fixtures made by `tools/make_mainpy_fixtures.py`
//! (torch 2.15.0, timm 1.0.31): `--finetune`'s position-embedding interpolation equals
//! torch's `F.interpolate(mode='bicubic', align_corners=False)`, and a main.py
//! `checkpoint.pth` restores the weights, the AdamW state (index -> name) and the EMA.

use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use trainer::ema::ModelEma;
use trainer::models::{DeitConfig, ModelSpec};
use trainer::optim::{AdamW, AdamWConfig};
use trainer::train::mainpy::finetune::{prepare, resample_pos_embed_mainpy};
use trainer::train::mainpy::MainPyCheckpoint;
use trainer::weights::{build_model, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mainpy")
        .join(name)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn pos_embed_interpolation_equals_torch_bicubic() {
    let t = candle_core::safetensors::load(fixture("pos_embed_interp.safetensors"), &Device::Cpu)
        .unwrap();
    for (case, extra, new) in [("up", 2, 7), ("down", 1, 4), ("same", 2, 5)] {
        let src = &t[&format!("{case}.in")];
        let want = &t[&format!("{case}.out")];
        let got = resample_pos_embed_mainpy(src, extra, new).unwrap();
        // Values up to ~4; both sides sum 16 f32 products, so a few ulps (~5e-7 each)
        // apart: measured 3.6e-6 at most.
        let d = max_abs_diff(&got, want);
        assert!(d <= 1e-5, "{case}: max abs diff {d}");
        // The token rows are kept exactly.
        assert_eq!(
            max_abs_diff(
                &got.narrow(1, 0, extra).unwrap(),
                &src.narrow(1, 0, extra).unwrap()
            ),
            0.0
        );
    }
}

fn tiny_spec(classes: usize, img: usize) -> ModelSpec {
    ModelSpec::deit(
        DeitConfig {
            img_size: img,
            patch_size: 8,
            embed_dim: 24,
            depth: 1,
            num_heads: 2,
            mlp_ratio: 4,
            distilled: true,
        },
        classes,
        0.0,
    )
}

#[test]
fn finetune_drops_a_head_of_another_class_count_and_resamples_pos_embed() {
    let ck = MainPyCheckpoint::read(&fixture("checkpoint.pth")).unwrap();
    let spec = tiny_spec(7, 48);
    let (varmap, _, _) =
        build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 0).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
        .collect();
    let mut tensors = ck.model.clone();
    let changes = prepare(&mut tensors, &shapes, &spec).unwrap();
    assert_eq!(
        changes.dropped,
        vec![
            "head.weight",
            "head.bias",
            "head_dist.weight",
            "head_dist.bias"
        ]
    );
    assert_eq!(changes.pos_embed, Some((4, 6)));
    assert_eq!(tensors["pos_embed"].dims(), &[1, 2 + 36, 24]);
    assert!(!tensors.contains_key("head.weight"));
    // Same class count and grid: nothing dropped, pos_embed unchanged.
    let spec4 = tiny_spec(4, 32);
    let (vm4, _, _) = build_model(&spec4, None, &LoadOptions::default(), &Device::Cpu, 0).unwrap();
    let shapes4: BTreeMap<String, Vec<usize>> = vm4
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().dims().to_vec()))
        .collect();
    let mut same = ck.model.clone();
    let c = prepare(&mut same, &shapes4, &spec4).unwrap();
    assert!(c.dropped.is_empty());
    assert_eq!(
        max_abs_diff(&same["pos_embed"], &ck.model["pos_embed"]),
        0.0
    );
}

#[test]
fn a_main_py_checkpoint_restores_weights_adamw_state_and_ema() {
    let ck = MainPyCheckpoint::read(&fixture("checkpoint.pth")).unwrap();
    assert_eq!(ck.epoch, Some(1));
    assert_eq!(ck.model.len(), 23);
    let expected =
        candle_core::safetensors::load(fixture("checkpoint_expected.safetensors"), &Device::Cpu)
            .unwrap();
    let spec = tiny_spec(4, 32);
    let (varmap, _, _) =
        build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 0).unwrap();
    ck.load_model(&varmap, &spec).unwrap();
    let cfg = AdamWConfig {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut opt = AdamW::from_varmap(&varmap, cfg).unwrap();
    let mut ema = ModelEma::from_varmap(0.9, &varmap).unwrap();
    let (epoch, steps) = ck
        .restore(&spec, &varmap, &mut opt, Some(&mut ema), &Device::Cpu)
        .unwrap();
    assert_eq!((epoch, steps), (2, 3));
    let names: Vec<String> = opt.param_names().iter().map(|s| s.to_string()).collect();
    assert_eq!(names.len(), 23);
    for name in &names {
        let (m, v) = opt
            .moments(name)
            .unwrap_or_else(|| panic!("{name}: no state"));
        assert_eq!(
            max_abs_diff(m, &expected[&format!("{name}.exp_avg")]),
            0.0,
            "{name}"
        );
        assert_eq!(
            max_abs_diff(v, &expected[&format!("{name}.exp_avg_sq")]),
            0.0,
            "{name}"
        );
        assert_eq!(opt.step_count(name), 3, "{name}");
        assert_eq!(
            max_abs_diff(ema.get(name).unwrap(), &expected[&format!("ema.{name}")]),
            0.0,
            "{name}"
        );
        let w = varmap.data().lock().unwrap()[name].as_tensor().clone();
        assert_eq!(max_abs_diff(&w, &ck.model[name]), 0.0, "{name}");
    }
    // The checkpoint's betas are part of the recipe: a different run's are refused.
    let (varmap2, _, _) =
        build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 0).unwrap();
    let mut opt2 = AdamW::from_varmap(
        &varmap2,
        AdamWConfig {
            betas: (0.8, 0.99),
            ..cfg
        },
    )
    .unwrap();
    let e = ck
        .restore(&spec, &varmap2, &mut opt2, None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--opt-betas 0.9 0.999"), "{e}");
}

#[test]
fn a_weights_only_checkpoint_starts_at_epoch_zero() {
    let full = MainPyCheckpoint::read(&fixture("checkpoint.pth")).unwrap();
    let ck = MainPyCheckpoint {
        path: full.path.clone(),
        model: full.model.clone(),
        model_ema: None,
        optimizer: None,
        epoch: None,
    };
    let spec = tiny_spec(4, 32);
    let (varmap, _, _) =
        build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, 0).unwrap();
    ck.load_model(&varmap, &spec).unwrap();
    let mut opt = AdamW::from_varmap(&varmap, AdamWConfig::default()).unwrap();
    let r = ck
        .restore(&spec, &varmap, &mut opt, None, &Device::Cpu)
        .unwrap();
    assert_eq!(r, (0, 0));
    assert_eq!(opt.step_count("head.weight"), 0);
}
