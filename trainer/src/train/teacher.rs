//! Where the distillation head's targets come from: nothing, a teacher model run online
//! on the student's exact input (after Mixup/CutMix and erasing), or a teacher cache
//! read through `formats::cache_schema` and checked view by view.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use formats::cache_schema::{CacheBinding, CachedTarget, EpochReader, TeacherCache};
use pipeline::config::{AugmentConfig, PlanConfig, AUGMENT_ALGO_VERSION};
use pipeline::loader::Batch;
use std::path::Path;

use super::config::{DistillConfig, DistillationType};
use crate::loss::TopKTeacher;
use crate::models::{Classifier, ForwardCtx, ModelSpec};
use crate::weights::{build_model, LoadOptions};

/// Version string of the plan/view algorithms a cache is bound to (augmentation
/// algorithms + seed scheme): another value means other views from the same seeds.
pub fn pipeline_version() -> String {
    format!("{AUGMENT_ALGO_VERSION}+{}", pipeline::rng::SEED_SCHEME)
}

/// The binding fields a trainer computes from its own data and config. Teacher fields
/// (`teacher_arch`, `teacher_weights_hash`, `top_k`) are left empty/zero: the cache
/// supplies them (and `--teacher-arch`, when given, must agree).
pub fn data_binding(
    dataset_fingerprint: &str,
    augment: &AugmentConfig,
    run_seed: u64,
    plan: &PlanConfig,
    num_classes: usize,
) -> CacheBinding {
    CacheBinding {
        format_version: formats::cache_schema::CACHE_FORMAT_VERSION,
        dataset_fingerprint: dataset_fingerprint.to_string(),
        augment_config_json: augment.canonical_json(),
        augment_config_hash: augment.hash_hex(),
        run_seed,
        repeats: plan.repeats,
        teacher_arch: String::new(),
        teacher_weights_hash: String::new(),
        top_k: 0,
        num_classes: num_classes as u32,
        pipeline_version: pipeline_version(),
    }
}

/// Teacher targets of one batch, in the form the loss takes.
pub enum BatchTeacher {
    /// Full logits of an online teacher, (B, C).
    Logits(Tensor),
    /// Hard labels (B,) u32 from a cache.
    Labels(Tensor),
    /// Cached top-K logits + LSE.
    TopK(TopKTeacher),
}

impl BatchTeacher {
    /// The view the loss consumes.
    pub fn as_loss_teacher(&self) -> crate::loss::Teacher<'_> {
        match self {
            BatchTeacher::Logits(t) => crate::loss::Teacher::Logits(t),
            BatchTeacher::Labels(t) => crate::loss::Teacher::Labels(t),
            BatchTeacher::TopK(t) => crate::loss::Teacher::TopK(t),
        }
    }
}

/// A teacher cache being read, epoch by epoch.
pub struct CacheState {
    cache: TeacherCache,
    reader: Option<EpochReader>,
    next: Option<CachedTarget>,
    drift: u64,
}

/// The source of teacher targets for a run.
pub enum TeacherSource {
    /// No distillation.
    None,
    /// A teacher model evaluated on every training batch.
    Online(Box<dyn Classifier>),
    /// A teacher cache.
    Cache(Box<CacheState>),
}

impl TeacherSource {
    /// Opens the teacher the config names. `binding` is [`data_binding`] of the run;
    /// `epochs` the range of epochs still to train (the cache must hold all of them).
    pub fn open(
        cfg: &DistillConfig,
        binding: &CacheBinding,
        epochs: std::ops::Range<u32>,
        img_size: usize,
        device: &Device,
    ) -> Result<TeacherSource> {
        if cfg.kind == DistillationType::None {
            return Ok(TeacherSource::None);
        }
        if let Some(dir) = &cfg.teacher_targets {
            return open_cache(dir, cfg, binding, epochs)
                .map(|s| TeacherSource::Cache(Box::new(s)));
        }
        let Some(given) = &cfg.teacher else {
            bail!("distillation needs --teacher-targets CACHE or --teacher WEIGHTS [--teacher-arch ARCH]");
        };
        let weights = &super::checkpoint::resolve_weights(given, false)
            .with_context(|| format!("--teacher {}", given.display()))?;
        let arch = &match &cfg.teacher_arch {
            Some(arch) => arch.clone(),
            None => super::checkpoint::model_name_of_run(weights)?,
        };
        let spec = ModelSpec::parse(arch)
            .with_context(|| format!("--teacher-arch {arch}"))?
            .with_num_classes(binding.num_classes as usize)
            .with_img_size(img_size)?;
        let (_varmap, model, _) =
            build_model(&spec, Some(weights), &LoadOptions::default(), device, 0)
                .with_context(|| format!("loading the teacher {}", weights.display()))?;
        Ok(TeacherSource::Online(model))
    }

    /// Position the source at the start of `epoch` (a cache opens that epoch's rows).
    pub fn start_epoch(&mut self, epoch: usize, plan_len: usize) -> Result<()> {
        if let TeacherSource::Cache(s) = self {
            let reader = s.cache.epoch_reader(epoch as u32)?;
            if reader.epoch_slots() as usize != plan_len {
                bail!(
                    "teacher cache {}: epoch {epoch} has {} slots, this run's plan has {plan_len} \
                     (plan.num_samples_multiple or the dataset differ)",
                    s.cache.dir().display(),
                    reader.epoch_slots()
                );
            }
            s.reader = Some(reader);
            s.next = None;
        }
        Ok(())
    }

    /// Teacher targets for `batch`, whose images are `images` (the student's exact input).
    pub fn targets(
        &mut self,
        kind: DistillationType,
        batch: &Batch,
        images: &Tensor,
        allow_drift: bool,
    ) -> Result<Option<BatchTeacher>> {
        match self {
            TeacherSource::None => Ok(None),
            TeacherSource::Online(model) => {
                let out = model
                    .forward(images, &ForwardCtx::eval())
                    .context("teacher forward pass")?;
                Ok(Some(BatchTeacher::Logits(out.cls.detach())))
            }
            TeacherSource::Cache(s) => {
                let rows = s.rows_for(batch, allow_drift)?;
                let device = images.device();
                match kind {
                    DistillationType::Hard => {
                        let labels: Vec<u32> = rows.iter().map(|r| r.hard_label).collect();
                        let n = labels.len();
                        Ok(Some(BatchTeacher::Labels(Tensor::from_vec(
                            labels, n, device,
                        )?)))
                    }
                    _ => {
                        let k = rows.first().map_or(0, |r| r.topk_ids.len());
                        let mut ids = Vec::with_capacity(rows.len() * k);
                        let mut logits = Vec::with_capacity(rows.len() * k);
                        let mut lse = Vec::with_capacity(rows.len());
                        for r in &rows {
                            if r.topk_ids.len() != k {
                                bail!(
                                    "teacher cache epoch {} slot {}: {} top-K entries, expected {k}",
                                    r.epoch,
                                    r.slot,
                                    r.topk_ids.len()
                                );
                            }
                            ids.extend_from_slice(&r.topk_ids);
                            logits.extend_from_slice(&r.topk_logits);
                            lse.push(r.lse);
                        }
                        Ok(Some(BatchTeacher::TopK(TopKTeacher::new(
                            rows.len(),
                            k,
                            ids,
                            logits,
                            lse,
                        )?)))
                    }
                }
            }
        }
    }

    /// The cached rows of `batch`'s slots, checked against the batch's samples and view
    /// hashes exactly as [`TeacherSource::targets`] checks them (`None` without a cache).
    /// The Python package's loader reads its teacher targets here.
    pub fn cached_rows(
        &mut self,
        batch: &Batch,
        allow_drift: bool,
    ) -> Result<Option<Vec<CachedTarget>>> {
        match self {
            TeacherSource::Cache(s) => s.rows_for(batch, allow_drift).map(Some),
            _ => Ok(None),
        }
    }

    /// Views whose cached hash differed from the rebuilt view (with `--allow-replay-drift`).
    pub fn drift_count(&self) -> u64 {
        match self {
            TeacherSource::Cache(s) => s.drift,
            _ => 0,
        }
    }
}

fn open_cache(
    dir: &Path,
    cfg: &DistillConfig,
    binding: &CacheBinding,
    epochs: std::ops::Range<u32>,
) -> Result<CacheState> {
    // The teacher fields come from the cache itself (the same in every file); everything
    // else must be ours.
    let cache = TeacherCache::open_for_run(dir, binding, cfg.teacher_arch.as_deref())
        .with_context(|| {
            format!(
                "teacher cache {} does not belong to this run's data/config",
                dir.display()
            )
        })?;
    cache
        .require_epochs(epochs)
        .with_context(|| format!("teacher cache {}", dir.display()))?;
    Ok(CacheState {
        cache,
        reader: None,
        next: None,
        drift: 0,
    })
}

/// File in a run directory that records the teacher the run distils from.
pub const TEACHER_FILE: &str = "teacher.json";

/// The teacher a run distils from, as its teacher cache names it (recorded in the run
/// directory's [`TEACHER_FILE`] so that `--resume` refuses a cache of another teacher).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TeacherIdentity {
    /// Architecture name (`teacher_arch` of the cache binding).
    pub teacher_arch: String,
    /// BLAKE3 of the teacher weights file (`teacher_weights_hash`).
    pub teacher_weights_hash: String,
    /// Classes kept per view.
    pub top_k: u32,
    /// The cache directory it was read from (informative, not compared).
    pub cache: String,
}

impl std::fmt::Display for TeacherIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (weights BLAKE3 {}, top-{}) from the cache {}",
            self.teacher_arch, self.teacher_weights_hash, self.top_k, self.cache
        )
    }
}

impl TeacherSource {
    /// The identity of a cached teacher (`None` for an online teacher or none).
    pub fn identity(&self) -> Option<TeacherIdentity> {
        match self {
            TeacherSource::Cache(s) => {
                let b = s.cache.binding();
                Some(TeacherIdentity {
                    teacher_arch: b.teacher_arch.clone(),
                    teacher_weights_hash: b.teacher_weights_hash.clone(),
                    top_k: b.top_k,
                    cache: s.cache.dir().display().to_string(),
                })
            }
            _ => None,
        }
    }
}

/// Records the run's cached teacher in `run_dir/teacher.json`, or, when `resuming` a run
/// that recorded one, refuses a different teacher (architecture, weights hash or K),
/// naming both. A run without a cached teacher removes a stale record of a fresh start.
pub fn check_teacher_identity(
    run_dir: &Path,
    identity: Option<&TeacherIdentity>,
    resuming: bool,
) -> Result<()> {
    let path = run_dir.join(TEACHER_FILE);
    let Some(now) = identity else {
        if !resuming && path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
        }
        return Ok(());
    };
    if resuming && path.exists() {
        let text = formats::open::read_text(&path, formats::open::RUN_RECORD)
            .with_context(|| format!("reading {}", path.display()))?;
        let was: TeacherIdentity = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a teacher record", path.display()))?;
        if (&was.teacher_arch, &was.teacher_weights_hash, was.top_k)
            != (&now.teacher_arch, &now.teacher_weights_hash, now.top_k)
        {
            bail!(
                "--resume: this run was trained with the teacher {was} (recorded in {}), but the \
                 teacher cache now holds targets of the teacher {now}; resume with the run's \
                 cache, or start a new run with --out",
                path.display()
            );
        }
        return Ok(());
    }
    let json = serde_json::to_string_pretty(now).context("teacher record")?;
    super::checkpoint::write_atomic(&path, json.as_bytes())
}

/// Every rank distils from rank 0's teacher. Rank 0 checks the run's record
/// ([`check_teacher_identity`]: written on a fresh start, compared on `--resume`) and
/// sends the identity of its cache to the other ranks, which compare their own cache's
/// with it: their `--out` may not hold the record (node-local disks), and their
/// `--teacher-targets` is their own copy. Any rank's failure stops every rank.
pub fn agree_on_teacher(
    comm: &dyn crate::dist::Collective,
    run_dir: &Path,
    identity: Option<&TeacherIdentity>,
    resuming: bool,
) -> Result<()> {
    let primary = comm.is_primary();
    let local = match primary {
        true => check_teacher_identity(run_dir, identity, resuming),
        false => Ok(()),
    };
    crate::dist::agree_ok(comm, local, "the check of the run's teacher record")?;
    if comm.world() <= 1 {
        return Ok(());
    }
    let mut bytes = match primary {
        true => serde_json::to_vec(&identity).context("rank 0's teacher record")?,
        false => Vec::new(),
    };
    comm.broadcast_bytes(&mut bytes)
        .context("receiving rank 0's teacher")?;
    let local = match primary {
        true => Ok(()),
        false => same_teacher_as_rank_zero(comm.rank(), &bytes, identity),
    };
    crate::dist::agree_ok(comm, local, "to distil from rank 0's teacher")
}

fn same_teacher_as_rank_zero(
    rank: usize,
    rank_zero: &[u8],
    mine: Option<&TeacherIdentity>,
) -> Result<()> {
    let theirs: Option<TeacherIdentity> =
        serde_json::from_slice(rank_zero).context("rank 0's teacher is not a teacher record")?;
    let key = |t: &TeacherIdentity| {
        (
            t.teacher_arch.clone(),
            t.teacher_weights_hash.clone(),
            t.top_k,
        )
    };
    match (theirs, mine) {
        (None, None) => Ok(()),
        (Some(t), Some(m)) if key(&t) == key(m) => Ok(()),
        (Some(t), Some(m)) => bail!(
            "rank {rank}: the teacher cache here holds targets of the teacher {m}, but rank 0's \
             holds the teacher {t}; every machine needs a copy of the same cache (the --out \
             of one teacher-cache job) at --teacher-targets"
        ),
        (t, m) => bail!(
            "rank {rank}: {} here but {} on rank 0",
            m.map_or("no teacher cache".to_string(), |m| format!(
                "the teacher {m}"
            )),
            t.map_or("no teacher cache".to_string(), |t| format!(
                "the teacher {t}"
            ))
        ),
    }
}

impl CacheState {
    /// The cached rows of the batch's slots, checked against the views built here.
    fn rows_for(&mut self, batch: &Batch, allow_drift: bool) -> Result<Vec<CachedTarget>> {
        let reader = self
            .reader
            .as_mut()
            .context("teacher cache read before its epoch was started")?;
        let mut out = Vec::with_capacity(batch.len());
        for i in 0..batch.len() {
            let slot = batch.slots[i];
            let row = loop {
                let row = match self.next.take() {
                    Some(r) => r,
                    None => match reader.next() {
                        Some(r) => r.with_context(|| {
                            format!("reading teacher cache epoch {}", batch.epoch)
                        })?,
                        None => bail!(
                            "teacher cache epoch {} ends before slot {slot}",
                            batch.epoch
                        ),
                    },
                };
                if row.slot < slot {
                    continue;
                }
                if row.slot > slot {
                    bail!(
                        "teacher cache epoch {}: slot {slot} requested after slot {} (slots must \
                         come in order)",
                        batch.epoch,
                        row.slot
                    );
                }
                break row;
            };
            // Every key value against what this run's plan replays for the slot: the
            // sample, the partner slot and the pair's mixing weight.
            let origin = || match reader.last_row_origin() {
                Some((path, r)) => format!(" ({} row {r})", path.display()),
                None => String::new(),
            };
            if row.sample != batch.samples[i] {
                bail!(
                    "teacher cache epoch {} slot {slot}{}: cached sample {} but this run's plan \
                     shows sample {} (different plan)",
                    batch.epoch,
                    origin(),
                    row.sample,
                    batch.samples[i]
                );
            }
            let partner = pipeline::plan::partner_slot(slot);
            if row.partner != partner {
                bail!(
                    "teacher cache epoch {} slot {slot}{}: cached partner {} but this run's plan \
                     pairs the slot with {partner}; refusing the cache",
                    batch.epoch,
                    origin(),
                    row.partner
                );
            }
            // Both sides draw lam from the same seed with the same code; 1e-6 allows a
            // last-bit difference of another platform's libm.
            if (row.lam - batch.lam[i]).abs() > 1e-6 || !row.lam.is_finite() {
                bail!(
                    "teacher cache epoch {} slot {slot}{}: cached lam {} but this run's plan \
                     draws lam {} for the slot's pair; refusing the cache",
                    batch.epoch,
                    origin(),
                    row.lam,
                    batch.lam[i]
                );
            }
            if row.view_hash != batch.view_hash[i] {
                if !allow_drift {
                    bail!(
                        "teacher cache epoch {} slot {slot} (sample {}): cached view hash {:016x} \
                         differs from the rebuilt view {:016x} (replay drift; \
                         --allow-replay-drift counts such views and continues)",
                        batch.epoch,
                        row.sample,
                        row.view_hash,
                        batch.view_hash[i]
                    );
                }
                self.drift += 1;
            }
            out.push(row);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    fn id(hash: &str) -> TeacherIdentity {
        TeacherIdentity {
            teacher_arch: "resnet_tiny".into(),
            teacher_weights_hash: hash.into(),
            top_k: 4,
            cache: "/c".into(),
        }
    }

    #[test]
    fn other_ranks_compare_their_cache_with_rank_zeros() {
        let zero = serde_json::to_vec(&Some(id("aaaa"))).unwrap();
        let mut elsewhere = id("aaaa");
        elsewhere.cache = "/node-local/c".into();
        same_teacher_as_rank_zero(1, &zero, Some(&elsewhere)).expect("same teacher");
        let e = same_teacher_as_rank_zero(1, &zero, Some(&id("bbbb")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("rank 1: the teacher cache here holds targets of the teacher resnet_tiny (weights BLAKE3 bbbb")
                && e.contains("rank 0's holds the teacher resnet_tiny (weights BLAKE3 aaaa"),
            "{e}"
        );
        let e = same_teacher_as_rank_zero(1, &zero, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no teacher cache here but the teacher"), "{e}");
        let none = serde_json::to_vec(&None::<TeacherIdentity>).unwrap();
        same_teacher_as_rank_zero(1, &none, None).expect("no teacher anywhere");
    }

    #[test]
    fn resume_refuses_another_teacher_naming_both() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path();
        check_teacher_identity(run, Some(&id("aaaa")), false).expect("fresh run records");
        assert!(run.join(TEACHER_FILE).is_file());
        // The same teacher resumes; another cache path with the same teacher too.
        check_teacher_identity(run, Some(&id("aaaa")), true).expect("same teacher");
        let mut moved = id("aaaa");
        moved.cache = "/elsewhere".into();
        check_teacher_identity(run, Some(&moved), true).expect("same teacher, other path");
        // Another weights hash, architecture or K is refused, naming both teachers.
        let msg = format!(
            "{:#}",
            check_teacher_identity(run, Some(&id("bbbb")), true).expect_err("other teacher")
        );
        assert!(msg.contains("aaaa") && msg.contains("bbbb"), "{msg}");
        assert!(msg.contains(TEACHER_FILE), "{msg}");
        let mut arch = id("aaaa");
        arch.teacher_arch = "regnety_160".into();
        assert!(check_teacher_identity(run, Some(&arch), true).is_err());
        let mut k = id("aaaa");
        k.top_k = 5;
        assert!(check_teacher_identity(run, Some(&k), true).is_err());
        // The record is unchanged by refused resumes.
        let text = std::fs::read_to_string(run.join(TEACHER_FILE)).expect("record");
        assert!(text.contains("aaaa"), "{text}");
        // A fresh run without a cached teacher drops a stale record.
        check_teacher_identity(run, None, false).expect("no teacher");
        assert!(!run.join(TEACHER_FILE).exists());
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;
    use formats::cache_schema::{testing, CacheRow, FileHeader, PartSpec, ViewKey};

    /// A sealed one-file cache of 4 slots whose keys are `keys(slot)`.
    fn cache(dir: &Path, keys: impl Fn(u32) -> ViewKey) -> std::path::PathBuf {
        let mut b = data_binding(
            "blake3:d",
            &AugmentConfig::default(),
            7,
            &PlanConfig::default(),
            3,
        );
        b.teacher_arch = "resnet_tiny".into();
        b.teacher_weights_hash = "blake3:t".into();
        b.top_k = 2;
        let header = FileHeader {
            binding: b,
            epoch: 0,
            part: PartSpec::WHOLE,
            epoch_slots: 4,
            dataset_len: 10,
        };
        let rows: Vec<CacheRow> = (0..4)
            .map(|s| CacheRow::from_logits(keys(s), &[1.0, 0.5, s as f32], 2).unwrap())
            .collect();
        testing::write_unchecked(dir, header, &rows).unwrap()
    }

    /// The plan's answer for 4 slots: samples 3, 1, 4, 1 and pair lams 1.0 and 0.25.
    fn batch() -> Batch {
        Batch {
            epoch: 0,
            index: 0,
            size: 1,
            images: vec![0.0; 12],
            slots: vec![0, 1, 2, 3],
            samples: vec![3, 1, 4, 1],
            label_a: vec![0; 4],
            label_b: vec![0; 4],
            lam: vec![1.0, 1.0, 0.25, 0.25],
            view_hash: vec![10, 11, 12, 13],
        }
    }

    fn plan_key(s: u32) -> ViewKey {
        let b = batch();
        ViewKey {
            epoch: 0,
            slot: s,
            sample: b.samples[s as usize],
            partner: s ^ 1,
            lam: b.lam[s as usize],
            view_hash: b.view_hash[s as usize],
        }
    }

    fn rows_of(dir: &Path) -> Result<Vec<CachedTarget>> {
        let mut src = TeacherSource::Cache(Box::new(CacheState {
            cache: TeacherCache::open_for_inspect(dir)?,
            reader: None,
            next: None,
            drift: 0,
        }));
        src.start_epoch(0, 4)?;
        Ok(src.cached_rows(&batch(), false)?.unwrap_or_default())
    }

    /// Issue 25: a sealed cache whose `lam` or `partner` differs from the epoch plan was
    /// trained on; it is refused naming epoch, slot, file and row.
    #[test]
    fn lam_and_partner_are_replayed_from_the_plan() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("ok");
        cache(&ok, plan_key);
        assert_eq!(rows_of(&ok).unwrap().len(), 4);
        for (name, forge, what) in [
            (
                "lam",
                (|s| ViewKey {
                    lam: if s == 2 { 0.75 } else { plan_key(s).lam },
                    ..plan_key(s)
                }) as fn(u32) -> ViewKey,
                "cached lam 0.75",
            ),
            (
                "partner",
                |s| ViewKey {
                    partner: if s == 3 { 0 } else { s ^ 1 },
                    ..plan_key(s)
                },
                "cached partner 0",
            ),
            (
                "sample",
                |s| ViewKey {
                    sample: if s == 1 { 9 } else { plan_key(s).sample },
                    ..plan_key(s)
                },
                "cached sample 9",
            ),
        ] {
            let dir = tmp.path().join(name);
            let file = cache(&dir, forge);
            let e = format!("{:#}", rows_of(&dir).unwrap_err());
            let row = match name {
                "lam" => 2,
                "partner" => 3,
                _ => 1,
            };
            assert!(
                e.contains(what)
                    && e.contains(&format!("slot {row}"))
                    && e.contains(&format!("{} row {row}", file.display())),
                "{name}: {e}"
            );
        }
    }
}
