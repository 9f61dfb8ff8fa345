//! The training loop end to end on a small synthetic data set (10 classes, 40 px records,
//! 32 px views, a 2-4 block DeiT): resume equality, non-finite loss stop, weight-decay
//! groups, per-epoch learning rates. Learning above chance is checked end to end through
//! the CLI in `tests/distill_cli.rs`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use pipeline::config::{AugmentConfig, CropMode};
use pipeline::ingest::synth::{write_sharded, SynthConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use trainer::train::checkpoint::{CheckpointStore, EMA_FILE, MODEL_FILE, OPTIMIZER_FILE};
use trainer::train::config::{ModelConfig, TrainConfig};
use trainer::train::metrics::{read_metrics, MetricRecord, METRICS_FILE};
use trainer::train::{train, NoProgress, TrainJob};

/// Shards of a synthetic 10-class data set, built once per test binary.
fn dataset() -> PathBuf {
    static DATA: OnceLock<tempfile::TempDir> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let synth = SynthConfig {
            classes: 10,
            train_per_class: 48,
            val_per_class: 16,
            seed: 3,
        };
        write_sharded(dir.path(), &synth, 40).expect("synth shards");
        dir
    })
    .path()
    .join("shards")
}

/// A tiny distilled DeiT at 32 px with DeiT's augmentation, 2 epochs of a few batches.
fn tiny_config() -> TrainConfig {
    let mut c = TrainConfig {
        model: ModelConfig {
            name: "deit".into(),
            patch_size: Some(8),
            embed_dim: Some(48),
            depth: Some(2),
            num_heads: Some(3),
            mlp_ratio: Some(2),
            distilled: Some(true),
            drop_path: 0.1,
            ..ModelConfig::default()
        },
        ..TrainConfig::default()
    };
    let mut aug = AugmentConfig::small_image(32);
    aug.crop.mode = CropMode::RandomResizedCrop;
    aug.crop.scale = [0.35, 1.0];
    c.augment = aug;
    c.plan.repeats = 1;
    c.plan.num_samples_multiple = 2;
    c.data.batch_size = 16;
    c.data.accum_steps = 2;
    c.data.workers = 2;
    c.data.eval_batch_size = Some(40);
    c.optim.lr = 1e-3;
    c.optim.unscale_lr = true;
    c.schedule.epochs = 2;
    c.schedule.warmup_epochs = 1;
    c.schedule.warmup_lr = 1e-4;
    c.run.log_every = 2;
    c.run.max_batches_per_epoch = 6;
    c.validate().expect("valid test config");
    c
}

fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Path, b: &Path) -> f32 {
    let (ta, tb) = (read_tensors(a), read_tensors(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "{} and {} hold different tensors",
        a.display(),
        b.display()
    );
    let mut worst = 0f32;
    for (k, x) in &ta {
        let y = &tb[k];
        let d = x
            .to_dtype(DType::F32)
            .and_then(|x| x.sub(&y.to_dtype(DType::F32)?))
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY);
        worst = worst.max(d);
    }
    worst
}

fn last_dir(run: &Path) -> PathBuf {
    CheckpointStore::open(run)
        .and_then(|s| s.last())
        .expect("store")
        .expect("a checkpoint")
        .dir
}

#[test]
fn resume_after_stop_equals_straight_run() {
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.ema.enabled = true;
    cfg.ema.decay = 0.9;
    cfg.optim.clip_grad = Some(1.0);

    let straight = tmp.path().join("straight");
    let s = train(
        &TrainJob::new(cfg.clone(), &data, &straight, false),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(s.epochs_done, 2);
    assert_eq!(s.global_step, 6, "2 epochs x 6 micro-batches / accum 2");

    // 1 epoch, stop, resume for the second.
    let split = tmp.path().join("split");
    let mut job = TrainJob::new(cfg.clone(), &data, &split, false);
    job.stop_after_epochs = Some(1);
    let s1 = train(&job, &mut NoProgress).unwrap();
    assert!(s1.stopped_early);
    assert_eq!(s1.epochs_done, 1);
    let s2 = train(
        &TrainJob::new(cfg.clone(), &data, &split, true),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!((s2.epochs_done, s2.global_step), (2, 6));

    // Stop in the middle of epoch 1 (after step 4 of 6), resume.
    let mid = tmp.path().join("mid");
    let mut job = TrainJob::new(cfg.clone(), &data, &mid, false);
    job.stop_at_step = Some(4);
    let m1 = train(&job, &mut NoProgress).unwrap();
    assert!(m1.stopped_early);
    assert_eq!(m1.global_step, 4);
    train(&TrainJob::new(cfg, &data, &mid, true), &mut NoProgress).unwrap();

    let (a, b, c) = (last_dir(&straight), last_dir(&split), last_dir(&mid));
    for file in [MODEL_FILE, OPTIMIZER_FILE, EMA_FILE] {
        for other in [&b, &c] {
            let d = max_abs_diff(&a.join(file), &other.join(file));
            assert!(d <= 1e-6, "{file}: straight vs resumed differ by {d}");
        }
    }
    // The resumed runs' metrics read as one history: one epoch record per epoch.
    for run in [&split, &mid] {
        let epochs: Vec<usize> = read_metrics(&run.join(METRICS_FILE))
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                MetricRecord::Epoch(e) => Some(e.epoch),
                _ => None,
            })
            .collect();
        assert_eq!(epochs, vec![0, 1], "{}", run.display());
    }
}

#[test]
fn non_finite_loss_stops_and_keeps_last_good_checkpoint() {
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    // Epochs 0 and 1 train at the warmup lr (the schedule is one epoch late, as in
    // main.py); epoch 2 jumps to 1e30 and overflows.
    cfg.schedule.epochs = 3;
    cfg.schedule.warmup_epochs = 1;
    cfg.schedule.warmup_lr = 1e-4;
    cfg.optim.lr = 1e30;
    cfg.run.eval_every = 0;
    let run = tmp.path().join("run");
    let err = train(&TrainJob::new(cfg, &data, &run, false), &mut NoProgress).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("non-finite"), "{msg}");
    assert!(msg.contains("epoch 2"), "{msg}");
    let ck = CheckpointStore::open(&run)
        .unwrap()
        .last()
        .unwrap()
        .unwrap();
    assert_eq!(
        ck.state.epoch, 2,
        "the checkpoint after epoch 1 stays the last one"
    );
    for (name, t) in read_tensors(&ck.model_path()) {
        let s = t
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(s.is_finite(), "{name} is not finite in the kept checkpoint");
    }
}

/// One optimizer step with weight decay 0.5 against one without: the no-decay group
/// (biases, norms, pos_embed, cls/dist tokens) ends bitwise equal, the decay group
/// differs by exactly `-lr * wd * p0` (up to f32 rounding).
#[test]
fn weight_decay_groups_through_the_loop() {
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.schedule.epochs = 1;
    cfg.schedule.warmup_epochs = 0;
    cfg.data.accum_steps = 1;
    cfg.run.max_batches_per_epoch = 1;
    cfg.run.eval_every = 0;
    cfg.optim.lr = 1e-2;
    let lr = cfg.optim.lr;
    let wd = 0.5;
    let mut runs = Vec::new();
    for decay in [0.0, wd] {
        let mut c = cfg.clone();
        c.optim.weight_decay = decay;
        let run = tmp.path().join(format!("wd{decay}"));
        train(&TrainJob::new(c, &data, &run, false), &mut NoProgress).unwrap();
        runs.push(read_tensors(&last_dir(&run).join(MODEL_FILE)));
    }
    // Initial weights: the same init the loop uses.
    let spec = cfg.model.spec(10, 32).unwrap();
    let varmap = VarMap::new();
    trainer::models::build(
        &spec,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    trainer::models::init_weights(&spec, &varmap, cfg.run.seed).unwrap();
    let p0: BTreeMap<String, Tensor> = trainer::models::trainable_vars(&varmap)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let mut decayed = Vec::new();
    for (name, init) in &p0 {
        let (a, b) = (&runs[0][name], &runs[1][name]);
        let diff = (b - a).unwrap();
        let no_decay = init.rank() <= 1
            || name.ends_with(".bias")
            || ["pos_embed", "cls_token", "dist_token"].contains(&name.as_str());
        let max = diff
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        if no_decay {
            assert_eq!(
                max, 0.0,
                "{name} (no-decay group) changed with weight decay"
            );
        } else {
            let expect = init.affine(-lr * wd, 0.0).unwrap();
            let err = (&diff - &expect)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let scale = expect
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                err <= 1e-3 * scale + 1e-7,
                "{name}: decay differs from -lr*wd*p0 by {err} (scale {scale})"
            );
            decayed.push(name.clone());
        }
    }
    let mut expect_decayed = vec![
        "head.weight".to_string(),
        "head_dist.weight".into(),
        "patch_embed.proj.weight".into(),
    ];
    for i in 0..2 {
        for l in ["attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2"] {
            expect_decayed.push(format!("blocks.{i}.{l}.weight"));
        }
    }
    expect_decayed.sort();
    decayed.sort();
    assert_eq!(decayed, expect_decayed);
}

/// The lr of each epoch in the metrics is DeiT's: epoch 0 at warmup_lr, then
/// `get_lr(e - 1)` (warmup, cosine).
#[test]
fn per_epoch_learning_rates_follow_deit() {
    let data = dataset();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.schedule.epochs = 4;
    cfg.schedule.warmup_epochs = 2;
    cfg.schedule.warmup_lr = 1e-4;
    cfg.schedule.min_lr = 1e-5;
    cfg.optim.lr = 1e-3;
    cfg.data.accum_steps = 1;
    cfg.run.max_batches_per_epoch = 2;
    cfg.run.eval_every = 0;
    let run = tmp.path().join("run");
    train(&TrainJob::new(cfg, &data, &run, false), &mut NoProgress).unwrap();
    let lrs: Vec<f64> = read_metrics(&run.join(METRICS_FILE))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            MetricRecord::Epoch(e) => Some(e.lr),
            _ => None,
        })
        .collect();
    // epoch 2: warmup step 1 of 2 -> 1e-4 + (1e-3 - 1e-4) / 2; epoch 3: cosine at t = 2
    // of 4 -> 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + cos(pi / 2)).
    let expect = [1e-4, 1e-4, 5.5e-4, 1e-5 + 0.5 * (1e-3 - 1e-5)];
    assert_eq!(lrs.len(), 4);
    for (e, (got, want)) in lrs.iter().zip(expect).enumerate() {
        assert!(
            (got - want).abs() <= 1e-12 * want.max(1.0),
            "epoch {e}: lr {got}, expected {want}"
        );
    }
    // The step records carry the same lr per epoch.
    for r in read_metrics(&run.join(METRICS_FILE)).unwrap() {
        if let MetricRecord::Step(s) = r {
            assert_eq!(s.lr, lrs[s.epoch]);
        }
    }
}
