//! Fuzzing the cache reader: mutated bytes of a small valid cache file (flips, overwrites,
//! truncations, insertions) go through what `train` does (open, require the epoch, read
//! every row) and what `cache inspect` does (`verify_file`). Nothing may panic; every
//! mutation of the raw file is refused by the checksums; and with the checksums recomputed
//! (`testing::reseal`) the mutated bytes reach the Parquet decoder, which must still end in
//! rows that pass the schema's rules or an error naming the file.
//!
//! The normal suite runs 256 cases (about a second). More:
//! `DEIT_PIPE_FUZZ_CASES=100000 cargo test --release -p formats --features parquet --test cache_fuzz -- --nocapture`
//! (`BENCHMARKS.md`, "Fuzzing: cache reader").
#![cfg(feature = "parquet")]

use std::path::Path;

use formats::cache_schema::{
    testing, verify_file, CacheBinding, CacheError, CacheRow, CacheWriter, CachedTarget,
    FileHeader, PartSpec, TeacherCache, ViewKey, WriterOptions, CACHE_FORMAT_VERSION,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn cases() -> u32 {
    std::env::var("DEIT_PIPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn binding() -> CacheBinding {
    CacheBinding {
        format_version: CACHE_FORMAT_VERSION,
        dataset_fingerprint: "fp".into(),
        augment_config_json: "{}".into(),
        augment_config_hash: "0000000000000000".into(),
        run_seed: 1,
        repeats: 3,
        teacher_arch: "t".into(),
        teacher_weights_hash: "h".into(),
        top_k: 3,
        num_classes: 12,
        pipeline_version: "1".into(),
    }
}

/// A small valid file: 40 slots, row groups of 16, K = 3 of C = 12.
fn valid_file(dir: &Path) -> Vec<u8> {
    let b = binding();
    let header = FileHeader {
        binding: b.clone(),
        epoch: 0,
        part: PartSpec::WHOLE,
        epoch_slots: 40,
        dataset_len: 50,
    };
    let opts = WriterOptions {
        row_group_rows: 16,
        ..WriterOptions::default()
    };
    let mut w = CacheWriter::create_with(dir, header, opts).expect("create");
    let rows: Vec<CacheRow> = (0..40u32)
        .map(|slot| {
            let logits: Vec<f32> = (0..12u32)
                .map(|c| ((c * 7 + slot * 3) % 13) as f32 * 0.5 - 2.0)
                .collect();
            let key = ViewKey {
                epoch: 0,
                slot,
                sample: slot % 50,
                partner: (slot * 3) % 50,
                lam: if slot % 3 == 0 { 1.0 } else { 0.25 },
                view_hash: u64::from(slot).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            };
            CacheRow::from_logits(key, &logits, 3).expect("row")
        })
        .collect();
    w.write_rows(&rows).expect("write");
    let path = w.finish().expect("finish");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::remove_file(&path).expect("remove");
    bytes
}

fn train_read(dir: &Path) -> Result<Vec<CachedTarget>, CacheError> {
    let cache = TeacherCache::open(dir, &binding())?;
    cache.require_epochs(0..1)?;
    cache.epoch_reader(0)?.collect()
}

/// One mutation: (kind, position, byte); see [`mutate`].
type Mutation = (u8, prop::sample::Index, u8);

/// Kinds 0-3 (flip, overwrite, truncate, insert) hit anywhere; 4-7 the same inside the
/// data pages (the first `data_len` bytes), so that half the mutations reach the decoder
/// rather than the (larger) footer.
fn mutate(base: &[u8], data_len: usize, muts: &[Mutation]) -> Vec<u8> {
    let mut v = base.to_vec();
    for (kind, at, byte) in muts {
        if v.is_empty() {
            break;
        }
        let span = if *kind >= 4 {
            data_len.min(v.len())
        } else {
            v.len()
        };
        let i = at.index(span.max(1));
        match kind % 4 {
            0 => v[i] ^= byte.max(&1),
            1 => v[i] = *byte,
            2 => v.truncate(i),
            _ => v.insert(i, *byte),
        }
    }
    v
}

#[derive(Default, Debug)]
struct Tally {
    raw_refused: u64,
    identical: u64,
    resealed_ok: u64,
    resealed_refused: u64,
    decoder_panics_caught: u64,
    unsealable: u64,
}

#[test]
fn mutated_cache_files_never_panic_and_raw_mutations_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = valid_file(dir.path());
    let footer_len =
        u32::from_le_bytes(base[base.len() - 8..base.len() - 4].try_into().expect("4"));
    let data_len = base.len() - 8 - footer_len as usize;
    let path = dir.path().join("epoch-00000.parquet");
    let tally = std::cell::RefCell::new(Tally::default());
    let strategy = (
        prop::collection::vec((0u8..8, any::<prop::sample::Index>(), any::<u8>()), 1..6),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&strategy, |(muts, reseal)| {
        let bytes = mutate(&base, data_len, &muts);
        std::fs::write(&path, &bytes).expect("write");
        let mut t = tally.borrow_mut();
        if !reseal {
            if bytes == base {
                t.identical += 1;
                prop_assert!(train_read(dir.path()).is_ok());
                return Ok(());
            }
            let e = train_read(dir.path()).expect_err("a mutated file was accepted");
            prop_assert!(e.to_string().contains("epoch-00000.parquet"), "{}", e);
            prop_assert!(
                verify_file(&path).is_err(),
                "verify_file accepted a mutation"
            );
            t.raw_refused += 1;
            return Ok(());
        }
        if testing::reseal(&path).is_err() {
            t.unsealable += 1;
            return Ok(());
        }
        match train_read(dir.path()) {
            Ok(_) => t.resealed_ok += 1,
            Err(e) => {
                // An error names the file, or is the epoch's coverage problem (a resealed
                // header may claim another slot count).
                let msg = e.to_string();
                prop_assert!(
                    msg.contains("epoch-00000.parquet") || msg.starts_with("epoch 0: "),
                    "{}",
                    msg
                );
                if msg.contains("the Parquet decoder failed") {
                    t.decoder_panics_caught += 1;
                }
                t.resealed_refused += 1;
            }
        }
        Ok(())
    });
    let t = tally.borrow();
    eprintln!(
        "{} cases run: {:?}",
        t.raw_refused + t.identical + t.resealed_ok + t.resealed_refused + t.unsealable,
        t
    );
    if let Err(e) = outcome {
        panic!("{e}");
    }
}
