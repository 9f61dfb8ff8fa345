//! Damaged and hostile teacher-cache files: every flipped byte is refused (checksums),
//! decoder panics become errors naming the file, out-of-range values are refused naming
//! file, row and column, older formats are refused with what to do, binding mismatches
//! blame the right file, and the footer documents itself. Run with `--features parquet`.
#![cfg(feature = "parquet")]

use std::path::{Path, PathBuf};

use formats::cache_schema::{
    testing, verify_file, CacheBinding, CacheError, CacheRow, CacheWriter, CachedTarget,
    FileHeader, PartSpec, TeacherCache, ViewKey, WriterOptions, CACHE_FORMAT_VERSION,
    CLASS_NAMES_KEY, DESCRIPTION_KEY, DOC_KEY, HASHES_KEY, INTEGRITY_KEY,
};
use half::f16;

/// splitmix64: explicit-seed numbers.
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

const DATASET_LEN: u32 = 100;

fn binding(k: u32, c: u32) -> CacheBinding {
    CacheBinding {
        format_version: CACHE_FORMAT_VERSION,
        dataset_fingerprint: "blake3:dataset-a".into(),
        augment_config_json: r#"{"mixup":0.8}"#.into(),
        augment_config_hash: "0123456789abcdef".into(),
        run_seed: 42,
        repeats: 3,
        teacher_arch: "regnety_160".into(),
        teacher_weights_hash: "blake3:teacher-a".into(),
        top_k: k,
        num_classes: c,
        pipeline_version: "1".into(),
    }
}

fn header(b: &CacheBinding, epoch: u32, slots: u32) -> FileHeader {
    FileHeader {
        binding: b.clone(),
        epoch,
        part: PartSpec::WHOLE,
        epoch_slots: slots,
        dataset_len: DATASET_LEN,
    }
}

fn rows(b: &CacheBinding, epoch: u32, n: u32) -> Vec<CacheRow> {
    (0..n)
        .map(|slot| {
            let mut rng = Rng(u64::from(epoch) << 32 | u64::from(slot));
            let c = b.num_classes as usize;
            let mut l: Vec<f32> = (0..c).map(|_| rng.unit() * 4.0 - 2.0).collect();
            l[(rng.next_u64() % c as u64) as usize] += 4.0;
            let key = ViewKey {
                epoch,
                slot,
                sample: slot * 7 % DATASET_LEN,
                partner: (slot ^ 1) * 7 % DATASET_LEN,
                lam: if slot % 4 < 2 {
                    1.0
                } else {
                    0.3 + 0.01 * slot as f32
                },
                view_hash: rng.next_u64(),
            };
            CacheRow::from_logits(key, &l, b.top_k as usize).expect("valid logits")
        })
        .collect()
}

/// Writes epoch `epoch` (`n` slots, row groups of 16) and returns its path.
fn write(dir: &Path, b: &CacheBinding, epoch: u32, n: u32) -> PathBuf {
    let opts = WriterOptions {
        row_group_rows: 16,
        ..WriterOptions::default()
    };
    let mut w = CacheWriter::create_with(dir, header(b, epoch, n), opts).expect("create");
    w.set_class_names(
        &(0..b.num_classes)
            .map(|i| format!("class {i}"))
            .collect::<Vec<_>>(),
    )
    .expect("names");
    w.write_rows(&rows(b, epoch, n)).expect("write");
    w.finish().expect("finish")
}

/// What `train` does with a cache: open it bound to `b`, require epoch 0, read its rows.
fn train_read(dir: &Path, b: &CacheBinding) -> Result<Vec<CachedTarget>, CacheError> {
    let cache = TeacherCache::open(dir, b)?;
    cache.require_epochs(0..1)?;
    cache.epoch_reader(0)?.collect()
}

/// Every `stride`-th byte position (from `DEIT_PIPE_FLIP_STRIDE`, else `default`): the
/// normal suite takes a deterministic sample; `DEIT_PIPE_FLIP_STRIDE=1` flips every byte
/// (9,309 positions of the 24-row file: ~25 s here, recorded in BENCHMARKS.md).
fn stride(default: usize) -> usize {
    std::env::var("DEIT_PIPE_FLIP_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// A flip at every position, with a pattern that varies with the position.
fn flip(bytes: &[u8], pos: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[pos] ^= [0x01, 0x80, 0xFF, 0x10, 0x04][pos % 5];
    v
}

#[test]
fn every_flipped_byte_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    let path = write(dir.path(), &b, 0, 24);
    let good = std::fs::read(&path).expect("read");
    let expected: Vec<CachedTarget> = rows(&b, 0, 24).iter().map(CacheRow::to_target).collect();
    assert_eq!(train_read(dir.path(), &b).expect("intact"), expected);
    verify_file(&path).expect("intact file verifies");
    let mut refused = 0usize;
    let positions: Vec<usize> = (0..good.len()).step_by(stride(13)).collect();
    for &pos in &positions {
        std::fs::write(&path, flip(&good, pos)).expect("write flipped");
        // Both the trainer's path and `cache inspect`'s full check refuse it, naming the
        // file as corrupt (or, for a flip in the format version of an old-format probe,
        // its version).
        for (what, r) in [
            ("train", train_read(dir.path(), &b).map(drop)),
            ("verify", verify_file(&path).map(drop)),
        ] {
            let e = r.expect_err(&format!("{what}: a flip at byte {pos} was accepted"));
            let msg = e.to_string();
            assert!(
                msg.contains("epoch-00000.parquet") && msg.contains("corrupt"),
                "{what}, byte {pos}: {msg}"
            );
        }
        refused += 1;
    }
    assert_eq!(refused, positions.len());
    eprintln!(
        "{refused} of {} flipped positions refused ({} bytes, stride {})",
        positions.len(),
        good.len(),
        stride(13)
    );
}

/// Flips whose checksums are then recomputed reach the Parquet decoder itself: nothing
/// panics, errors name the file, and some of them are decoder panics caught at the file
/// boundary (the crate panics on e.g. a bad bit width in a delta-encoded page).
#[test]
fn resealed_flips_reach_the_decoder_without_panicking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    let path = write(dir.path(), &b, 0, 24);
    let good = std::fs::read(&path).expect("read");
    let (mut ok, mut refused, mut caught_panics, mut unsealable) = (0, 0, 0, 0);
    // The data pages (before the footer) are where the decoder panics; the footer's
    // flips are sampled.
    let footer_len =
        u32::from_le_bytes(good[good.len() - 8..good.len() - 4].try_into().expect("4"));
    let data_end = good.len() - 8 - footer_len as usize;
    let positions: Vec<usize> = (0..data_end)
        .step_by(stride(2))
        .chain((data_end..good.len()).step_by(stride(29)))
        .collect();
    for &pos in &positions {
        std::fs::write(&path, flip(&good, pos)).expect("write flipped");
        if testing::reseal(&path).is_err() {
            unsealable += 1;
            continue;
        }
        match train_read(dir.path(), &b) {
            Ok(_) => ok += 1,
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("epoch-00000.parquet"), "byte {pos}: {msg}");
                if msg.contains("the Parquet decoder failed") {
                    caught_panics += 1;
                }
                refused += 1;
            }
        }
    }
    eprintln!(
        "{} positions: {ok} decoded (values within the rules), {refused} refused \
         ({caught_panics} decoder panics caught), {unsealable} footers unparseable",
        positions.len()
    );
    assert_eq!(ok + refused + unsealable, positions.len());
    assert!(caught_panics > 0, "no decoder panic was exercised");
}

#[test]
fn out_of_range_values_are_refused_naming_file_row_and_column() {
    let b = binding(3, 10);
    type Edit = fn(&mut CacheRow);
    let cases: [(&str, Edit); 7] = [
        ("`lam`", |r| r.key.lam = 1.5),
        ("`lam`", |r| r.key.lam = f32::NAN),
        ("`partner`", |r| r.key.partner = DATASET_LEN),
        ("`sample`", |r| r.key.sample = u32::MAX),
        ("`topk_ids`", |r| r.topk_ids[1] = 12),
        ("`top1_logit`", |r| r.top1_logit = f16::NAN),
        ("`logit_gaps`", |r| r.logit_gaps[0] = f16::NAN),
    ];
    for (column, edit) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rs = rows(&b, 0, 12);
        edit(&mut rs[5]);
        testing::write_unchecked(dir.path(), header(&b, 0, 12), &rs).expect("write");
        let msg = train_read(dir.path(), &b)
            .expect_err("bad value accepted")
            .to_string();
        assert!(
            msg.contains("epoch-00000.parquet")
                && msg.contains("row 5 (epoch 0, slot 5)")
                && msg.contains(&format!("column {column}")),
            "{column}: {msg}"
        );
    }
    // The writer refuses the same rows up front.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = CacheWriter::create(dir.path(), header(&b, 0, 12)).expect("create");
    let mut rs = rows(&b, 0, 12);
    rs[3].key.partner = DATASET_LEN;
    let msg = w.write_rows(&rs).expect_err("partner").to_string();
    assert!(msg.contains("outside the data set of 100 samples"), "{msg}");
}

#[test]
fn older_format_is_refused_with_what_to_do() {
    use parquet::arrow::ArrowWriter;
    use parquet::file::metadata::KeyValue;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = binding(3, 10);
    old.format_version = 1;
    // A version-1 file: the same columns, the header, no checksums.
    let path = dir.path().join("epoch-00000.parquet");
    let file = std::fs::File::create(&path).expect("create");
    let schema = formats::cache_schema::arrow_schema(&old);
    let mut w = ArrowWriter::try_new(file, schema, None).expect("writer");
    let mut h = header(&old, 0, 4);
    h.dataset_len = 0;
    w.append_key_value_metadata(KeyValue::new(
        formats::cache_schema::HEADER_KEY.into(),
        h.to_json(),
    ));
    w.close().expect("close");
    for msg in [
        TeacherCache::open_for_inspect(dir.path())
            .expect_err("old")
            .to_string(),
        TeacherCache::open(dir.path(), &binding(3, 10))
            .expect_err("old")
            .to_string(),
        verify_file(&path).expect_err("old").to_string(),
    ] {
        assert!(
            msg.contains("epoch-00000.parquet")
                && msg.contains("format version 1")
                && msg.contains("re-run `deit-pipe teacher-cache`"),
            "{msg}"
        );
    }
}

#[test]
fn a_changed_fingerprint_is_blamed_on_its_own_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    let mut tampered = b.clone();
    tampered.dataset_fingerprint = "blake3:dataset-z".into();
    write(dir.path(), &tampered, 0, 8);
    write(dir.path(), &b, 1, 8);
    // Against the run's binding: epoch 0 is at fault, with cached and expected in order.
    let mut data = b.clone();
    data.teacher_arch.clear();
    data.teacher_weights_hash.clear();
    data.top_k = 0;
    for msg in [
        TeacherCache::open(dir.path(), &b)
            .expect_err("tampered")
            .to_string(),
        TeacherCache::open_for_run(dir.path(), &data, None)
            .expect_err("tampered")
            .to_string(),
    ] {
        assert!(
            msg.contains("epoch-00000.parquet")
                && !msg.contains("epoch-00001.parquet")
                && msg.contains("`dataset_fingerprint`")
                && msg.contains(r#"cache has "blake3:dataset-z", expected "blake3:dataset-a""#),
            "{msg}"
        );
    }
    // Without a reference (inspect): both files and both values, each with its file.
    let msg = TeacherCache::open_for_inspect(dir.path())
        .expect_err("mixed")
        .to_string();
    assert!(
        msg.contains(r#"epoch-00000.parquet has "blake3:dataset-z", "#)
            && msg.contains(r#"epoch-00001.parquet has "blake3:dataset-a" "#),
        "{msg}"
    );
}

#[test]
fn teacher_fields_come_from_the_cache_and_must_agree() {
    let b = binding(3, 10);
    let mut data = b.clone();
    data.teacher_arch.clear();
    data.teacher_weights_hash.clear();
    data.top_k = 0;
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), &b, 0, 8);
    let cache = TeacherCache::open_for_run(dir.path(), &data, None).expect("one teacher");
    assert_eq!(cache.binding(), &b);
    TeacherCache::open_for_run(dir.path(), &data, Some("regnety_160")).expect("same arch");
    let msg = TeacherCache::open_for_run(dir.path(), &data, Some("resnet50"))
        .expect_err("other arch")
        .to_string();
    assert!(
        msg.contains("epoch-00000.parquet")
            && msg.contains(r#"cache has "regnety_160", expected "resnet50" (--teacher-arch)"#),
        "{msg}"
    );
    let mut other = b.clone();
    other.teacher_weights_hash = "blake3:teacher-b".into();
    write(dir.path(), &other, 1, 8);
    let msg = TeacherCache::open_for_run(dir.path(), &data, None)
        .expect_err("two teachers")
        .to_string();
    assert!(
        msg.contains("`teacher_weights_hash` differs between files")
            && msg.contains(r#"epoch-00000.parquet has "blake3:teacher-a", "#)
            && msg.contains(r#"epoch-00001.parquet has "blake3:teacher-b" "#),
        "{msg}"
    );
}

#[test]
fn the_footer_documents_itself() {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let dir = tempfile::tempdir().expect("tempdir");
    let b = binding(3, 10);
    let path = write(dir.path(), &b, 0, 8);
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).expect("open"))
            .expect("parquet");
    for f in builder.schema().fields() {
        let d = f.metadata().get(DESCRIPTION_KEY).map(String::as_str);
        assert!(
            d.is_some_and(|d| d.len() > 20),
            "column {} has no description",
            f.name()
        );
    }
    let kv = |key: &str| -> String {
        builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| e.key == key))
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| panic!("footer key {key} missing"))
    };
    let doc = kv(DOC_KEY);
    for needle in [
        "logit_i = top1_logit - logit_gaps[i-1]",
        "lse = top1_logit + lse_gap",
        "exp(logit_i - lse)",
        INTEGRITY_KEY,
    ] {
        assert!(doc.contains(needle), "doc lacks {needle}: {doc}");
    }
    let hashes: serde_json::Value = serde_json::from_str(&kv(HASHES_KEY)).expect("JSON");
    for key in [
        "dataset_fingerprint",
        "augment_config_hash",
        "teacher_weights_hash",
        INTEGRITY_KEY,
    ] {
        assert!(hashes[key].as_str().is_some(), "hashes lack {key}");
    }
    assert!(hashes["teacher_weights_hash"]
        .as_str()
        .is_some_and(|s| s.contains("BLAKE3")));
    assert!(hashes["augment_config_hash"]
        .as_str()
        .is_some_and(|s| s.contains("XXH3")));
    let names: Vec<String> = serde_json::from_str(&kv(CLASS_NAMES_KEY)).expect("JSON");
    assert_eq!(names.len(), 10);
    assert_eq!(names[3], "class 3");
}

/// The committed cache file that `tools/cache_probs_pyarrow.py` reads with pyarrow.
fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cache_small")
}

/// The binding of the committed fixture: K = 4 of C = 10 named classes, 16 slots.
fn fixture_binding() -> CacheBinding {
    binding(4, 10)
}

/// Rewrites the committed fixture file (`DEIT_PIPE_WRITE_CACHE_FIXTURE=1`); then run
/// `python3 tools/cache_probs_pyarrow.py formats/tests/fixtures/cache_small` to refresh
/// its JSON. Without the variable it checks that the committed file is what the writer
/// writes today, byte for byte.
#[test]
fn committed_fixture_is_what_the_writer_writes() {
    let b = fixture_binding();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut w = CacheWriter::create_with(
        tmp.path(),
        header(&b, 0, 16),
        WriterOptions {
            row_group_rows: 8,
            ..WriterOptions::default()
        },
    )
    .expect("create");
    let names: Vec<String> = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.set_class_names(&names).expect("names");
    w.write_rows(&rows(&b, 0, 16)).expect("write");
    let written = std::fs::read(w.finish().expect("finish")).expect("read");
    let committed = fixture_dir().join("epoch-00000.parquet");
    if std::env::var_os("DEIT_PIPE_WRITE_CACHE_FIXTURE").is_some() {
        std::fs::create_dir_all(fixture_dir()).expect("mkdir");
        std::fs::write(&committed, &written).expect("write fixture");
    }
    let on_disk = std::fs::read(&committed).expect("committed fixture");
    assert!(
        on_disk == written,
        "{} differs from what the writer writes now; rerun with DEIT_PIPE_WRITE_CACHE_FIXTURE=1 \
         and tools/cache_probs_pyarrow.py",
        committed.display()
    );
}

/// pyarrow, reading only the footer's documentation, gets the same top-K probabilities
/// as our reader (fixture made by `tools/cache_probs_pyarrow.py`).
#[test]
fn pyarrow_reconstruction_matches_our_reader() {
    let text = std::fs::read_to_string(fixture_dir().join("probs_pyarrow.json"))
        .expect("probs_pyarrow.json (run tools/cache_probs_pyarrow.py)");
    let fx: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let cache = TeacherCache::open_for_inspect(&fixture_dir()).expect("open the fixture");
    assert_eq!(cache.binding(), &fixture_binding());
    let rows: Vec<CachedTarget> = cache
        .epoch_reader(0)
        .expect("reader")
        .collect::<Result<_, _>>()
        .expect("rows");
    let fx_rows = fx["rows"].as_array().expect("rows");
    assert_eq!(fx_rows.len(), rows.len());
    assert!(fx["top1_names"][3].as_str().is_some());
    let mut worst = 0f64;
    for (t, r) in rows.iter().zip(fx_rows) {
        assert_eq!(r["slot"].as_u64(), Some(u64::from(t.slot)));
        let ids: Vec<u32> = r["ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(ids, t.topk_ids);
        let probs: Vec<f64> = r["probs"]
            .as_array()
            .expect("probs")
            .iter()
            .map(|v| v.as_f64().expect("p"))
            .collect();
        let soft = formats::cache_schema::soft_distribution(t, 10, 1.0).expect("soft");
        for (i, (&id, &p)) in t.topk_ids.iter().zip(&probs).enumerate() {
            let ours = f64::from((t.topk_logits[i] - t.lse).exp());
            worst = worst
                .max((ours - p).abs())
                .max((f64::from(soft[id as usize]) - p).abs());
        }
        // The tail mass is real (K < C), so the uniform tail does not rescale the top-K.
        let top: f64 = probs.iter().sum();
        assert!(top < 0.999, "slot {}: top-K mass {top}", t.slot);
    }
    assert!(worst <= 1e-6, "largest difference {worst}");
}
