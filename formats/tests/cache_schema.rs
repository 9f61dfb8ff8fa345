//! Teacher-cache schema: round trip, binding refusal, coverage checks, crash safety,
//! narrow id types and the soft-target rebuild. Run with `--features parquet`.
#![cfg(feature = "parquet")]

use std::path::Path;

use formats::cache_schema::{
    arrow_schema, col, file_name, read_file_header, soft_distribution, CacheBinding, CacheError,
    CacheRow, CacheWriter, CachedTarget, FileHeader, IdWidth, PartSpec, TeacherCache, ViewKey,
    WriterOptions, CACHE_FORMAT_VERSION,
};

/// splitmix64: a tiny explicit-seed generator so the tests need no RNG crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The trainer keeps a reader across batches and wraps errors in `anyhow`.
#[test]
fn errors_and_readers_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send_sync::<CacheError>();
    send_sync::<TeacherCache>();
    send::<formats::cache_schema::EpochReader>();
    send::<CacheWriter>();
}

fn binding(k: u32, c: u32) -> CacheBinding {
    CacheBinding {
        format_version: CACHE_FORMAT_VERSION,
        dataset_fingerprint: "blake3:dataset-a".into(),
        augment_config_json: r#"{"aa":"rand-m9-mstd0.5-inc1","mixup":0.8}"#.into(),
        augment_config_hash: "blake3:aug-a".into(),
        run_seed: 42,
        repeats: 3,
        teacher_arch: "regnety_160".into(),
        teacher_weights_hash: "blake3:teacher-a".into(),
        top_k: k,
        num_classes: c,
        pipeline_version: "1".into(),
    }
}

fn header(b: &CacheBinding, epoch: u32, part: PartSpec, slots: u32) -> FileHeader {
    FileHeader {
        binding: b.clone(),
        epoch,
        part,
        epoch_slots: slots,
        dataset_len: 1000,
    }
}

/// A deterministic, peaked logit vector for (epoch, slot).
fn logits(epoch: u32, slot: u32, c: u32) -> Vec<f32> {
    let mut rng = Rng(u64::from(epoch) << 32 | u64::from(slot));
    let label = (rng.next_u64() % u64::from(c)) as usize;
    let mut l: Vec<f32> = (0..c).map(|_| rng.unit() * 6.0 - 3.0).collect();
    l[label] += 9.0;
    l
}

fn key(epoch: u32, slot: u32) -> ViewKey {
    ViewKey {
        epoch,
        slot,
        sample: slot * 7 % 1000,
        partner: (slot ^ 1) * 7 % 1000,
        lam: if slot.is_multiple_of(4) {
            1.0
        } else {
            0.25 + slot as f32 * 1e-3
        },
        view_hash: Rng(u64::from(slot) + 1000 * u64::from(epoch)).next_u64(),
    }
}

fn rows(b: &CacheBinding, epoch: u32, slots: impl IntoIterator<Item = u32>) -> Vec<CacheRow> {
    slots
        .into_iter()
        .map(|s| {
            CacheRow::from_logits(
                key(epoch, s),
                &logits(epoch, s, b.num_classes),
                b.top_k as usize,
            )
            .expect("valid logits")
        })
        .collect()
}

fn small_groups() -> WriterOptions {
    WriterOptions {
        row_group_rows: 64,
        ..WriterOptions::default()
    }
}

/// Writes one file of `epoch` holding `slots`.
fn write(
    dir: &Path,
    b: &CacheBinding,
    epoch: u32,
    part: PartSpec,
    epoch_slots: u32,
    slots: impl IntoIterator<Item = u32>,
) {
    let mut w = CacheWriter::create_with(dir, header(b, epoch, part, epoch_slots), small_groups())
        .expect("create");
    let rs = rows(b, epoch, slots);
    for chunk in rs.chunks(50) {
        w.write_rows(chunk).expect("write");
    }
    w.finish().expect("finish");
}

fn read_all(cache: &TeacherCache, epoch: u32) -> Vec<CachedTarget> {
    cache
        .epoch_reader(epoch)
        .expect("epoch reader")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows")
}

fn expected_targets(b: &CacheBinding, epoch: u32, n: u32) -> Vec<CachedTarget> {
    rows(b, epoch, 0..n)
        .iter()
        .map(CacheRow::to_target)
        .collect()
}

#[test]
fn round_trip_is_exact_and_in_slot_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(5, 1000);
    write(dir.path(), &b, 3, PartSpec::WHOLE, 300, 0..300);
    write(dir.path(), &b, 4, PartSpec::WHOLE, 300, 0..300);
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    cache.require_epochs(3..5).expect("epochs 3 and 4");
    let got = read_all(&cache, 3);
    assert_eq!(got, expected_targets(&b, 3, 300));
    assert_eq!(read_all(&cache, 4), expected_targets(&b, 4, 300));
    // Several row groups were written (64 rows each) and read back in order.
    let f = &cache.epoch(3).expect("epoch 3").files[0];
    assert_eq!(f.rows, 300);
    assert_eq!(f.header, header(&b, 3, PartSpec::WHOLE, 300));
    assert_eq!(read_file_header(&f.path).expect("header"), f.header);
    // Decoded values: hard label is the argmax over all classes, lse is the true LSE.
    for t in &got {
        let l = logits(3, t.slot, 1000);
        let argmax = (0..1000).fold(0, |a, i| if l[i] > l[a] { i } else { a });
        assert_eq!(t.hard_label as usize, argmax);
        assert_eq!(t.topk_ids[0], t.hard_label);
        let lse = l.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
        assert!((f64::from(t.lse) - lse).abs() < 0.01, "{} vs {lse}", t.lse);
    }
}

#[test]
fn from_logits_orders_ties_like_argmax_and_bounds_the_error() {
    let k = key(0, 0);
    let l = [1.0f32, 5.0, 3.0, 5.0, -2.0, 3.0];
    let row = CacheRow::from_logits(k, &l, 4).expect("row");
    assert_eq!(row.topk_ids, vec![1, 3, 2, 5]);
    let t = row.to_target();
    assert_eq!(t.hard_label, 1);
    assert_eq!(t.topk_logits, vec![5.0, 5.0, 3.0, 3.0]);
    // Error bound of the stored gaps: |err| <= 2^-11 * gap.
    let l = logits(9, 9, 1000);
    let t = CacheRow::from_logits(k, &l, 10).expect("row").to_target();
    let lse = l.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
    let l0 = f64::from(l[t.topk_ids[0] as usize]);
    let u = 2f64.powi(-11);
    for (id, v) in t.topk_ids.iter().zip(&t.topk_logits) {
        let exact_gap = l0 - f64::from(l[*id as usize]);
        let stored_gap = f64::from(t.topk_logits[0]) - f64::from(*v);
        assert!((stored_gap - exact_gap).abs() <= u * exact_gap + 1e-6);
    }
    let lse_gap = f64::from(t.lse) - f64::from(t.topk_logits[0]);
    assert!((lse_gap - (lse - l0)).abs() <= u * (lse - l0) + 1e-6);
    // Refusals: NaN logits, K out of range.
    let mut bad = l.clone();
    bad[17] = f32::NAN;
    let e = CacheRow::from_logits(k, &bad, 10).expect_err("NaN");
    assert!(e.to_string().contains("class 17"), "{e}");
    assert!(CacheRow::from_logits(k, &l, 0).is_err());
    assert!(CacheRow::from_logits(k, &l[..5], 10).is_err());
}

macro_rules! binding_refusal {
    ($name:ident, $field:ident, $value:expr) => {
        #[test]
        fn $name() {
            let dir = tempfile::tempdir().expect("tempdir");
            let b = binding(5, 1000);
            write(dir.path(), &b, 0, PartSpec::WHOLE, 10, 0..10);
            let mut expected = b.clone();
            expected.$field = $value;
            let cached = format!("{:?}", b.$field);
            let wanted = format!("{:?}", expected.$field);
            let e = TeacherCache::open(dir.path(), &expected).expect_err("mismatch refused");
            let msg = e.to_string();
            assert!(msg.contains(concat!("`", stringify!($field), "`")), "{msg}");
            assert!(msg.contains(&format!("cache has {cached}")), "{msg}");
            assert!(msg.contains(&format!("expected {wanted}")), "{msg}");
            assert!(msg.contains("epoch-00000.parquet"), "{msg}");
            // The same binding opens.
            TeacherCache::open(dir.path(), &b).expect("same binding opens");
            // check_against itself names the field too.
            match b.check_against(&expected) {
                Err(CacheError::BindingMismatch { field, .. }) => {
                    assert_eq!(field, stringify!($field))
                }
                other => panic!("expected a mismatch, got {other:?}"),
            }
        }
    };
}

binding_refusal!(
    refuses_format_version,
    format_version,
    CACHE_FORMAT_VERSION + 1
);
binding_refusal!(
    refuses_dataset_fingerprint,
    dataset_fingerprint,
    "blake3:dataset-b".into()
);
binding_refusal!(
    refuses_augment_config_json,
    augment_config_json,
    r#"{"aa":"rand-m7"}"#.into()
);
binding_refusal!(
    refuses_augment_config_hash,
    augment_config_hash,
    "blake3:aug-b".into()
);
binding_refusal!(refuses_run_seed, run_seed, 43);
binding_refusal!(refuses_repeats, repeats, 1);
binding_refusal!(refuses_teacher_arch, teacher_arch, "resnet50".into());
binding_refusal!(
    refuses_teacher_weights_hash,
    teacher_weights_hash,
    "blake3:teacher-b".into()
);
binding_refusal!(refuses_top_k, top_k, 10);
binding_refusal!(refuses_num_classes, num_classes, 100);
binding_refusal!(refuses_pipeline_version, pipeline_version, "2".into());

#[test]
fn files_with_different_bindings_are_refused_for_inspection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(5, 1000);
    write(dir.path(), &b, 0, PartSpec::WHOLE, 10, 0..10);
    let mut other = b.clone();
    other.run_seed = 7;
    write(dir.path(), &other, 1, PartSpec::WHOLE, 10, 0..10);
    let msg = TeacherCache::open_for_inspect(dir.path())
        .expect_err("mixed cache")
        .to_string();
    assert!(
        msg.contains("epoch-00001.parquet") && msg.contains("`run_seed`"),
        "{msg}"
    );
    // Both files and both values, each with its own file.
    assert!(
        msg.contains("epoch-00000.parquet has 42, ") && msg.contains("epoch-00001.parquet has 7 "),
        "{msg}"
    );
}

#[test]
fn missing_epochs_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    for e in [0, 1, 3, 7] {
        write(dir.path(), &b, e, PartSpec::WHOLE, 8, 0..8);
    }
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    cache.require_epochs(0..2).expect("0 and 1 exist");
    let msg = cache.require_epochs(0..7).expect_err("gaps").to_string();
    assert!(msg.contains("lacks epochs 2, 4..=6"), "{msg}");
    assert!(cache.epoch_reader(5).is_err());
    let empty = tempfile::tempdir().expect("tempdir");
    let msg = TeacherCache::open(empty.path(), &b)
        .expect_err("empty")
        .to_string();
    assert!(msg.contains("no teacher-cache files"), "{msg}");
}

#[test]
fn parts_merge_in_slot_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(4, 300);
    // Whole pairs per part, round-robin over 3 parts (like rank_slots).
    let n = 240u32;
    for p in 1..=3u32 {
        let slots = (0..n).filter(move |s| (s / 2) % 3 == p - 1);
        write(
            dir.path(),
            &b,
            5,
            PartSpec::new(p, 3).expect("part"),
            n,
            slots,
        );
    }
    assert!(dir
        .path()
        .join("epoch-00005.part-002-of-003.parquet")
        .exists());
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    cache.require_epochs(5..6).expect("complete");
    assert_eq!(read_all(&cache, 5), expected_targets(&b, 5, n));
    let s = cache.summary();
    assert_eq!(s.epochs[0].files, 3);
    assert_eq!(s.epochs[0].part_count, 3);
    assert_eq!(s.total_rows(), u64::from(n));
}

#[test]
fn duplicated_slots_across_parts_are_errors_naming_both_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    write(
        dir.path(),
        &b,
        2,
        PartSpec::new(1, 2).expect("part"),
        100,
        0..60,
    );
    write(
        dir.path(),
        &b,
        2,
        PartSpec::new(2, 2).expect("part"),
        100,
        50..100,
    );
    let cache = TeacherCache::open(dir.path(), &b).expect("open (problem recorded)");
    let msg = cache
        .require_epochs(2..3)
        .expect_err("duplicates")
        .to_string();
    assert!(msg.starts_with("epoch 2:"), "{msg}");
    assert!(
        msg.contains(
            "slot 50 is in both epoch-00002.part-001-of-002.parquet and epoch-00002.part-002-of-002.parquet"
        ),
        "{msg}"
    );
    assert!(msg.contains("10 duplicated slots in all"), "{msg}");
    assert!(cache.epoch_reader(2).is_err());
    assert!(cache.summary().epochs[0].problem.is_some());
}

#[test]
fn missing_slots_and_parts_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    let two = |i| PartSpec::new(i, 2).expect("part");
    write(dir.path(), &b, 0, two(1), 100, 0..40);
    write(dir.path(), &b, 0, two(2), 100, (50..98).chain(99..100));
    write(dir.path(), &b, 1, two(1), 100, 0..50);
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    let msg = cache.epoch_reader(0).err().expect("gaps").to_string();
    assert!(
        msg.contains("slots missing: 40..=49, 98 (11 of 100 in all)"),
        "{msg}"
    );
    let msg = cache
        .require_epochs(1..2)
        .expect_err("part missing")
        .to_string();
    assert!(msg.contains("parts 2 of 2 missing"), "{msg}");
    assert!(msg.contains("slots missing: 50..=99"), "{msg}");
    assert_eq!(cache.summary().complete_epochs(), Vec::<u32>::new());
}

#[test]
fn truncated_parquet_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(5, 1000);
    write(dir.path(), &b, 0, PartSpec::WHOLE, 200, 0..200);
    let path = dir.path().join("epoch-00000.parquet");
    let bytes = std::fs::read(&path).expect("read");
    for cut in [bytes.len() / 2, bytes.len() - 3, 5] {
        std::fs::write(&path, &bytes[..cut]).expect("truncate");
        let msg = TeacherCache::open(dir.path(), &b)
            .expect_err("truncated")
            .to_string();
        assert!(msg.contains("epoch-00000.parquet"), "{msg}");
        assert!(msg.contains("truncated or corrupt Parquet"), "{msg}");
    }
    // A flipped byte inside the data pages: caught while streaming, naming the file.
    let mut flipped = bytes.clone();
    for b in &mut flipped[200..1200] {
        *b ^= 0x5A;
    }
    std::fs::write(&path, &flipped).expect("corrupt");
    let outcome = TeacherCache::open(dir.path(), &b).and_then(|c| {
        c.epoch_reader(0)?
            .collect::<Result<Vec<_>, _>>()
            .map(|_| ())
    });
    let msg = outcome.expect_err("corrupt data").to_string();
    assert!(msg.contains("epoch-00000.parquet"), "{msg}");
}

#[test]
fn unfinished_files_are_never_visible_as_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    write(dir.path(), &b, 0, PartSpec::WHOLE, 50, 0..50);
    let mut w = CacheWriter::create_with(
        dir.path(),
        header(&b, 1, PartSpec::WHOLE, 50),
        small_groups(),
    )
    .expect("create");
    w.write_rows(&rows(&b, 1, 0..50)).expect("write");
    // Before finish: only the .partial file exists, and readers ignore it.
    assert!(!dir.path().join(file_name(1, PartSpec::WHOLE)).exists());
    assert!(dir.path().join("epoch-00001.parquet.partial").exists());
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    assert!(cache.require_epochs(0..2).is_err());
    assert_eq!(cache.partial_files().len(), 1);
    // A killed writer leaves the partial file behind (simulated by forgetting the writer).
    std::mem::forget(w);
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    assert!(cache.epoch(1).is_none());
    // Running again overwrites the partial file and finishes.
    write(dir.path(), &b, 1, PartSpec::WHOLE, 50, 0..50);
    assert!(!dir.path().join("epoch-00001.parquet.partial").exists());
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    cache.require_epochs(0..2).expect("both epochs");
    assert_eq!(read_all(&cache, 1), expected_targets(&b, 1, 50));
    // A writer dropped on an error path removes its partial file.
    {
        let mut w =
            CacheWriter::create(dir.path(), header(&b, 2, PartSpec::WHOLE, 50)).expect("create");
        w.write_rows(&rows(&b, 2, 0..10)).expect("write");
    }
    assert!(!dir.path().join("epoch-00002.parquet.partial").exists());
    // Finished files are never overwritten.
    let e =
        CacheWriter::create(dir.path(), header(&b, 1, PartSpec::WHOLE, 50)).expect_err("exists");
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn writer_refuses_bad_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    let mut w =
        CacheWriter::create(dir.path(), header(&b, 4, PartSpec::WHOLE, 20)).expect("create");
    w.write_rows(&rows(&b, 4, [3, 5])).expect("increasing");
    let msg = w
        .write_rows(&rows(&b, 4, [5]))
        .expect_err("repeat")
        .to_string();
    assert!(msg.contains("slot 5 follows slot 5"), "{msg}");
    let msg = w
        .write_rows(&rows(&b, 5, [6]))
        .expect_err("epoch")
        .to_string();
    assert!(
        msg.contains("row of epoch 5 written to a file of epoch 4"),
        "{msg}"
    );
    let msg = w
        .write_rows(&rows(&b, 4, [20]))
        .expect_err("range")
        .to_string();
    assert!(
        msg.contains("epoch 4 slot 20") && msg.contains("slot count 20"),
        "{msg}"
    );
    let mut r = rows(&b, 4, [7]);
    r[0].topk_ids[1] = 10;
    let msg = w.write_rows(&r).expect_err("id range").to_string();
    assert!(msg.contains("class id 10 >= num_classes 10"), "{msg}");
    let mut r = rows(&b, 4, [7]);
    r[0].topk_ids[2] = r[0].topk_ids[0];
    assert!(w
        .write_rows(&r)
        .expect_err("dup id")
        .to_string()
        .contains("twice"));
    let mut r = rows(&b, 4, [7]);
    r[0].logit_gaps.swap(0, 1);
    if r[0].logit_gaps[0] != r[0].logit_gaps[1] {
        assert!(w
            .write_rows(&r)
            .expect_err("order")
            .to_string()
            .contains("non-decreasing"));
    }
    let bad_k = binding(11, 10);
    assert!(CacheWriter::create(dir.path(), header(&bad_k, 9, PartSpec::WHOLE, 5)).is_err());
}

#[test]
fn renamed_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    write(dir.path(), &b, 0, PartSpec::WHOLE, 10, 0..10);
    std::fs::rename(
        dir.path().join("epoch-00000.parquet"),
        dir.path().join("epoch-00001.parquet"),
    )
    .expect("rename");
    let msg = TeacherCache::open(dir.path(), &b)
        .expect_err("renamed")
        .to_string();
    assert!(
        msg.contains("epoch-00001.parquet") && msg.contains("the footer says epoch 0"),
        "{msg}"
    );
    std::fs::remove_file(dir.path().join("epoch-00001.parquet")).expect("remove");
    write(dir.path(), &b, 0, PartSpec::WHOLE, 10, 0..10);
    std::fs::write(dir.path().join("notes.parquet"), b"x").expect("write");
    let msg = TeacherCache::open(dir.path(), &b)
        .expect_err("bad name")
        .to_string();
    assert!(
        msg.contains("notes.parquet") && msg.contains("not a teacher-cache file name"),
        "{msg}"
    );
}

#[test]
fn narrowest_id_type_is_chosen_and_round_trips() {
    use arrow::datatypes::DataType;
    assert_eq!(IdWidth::for_classes(10), IdWidth::U8);
    assert_eq!(IdWidth::for_classes(256), IdWidth::U8);
    assert_eq!(IdWidth::for_classes(257), IdWidth::U16);
    assert_eq!(IdWidth::for_classes(1000), IdWidth::U16);
    assert_eq!(IdWidth::for_classes(65_536), IdWidth::U16);
    assert_eq!(IdWidth::for_classes(65_537), IdWidth::U32);
    for (c, ty) in [
        (10, DataType::UInt8),
        (1000, DataType::UInt16),
        (70_000, DataType::UInt32),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = binding(3, c);
        write(dir.path(), &b, 0, PartSpec::WHOLE, 20, 0..20);
        // The type in the file, as any Parquet reader sees it.
        let file = std::fs::File::open(dir.path().join("epoch-00000.parquet")).expect("open");
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("pq");
        let field = builder
            .schema()
            .field_with_name(col::TOPK_IDS)
            .expect("ids")
            .clone();
        match field.data_type() {
            DataType::FixedSizeList(item, 3) => assert_eq!(item.data_type(), &ty),
            other => panic!("topk_ids is {other:?}"),
        }
        assert_eq!(builder.schema().fields(), arrow_schema(&b).fields());
        let cache = TeacherCache::open(dir.path(), &b).expect("open");
        assert_eq!(read_all(&cache, 0), expected_targets(&b, 0, 20));
    }
}

#[test]
fn top1_only_cache_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(1, 1000);
    write(dir.path(), &b, 0, PartSpec::WHOLE, 30, 0..30);
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    let got = read_all(&cache, 0);
    assert_eq!(got, expected_targets(&b, 0, 30));
    assert!(got
        .iter()
        .all(|t| t.topk_ids.len() == 1 && t.topk_logits.len() == 1));
}

fn softmax(l: &[f64], tau: f64) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = l.iter().map(|v| ((v - m) / tau).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[test]
fn soft_distribution_is_exact_when_k_equals_c() {
    let l = logits(1, 2, 10);
    let t = CacheRow::from_logits(key(1, 2), &l, 10)
        .expect("row")
        .to_target();
    let decoded: Vec<f64> = {
        let mut v = vec![0.0; 10];
        for (id, x) in t.topk_ids.iter().zip(&t.topk_logits) {
            v[*id as usize] = f64::from(*x);
        }
        v
    };
    let exact: Vec<f64> = l.iter().map(|&v| f64::from(v)).collect();
    for tau in [1.0f32, 3.0, 0.5] {
        let p = soft_distribution(&t, 10, tau).expect("soft");
        let want = softmax(&decoded, f64::from(tau));
        let truth = softmax(&exact, f64::from(tau));
        for i in 0..10 {
            // Exact softmax of the decoded logits (up to f32 output rounding) ...
            assert!(
                (f64::from(p[i]) - want[i]).abs() <= 1e-7 + 1e-6 * want[i],
                "tau {tau} class {i}"
            );
            // ... and within the documented f16 bound of the teacher's true softmax.
            assert!(
                (f64::from(p[i]) - truth[i]).abs() <= 1e-2 * truth[i] + 1e-7,
                "tau {tau} class {i}"
            );
        }
        assert!((p.iter().map(|&v| f64::from(v)).sum::<f64>() - 1.0).abs() < 1e-6);
    }
}

#[test]
fn soft_distribution_rebuilds_top_k_and_spreads_the_tail() {
    let c = 1000u32;
    let l = logits(4, 4, c);
    let t = CacheRow::from_logits(key(4, 4), &l, 10)
        .expect("row")
        .to_target();
    let exact: Vec<f64> = l.iter().map(|&v| f64::from(v)).collect();
    let truth = softmax(&exact, 1.0);
    let p = soft_distribution(&t, c, 1.0).expect("soft");
    assert!((p.iter().map(|&v| f64::from(v)).sum::<f64>() - 1.0).abs() < 1e-5);
    // tau = 1: top-K probabilities are exp(l_i - lse) (within the f16 bound).
    for (id, x) in t.topk_ids.iter().zip(&t.topk_logits) {
        let want = (f64::from(*x) - f64::from(t.lse)).exp();
        assert!((f64::from(p[*id as usize]) - want).abs() <= 1e-6 * want + 1e-9);
        assert!(
            (f64::from(p[*id as usize]) - truth[*id as usize]).abs() <= 1e-2 * truth[*id as usize]
        );
    }
    // The tail is uniform and carries the missing mass.
    let tail: Vec<usize> = (0..c as usize)
        .filter(|i| !t.topk_ids.contains(&(*i as u32)))
        .collect();
    let tail_truth: f64 = tail.iter().map(|&i| truth[i]).sum();
    let tail_got: f64 = tail.iter().map(|&i| f64::from(p[i])).sum();
    assert!(
        (tail_got - tail_truth).abs() < 1e-2 * tail_truth,
        "{tail_got} vs {tail_truth}"
    );
    assert!(tail.iter().all(|&i| p[i] == p[tail[0]]));
    // tau = 3: sums to 1, keeps the top-K order, and the uniform tail overestimates the
    // true tail mass (power-mean inequality), so the top-K mass is a lower bound.
    let p3 = soft_distribution(&t, c, 3.0).expect("soft");
    let truth3 = softmax(&exact, 3.0);
    assert!((p3.iter().map(|&v| f64::from(v)).sum::<f64>() - 1.0).abs() < 1e-5);
    let top_got: f64 = t.topk_ids.iter().map(|&i| f64::from(p3[i as usize])).sum();
    let top_truth: f64 = t.topk_ids.iter().map(|&i| truth3[i as usize]).sum();
    assert!(
        top_got <= top_truth * (1.0 + 1e-3),
        "{top_got} vs {top_truth}"
    );
    assert!(t
        .topk_ids
        .windows(2)
        .all(|w| p3[w[0] as usize] >= p3[w[1] as usize]));
    // Bad temperature, bad class count.
    assert!(soft_distribution(&t, c, 0.0).is_err());
    assert!(soft_distribution(&t, 5, 1.0).is_err());
}

#[test]
fn summary_and_label_agreement() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    write(dir.path(), &b, 0, PartSpec::WHOLE, 40, 0..40);
    write(
        dir.path(),
        &b,
        1,
        PartSpec::new(1, 2).expect("part"),
        40,
        0..20,
    );
    let cache = TeacherCache::open(dir.path(), &b).expect("open");
    let s = cache.summary();
    assert_eq!(s.complete_epochs(), vec![0]);
    assert_eq!(s.total_rows(), 60);
    assert!(s.bytes_per_row() > 0.0);
    let col_sum: u64 = s.column_bytes.iter().map(|(_, b)| b).sum();
    assert!(col_sum > 0 && col_sum < s.total_bytes());
    let text = s.to_string();
    assert!(text.contains("PROBLEM: parts 2 of 2 missing"), "{text}");
    // Ground truth: label of sample = the hard label for even samples, something else for odd.
    let targets = read_all(&cache, 0);
    let mut labels = vec![0u32; 1000];
    for t in &targets {
        labels[t.sample as usize] = if t.sample.is_multiple_of(2) {
            t.hard_label
        } else {
            (t.hard_label + 1) % 10
        };
    }
    let a = cache.label_agreement(0, &labels).expect("agreement");
    let even = targets
        .iter()
        .filter(|t| t.sample.is_multiple_of(2))
        .count() as u64;
    let unmixed: Vec<_> = targets
        .iter()
        .filter(|t| t.lam == 1.0 || t.partner == t.sample)
        .collect();
    assert_eq!(a.views, 40);
    assert_eq!(a.hard_eq_label, even);
    assert_eq!(a.unmixed_views, unmixed.len() as u64);
    assert_eq!(
        a.unmixed_hard_eq_label,
        unmixed
            .iter()
            .filter(|t| t.sample.is_multiple_of(2))
            .count() as u64
    );
    assert!(cache.label_agreement(0, &labels[..5]).is_err());
}
