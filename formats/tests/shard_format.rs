//! Shard format: write with `ShardWriter`, read back through `ShardSet`, and check that
//! damaged files give errors (never panics), including a proptest fuzz over byte mutations
//! and truncations of real shard, index and manifest files.

use formats::atomic::write_atomic;
use formats::shard::{
    fingerprint, Encoding, FormatError, Manifest, RecordMeta, ShardOptions, ShardSet, ShardWriter,
    FORMAT_VERSION, MANIFEST_FILE,
};
use proptest::prelude::*;
use std::path::Path;

fn record_bytes(i: usize) -> Vec<u8> {
    (0..(17 + i * 13)).map(|k| (k * 31 + i * 7) as u8).collect()
}

/// Write a set of `n` records into `dir` split over shards of at most `per_shard` records.
fn write_set(dir: &Path, n: usize, per_shard: usize) -> Manifest {
    let classes: Vec<String> = vec!["cat".into(), "dog".into(), "eel".into()];
    let mut shards = Vec::new();
    let mut counts = vec![0u64; classes.len()];
    let mut total = 0u64;
    let mut i = 0;
    while i < n {
        let mut w = ShardWriter::create(dir, shards.len()).unwrap();
        while i < n && w.records() < per_shard {
            let bytes = record_bytes(i);
            let label = (i % 3) as u32;
            counts[label as usize] += 1;
            total += bytes.len() as u64;
            let meta = RecordMeta {
                label,
                orig_width: 100 + i as u32,
                orig_height: 50 + i as u32,
                width: 10 + i as u32,
                height: 5 + i as u32,
                encoding: if i % 2 == 0 {
                    Encoding::Jpeg
                } else {
                    Encoding::RawRgbZstd
                },
            };
            w.push(meta, &bytes).unwrap();
            i += 1;
        }
        shards.push(w.finish().unwrap());
    }
    let digests: Vec<String> = shards.iter().map(|s| s.digest.clone()).collect();
    let m = Manifest {
        format: "deit-pipe-shards".into(),
        format_version: FORMAT_VERSION,
        split: "train".into(),
        fingerprint: fingerprint(&classes, &digests),
        classes,
        num_records: n as u64,
        counts_per_class: counts,
        total_bytes: total,
        options: ShardOptions {
            format: Encoding::Jpeg,
            max_side: 512,
            quality: 90,
            shard_bytes: 1 << 30,
            seed: 0,
            max_pixels: 89_478_485,
            input: "imagefolder".into(),
            restart_mcus: 4,
        },
        shards,
        skipped: vec![],
        writer: "test".into(),
    };
    write_atomic(&dir.join(MANIFEST_FILE), &m.to_json()).unwrap();
    m
}

#[test]
fn records_round_trip_across_shards() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_set(dir.path(), 10, 4);
    let set = ShardSet::open(dir.path()).unwrap();
    assert_eq!(set.len(), 10);
    assert_eq!(set.num_shards(), 3);
    assert_eq!(set.num_classes(), 3);
    assert_eq!(set.fingerprint(), m.fingerprint);
    for i in 0..10 {
        let r = set.verify_record(i).unwrap();
        assert_eq!(r.bytes, &record_bytes(i)[..]);
        assert_eq!(r.label, (i % 3) as u32);
        assert_eq!((r.width, r.height), (10 + i as u32, 5 + i as u32));
        assert_eq!(
            (r.orig_width, r.orig_height),
            (100 + i as u32, 50 + i as u32)
        );
        assert_eq!(set.record(i).unwrap(), r);
    }
    assert!(matches!(
        set.record(10),
        Err(FormatError::OutOfRange { index: 10, len: 10 })
    ));
    let report = set.verify_all(|_| {});
    assert!(report.is_ok());
    assert_eq!(report.recomputed_fingerprint, m.fingerprint);
}

#[test]
fn fingerprint_changes_with_any_byte_or_label() {
    let a = tempfile::tempdir().unwrap();
    let ma = write_set(a.path(), 6, 4);
    // Same content written again: same fingerprint.
    let b = tempfile::tempdir().unwrap();
    assert_eq!(write_set(b.path(), 6, 4).fingerprint, ma.fingerprint);
    // One record byte flipped in place: verify names the record and the digest changes.
    let data = a.path().join("shard-00001.bin");
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&data, &bytes).unwrap();
    let set = ShardSet::open(a.path()).unwrap();
    let err = set.verify_record(5).unwrap_err().to_string();
    assert!(
        err.contains("shard-00001.bin") && err.contains("record 5"),
        "{err}"
    );
    assert!(set.verify_record(4).is_ok());
    let report = set.verify_all(|_| {});
    assert_eq!(report.bad_records.len(), 1);
    assert_eq!(report.bad_shards.len(), 1);
    assert_ne!(report.recomputed_fingerprint, ma.fingerprint);
}

#[test]
fn truncated_shard_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 8, 8);
    let data = dir.path().join("shard-00000.bin");
    let len = std::fs::metadata(&data).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    let err = ShardSet::open(dir.path()).err().unwrap().to_string();
    assert!(
        err.contains("shard-00000.bin") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn newer_manifest_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 3, 8);
    let p = dir.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&p).unwrap();
    let text = text.replace("\"format_version\": 1", "\"format_version\": 7");
    std::fs::write(&p, text).unwrap();
    let err = ShardSet::open(dir.path()).err().unwrap();
    assert!(
        matches!(
            err,
            FormatError::UnsupportedVersion {
                found: 7,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn newer_data_file_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 3, 8);
    let p = dir.path().join("shard-00000.bin");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&p, bytes).unwrap();
    let err = ShardSet::open(dir.path()).err().unwrap();
    assert!(
        matches!(err, FormatError::UnsupportedVersion { found: 2, .. }),
        "{err}"
    );
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, xor: u8 },
    Truncate { keep: usize },
    Append { extra: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        any::<usize>().prop_map(|keep| Damage::Truncate { keep }),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|extra| Damage::Append { extra }),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    match d {
        Damage::Flip { at, xor } => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= xor;
            }
        }
        Damage::Truncate { keep } => {
            let k = keep % (bytes.len() + 1);
            bytes.truncate(k);
        }
        Damage::Append { extra } => bytes.extend_from_slice(extra),
    }
}

/// The files of a real 7-record, 2-shard set, written once.
fn template_files() -> &'static Vec<Vec<u8>> {
    static FILES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 7, 4);
        [
            "shard-00000.bin",
            "shard-00000.idx",
            "shard-00001.bin",
            "shard-00001.idx",
            MANIFEST_FILE,
        ]
        .iter()
        .map(|n| std::fs::read(dir.path().join(n)).unwrap())
        .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random damage to any file of a real shard set: opening and reading every record must
    /// return values or errors, never panic or read out of bounds.
    #[test]
    fn damaged_files_never_panic(file in 0usize..5, damages in proptest::collection::vec(damage(), 1..4)) {
        let names = ["shard-00000.bin", "shard-00000.idx", "shard-00001.bin", "shard-00001.idx", MANIFEST_FILE];
        let template = template_files();
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in names.iter().zip(template) {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let p = dir.path().join(names[file]);
        let original = template[file].clone();
        let mut bytes = original.clone();
        for d in &damages {
            apply(&mut bytes, d);
        }
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(set) = ShardSet::open(dir.path()) {
            for i in 0..set.len() + 2 {
                let _ = set.record(i);
                let _ = set.verify_record(i);
            }
            let report = set.verify_all(|_| {});
            // A change to a data file that open() accepted must still be caught by verify.
            if bytes != original && names[file].ends_with(".bin") {
                prop_assert!(!report.is_ok());
            }
        }
    }
}
