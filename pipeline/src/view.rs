//! The view of a slot: the final normalized, erased, mixed f32 CHW tensor, bit-identical
//! on every run and thread count, and its 64-bit hash.
//!
//! Per sample (each stage on its own ChaCha stream of the slot seed, see `crate::rng`):
//! train crop (RRC or RandomCrop+pad) → horizontal flip → RandAugment → normalize →
//! RandomErasing. Then the pair (2k, 2k+1) is mixed with the pair's parameters. The
//! teacher must see exactly this tensor.

use image::RgbImage;
#[cfg(not(target_endian = "little"))]
use xxhash_rust::xxh3::Xxh3;

use crate::config::AugmentConfig;
use crate::error::PipelineError;
use crate::plan::EpochPlan;
use crate::rng::{stage_rng, unit_f64, Stage};
use crate::source::{RecordInfo, RecordSource};
use crate::transforms::crop::{
    apply_train_crop_region, hflip, train_crop_params, CropRect, TrainCrop,
};
use crate::transforms::erase::erase;
use crate::transforms::eval::EvalTransform;
use crate::transforms::mix::{apply_pair_mix, PairMix};
use crate::transforms::normalize::Normalizer;
use crate::transforms::randaugment_hook::RandAugment;

/// XXH3-64 of the little-endian bytes of a view.
pub fn view_hash(view: &[f32]) -> u64 {
    #[cfg(target_endian = "little")]
    {
        // SAFETY: any initialized f32 slice is a valid byte slice of 4x the length
        // (u8 has alignment 1 and no invalid values); on little-endian targets these
        // are exactly the little-endian bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(view.as_ptr().cast::<u8>(), std::mem::size_of_val(view))
        };
        xxhash_rust::xxh3::xxh3_64(bytes)
    }
    #[cfg(not(target_endian = "little"))]
    {
        let mut h = Xxh3::new();
        let mut buf = [0u8; 4096];
        for chunk in view.chunks(1024) {
            for (i, v) in chunk.iter().enumerate() {
                buf[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            h.update(&buf[..4 * chunk.len()]);
        }
        h.digest()
    }
}

/// Builds train views from a config. Cheap to share between threads.
#[derive(Clone, Debug)]
pub struct ViewBuilder {
    cfg: AugmentConfig,
    norm: Normalizer,
    ra: Option<RandAugment>,
    eval: EvalTransform,
}

/// Time spent in each stage of [`ViewBuilder::sample_view_timed`], in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// Crop and resize.
    pub crop_resize: u64,
    /// Flip and RandAugment.
    pub randaugment: u64,
    /// Normalize and erase (mixing is timed by the caller).
    pub normalize_erase: u64,
}

impl ViewBuilder {
    /// Validates the config and prepares tables and the RandAugment policy.
    pub fn new(cfg: &AugmentConfig) -> Result<Self, PipelineError> {
        cfg.validate()?;
        if cfg.mix.mode == crate::config::MixupMode::Batch && cfg.mix.batch_size == 0 {
            return Err(crate::error::ConfigError::Invalid(
                "mix.mode = \"batch\" needs mix.batch_size, the images that share one lam \
                 (a training config sets it to data.batch_size)"
                    .into(),
            )
            .into());
        }
        let ra = match cfg.rand_augment() {
            Some(spec) => Some(RandAugment::parse(spec).map_err(|e| {
                crate::error::ConfigError::Invalid(format!("auto_augment = '{spec}': {e}"))
            })?),
            None => None,
        };
        Ok(ViewBuilder {
            cfg: cfg.clone(),
            norm: Normalizer::new(cfg.mean, cfg.std),
            ra,
            eval: EvalTransform::from_config(cfg),
        })
    }

    /// The same builder with another eval transform (crop fraction and filter; its size
    /// must be the config's input size, the side of every view).
    pub fn with_eval_transform(mut self, eval: EvalTransform) -> Result<Self, PipelineError> {
        eval.validate()?;
        if eval.size != self.cfg.input_size {
            return Err(PipelineError::Resize(format!(
                "eval size {} differs from the input size {}",
                eval.size, self.cfg.input_size
            )));
        }
        self.eval = eval;
        Ok(self)
    }

    /// The eval transform (by default [`EvalTransform::from_config`] of the config).
    pub fn eval_transform(&self) -> &EvalTransform {
        &self.eval
    }

    /// The configuration.
    pub fn config(&self) -> &AugmentConfig {
        &self.cfg
    }

    /// The normalizer (shared with the eval transform).
    pub fn normalizer(&self) -> &Normalizer {
        &self.norm
    }

    /// Side of the views.
    pub fn size(&self) -> u32 {
        self.cfg.input_size
    }

    /// Floats in one view (3 * size * size).
    pub fn view_len(&self) -> usize {
        3 * (self.cfg.input_size as usize).pow(2)
    }

    /// The training crop a slot seed draws for a `width` x `height` image. Known before
    /// decoding, so a decoder can decode only the region (and scale) it needs.
    pub fn crop_for(&self, seed: u64, width: u32, height: u32) -> Result<TrainCrop, PipelineError> {
        let mut rng = stage_rng(seed, Stage::Crop);
        train_crop_params(&self.cfg.crop, self.cfg.input_size, width, height, &mut rng)
    }

    /// The un-mixed view of one sample (crop, flip, RandAugment, normalize, erase) into
    /// `out` (length [`Self::view_len`]).
    pub fn sample_view(
        &self,
        img: &RgbImage,
        seed: u64,
        out: &mut [f32],
    ) -> Result<(), PipelineError> {
        self.sample_view_timed(img, seed, out, &mut StageTimes::default(), false)
    }

    /// The source pixels a drawn crop reads from a `width` x `height` image: decode only
    /// these and pass them to [`Self::sample_view_region`].
    pub fn crop_region(&self, crop: TrainCrop, width: u32, height: u32) -> CropRect {
        crop.source_region(width, height, self.cfg.input_size, self.cfg.crop.padding)
    }

    /// [`Self::sample_view`], adding each stage's time to `times` when `timed`.
    pub fn sample_view_timed(
        &self,
        img: &RgbImage,
        seed: u64,
        out: &mut [f32],
        times: &mut StageTimes,
        timed: bool,
    ) -> Result<(), PipelineError> {
        let crop = self.crop_for(seed, img.width(), img.height())?;
        let full = CropRect::whole(img.width(), img.height());
        self.sample_view_region(img, full, crop, seed, out, times, timed)
    }

    /// The un-mixed view of one sample from only the pixels of `region` (`img`), where
    /// `crop` = [`Self::crop_for`] the stored size and `region` = [`Self::crop_region`] (or
    /// any rectangle holding it). Bit-identical to [`Self::sample_view`] on the whole image.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_view_region(
        &self,
        img: &RgbImage,
        region: CropRect,
        crop: TrainCrop,
        seed: u64,
        out: &mut [f32],
        times: &mut StageTimes,
        timed: bool,
    ) -> Result<(), PipelineError> {
        if out.len() != self.view_len() {
            return Err(PipelineError::Loader(format!(
                "view buffer has {} floats, expected {}",
                out.len(),
                self.view_len()
            )));
        }
        let clock = |t: &mut u64, start: Option<std::time::Instant>| {
            if let Some(s) = start {
                *t += s.elapsed().as_nanos() as u64;
            }
        };
        let now = || timed.then(std::time::Instant::now);
        let size = self.cfg.input_size;
        let t0 = now();
        let mut v = apply_train_crop_region(
            img,
            region,
            crop,
            size,
            self.cfg.crop.padding,
            self.cfg.crop.interpolation,
        )?;
        clock(&mut times.crop_resize, t0);
        let t1 = now();
        let mut flip_rng = stage_rng(seed, Stage::Flip);
        if unit_f64(&mut flip_rng) < self.cfg.hflip {
            hflip(&mut v);
        }
        if let Some(ra) = &self.ra {
            let mut ra_rng = stage_rng(seed, Stage::RandAugment);
            v = ra.apply(v, &mut ra_rng);
        }
        clock(&mut times.randaugment, t1);
        let t2 = now();
        self.norm.to_chw(&v, out);
        crate::transforms::buffers::recycle(v);
        if self.cfg.erasing.prob > 0.0 {
            let mut erase_rng = stage_rng(seed, Stage::Erase);
            erase(out, size, size, &self.cfg.erasing, &mut erase_rng);
        }
        clock(&mut times.normalize_erase, t2);
        Ok(())
    }

    /// Mixes the two un-mixed views of a pair in place.
    pub fn mix(&self, a: &mut [f32], b: &mut [f32], mix: &PairMix) {
        let s = self.cfg.input_size;
        apply_pair_mix(a, b, s, s, mix);
    }
}

/// One finished view with its targets.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotView {
    /// Epoch.
    pub epoch: u64,
    /// Slot.
    pub slot: u32,
    /// Dataset index shown.
    pub sample: u32,
    /// The slot's own label.
    pub label_a: u32,
    /// The partner's label.
    pub label_b: u32,
    /// Weight of `label_a`.
    pub lam: f32,
    /// The view, 3 x size x size, normalized CHW.
    pub data: Vec<f32>,
    /// [`view_hash`] of `data`.
    pub hash: u64,
}

/// Builds both views of pair `pair` into `out_a`, `out_b` (slots 2k, 2k+1) and returns
/// their records' info and each view's lam (`[slot 2k, slot 2k+1]`; equal unless
/// `mix.mode = "elem"`).
pub fn build_pair_into(
    source: &dyn RecordSource,
    plan: &EpochPlan,
    builder: &ViewBuilder,
    pair: usize,
    out_a: &mut [f32],
    out_b: &mut [f32],
) -> Result<(RecordInfo, RecordInfo, [f32; 2]), PipelineError> {
    let (sa, sb) = (2 * pair, 2 * pair + 1);
    let (ia, ib) = (plan.sample(sa) as usize, plan.sample(sb) as usize);
    let info_a = source.info(ia)?;
    let info_b = source.info(ib)?;
    sample_view_from_source(source, builder, ia, info_a, plan.slot_seed(sa), out_a)?;
    sample_view_from_source(source, builder, ib, info_b, plan.slot_seed(sb), out_b)?;
    let mix = plan.pair_mix(pair, builder.config());
    builder.mix(out_a, out_b, &mix);
    Ok((info_a, info_b, mix.lams()))
}

/// The un-mixed view of record `index` for a slot seed: the crop is drawn from the stored
/// size in `info`, and only the region it reads is decoded
/// ([`RecordSource::decode_region_around`]). Same bits as decoding fully and calling
/// [`ViewBuilder::sample_view`].
pub fn sample_view_from_source(
    source: &dyn RecordSource,
    builder: &ViewBuilder,
    index: usize,
    info: RecordInfo,
    seed: u64,
    out: &mut [f32],
) -> Result<(), PipelineError> {
    let crop = builder.crop_for(seed, info.width, info.height)?;
    let region = builder.crop_region(crop, info.width, info.height);
    let (img, region) = source.decode_region_around(index, region)?;
    builder.sample_view_region(
        &img,
        region,
        crop,
        seed,
        out,
        &mut StageTimes::default(),
        false,
    )
}

/// Builds the exact view of one slot (both images of its pair are decoded, since the
/// view is mixed with the partner). What the teacher-cache job and tests replay.
pub fn build_slot_view(
    source: &dyn RecordSource,
    plan: &EpochPlan,
    builder: &ViewBuilder,
    slot: usize,
) -> Result<SlotView, PipelineError> {
    if slot >= plan.len() {
        return Err(PipelineError::Plan(format!(
            "slot {slot} out of range (epoch has {} slots)",
            plan.len()
        )));
    }
    let n = builder.view_len();
    let mut a = vec![0f32; n];
    let mut b = vec![0f32; n];
    let pair = slot / 2;
    let (info_a, info_b, lams) = build_pair_into(source, plan, builder, pair, &mut a, &mut b)?;
    let (data, own, other) = if slot.is_multiple_of(2) {
        (a, info_a, info_b)
    } else {
        (b, info_b, info_a)
    };
    let lam = lams[slot & 1];
    let hash = view_hash(&data);
    Ok(SlotView {
        epoch: plan.epoch(),
        slot: slot as u32,
        sample: plan.sample(slot),
        label_a: own.label,
        label_b: other.label,
        lam,
        data,
        hash,
    })
}
