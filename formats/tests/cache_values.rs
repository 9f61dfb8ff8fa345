//! Issue 25: forged cache values with recomputed digests. The digest is unkeyed and
//! documented, so anyone can re-seal a file; every row value is therefore checked against
//! what it must be: `lse_gap <= ln C` (+ f16 rounding), top-K probabilities summing to at
//! most 1, and footer class names that are a JSON list of at most C strings. A sealed but
//! impossible file is refused naming the file, the row and the column.
#![cfg(feature = "parquet")]

use std::path::Path;

use formats::cache_schema::{
    testing, verify_file, CacheBinding, CacheRow, FileHeader, PartSpec, TeacherCache, ViewKey,
    CACHE_FORMAT_VERSION, CLASS_NAMES_KEY,
};
use half::f16;

const DATASET_LEN: u32 = 64;

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

fn header(b: &CacheBinding, slots: u32) -> FileHeader {
    FileHeader {
        binding: b.clone(),
        epoch: 0,
        part: PartSpec::WHOLE,
        epoch_slots: slots,
        dataset_len: DATASET_LEN,
    }
}

fn key(slot: u32) -> ViewKey {
    ViewKey {
        epoch: 0,
        slot,
        sample: slot,
        partner: slot ^ 1,
        lam: 1.0,
        view_hash: u64::from(slot),
    }
}

/// Logits of slot `slot` from an explicit-seed generator (splitmix64), spread `spread`.
fn logits(slot: u32, c: usize, spread: f32) -> Vec<f32> {
    let mut s = 0x5eed_u64 ^ u64::from(slot) << 20;
    (0..c)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 * spread
        })
        .collect()
}

fn genuine(b: &CacheBinding, n: u32) -> Vec<CacheRow> {
    (0..n)
        .map(|s| {
            CacheRow::from_logits(
                key(s),
                &logits(s, b.num_classes as usize, 6.0),
                b.top_k as usize,
            )
            .unwrap()
        })
        .collect()
}

fn read_all(dir: &Path, b: &CacheBinding) -> Result<usize, String> {
    let cache = TeacherCache::open(dir, b).map_err(|e| e.to_string())?;
    let mut n = 0;
    for r in cache.epoch_reader(0).map_err(|e| e.to_string())? {
        r.map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

/// Rows the writer makes from real logits are never refused by the new bounds, at the
/// edges included: all logits equal (`lse_gap = ln C` exactly), K = C (the top-K mass is
/// 1), one dominant logit, a wide spread (tiny probabilities), C = 1.
#[test]
fn rows_from_real_logits_pass_the_value_bounds() {
    for &(k, c) in &[
        (1, 1),
        (1, 2),
        (2, 2),
        (5, 5),
        (5, 10),
        (10, 1000),
        (1000, 1000),
        (3, 70_000),
    ] {
        let mut cases: Vec<Vec<f32>> = vec![vec![0.0; c as usize], vec![3.25; c as usize]];
        let mut dominant = vec![-1.0; c as usize];
        dominant[0] = 30.0;
        cases.push(dominant);
        for (slot, spread) in [(1, 1e-3), (2, 0.5), (3, 6.0), (4, 60.0), (5, 4000.0)] {
            cases.push(logits(slot, c as usize, spread));
        }
        for (i, l) in cases.iter().enumerate() {
            let row = CacheRow::from_logits(key(i as u32), l, k as usize).unwrap();
            row.validate(k as usize, c)
                .unwrap_or_else(|e| panic!("K={k} C={c} case {i}: {e}"));
        }
    }
}

/// `lse_gap` above ln C, re-sealed: refused naming file, row and column.
#[test]
fn lse_gap_above_ln_c_is_refused_by_row() {
    let tmp = tempfile::tempdir().unwrap();
    let b = binding(3, 10);
    let mut rows = genuine(&b, 8);
    // ln 10 = 2.30; 2.5 would need more than 10 classes.
    rows[5].lse_gap = f16::from_f32(2.5);
    let path = testing::write_unchecked(tmp.path(), header(&b, 8), &rows).unwrap();
    let e = read_all(tmp.path(), &b).unwrap_err();
    assert!(
        e.contains(&path.file_name().unwrap().to_string_lossy().to_string())
            && e.contains("row 5")
            && e.contains("lse_gap")
            && e.contains("ln C"),
        "{e}"
    );
    let e = verify_file(&path).unwrap_err().to_string();
    assert!(e.contains("row 5") && e.contains("lse_gap"), "{e}");
    // Just inside the bound (ln 10 in f16): accepted.
    rows[5].lse_gap = f16::from_f64(10f64.ln());
    rows[5].logit_gaps = vec![f16::from_f32(60.0); 2];
    let tmp2 = tempfile::tempdir().unwrap();
    testing::write_unchecked(tmp2.path(), header(&b, 8), &rows).unwrap();
    assert_eq!(read_all(tmp2.path(), &b), Ok(8));
}

/// Top-K probabilities that sum past 1 (gaps too small for the stored lse), re-sealed.
#[test]
fn topk_probabilities_summing_past_one_are_refused_by_row() {
    let tmp = tempfile::tempdir().unwrap();
    let b = binding(4, 10);
    let mut rows = genuine(&b, 8);
    // Four classes within 0.01 of the top-1 but an lse of top1 + 0.1: mass ~3.6.
    rows[2].logit_gaps = vec![
        f16::from_f32(0.0),
        f16::from_f32(0.005),
        f16::from_f32(0.01),
    ];
    rows[2].lse_gap = f16::from_f32(0.1);
    let path = testing::write_unchecked(tmp.path(), header(&b, 8), &rows).unwrap();
    let e = read_all(tmp.path(), &b).unwrap_err();
    assert!(
        e.contains(&path.file_name().unwrap().to_string_lossy().to_string())
            && e.contains("row 2")
            && e.contains("more than 1"),
        "{e}"
    );
    // K = C with lse_gap 0 (all mass on the top-1) but other classes at gap 0: mass 2+.
    let b = binding(3, 3);
    let mut rows = genuine(&b, 4);
    rows[3].logit_gaps = vec![f16::from_f32(0.0), f16::from_f32(1.0)];
    rows[3].lse_gap = f16::from_f32(0.0);
    let tmp = tempfile::tempdir().unwrap();
    testing::write_unchecked(tmp.path(), header(&b, 4), &rows).unwrap();
    let e = read_all(tmp.path(), &b).unwrap_err();
    assert!(e.contains("row 3") && e.contains("more than 1"), "{e}");
}

/// Footer class names that are not JSON, or more names than classes, re-sealed.
#[test]
fn footer_class_names_must_be_a_json_list_of_at_most_c_names() {
    let b = binding(2, 3);
    let rows = genuine(&b, 4);
    for (value, why) in [
        ("cat, dog", "not a JSON list of strings"),
        (r#"{"a": 1}"#, "not a JSON list of strings"),
        (r#"[1, 2]"#, "not a JSON list of strings"),
        (
            r#"["a", "b", "c", "d"]"#,
            "4 class names for a cache of 3 classes",
        ),
        ("[]", "0 class names"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = testing::write_unchecked_with_footer(
            tmp.path(),
            header(&b, 4),
            &rows,
            &[(CLASS_NAMES_KEY, value)],
        )
        .unwrap();
        let e = TeacherCache::open(tmp.path(), &b).unwrap_err().to_string();
        assert!(
            e.contains(&path.file_name().unwrap().to_string_lossy().to_string())
                && e.contains(CLASS_NAMES_KEY)
                && e.contains(why),
            "{value}: {e}"
        );
        assert!(verify_file(&path).is_err(), "{value}");
    }
    // Fewer names than classes (a model with more outputs than the data has classes): fine.
    let tmp = tempfile::tempdir().unwrap();
    testing::write_unchecked_with_footer(
        tmp.path(),
        header(&b, 4),
        &rows,
        &[(CLASS_NAMES_KEY, r#"["a","b"]"#)],
    )
    .unwrap();
    assert_eq!(read_all(tmp.path(), &b), Ok(4));
}
