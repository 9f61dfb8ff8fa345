//! Fuzz target for the shard reader: mutated bytes of a small valid shard set (data files,
//! indexes, manifest), opened with `ShardSet::open_split` and read through every accessor.
//! Any panic fails the test; opened sets must keep their invariants (every record an
//! accessor returns lies inside its data file, inside the pixel limit, with a label of the
//! class list; a changed data or index byte is always caught).
//!
//! The normal test run tries `DEFAULT_CASES` inputs (about a second in release mode);
//! `DEIT_PIPE_FUZZ_CASES=100000 cargo test --release -p formats --test shard_fuzz` runs more
//! (BENCHMARKS.md, "Fuzzing: shard reader", has the recorded run).

use formats::atomic::write_atomic;
use formats::shard::layout::{ENTRY_LEN, INDEX_HEADER_LEN};
use formats::shard::{
    fingerprint, Encoding, Manifest, RecordMeta, ShardOptions, ShardSet, ShardWriter,
    FORMAT_VERSION, MANIFEST_FILE,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Inputs tried when `DEIT_PIPE_FUZZ_CASES` is not set.
const DEFAULT_CASES: u32 = 5000;

/// Inputs whose changed set still opened, and record reads refused in them (printed at
/// the end, to show the mutations reach past the open-time checks).
static OPENED_CHANGED: AtomicUsize = AtomicUsize::new(0);
static REFUSED_READS: AtomicUsize = AtomicUsize::new(0);

const NAMES: [&str; 5] = [
    "shard-00000.bin",
    "shard-00000.idx",
    "shard-00001.bin",
    "shard-00001.idx",
    MANIFEST_FILE,
];

fn record_bytes(i: usize) -> Vec<u8> {
    (0..(11 + i * 7)).map(|k| (k * 37 + i * 5) as u8).collect()
}

/// A 6-record, 2-shard set of 3 classes in `dir`.
fn write_set(dir: &Path) {
    let classes: Vec<String> = vec!["ant".into(), "bee".into(), "cow".into()];
    let (n, per_shard) = (6, 4);
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
                orig_width: 300 + i as u32,
                orig_height: 200 + i as u32,
                width: 30 + i as u32,
                height: 20 + i as u32,
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
        writer: "fuzz".into(),
    };
    write_atomic(&dir.join(MANIFEST_FILE), &m.to_json()).unwrap();
}

fn template() -> &'static Vec<Vec<u8>> {
    static FILES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path());
        NAMES
            .iter()
            .map(|n| std::fs::read(dir.path().join(n)).unwrap())
            .collect()
    })
}

/// Values that sit on the edges the reader checks.
const INTERESTING: [u64; 14] = [
    0,
    1,
    2,
    3,
    31,
    32,
    48,
    40_000,
    65_536,
    65_537,
    (1 << 31) - 1,
    u32::MAX as u64,
    1 << 32,
    u64::MAX,
];

const INTERESTING_TEXT: [&str; 12] = [
    "0",
    "1",
    "-1",
    "4294967295",
    "18446744073709551615",
    "1e400",
    "\"../x\"",
    "\"\"",
    "\"val\"",
    "null",
    "[]",
    "{}",
];

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: usize,
        xor: u8,
    },
    Overwrite {
        at: usize,
        bytes: Vec<u8>,
    },
    Word {
        at: usize,
        value: usize,
        wide: bool,
    },
    Truncate {
        keep: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Delete {
        at: usize,
        len: usize,
    },
    /// Replace the k-th number or string of a JSON text with an interesting token.
    Token {
        k: usize,
        with: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Overwrite { at, bytes }),
        3 => (any::<usize>(), 0..INTERESTING.len(), any::<bool>())
            .prop_map(|(at, value, wide)| Mutation::Word { at, value, wide }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..32))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        3 => (any::<usize>(), 0..INTERESTING_TEXT.len())
            .prop_map(|(k, with)| Mutation::Token { k, with }),
    ]
}

/// Byte spans of JSON numbers and strings in `b`.
fn tokens(b: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            v.push((start, (i + 1).min(b.len())));
            i += 1;
        } else if b[i].is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            v.push((start, i));
        } else {
            i += 1;
        }
    }
    v
}

fn apply(b: &mut Vec<u8>, m: &Mutation) {
    let n = b.len();
    match m {
        Mutation::Flip { at, xor } if n > 0 => b[at % n] ^= xor,
        Mutation::Overwrite { at, bytes } if n > 0 => {
            let at = at % n;
            for (k, &x) in bytes.iter().enumerate() {
                if let Some(slot) = b.get_mut(at + k) {
                    *slot = x;
                }
            }
        }
        Mutation::Word { at, value, wide } => {
            let v = INTERESTING[*value].to_le_bytes();
            let w = if *wide { 8 } else { 4 };
            if n >= w {
                // Aligned as the binary layouts' fields are.
                let at = (at % (n - w + 1)) / 4 * 4;
                b[at..at + w].copy_from_slice(&v[..w]);
            }
        }
        Mutation::Truncate { keep } => b.truncate(keep % (n + 1)),
        Mutation::Insert { at, bytes } => {
            let at = at % (n + 1);
            b.splice(at..at, bytes.iter().copied());
        }
        Mutation::Delete { at, len } if n > 0 => {
            let at = at % n;
            b.drain(at..(at + len).min(n));
        }
        Mutation::Token { k, with } => {
            let t = tokens(b);
            if !t.is_empty() {
                let (s, e) = t[k % t.len()];
                b.splice(s..e, INTERESTING_TEXT[*with].bytes());
            }
        }
        _ => {}
    }
}

/// Recompute the entries hash of a mutated index (as a hostile writer would), so the
/// mutation reaches the per-entry checks behind the hash.
fn rehash_index(b: &mut [u8]) {
    if b.len() >= INDEX_HEADER_LEN {
        let h = blake3::hash(&b[INDEX_HEADER_LEN..]);
        b[32..64].copy_from_slice(h.as_bytes());
    }
}

/// Recompute a mutated manifest's fingerprint (when it still parses as JSON), so the
/// mutation reaches the checks behind it.
fn refingerprint(b: &mut Vec<u8>) {
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(b) else {
        return;
    };
    let classes: Option<Vec<String>> = v.get("classes").and_then(|c| {
        c.as_array()?
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect()
    });
    let digests: Option<Vec<String>> = v.get("shards").and_then(|s| {
        s.as_array()?
            .iter()
            .map(|x| x.get("digest")?.as_str().map(String::from))
            .collect()
    });
    if let (Some(c), Some(d), Some(obj)) = (classes, digests, v.as_object_mut()) {
        obj.insert("fingerprint".into(), fingerprint(&c, &d).into());
        if let Ok(text) = serde_json::to_vec(&v) {
            *b = text;
        }
    }
}

/// A `train/` split folder holding the template set (in `/dev/shm` when there is one:
/// each input rewrites a file).
fn template_split() -> (tempfile::TempDir, PathBuf) {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let split = dir.path().join("train");
    std::fs::create_dir_all(&split).unwrap();
    for (name, bytes) in NAMES.iter().zip(template()) {
        std::fs::write(split.join(name), bytes).unwrap();
    }
    (dir, split)
}

/// Puts a template file back when one input is done, whatever its outcome.
struct Restore<'a>(&'a Path, usize);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join(NAMES[self.1]), &template()[self.1]);
    }
}

/// One fuzz input against the template split folder `split`: which file, the mutations,
/// and whether hashes are fixed up after.
fn case(split: &Path, file: usize, muts: &[Mutation], fix_up: bool) -> Result<(), TestCaseError> {
    let _restore = Restore(split, file);
    let tpl = template();
    let mut bytes = tpl[file].clone();
    for m in muts {
        apply(&mut bytes, m);
    }
    let name = NAMES[file];
    if fix_up && name.ends_with(".idx") {
        rehash_index(&mut bytes);
    }
    if fix_up && name == MANIFEST_FILE {
        refingerprint(&mut bytes);
    }
    std::fs::write(split.join(name), &bytes).unwrap();
    let changed = bytes != tpl[file];
    let set = match ShardSet::open_split(split) {
        Ok(set) => set,
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            return Ok(());
        }
    };
    if changed && name.ends_with(".idx") && !fix_up {
        prop_assert!(false, "a changed index opened: {muts:?}");
    }
    if changed {
        OPENED_CHANGED.fetch_add(1, Ordering::Relaxed);
    }
    let classes = set.num_classes();
    for i in 0..set.len() + 2 {
        if let Ok(e) = set.entry(i) {
            prop_assert!((e.label as usize) < classes);
            prop_assert!(u64::from(e.width) * u64::from(e.height) <= set.pixel_limit());
        }
        let plain = set.record(i);
        let checked = set.verify_record(i);
        if changed && i < set.len() && checked.is_err() {
            REFUSED_READS.fetch_add(1, Ordering::Relaxed);
        }
        prop_assert_eq!(plain.is_ok(), set.entry(i).is_ok());
        if let (Ok(p), Ok(c)) = (&plain, &checked) {
            prop_assert_eq!(p, c);
            prop_assert_eq!(
                crc32fast::hash(c.bytes),
                set.entry(i).map(|e| e.crc32).unwrap()
            );
        }
        // First read checks the CRC; the second takes the remembered result.
        for _ in 0..2 {
            let once = set.record_checked(i);
            prop_assert_eq!(once.is_ok(), checked.is_ok());
        }
    }
    let report = set.verify_all(|_| {});
    if changed && name.ends_with(".bin") {
        prop_assert!(
            !report.is_ok() || report.recomputed_fingerprint != set.fingerprint(),
            "a changed data file verified: {muts:?}"
        );
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("DEIT_PIPE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

#[test]
fn mutated_shard_sets_never_panic() {
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0usize..NAMES.len(),
        proptest::collection::vec(mutation(), 1..5),
        any::<bool>(),
    );
    let (_dir, split) = template_split();
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |(file, muts, fix_up)| {
        case(&split, file, &muts, fix_up)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    eprintln!(
        "shard reader fuzz: {n} mutated inputs, 0 failures, {:.1} s ({} changed sets opened, \
         {} record reads refused in them)",
        started.elapsed().as_secs_f64(),
        OPENED_CHANGED.load(Ordering::Relaxed),
        REFUSED_READS.load(Ordering::Relaxed)
    );
}

#[test]
fn template_is_valid_and_every_file_matters() {
    let (_dir, split) = template_split();
    case(&split, 0, &[], false).unwrap();
    let set = ShardSet::open_split(&split).unwrap();
    assert_eq!(set.len(), 6);
    assert!(set.verify_all(|_| {}).is_ok());
    assert_eq!(template()[1].len(), INDEX_HEADER_LEN + 4 * ENTRY_LEN);
}
