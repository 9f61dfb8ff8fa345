//! `deit-pipe cache inspect` on damaged caches, through the binary: exit 1 (never 101 or a
//! signal) on a `PROBLEM:` line, a flipped byte or a decoder panic, the file named, no
//! panic message or backtrace printed even with RUST_BACKTRACE=1.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use formats::cache_schema::{
    testing, CacheBinding, CacheRow, CacheWriter, FileHeader, PartSpec, ViewKey, WriterOptions,
    CACHE_FORMAT_VERSION,
};

fn inspect(dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
        .args(["--quiet", "cache", "inspect"])
        .arg(dir)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("deit-pipe runs")
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

/// Writes epoch `epoch` holding `slots` of `epoch_slots`; returns its path.
fn write(dir: &Path, epoch: u32, epoch_slots: u32, slots: std::ops::Range<u32>) -> PathBuf {
    let header = FileHeader {
        binding: binding(),
        epoch,
        part: PartSpec::WHOLE,
        epoch_slots,
        dataset_len: 50,
    };
    let opts = WriterOptions {
        row_group_rows: 16,
        ..WriterOptions::default()
    };
    let mut w = CacheWriter::create_with(dir, header, opts).expect("create");
    let rows: Vec<CacheRow> = slots
        .map(|slot| {
            let logits: Vec<f32> = (0..12u32).map(|c| ((c * 7 + slot) % 13) as f32).collect();
            let key = ViewKey {
                epoch,
                slot,
                sample: slot % 50,
                partner: slot % 50,
                lam: 1.0,
                view_hash: u64::from(slot),
            };
            CacheRow::from_logits(key, &logits, 3).expect("row")
        })
        .collect();
    w.write_rows(&rows).expect("write");
    w.finish().expect("finish")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Exit code 1, the message names the file, no panic text or backtrace.
fn assert_clean_refusal(out: &Output, file: &str) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(file) || stdout.contains(file),
        "{stdout}\n{stderr}"
    );
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE"] {
        assert!(!stderr.contains(bad), "{bad} printed:\n{stderr}");
    }
}

#[test]
fn inspect_exits_1_on_problems_and_0_on_a_sound_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), 0, 40, 0..40);
    let out = inspect(dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("checksums: all 1 files intact"), "{stdout}");
    assert!(!stdout.contains("PROBLEM"), "{stdout}");

    // Missing slots: a PROBLEM line and exit 1.
    write(dir.path(), 1, 40, 0..30);
    let out = inspect(dir.path());
    assert!(text(&out.stdout).contains("PROBLEM: slots missing: 30..=39"));
    assert_clean_refusal(&out, "1 problem(s) found");
}

#[test]
fn inspect_refuses_a_flipped_byte_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), 0, 40, 0..40);
    let good = std::fs::read(&path).expect("read");
    // A byte in the data pages (refused by `verify_file`: a PROBLEM line), one in the
    // footer (refused on open).
    for pos in [good.len() / 4, good.len() - 40] {
        let mut bad = good.clone();
        bad[pos] ^= 0x20;
        std::fs::write(&path, &bad).expect("write");
        let out = inspect(dir.path());
        assert_clean_refusal(&out, "epoch-00000.parquet");
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(all.contains("corrupt"), "byte {pos}: {all}");
    }
}

/// A flip in the committed fixture's data pages that, with the checksums recomputed, makes
/// the Parquet crate panic while decoding ("Decoder for dict should have been set", found by
/// searching single-byte flips; if the
/// writer's output changes, `committed_fixture_is_what_the_writer_writes` fails first).
const PANIC_FLIP: (usize, u8) = (105, 0x04);

#[test]
fn a_decoder_panic_is_a_clean_error() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("formats/tests/fixtures/cache_small/epoch-00000.parquet");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("epoch-00000.parquet");
    let mut bytes = std::fs::read(fixture).expect("fixture");
    std::fs::write(&path, &bytes).expect("copy");
    assert!(
        inspect(dir.path()).status.success(),
        "the intact fixture inspects"
    );
    let (pos, pattern) = PANIC_FLIP;
    bytes[pos] ^= pattern;
    std::fs::write(&path, &bytes).expect("write");
    // Unsealed, the checksums refuse it before the decoder runs.
    let out = inspect(dir.path());
    assert_clean_refusal(&out, "epoch-00000.parquet");
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("checksum mismatch"), "{all}");
    // With forged checksums, the decoder panics: caught, reported, nothing printed.
    testing::reseal(&path).expect("reseal");
    let out = inspect(dir.path());
    assert_clean_refusal(&out, "epoch-00000.parquet");
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(all.contains("the Parquet decoder failed"), "{all}");
}
