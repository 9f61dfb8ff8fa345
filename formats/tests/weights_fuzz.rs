//! Fuzzing the weights readers: mutated and arbitrary bytes through the `.pth` reader
//! (zip archives and legacy streams, so the unpickler itself sees the mutations) and
//! the safetensors reader. Every input must give `Ok` or an ordinary error: a panic
//! fails the test, an abort or a hang kills it.
//!
//! The normal test run tries `WEIGHTS_FUZZ_CASES` inputs per target (default 2000,
//! well under a second); BENCHMARKS.md ("Fuzzing: weights readers") records the 100k run:
//!
//!     WEIGHTS_FUZZ_CASES=100000 cargo test --release -p formats --features weights --test weights_fuzz

#![cfg(feature = "weights")]

mod weights_util;

use formats::weights::read_weights_bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::Cell;
use weights_util::*;

fn cases() -> u32 {
    std::env::var("WEIGHTS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        // shrinking a failure is slow and the failing input is printed anyway
        max_shrink_iters: 200,
        ..Config::default()
    })
}

/// A state dict of several tensors in the given layout, its storages, as a pickle.
fn seed_state_dict(legacy: bool, proto4_frame: bool) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let mut p = Pickle::new(if proto4_frame { 4 } else { 2 });
    p.op(b"}").mark().str("model");
    p.state_dict(|p| {
        p.str("a").tensor(&TensorSpec::f32("0", &[2, 3]), legacy);
        let mut t = TensorSpec::f32("0", &[3, 2]);
        t.stride = vec![1, 3];
        t.numel = 6;
        p.str("a_t").tensor(&t, legacy);
        let mut h = TensorSpec::f32("1", &[2]);
        h.class = "HalfStorage".into();
        p.str("h").tensor(&h, legacy);
        p.str("p")
            .global("torch._utils", "_rebuild_parameter")
            .mark();
        p.tensor(&TensorSpec::f32("2", &[1]), legacy)
            .op(&[0x88])
            .ordered_dict()
            .op(b"tR");
        p.str("x")
            .global("posix", "system")
            .mark()
            .str("true")
            .op(b"tR");
    });
    p.op(b"u");
    let mut pkl = p.stop();
    if proto4_frame {
        let body = pkl.split_off(2);
        pkl.push(0x95);
        pkl.extend_from_slice(&(body.len() as u64).to_le_bytes());
        pkl.extend_from_slice(&body);
    }
    let storages = vec![
        ("0".to_string(), f32_bytes(&[0., 1., 2., 3., 4., 5.])),
        ("1".to_string(), vec![0, 0x3c, 0, 0xc0]),
        ("2".to_string(), f32_bytes(&[9.])),
    ];
    (pkl, storages)
}

fn zip_of(pkl: &[u8], storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    let s: Vec<(&str, Vec<u8>)> = storages
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    zip_checkpoint("archive", pkl, &s)
}

fn legacy_of(pkl: &[u8], storages: &[(String, Vec<u8>)]) -> Vec<u8> {
    let s: Vec<(&str, i64, Vec<u8>)> = storages
        .iter()
        .map(|(k, v)| {
            let n = if k == "1" { v.len() / 2 } else { v.len() / 4 };
            (k.as_str(), n as i64, v.clone())
        })
        .collect();
    legacy_checkpoint(pkl, &s)
}

fn seed_safetensors() -> Vec<u8> {
    let hdr = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"h":{"dtype":"F16","shape":[2],"data_offsets":[24,28]},"n":{"dtype":"I64","shape":[],"data_offsets":[28,36]}}"#;
    let mut data = f32_bytes(&[0., 1., 2., 3., 4., 5.]);
    data.extend_from_slice(&[0, 0x3c, 0, 0xc0]);
    data.extend_from_slice(&7i64.to_le_bytes());
    safetensors_raw(hdr, &data)
}

/// One mutation of a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite the byte at (position mod len).
    Set(usize, u8),
    /// Flip one bit.
    Flip(usize, u8),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Delete a range.
    Delete(usize, usize),
    /// Cut the input.
    Truncate(usize),
    /// Copy a range elsewhere (repeats opcodes and lengths).
    Splice(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Set(p, b)),
        3 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(p, b)| Mutation::Insert(p, b)),
        2 => (any::<usize>(), 1usize..32).prop_map(|(p, n)| Mutation::Delete(p, n)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), any::<usize>(), 1usize..64)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
    ]
}

fn apply(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = v.len().max(1);
        match m {
            Mutation::Set(p, b) if !v.is_empty() => v[p % len] = *b,
            Mutation::Flip(p, b) if !v.is_empty() => v[p % len] ^= 1 << b,
            Mutation::Insert(p, b) => {
                let at = p % (v.len() + 1);
                v.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(p, n) if !v.is_empty() => {
                let at = p % len;
                let end = (at + n).min(v.len());
                v.drain(at..end);
            }
            Mutation::Truncate(p) => v.truncate(p % (v.len() + 1)),
            Mutation::Splice(a, b, n) if !v.is_empty() => {
                let from = a % len;
                let end = (from + n).min(v.len());
                let chunk: Vec<u8> = v[from..end].to_vec();
                let at = b % (v.len() + 1);
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

fn muts() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

/// Inputs read without error, and all inputs, of one target (printed with
/// `--nocapture`, to see that mutations still reach the readers' inner checks rather
/// than all failing early).
#[derive(Default)]
struct Counts {
    ok: Cell<usize>,
    all: Cell<usize>,
}

impl Counts {
    /// The reader must return; a panic is a failure (proptest catches and reports it).
    fn must_not_panic(&self, bytes: &[u8], safetensors: bool) {
        self.all.set(self.all.get() + 1);
        if read_weights_bytes(bytes, "fuzz.pth", safetensors).is_ok() {
            self.ok.set(self.ok.get() + 1);
        }
    }

    fn report(&self, target: &str) {
        eprintln!(
            "{target}: {} cases, {} inputs, {} read without error, 0 panics",
            cases(),
            self.all.get(),
            self.ok.get()
        );
    }
}

#[test]
fn fuzz_pth_reader_mutated_pickles_in_zip_archives() {
    let seeds: Vec<_> = [false, true]
        .iter()
        .map(|&frame| seed_state_dict(false, frame))
        .collect();
    let c = Counts::default();
    runner()
        .run(&(0..seeds.len(), muts()), |(i, m)| {
            let (pkl, st) = &seeds[i];
            // the pickle mutated and re-wrapped, so the zip's CRCs are right and the
            // unpickler sees every mutation
            c.must_not_panic(&zip_of(&apply(pkl.clone(), &m), st), false);
            Ok(())
        })
        .unwrap();
    c.report("fuzz_pth_reader_mutated_pickles_in_zip_archives");
}

#[test]
fn fuzz_pth_reader_mutated_legacy_streams_and_archives() {
    let (pkl, st) = seed_state_dict(true, false);
    let legacy = legacy_of(&pkl, &st);
    let (zpkl, zst) = seed_state_dict(false, false);
    let archive = zip_of(&zpkl, &zst);
    let c = Counts::default();
    runner()
        .run(&(any::<bool>(), muts()), |(which, m)| {
            let seed = if which { &legacy } else { &archive };
            c.must_not_panic(&apply(seed.clone(), &m), false);
            Ok(())
        })
        .unwrap();
    c.report("fuzz_pth_reader_mutated_legacy_streams_and_archives");
}

#[test]
fn fuzz_pth_reader_arbitrary_pickle_bytes() {
    // random opcode soup after a protocol header, in a zip and as a legacy stream
    let ops: Vec<u8> = b"()0125NJKMGXTUBCtl]ae}dsucRbQhjqr."
        .iter()
        .copied()
        .chain(0x80..=0x95)
        .collect();
    let op = proptest::sample::select(ops);
    let byte = prop_oneof![op, any::<u8>()];
    let c = Counts::default();
    runner()
        .run(
            &(proptest::collection::vec(byte, 0..256), any::<bool>()),
            |(body, legacy)| {
                let mut pkl = vec![0x80, 2];
                pkl.extend_from_slice(&body);
                let bytes = if legacy {
                    legacy_checkpoint(&pkl, &[])
                } else {
                    zip_checkpoint("a", &pkl, &[])
                };
                c.must_not_panic(&bytes, false);
                Ok(())
            },
        )
        .unwrap();
    c.report("fuzz_pth_reader_arbitrary_pickle_bytes");
}

#[test]
fn fuzz_safetensors_reader() {
    let seed = seed_safetensors();
    let header_len = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let c = Counts::default();
    runner()
        .run(&(0u8..3, muts()), |(how, m)| {
            let bytes = match how {
                // mutate the whole file
                0 => apply(seed.clone(), &m),
                // mutate the header text and re-prefix its true length
                1 => {
                    let hdr = apply(seed[8..8 + header_len].to_vec(), &m);
                    let mut out = (hdr.len() as u64).to_le_bytes().to_vec();
                    out.extend_from_slice(&hdr);
                    out.extend_from_slice(&seed[8 + header_len..]);
                    out
                }
                // arbitrary bytes after a plausible length
                _ => apply(seed[..8].to_vec(), &m),
            };
            c.must_not_panic(&bytes, true);
            c.must_not_panic(&bytes, false);
            Ok(())
        })
        .unwrap();
    c.report("fuzz_safetensors_reader");
}

#[test]
fn the_fuzz_seeds_themselves_load() {
    let (pkl, st) = seed_state_dict(false, true);
    let w = read_weights_bytes(&zip_of(&pkl, &st), "seed", false).unwrap();
    assert_eq!(w.tensors.len(), 4);
    let (pkl, st) = seed_state_dict(true, false);
    let w = read_weights_bytes(&legacy_of(&pkl, &st), "seed", false).unwrap();
    assert_eq!(w.tensors.len(), 4);
    let w = read_weights_bytes(&seed_safetensors(), "seed", true).unwrap();
    assert_eq!(w.tensors.len(), 3);
}
