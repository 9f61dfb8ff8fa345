//! The Arrow/Parquet schema of a cache file, its encodings, and the conversion between
//! [`CacheRow`]s and Arrow record batches.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float16Array, Float32Array, UInt16Array,
    UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{
    DataType, Field, Float16Type, Float32Type, Schema, SchemaRef, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::binding::CacheBinding;
use super::col;
use super::docs::{column_description, DESCRIPTION_KEY};
use super::error::{CacheError, Result};
use super::target::{CacheRow, CachedTarget, ViewKey};

/// The unsigned integer type that holds the class ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdWidth {
    /// Up to 256 classes.
    U8,
    /// Up to 65,536 classes.
    U16,
    /// More.
    U32,
}

impl IdWidth {
    /// The narrowest type that holds ids `0..num_classes`.
    pub fn for_classes(num_classes: u32) -> IdWidth {
        if num_classes <= 1 << 8 {
            IdWidth::U8
        } else if num_classes <= 1 << 16 {
            IdWidth::U16
        } else {
            IdWidth::U32
        }
    }

    /// The Arrow type.
    pub fn data_type(self) -> DataType {
        match self {
            IdWidth::U8 => DataType::UInt8,
            IdWidth::U16 => DataType::UInt16,
            IdWidth::U32 => DataType::UInt32,
        }
    }
}

/// A non-null field carrying its description ([`column_description`]) in its metadata.
fn described(name: &str, data_type: DataType) -> Field {
    let meta = std::collections::HashMap::from([(
        DESCRIPTION_KEY.to_string(),
        column_description(name).to_string(),
    )]);
    Field::new(name, data_type, false).with_metadata(meta)
}

fn list_of(item: DataType, len: u32) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", item, false)), len as i32)
}

/// The Arrow schema of every file of a cache with this binding (depends on K and C). Every
/// field carries its description under the metadata key [`DESCRIPTION_KEY`].
pub fn arrow_schema(binding: &CacheBinding) -> SchemaRef {
    let k = binding.top_k;
    let mut fields = vec![
        described(col::EPOCH, DataType::UInt32),
        described(col::SLOT, DataType::UInt32),
        described(col::SAMPLE, DataType::UInt32),
        described(col::PARTNER, DataType::UInt32),
        described(col::LAM, DataType::Float32),
        described(col::VIEW_HASH, DataType::UInt64),
        described(
            col::TOPK_IDS,
            list_of(IdWidth::for_classes(binding.num_classes).data_type(), k),
        ),
        described(col::TOP1_LOGIT, DataType::Float16),
    ];
    if k > 1 {
        fields.push(described(
            col::LOGIT_GAPS,
            list_of(DataType::Float16, k - 1),
        ));
    }
    fields.push(described(col::LSE_GAP, DataType::Float16));
    Arc::new(Schema::new(fields))
}

/// Writer settings: zstd, one row group per `row_group_rows` slots, per-column encodings
/// chosen for size (see `docs/ARCHITECTURE.md`, "Teacher cache").
pub fn writer_properties(
    schema: &Schema,
    row_group_rows: usize,
    zstd_level: i32,
) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| CacheError::InvalidParameter(format!("zstd level {zstd_level}: {e}")))?;
    if row_group_rows == 0 {
        return Err(CacheError::InvalidParameter(
            "row_group_rows must be > 0".into(),
        ));
    }
    let descr = parquet::arrow::ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| CacheError::InvalidParameter(format!("cache schema: {e}")))?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_created_by(format!("deit-pipe formats {}", env!("CARGO_PKG_VERSION")));
    for c in descr.columns() {
        let path: ColumnPath = c.path().clone();
        let root = path.parts()[0].as_str();
        let (dictionary, encoding) = match root {
            col::EPOCH | col::TOPK_IDS => (true, None),
            col::SLOT => (false, Some(Encoding::DELTA_BINARY_PACKED)),
            col::SAMPLE | col::PARTNER | col::LAM | col::VIEW_HASH => {
                (false, Some(Encoding::PLAIN))
            }
            // The f16 logit columns: PLAIN, not BYTE_STREAM_SPLIT. BSS on these
            // FIXED_LEN_BYTE_ARRAY(2) columns was 2.8 bytes a view smaller (39.6 against
            // 42.4 at K = 10, C = 1000) but DuckDB 2.0 refuses to read it ("only supported
            // for FLOAT, DOUBLE, INT32 or INT64"), and the files must open in DuckDB.
            _ => (false, Some(Encoding::PLAIN)),
        };
        b = b.set_column_dictionary_enabled(path.clone(), dictionary);
        if let Some(e) = encoding {
            b = b.set_column_encoding(path, e);
        }
    }
    Ok(b.build())
}

/// Converts validated rows to a record batch of `schema`.
pub fn rows_to_batch(
    schema: &SchemaRef,
    binding: &CacheBinding,
    rows: &[CacheRow],
) -> Result<RecordBatch> {
    let k = binding.top_k;
    let ids = rows.iter().flat_map(|r| r.topk_ids.iter().copied());
    let ids: ArrayRef = match IdWidth::for_classes(binding.num_classes) {
        IdWidth::U8 => Arc::new(UInt8Array::from_iter_values(ids.map(|v| v as u8))),
        IdWidth::U16 => Arc::new(UInt16Array::from_iter_values(ids.map(|v| v as u16))),
        IdWidth::U32 => Arc::new(UInt32Array::from_iter_values(ids)),
    };
    let list = |values: ArrayRef, len: u32| -> Result<ArrayRef> {
        let field = Arc::new(Field::new("item", values.data_type().clone(), false));
        FixedSizeListArray::try_new(field, len as i32, values, None)
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(|e| CacheError::InvalidParameter(format!("building top-k list: {e}")))
    };
    let u32s = |f: fn(&ViewKey) -> u32| -> ArrayRef {
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| f(&r.key)),
        ))
    };
    let mut columns: Vec<ArrayRef> = vec![
        u32s(|k| k.epoch),
        u32s(|k| k.slot),
        u32s(|k| k.sample),
        u32s(|k| k.partner),
        Arc::new(Float32Array::from_iter_values(
            rows.iter().map(|r| r.key.lam),
        )),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.key.view_hash),
        )),
        list(ids, k)?,
        Arc::new(Float16Array::from_iter_values(
            rows.iter().map(|r| r.top1_logit),
        )),
    ];
    if k > 1 {
        let gaps =
            Float16Array::from_iter_values(rows.iter().flat_map(|r| r.logit_gaps.iter().copied()));
        columns.push(list(Arc::new(gaps), k - 1)?);
    }
    columns.push(Arc::new(Float16Array::from_iter_values(
        rows.iter().map(|r| r.lse_gap),
    )));
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| CacheError::InvalidParameter(format!("building record batch: {e}")))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> std::result::Result<&'a ArrayRef, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("column `{name}` missing"))
}

fn prim<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> std::result::Result<&'a arrow::array::PrimitiveArray<T>, String> {
    column(batch, name)?.as_primitive_opt::<T>().ok_or_else(|| {
        format!(
            "column `{name}` has type {:?}",
            column(batch, name).map(|c| c.data_type().clone())
        )
    })
}

fn list_values<'a>(
    batch: &'a RecordBatch,
    name: &str,
    len: u32,
) -> std::result::Result<&'a ArrayRef, String> {
    let l = column(batch, name)?
        .as_fixed_size_list_opt()
        .ok_or_else(|| format!("column `{name}` is not a fixed-size list"))?;
    if l.value_length() != len as i32 || l.values().len() != l.len() * len as usize {
        return Err(format!(
            "column `{name}` does not hold {len} values per row"
        ));
    }
    Ok(l.values())
}

/// Decodes a record batch read from a cache file, whose first row is row `first_row` of
/// the file. Checks every row against the schema's rules (ids < C, gaps ordered, lam in
/// [0, 1], sample and partner < `dataset_len`, ...); `Err` is a message naming the row,
/// its epoch and slot, and the column, for the caller to put in context.
pub fn batch_to_targets(
    batch: &RecordBatch,
    binding: &CacheBinding,
    dataset_len: u32,
    first_row: usize,
) -> std::result::Result<Vec<CachedTarget>, String> {
    let k = binding.top_k;
    let n = batch.num_rows();
    if let Some(c) = batch.columns().iter().find(|c| c.null_count() > 0) {
        return Err(format!("a column has {} nulls", c.null_count()));
    }
    let epoch = prim::<UInt32Type>(batch, col::EPOCH)?;
    let slot = prim::<UInt32Type>(batch, col::SLOT)?;
    let sample = prim::<UInt32Type>(batch, col::SAMPLE)?;
    let partner = prim::<UInt32Type>(batch, col::PARTNER)?;
    let lam = prim::<Float32Type>(batch, col::LAM)?;
    let hash = prim::<UInt64Type>(batch, col::VIEW_HASH)?;
    let top1 = prim::<Float16Type>(batch, col::TOP1_LOGIT)?;
    let lse_gap = prim::<Float16Type>(batch, col::LSE_GAP)?;
    let ids_values = list_values(batch, col::TOPK_IDS, k)?;
    let ids: Vec<u32> = match IdWidth::for_classes(binding.num_classes) {
        IdWidth::U8 => ids_values
            .as_primitive_opt::<UInt8Type>()
            .map(|a| a.values().iter().map(|&v| u32::from(v)).collect()),
        IdWidth::U16 => ids_values
            .as_primitive_opt::<UInt16Type>()
            .map(|a| a.values().iter().map(|&v| u32::from(v)).collect()),
        IdWidth::U32 => ids_values
            .as_primitive_opt::<UInt32Type>()
            .map(|a| a.values().to_vec()),
    }
    .ok_or_else(|| {
        format!(
            "column `{}` has items of type {:?}, expected {:?}",
            col::TOPK_IDS,
            ids_values.data_type(),
            IdWidth::for_classes(binding.num_classes).data_type()
        )
    })?;
    let gaps = if k > 1 {
        let v = list_values(batch, col::LOGIT_GAPS, k - 1)?;
        v.as_primitive_opt::<Float16Type>()
            .ok_or_else(|| format!("column `{}` items are not Float16", col::LOGIT_GAPS))?
            .values()
            .to_vec()
    } else {
        Vec::new()
    };
    let (k, g) = (k as usize, k as usize - 1);
    let mut out = Vec::with_capacity(n);
    for r in 0..n {
        let row = CacheRow {
            key: ViewKey {
                epoch: epoch.value(r),
                slot: slot.value(r),
                sample: sample.value(r),
                partner: partner.value(r),
                lam: lam.value(r),
                view_hash: hash.value(r),
            },
            topk_ids: ids[r * k..(r + 1) * k].to_vec(),
            top1_logit: top1.value(r),
            logit_gaps: gaps[r * g..(r + 1) * g].to_vec(),
            lse_gap: lse_gap.value(r),
        };
        let at = || {
            format!(
                "row {} (epoch {}, slot {})",
                first_row + r,
                row.key.epoch,
                row.key.slot
            )
        };
        for (name, v) in [
            (col::SAMPLE, row.key.sample),
            (col::PARTNER, row.key.partner),
        ] {
            if v >= dataset_len {
                return Err(format!(
                    "{}: column `{name}`: {v} is outside the data set of {dataset_len} samples",
                    at()
                ));
            }
        }
        row.validate(k, binding.num_classes).map_err(|e| match e {
            CacheError::InvalidRow { reason, .. } => format!("{}: {reason}", at()),
            other => format!("{}: {other}", at()),
        })?;
        out.push(row.to_target());
    }
    Ok(out)
}
