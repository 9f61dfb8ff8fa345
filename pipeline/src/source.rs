//! Where the loader gets decoded images: [`RecordSource`], implemented for record shards
//! ([`ShardSource`]) and for images in memory ([`MemorySource`], for tests and tools).

use std::path::Path;

use image::RgbImage;

use crate::error::PipelineError;
use crate::transforms::crop::CropRect;

/// What the loader needs to know about a record before decoding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordInfo {
    /// Class index.
    pub label: u32,
    /// Stored (decoded) width.
    pub width: u32,
    /// Stored (decoded) height.
    pub height: u32,
}

/// A random-access set of labelled images.
pub trait RecordSource: Send + Sync {
    /// Number of records.
    fn len(&self) -> usize;
    /// Whether there are no records.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes.
    fn num_classes(&self) -> usize;
    /// Label and stored size of record `index`, without decoding.
    fn info(&self, index: usize) -> Result<RecordInfo, PipelineError>;
    /// Decodes record `index` to RGB. Errors name the shard and record.
    fn decode(&self, index: usize) -> Result<RgbImage, PipelineError>;
    /// Decodes only `rect` (stored pixels) of record `index`: exactly the pixels of
    /// [`Self::decode`] cropped to `rect`. The default decodes fully and crops; sources
    /// whose codec can do less work override it.
    fn decode_region(&self, index: usize, rect: CropRect) -> Result<RgbImage, PipelineError> {
        let img = self.decode(index)?;
        if !rect.fits_in(img.width(), img.height()) {
            return Err(PipelineError::Record {
                index,
                location: "region decode".into(),
                message: format!(
                    "region {rect:?} is not inside the {}x{} image",
                    img.width(),
                    img.height()
                ),
            });
        }
        Ok(
            image::imageops::crop_imm(&img, rect.left, rect.top, rect.width, rect.height)
                .to_image(),
        )
    }
    /// Decodes a rectangle of record `index` holding at least `rect` (stored pixels),
    /// returned with that rectangle: over `rect` the pixels of [`Self::decode`]; sources
    /// may add columns when that saves work (a copy), whose values callers must not read
    /// (they can differ from a full decode at the band's edge). The default is `rect`.
    fn decode_region_around(
        &self,
        index: usize,
        rect: CropRect,
    ) -> Result<(RgbImage, CropRect), PipelineError> {
        Ok((self.decode_region(index, rect)?, rect))
    }
}

/// Record shards of one split, read through `formats::shard`. Each record's CRC-32 is
/// checked the first time it is decoded through this source
/// ([`formats::shard::ShardSet::record_checked`]), so a damaged payload stops the run with
/// an error naming the shard file and record instead of feeding garbage pixels.
pub struct ShardSource {
    set: formats::shard::ShardSet,
    check_crc: bool,
}

impl ShardSource {
    /// Opens the shards of a split directory (refusing a manifest whose `split` is not the
    /// folder's name, see [`formats::shard::ShardSet::open_split`]).
    pub fn open(split_dir: &Path) -> Result<Self, PipelineError> {
        let set =
            formats::shard::ShardSet::open_split(split_dir).map_err(|e| PipelineError::Io {
                path: split_dir.display().to_string(),
                message: e.to_string(),
            })?;
        Ok(ShardSource::new(set))
    }

    /// Wraps an open shard set.
    pub fn new(set: formats::shard::ShardSet) -> Self {
        ShardSource {
            set,
            check_crc: true,
        }
    }

    /// This source without the first-read CRC check (only for measuring its cost:
    /// `deit-pipe bench loader --no-crc-check`).
    pub fn without_crc_check(mut self) -> Self {
        self.check_crc = false;
        self
    }

    /// Whether records are CRC-checked on their first read (see [`Self::without_crc_check`]).
    pub fn checks_crc(&self) -> bool {
        self.check_crc
    }

    /// The record to decode: CRC-checked on its first read unless turned off.
    fn payload(&self, index: usize) -> Result<formats::shard::RecordRef<'_>, PipelineError> {
        if self.check_crc {
            self.set.record_checked(index)
        } else {
            self.set.record(index)
        }
        .map_err(|e| self.record_error(index, e.to_string()))
    }

    /// The underlying shard set.
    pub fn shards(&self) -> &formats::shard::ShardSet {
        &self.set
    }

    fn record_error(&self, index: usize, message: String) -> PipelineError {
        PipelineError::Record {
            index,
            location: format!("shards in {}", self.set.dir().display()),
            message,
        }
    }
}

impl RecordSource for ShardSource {
    fn len(&self) -> usize {
        self.set.len()
    }
    fn num_classes(&self) -> usize {
        self.set.num_classes()
    }
    fn info(&self, index: usize) -> Result<RecordInfo, PipelineError> {
        let r = self
            .set
            .record(index)
            .map_err(|e| self.record_error(index, e.to_string()))?;
        Ok(RecordInfo {
            label: r.label,
            width: r.width,
            height: r.height,
        })
    }
    fn decode(&self, index: usize) -> Result<RgbImage, PipelineError> {
        let r = self.payload(index)?;
        crate::ingest::decode_record(&r).map_err(|e| self.record_error(index, e.to_string()))
    }
    fn decode_region(&self, index: usize, rect: CropRect) -> Result<RgbImage, PipelineError> {
        let r = self.payload(index)?;
        crate::ingest::decode_record_region(&r, rect)
            .map_err(|e| self.record_error(index, e.to_string()))
    }
    fn decode_region_around(
        &self,
        index: usize,
        rect: CropRect,
    ) -> Result<(RgbImage, CropRect), PipelineError> {
        let r = self.payload(index)?;
        crate::ingest::decode_record_region_around(&r, rect)
            .map_err(|e| self.record_error(index, e.to_string()))
    }
}

/// Labelled images held in memory. Records listed in `bad` fail to decode (for tests).
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    images: Vec<(u32, RgbImage)>,
    num_classes: usize,
    bad: Vec<usize>,
}

impl MemorySource {
    /// A source over `(label, image)` pairs.
    pub fn new(images: Vec<(u32, RgbImage)>, num_classes: usize) -> Self {
        MemorySource {
            images,
            num_classes,
            bad: Vec::new(),
        }
    }

    /// Makes record `index` fail to decode, as a corrupt record would.
    pub fn with_bad_record(mut self, index: usize) -> Self {
        self.bad.push(index);
        self
    }

    fn get(&self, index: usize) -> Result<&(u32, RgbImage), PipelineError> {
        self.images.get(index).ok_or_else(|| PipelineError::Record {
            index,
            location: "memory".into(),
            message: format!("index out of range (len {})", self.images.len()),
        })
    }
}

impl RecordSource for MemorySource {
    fn len(&self) -> usize {
        self.images.len()
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn info(&self, index: usize) -> Result<RecordInfo, PipelineError> {
        let (label, img) = self.get(index)?;
        Ok(RecordInfo {
            label: *label,
            width: img.width(),
            height: img.height(),
        })
    }
    fn decode(&self, index: usize) -> Result<RgbImage, PipelineError> {
        if self.bad.contains(&index) {
            return Err(PipelineError::Record {
                index,
                location: format!("memory record {index}"),
                message: "corrupt image data".into(),
            });
        }
        Ok(self.get(index)?.1.clone())
    }
}
