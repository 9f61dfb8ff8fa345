//! AdamW, weight-decay groups, EMA, gradient clipping and accumulation against fixtures
//! from torch / timm (tools/make_optim_fixtures.py).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use trainer::clip::{clip_grad_norm, grad_norm};
use trainer::ema::ModelEma;
use trainer::grads::{named_vars, GradAccumulator, NamedGrads};
use trainer::optim::{no_weight_decay, AdamW, AdamWConfig};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/optim")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join(name), &Device::Cpu).expect(name)
}

fn json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join(name)).expect(name))
        .expect("json parses")
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Largest relative difference |a - b| / max(|b|, floor).
fn max_rel(got: &Tensor, want: &Tensor, floor: f32) -> f32 {
    assert_eq!(got.shape(), want.shape());
    flat(got)
        .iter()
        .zip(flat(want))
        .map(|(a, b)| (a - b).abs() / b.abs().max(floor))
        .fold(0.0, f32::max)
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn adamw_from_fixture(
    fx: &HashMap<String, Tensor>,
    names: &[String],
    wd: f64,
) -> (Vec<(String, Var)>, AdamW) {
    let vars: Vec<(String, Var)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                Var::from_tensor(&fx[&format!("init.{n}")]).unwrap(),
            )
        })
        .collect();
    let cfg = AdamWConfig {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: wd,
    };
    let opt = AdamW::new(vars.clone(), cfg).unwrap();
    (vars, opt)
}

fn grads_at(fx: &HashMap<String, Tensor>, names: &[String], step: usize) -> NamedGrads {
    let mut g = NamedGrads::new();
    for n in names {
        g.insert(n.clone(), fx[&format!("grad.{step}.{n}")].clone());
    }
    g
}

#[test]
fn adamw_matches_torch_with_and_without_weight_decay() {
    let meta = json("adamw.json");
    let lrs: Vec<f64> = meta["lrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for tag in ["wd", "nowd"] {
        let run = &meta["runs"][tag];
        let fx = load(&format!("adamw_{tag}.safetensors"));
        let names = names(&run["names"]);
        let (vars, mut opt) =
            adamw_from_fixture(&fx, &names, run["weight_decay"].as_f64().unwrap());
        let mut decay: Vec<String> = opt.decay_names().iter().map(|s| s.to_string()).collect();
        decay.sort();
        assert_eq!(
            decay,
            names_sorted(&run["decay_names"]),
            "{tag}: decay group"
        );
        let mut worst = 0f32;
        for (s, &lr) in lrs.iter().enumerate() {
            let step = s + 1;
            opt.set_lr(lr);
            opt.step(&grads_at(&fx, &names, step)).unwrap();
            for (n, v) in &vars {
                let want = &fx[&format!("param.{step}.{n}")];
                let rel = max_rel(v.as_tensor(), want, 1e-6);
                worst = worst.max(rel);
                assert!(rel <= 1e-6, "{tag} step {step} {n}: relative error {rel}");
            }
        }
        for n in &names {
            let (m, v) = opt.moments(n).unwrap();
            let rm = max_rel(m, &fx[&format!("exp_avg.{n}")], 1e-6);
            let rv = max_rel(v, &fx[&format!("exp_avg_sq.{n}")], 1e-12);
            assert!(rm <= 1e-5 && rv <= 1e-5, "{tag} {n}: moments {rm} {rv}");
            let want_step = fx[&format!("step.{n}")].to_scalar::<f32>().unwrap() as u64;
            assert_eq!(opt.step_count(n), want_step);
        }
        eprintln!("adamw {tag}: worst relative parameter error {worst:e}");
    }
}

fn names_sorted(v: &serde_json::Value) -> Vec<String> {
    let mut n = names(v);
    n.sort();
    n
}

#[test]
fn adamw_resume_from_saved_state_is_exact() {
    let meta = json("adamw.json");
    let fx = load("adamw_wd.safetensors");
    let names = names(&meta["runs"]["wd"]["names"]);
    let steps = 7;
    // straight run
    let (vars_a, mut a) = adamw_from_fixture(&fx, &names, 0.05);
    for s in 1..=steps {
        a.set_lr(1e-3 * s as f64);
        a.step(&grads_at(&fx, &names, s)).unwrap();
    }
    // 3 steps, save, fresh optimizer on copied weights, load, 4 more steps
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let (vars_b, mut b) = adamw_from_fixture(&fx, &names, 0.05);
    for s in 1..=3 {
        b.set_lr(1e-3 * s as f64);
        b.step(&grads_at(&fx, &names, s)).unwrap();
    }
    b.save(&path).unwrap();
    let copies: Vec<(String, Var)> = vars_b
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect();
    drop(b);
    let mut c = AdamW::new(copies.clone(), AdamWConfig::default()).unwrap();
    c.load(&path).unwrap();
    assert_eq!(c.lr(), 3e-3);
    assert_eq!(c.config().weight_decay, 0.05);
    for s in 4..=steps {
        c.set_lr(1e-3 * s as f64);
        c.step(&grads_at(&fx, &names, s)).unwrap();
    }
    for ((n, va), (_, vc)) in vars_a.iter().zip(&copies) {
        assert_eq!(flat(va.as_tensor()), flat(vc.as_tensor()), "{n}");
        assert_eq!(a.step_count(n), c.step_count(n));
    }
}

#[test]
fn adamw_state_file_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let w = Var::from_tensor(&Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut opt = AdamW::new(vec![("head.weight".into(), w)], AdamWConfig::default()).unwrap();
    let mut g = NamedGrads::new();
    g.insert(
        "head.weight",
        Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap(),
    );
    opt.step(&g).unwrap();
    opt.save(&path).unwrap();

    // another shape under the same name
    let w2 = Var::from_tensor(&Tensor::ones((3, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut other = AdamW::new(vec![("head.weight".into(), w2)], AdamWConfig::default()).unwrap();
    let err = format!("{:#}", other.load(&path).unwrap_err());
    assert!(
        err.contains("head.weight.exp_avg") && err.contains("opt.safetensors"),
        "{err}"
    );
    assert_eq!(
        other.step_count("head.weight"),
        0,
        "a failed load changes nothing"
    );

    // another name
    let w3 = Var::from_tensor(&Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut renamed = AdamW::new(
        vec![("head_dist.weight".into(), w3)],
        AdamWConfig::default(),
    )
    .unwrap();
    let err = format!("{:#}", renamed.load(&path).unwrap_err());
    assert!(err.contains("head.weight"), "{err}");

    // not a safetensors file
    std::fs::write(dir.path().join("junk"), b"not a checkpoint").unwrap();
    assert!(opt.load(&dir.path().join("junk")).is_err());
    // a gradient for an unknown parameter, or of the wrong shape
    let mut bad = NamedGrads::new();
    bad.insert("nope", Tensor::ones(3, DType::F32, &Device::Cpu).unwrap());
    assert!(opt.step(&bad).is_err());
    let mut bad = NamedGrads::new();
    bad.insert(
        "head.weight",
        Tensor::ones(6, DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(opt.step(&bad).is_err());
}

#[test]
fn parameters_without_gradient_are_not_touched() {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::new(&[[5f32, 6.0]], &dev).unwrap()).unwrap();
    let mut opt = AdamW::new(
        vec![
            ("a.weight".into(), a.clone()),
            ("b.weight".into(), b.clone()),
        ],
        AdamWConfig::default(),
    )
    .unwrap();
    let mut g = NamedGrads::new();
    g.insert("a.weight", Tensor::ones((2, 2), DType::F32, &dev).unwrap());
    opt.step(&g).unwrap();
    assert_eq!(flat(b.as_tensor()), vec![5.0, 6.0]);
    assert_eq!(opt.step_count("b.weight"), 0);
    assert_eq!(opt.step_count("a.weight"), 1);
    assert_ne!(flat(a.as_tensor()), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn weight_decay_groups_match_timm_on_deit_tiny() {
    let meta = json("deit_names.json");
    let params = meta["params"].as_array().unwrap();
    assert_eq!(params.len(), 155);
    let mut decayed = 0;
    for p in params {
        let name = p["name"].as_str().unwrap();
        let rank = p["shape"].as_array().unwrap().len();
        let decay = p["decay"].as_bool().unwrap();
        assert_eq!(!no_weight_decay(name, rank), decay, "{name} {rank}-D");
        decayed += decay as usize;
    }
    // patch_embed.proj.weight + 4 per block + head + head_dist
    assert_eq!(decayed, 1 + 12 * 4 + 2);
    for (name, rank, decays) in [
        ("cls_token", 3, false),
        ("dist_token", 3, false),
        ("pos_embed", 3, false),
        ("patch_embed.proj.weight", 4, true),
        ("patch_embed.proj.bias", 1, false),
        ("blocks.0.norm1.weight", 1, false),
        ("blocks.0.attn.qkv.weight", 2, true),
        ("head.weight", 2, true),
        ("head.bias", 1, false),
    ] {
        assert_eq!(!no_weight_decay(name, rank), decays, "{name}");
    }
}

#[test]
fn adamw_groups_a_varmap() {
    let vm = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let _ = vb.get((1, 1, 4), "cls_token").unwrap();
    let _ = vb.get((4, 4), "blocks.0.mlp.fc1.weight").unwrap();
    let _ = vb.get(4, "blocks.0.mlp.fc1.bias").unwrap();
    let _ = vb.get(4, "norm.weight").unwrap();
    let opt = AdamW::from_varmap(&vm, AdamWConfig::default()).unwrap();
    assert_eq!(
        opt.param_names(),
        vec![
            "blocks.0.mlp.fc1.bias",
            "blocks.0.mlp.fc1.weight",
            "cls_token",
            "norm.weight"
        ]
    );
    assert_eq!(opt.decay_names(), vec!["blocks.0.mlp.fc1.weight"]);
    assert_eq!(opt.weight_decay_of("blocks.0.mlp.fc1.weight"), Some(0.05));
    assert_eq!(opt.weight_decay_of("cls_token"), Some(0.0));
}

#[test]
fn ema_matches_timm_model_ema() {
    let meta = json("ema.json");
    let fx = load("ema.safetensors");
    let names = names(&meta["names"]);
    let updates = meta["updates"].as_u64().unwrap() as usize;
    for decay in meta["decays"].as_array().unwrap() {
        let d = decay.as_f64().unwrap();
        let key = |rest: String| format!("{d}.{rest}");
        let init: Vec<(String, Tensor)> = names
            .iter()
            .map(|n| (n.clone(), fx[&key(format!("init.{n}"))].clone()))
            .collect();
        let mut ema = ModelEma::new(d, init.iter().map(|(n, t)| (n.as_str(), t))).unwrap();
        for u in 1..=updates {
            let model: Vec<(String, Tensor)> = names
                .iter()
                .map(|n| (n.clone(), fx[&key(format!("model.{u}.{n}"))].clone()))
                .collect();
            ema.update(model.iter().map(|(n, t)| (n.as_str(), t)))
                .unwrap();
            for n in &names {
                let want = &fx[&key(format!("ema.{u}.{n}"))];
                let rel = max_rel(ema.get(n).unwrap(), want, 1e-6);
                assert!(rel <= 1e-6, "decay {d} update {u} {n}: {rel}");
            }
        }
        // save / load round trip
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ema.safetensors");
        ema.save(&path).unwrap();
        let back = ModelEma::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.decay(), d);
        for n in &names {
            assert_eq!(flat(back.get(n).unwrap()), flat(ema.get(n).unwrap()));
        }
        // a model without one of the averaged tensors is an error
        assert!(ema.update(std::iter::empty()).is_err());
    }
}

#[test]
fn ema_copies_the_model_instead_of_aliasing_it() {
    let vm = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let w = vb
        .get_with_hints((2, 2), "w", candle_nn::Init::Const(1.0))
        .unwrap();
    let mut ema = ModelEma::from_varmap(0.5, &vm).unwrap();
    let vars = named_vars(&vm).unwrap();
    vars[0]
        .1
        .set(&Tensor::full(3f32, (2, 2), &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(flat(ema.get("w").unwrap()), vec![1.0; 4]);
    ema.update_from_varmap(&vm).unwrap();
    assert_eq!(flat(ema.get("w").unwrap()), vec![2.0; 4]);
    drop(w);
}

#[test]
fn clip_grad_norm_matches_torch() {
    let meta = json("clip.json");
    let fx = load("clip.safetensors");
    let names = names(&meta["names"]);
    for tag in ["clipped", "unclipped"] {
        let case = &meta["cases"][tag];
        let mut g = NamedGrads::new();
        for n in &names {
            g.insert(n.clone(), fx[&format!("grad.{n}")].clone());
        }
        let total = clip_grad_norm(&mut g, case["max_norm"].as_f64().unwrap()).unwrap();
        let want = case["total_norm"].as_f64().unwrap();
        assert!(
            (total - want).abs() <= 1e-6 * want,
            "{tag}: norm {total} vs {want}"
        );
        for n in &names {
            let rel = max_rel(g.get(n).unwrap(), &fx[&format!("{tag}.{n}")], 1e-6);
            assert!(rel <= 1e-6, "{tag} {n}: {rel}");
        }
        let after = grad_norm(&g).unwrap();
        if tag == "clipped" {
            assert!((after - 1.0).abs() < 1e-5, "norm after clipping {after}");
        } else {
            assert!((after - want).abs() < 1e-5 * want);
        }
    }
}

/// Gradient of the mean squared output of a linear map over `x`.
fn linear_grads(w: &Var, x: &Tensor) -> NamedGrads {
    let y = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
    let loss = y.sqr().unwrap().mean_all().unwrap();
    let store = loss.backward().unwrap();
    NamedGrads::from_store(&store, &[("w".to_string(), w.clone())])
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch_gradient() {
    let dev = Device::Cpu;
    let w = Var::from_tensor(
        &Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap()
            .affine(0.1, -0.5)
            .unwrap(),
    )
    .unwrap();
    let x = Tensor::arange(0f32, 32.0, &dev)
        .unwrap()
        .reshape((8, 4))
        .unwrap()
        .sin()
        .unwrap();
    let full = linear_grads(&w, &x);
    let mut acc = GradAccumulator::new(4).unwrap();
    for k in 0..4 {
        assert!(!acc.is_complete());
        acc.add(&linear_grads(&w, &x.narrow(0, 2 * k, 2).unwrap()))
            .unwrap();
    }
    assert!(acc.is_complete());
    assert!(acc.add(&full).is_err(), "a fifth micro-batch is an error");
    let summed = acc.take().unwrap();
    let rel = max_rel(summed.get("w").unwrap(), full.get("w").unwrap(), 1e-6);
    assert!(rel < 1e-6, "accumulated vs full batch: {rel}");
    assert_eq!(acc.added(), 0);
    assert!(acc.take().is_err());

    // an incomplete accumulation is the mean over what was added
    acc.add(&linear_grads(&w, &x.narrow(0, 0, 4).unwrap()))
        .unwrap();
    acc.add(&linear_grads(&w, &x.narrow(0, 4, 4).unwrap()))
        .unwrap();
    let partial = acc.take_partial().unwrap();
    let rel = max_rel(partial.get("w").unwrap(), full.get("w").unwrap(), 1e-6);
    assert!(rel < 1e-6, "partial accumulation vs full batch: {rel}");
    assert!(GradAccumulator::new(0).is_err());
}
