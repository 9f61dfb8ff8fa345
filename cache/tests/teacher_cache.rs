//! The teacher-cache job end to end on a tiny data set (4 classes x 5 images, 40 px
//! records, 32 px views with DeiT's augmentation and Mixup/CutMix) and a random-init
//! `deit_tiny_patch8_32` teacher: rows match the pipeline's views and the teacher's
//! argmax, parts merge into the full run, resume skips finished files and redoes partial
//! ones, a directory of another binding is refused, and a student trained from the
//! cache equals one trained with the teacher online.

use cache::run::{binding_of, open_data, run, CacheJob, NoProgress};
use candle_core::{DType, Device, Tensor};
use formats::cache_schema::{file_name, CachedTarget, PartSpec, TeacherCache, PARTIAL_SUFFIX};
use pipeline::config::{AugmentConfig, CropMode};
use pipeline::ingest::synth::{write_sharded, SynthConfig};
use pipeline::plan::EpochPlan;
use pipeline::source::RecordSource;
use pipeline::view::{build_slot_view, ViewBuilder};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use trainer::models::{Classifier, ForwardCtx, ModelSpec};
use trainer::train::checkpoint::MODEL_FILE;
use trainer::train::config::{DistillationType, ModelConfig, TrainConfig};
use trainer::train::{train, TrainJob};
use trainer::weights::{build_model, save_safetensors, LoadOptions};

const ARCH: &str = "deit_tiny_patch8_32";

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn data(&self) -> PathBuf {
        self.dir.path().join("shards")
    }
    fn weights(&self, seed: u64) -> PathBuf {
        self.dir.path().join(format!("teacher-{seed}.safetensors"))
    }
}

/// Shards of 20 synthetic images and two random-init teachers (seeds 0 and 1).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let synth = SynthConfig {
            classes: 4,
            train_per_class: 5,
            val_per_class: 1,
            seed: 3,
        };
        write_sharded(dir.path(), &synth, 40).expect("synth shards");
        let f = Fixture { dir };
        for seed in [0, 1] {
            let spec = teacher_spec();
            let (varmap, _, _) =
                build_model(&spec, None, &LoadOptions::default(), &Device::Cpu, seed)
                    .expect("teacher");
            save_safetensors(&varmap, &f.weights(seed)).expect("save teacher");
        }
        f
    })
}

fn teacher_spec() -> ModelSpec {
    ModelSpec::parse(ARCH)
        .expect("arch")
        .with_num_classes(4)
        .with_img_size(32)
        .expect("img size")
}

/// The teacher a job runs, loaded from its weights file.
fn job_teacher(j: &CacheJob) -> Box<dyn Classifier> {
    let (_, teacher, _) = build_model(
        &teacher_spec(),
        Some(&j.teacher_weights),
        &LoadOptions::default(),
        &Device::Cpu,
        0,
    )
    .expect("teacher");
    teacher
}

fn config(seed: u64) -> TrainConfig {
    let mut c = TrainConfig::default();
    let mut aug = AugmentConfig::small_image(32);
    aug.crop.mode = CropMode::RandomResizedCrop;
    aug.crop.scale = [0.35, 1.0];
    aug.mix.mixup_alpha = 0.8;
    aug.mix.cutmix_alpha = 1.0;
    aug.mix.prob = 0.5;
    c.augment = aug;
    c.plan.repeats = 1;
    c.plan.num_samples_multiple = 2;
    c.run.seed = seed;
    c.validate().expect("valid test config");
    c
}

fn job(out: &Path, epochs: std::ops::Range<u32>, part: PartSpec) -> CacheJob {
    let f = fixture();
    CacheJob {
        data: f.data(),
        teacher_weights: f.weights(0),
        teacher_arch: ARCH.into(),
        config: config(7),
        epochs,
        top_k: 3,
        out: out.to_path_buf(),
        part,
        batch_size: 2,
        device: "cpu".into(),
    }
}

fn rows(dir: &Path, job: &CacheJob, epoch: u32) -> Vec<CachedTarget> {
    let src = open_data(&job.data).expect("data");
    let cache = TeacherCache::open(dir, &binding_of(job, &src).expect("binding")).expect("open");
    cache
        .epoch_reader(epoch)
        .expect("epoch")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
}

/// A full 0..2 run, made once.
fn reference() -> &'static Path {
    static R: OnceLock<tempfile::TempDir> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = run(&job(dir.path(), 0..2, PartSpec::WHOLE), &mut NoProgress).expect("run");
        assert_eq!(r.written, vec![0, 1]);
        assert_eq!(r.rows, 40);
        dir
    })
    .path()
}

#[test]
fn rows_are_the_teachers_answers_on_the_pipelines_views() {
    let dir = reference();
    let j = job(dir, 0..2, PartSpec::WHOLE);
    let src = open_data(&j.data).expect("data");
    let cache = TeacherCache::open(dir, &binding_of(&j, &src).expect("binding")).expect("open");
    cache.require_epochs(0..2).expect("epochs 0 and 1 complete");
    assert!(cache.require_epochs(0..3).is_err());
    let builder = ViewBuilder::new(&j.config.augment).expect("builder");
    let teacher = job_teacher(&j);
    let (mut mixed, mut spread) = (0, 0);
    for epoch in 0..2u32 {
        let plan = EpochPlan::new(7, u64::from(epoch), src.len(), &j.config.plan).expect("plan");
        let got = rows(dir, &j, epoch);
        assert_eq!(got.len(), plan.len());
        for (slot, row) in got.iter().enumerate() {
            assert_eq!(row.slot as usize, slot);
            let view = build_slot_view(&src, &plan, &builder, slot).expect("view");
            assert_eq!(row.sample, view.sample, "epoch {epoch} slot {slot}");
            assert_eq!(row.partner, plan.slot(slot).partner);
            assert_eq!(row.lam, view.lam);
            assert_eq!(row.view_hash, view.hash, "epoch {epoch} slot {slot}");
            let x = Tensor::from_vec(view.data, (1, 3, 32, 32), &Device::Cpu).expect("x");
            let logits = teacher
                .forward(&x, &ForwardCtx::eval())
                .expect("forward")
                .cls
                .to_dtype(DType::F32)
                .expect("f32")
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("logits");
            let argmax = (0..logits.len())
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .expect("classes") as u32;
            assert_eq!(
                row.hard_label, argmax,
                "epoch {epoch} slot {slot}: {logits:?}"
            );
            mixed += usize::from(row.lam < 1.0);
            spread += usize::from(row.topk_logits[0] > row.topk_logits[1]);
        }
    }
    assert!(mixed > 0, "the test recipe should mix some views");
    assert!(
        spread > 0,
        "the random teacher should not answer all-equal logits"
    );
}

/// Item 5 of issue 23: the job builds the next batches of views on a producer thread
/// while the teacher runs; its rows must be those of building, running and writing each
/// batch in turn, bit for bit, across batch and epoch boundaries.
#[test]
fn overlapped_rows_equal_the_sequential_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut j = job(dir.path(), 0..3, PartSpec::WHOLE);
    // 3 pairs a batch: 10 pairs an epoch make batches of 3, 3, 3 and 1.
    j.batch_size = 6;
    let r = run(&j, &mut NoProgress).expect("run");
    assert_eq!((r.written, r.rows), (vec![0, 1, 2], 60));
    let src = open_data(&j.data).expect("data");
    let builder = ViewBuilder::new(&j.config.augment).expect("builder");
    let teacher = job_teacher(&j);
    for epoch in 0..3u32 {
        let plan = EpochPlan::new(7, u64::from(epoch), src.len(), &j.config.plan).expect("plan");
        let pairs: Vec<usize> = (0..plan.num_pairs()).collect();
        let mut want = Vec::new();
        for chunk in pairs.chunks(3) {
            let (keys, data) =
                cache::run::build_views(&src, &plan, &builder, epoch, chunk).expect("views");
            let x = Tensor::from_vec(data, (keys.len(), 3, 32, 32), &Device::Cpu).expect("x");
            let logits = teacher
                .forward(&x, &ForwardCtx::eval())
                .expect("forward")
                .cls
                .to_dtype(DType::F32)
                .expect("f32")
                .to_vec2::<f32>()
                .expect("logits");
            for (key, l) in keys.into_iter().zip(&logits) {
                let row =
                    formats::cache_schema::CacheRow::from_logits(key, l, j.top_k).expect("row");
                want.push(row.to_target());
            }
        }
        let got = rows(dir.path(), &j, epoch);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            // Bit for bit: compare the f32 fields by their bits.
            let bits = |t: &CachedTarget| {
                (
                    t.topk_logits
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    t.lse.to_bits(),
                    t.lam.to_bits(),
                )
            };
            assert_eq!(g, w, "epoch {epoch} slot {}", w.slot);
            assert_eq!(bits(g), bits(w), "epoch {epoch} slot {}", w.slot);
        }
    }
}

#[test]
fn parts_in_one_directory_equal_the_full_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    for i in [2, 1] {
        let part = PartSpec::new(i, 2).expect("part");
        let r = run(&job(dir.path(), 0..2, part), &mut NoProgress).expect("part run");
        assert_eq!(r.rows, 20, "part {i}/2 of 2 epochs of 20 slots");
    }
    let j = job(dir.path(), 0..2, PartSpec::WHOLE);
    for epoch in 0..2 {
        assert_eq!(rows(dir.path(), &j, epoch), rows(reference(), &j, epoch));
    }
}

#[test]
fn resume_skips_finished_files_and_redoes_partial_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = run(&job(dir.path(), 0..1, PartSpec::WHOLE), &mut NoProgress).expect("0..1");
    assert_eq!(first.written, vec![0]);
    let e0 = dir.path().join(file_name(0, PartSpec::WHOLE));
    let before = (
        std::fs::metadata(&e0)
            .expect("meta")
            .modified()
            .expect("mtime"),
        std::fs::read(&e0).expect("bytes"),
    );
    // A killed job's leftover for epoch 1.
    let partial = dir
        .path()
        .join(format!("{}{PARTIAL_SUFFIX}", file_name(1, PartSpec::WHOLE)));
    std::fs::write(&partial, b"PAR1 truncated").expect("partial");
    let second = run(&job(dir.path(), 0..2, PartSpec::WHOLE), &mut NoProgress).expect("0..2");
    assert_eq!(second.skipped, vec![0]);
    assert_eq!(second.written, vec![1]);
    assert_eq!(second.rows, 20);
    let after = (
        std::fs::metadata(&e0)
            .expect("meta")
            .modified()
            .expect("mtime"),
        std::fs::read(&e0).expect("bytes"),
    );
    assert_eq!(before, after, "epoch 0 was rewritten");
    assert!(
        !partial.exists(),
        "the partial file should have been replaced"
    );
    let j = job(dir.path(), 0..2, PartSpec::WHOLE);
    for epoch in 0..2 {
        assert_eq!(rows(dir.path(), &j, epoch), rows(reference(), &j, epoch));
    }
    // Nothing left to do.
    let third = run(&j, &mut NoProgress).expect("again");
    assert_eq!((third.skipped, third.rows), (vec![0, 1], 0));
}

#[test]
fn another_binding_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(&job(dir.path(), 0..1, PartSpec::WHOLE), &mut NoProgress).expect("run");
    let mut other_seed = job(dir.path(), 1..2, PartSpec::WHOLE);
    other_seed.config.run.seed = 8;
    let err = format!("{:#}", run(&other_seed, &mut NoProgress).expect_err("seed"));
    assert!(err.contains("run_seed"), "{err}");
    let mut other_weights = job(dir.path(), 0..1, PartSpec::WHOLE);
    other_weights.teacher_weights = fixture().weights(1);
    let err = format!(
        "{:#}",
        run(&other_weights, &mut NoProgress).expect_err("weights")
    );
    assert!(err.contains("teacher_weights_hash"), "{err}");
    let mut other_k = job(dir.path(), 0..1, PartSpec::WHOLE);
    other_k.top_k = 2;
    let err = format!("{:#}", run(&other_k, &mut NoProgress).expect_err("k"));
    assert!(err.contains("top_k"), "{err}");
}

/// Records every micro-batch's loss.
struct LossLog(Vec<f64>);

impl trainer::train::TrainProgress for LossLog {
    fn batch(&mut self, _images: usize, loss: f64, _lr: f64) {
        self.0.push(loss);
    }
}

/// Trains a small distilled student for 2 epochs with the teacher online (`targets` None)
/// or from the cache in `targets`; returns the per-batch losses and the final weights.
fn train_student(
    kind: DistillationType,
    targets: Option<&Path>,
) -> (Vec<f64>, BTreeMap<String, Vec<f32>>) {
    let f = fixture();
    let mut c = config(7);
    c.model = ModelConfig {
        name: "deit".into(),
        patch_size: Some(8),
        embed_dim: Some(48),
        depth: Some(2),
        num_heads: Some(3),
        mlp_ratio: Some(2),
        distilled: Some(true),
        drop_path: 0.1,
        ..ModelConfig::default()
    };
    c.data.batch_size = 4;
    c.optim.lr = 1e-3;
    c.optim.unscale_lr = true;
    c.schedule.epochs = 2;
    c.schedule.warmup_epochs = 0;
    c.distillation.kind = kind;
    c.distillation.tau = 2.0;
    match targets {
        Some(dir) => c.distillation.teacher_targets = Some(dir.to_path_buf()),
        None => {
            c.distillation.teacher = Some(f.weights(0));
            c.distillation.teacher_arch = Some(ARCH.into());
        }
    }
    c.validate().expect("valid student config");
    let run_dir = tempfile::tempdir().expect("run dir");
    let mut log = LossLog(Vec::new());
    let summary = train(
        &TrainJob::new(c, &f.data(), run_dir.path(), false),
        &mut log,
    )
    .expect("student training");
    let weights = summary
        .last_checkpoint
        .expect("a checkpoint")
        .join(MODEL_FILE);
    let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .expect("weights")
        .into_iter()
        .map(|(k, t)| {
            let v = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .expect("f32 values");
            (k, v)
        })
        .collect();
    (log.0, tensors)
}

fn max_weight_diff(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(k, x)| x.iter().zip(&b[k]).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

/// The product's promise: a student trained from the cache equals one trained with the
/// same teacher online. Hard distillation stores the teacher's argmax, so every loss and
/// every weight is bit-identical. Soft distillation (K = C here, so no tail) rebuilds the
/// distribution from logits stored as f16: the losses agree to f16 rounding of the
/// teacher's logits (relative 1e-3), not bit for bit.
#[test]
fn training_from_the_cache_equals_the_online_teacher() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let mut j = job(cache_dir.path(), 0..2, PartSpec::WHOLE);
    j.top_k = 4;
    run(&j, &mut NoProgress).expect("cache with K = C");

    let (online, w_online) = train_student(DistillationType::Hard, None);
    let (cached, w_cached) = train_student(DistillationType::Hard, Some(cache_dir.path()));
    assert_eq!(online.len(), 10, "2 epochs of 20 views in batches of 4");
    assert_eq!(online, cached, "hard: per-batch losses");
    assert_eq!(max_weight_diff(&w_online, &w_cached), 0.0, "hard: weights");

    let (online, w_online) = train_student(DistillationType::Soft, None);
    let (cached, w_cached) = train_student(DistillationType::Soft, Some(cache_dir.path()));
    assert_eq!(online.len(), cached.len());
    for (step, (a, b)) in online.iter().zip(&cached).enumerate() {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "soft: batch {step} loss online {a} vs cache {b}"
        );
    }
    let d = max_weight_diff(&w_online, &w_cached);
    assert!(d < 1e-2, "soft: weights differ by {d}");
    // The hard and soft students differ: the distillation kind reaches the loss.
    let (hard, _) = train_student(DistillationType::Hard, Some(cache_dir.path()));
    assert_ne!(hard, cached);
}
