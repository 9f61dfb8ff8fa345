//! The teacher-cache job end to end on a tiny data set (4 classes x 5 images, 40 px
//! records, 32 px views with DeiT's augmentation and Mixup/CutMix) and a random-init
//! `deit_tiny_patch8_32` teacher: rows match the pipeline's views and the teacher's
//! argmax, parts merge into the full run, resume skips finished files and redoes partial
//! ones, and a directory of another binding is refused.

use cache::run::{binding_of, open_data, run, CacheJob, NoProgress};
use candle_core::{DType, Device, Tensor};
use formats::cache_schema::{file_name, CachedTarget, PartSpec, TeacherCache, PARTIAL_SUFFIX};
use formats::shard::Encoding;
use pipeline::config::{AugmentConfig, CropMode};
use pipeline::ingest::inputs::scan_root;
use pipeline::ingest::job::{shard_split, JobConfig};
use pipeline::ingest::process::IngestOptions;
use pipeline::ingest::synth::{write_dataset, SynthConfig};
use pipeline::plan::EpochPlan;
use pipeline::source::RecordSource;
use pipeline::view::{build_slot_view, ViewBuilder};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use trainer::models::{ForwardCtx, ModelSpec};
use trainer::train::config::TrainConfig;
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
        let folder = dir.path().join("folder");
        let synth = SynthConfig {
            classes: 4,
            train_per_class: 5,
            val_per_class: 1,
            seed: 3,
        };
        write_dataset(&folder, &synth, &|| {}).expect("synth data");
        let job = JobConfig {
            ingest: IngestOptions {
                format: Encoding::RawRgbZstd,
                max_side: 40,
                ..IngestOptions::default()
            },
            shard_bytes: 1 << 26,
            seed: 0,
            threads: 2,
            input_kind: "imagefolder".into(),
            abort_after: None,
        };
        for split in scan_root(&folder).expect("scan") {
            let out = dir.path().join("shards").join(&split.name);
            shard_split(&split, &out, &job, &mut |_, _| {}).expect("shard");
        }
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
    let (_, teacher, _) = build_model(
        &teacher_spec(),
        Some(&j.teacher_weights),
        &LoadOptions::default(),
        &Device::Cpu,
        0,
    )
    .expect("teacher");
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
