//! End-to-end tests of `deit-pipe synth`, `shard` and `inspect` through the real binary.

use formats::shard::{Encoding, Manifest, ShardSet};
use pipeline::ingest::{decode_input, decode_record, resize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deit-pipe"));
    c.arg("--quiet");
    c.env_remove(pipeline::ingest::job::ABORT_AFTER_ENV);
    c
}

fn run_ok(args: &[&str]) -> String {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "deit-pipe {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A small synthetic data set (3 classes, 10 train + 5 val each).
fn synth(dir: &Path, seed: u64) {
    run_ok(&[
        "synth",
        "--out",
        p(dir),
        "--classes",
        "3",
        "--train-per-class",
        "10",
        "--val-per-class",
        "5",
        "--seed",
        &seed.to_string(),
    ]);
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn tree_bytes(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .map(|f| {
            (
                f.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&f).unwrap(),
            )
        })
        .collect()
}

fn manifest(dir: &Path) -> Manifest {
    Manifest::read(dir).unwrap()
}

#[test]
fn synth_is_deterministic_and_has_every_file_kind() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    synth(a.path(), 7);
    run_ok(&[
        "synth",
        "--out",
        p(b.path()),
        "--classes",
        "3",
        "--train-per-class",
        "10",
        "--val-per-class",
        "5",
        "--seed",
        "7",
        "--threads",
        "1",
    ]);
    let ta = tree_bytes(a.path());
    assert_eq!(ta.len(), 45);
    assert!(
        ta == tree_bytes(b.path()),
        "same seed must give the same bytes"
    );
    let names: Vec<String> = ta.iter().map(|(n, _)| n.display().to_string()).collect();
    assert!(names.iter().any(|n| n.ends_with(".png")));
    assert!(names[0].starts_with("train/c00-disk-stripes-fine/c00-disk-stripes-fine_00000"));
    // Decode every file: kinds and sizes as documented.
    let mut kinds = HashMap::new();
    for (name, bytes) in &ta {
        let d = decode_input(bytes, u64::MAX).unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        let (w, h) = d.rgb.dimensions();
        assert!(
            (64..=640).contains(&w) && (64..=640).contains(&h),
            "{}",
            name.display()
        );
        *kinds
            .entry(format!("{:?}/{:?}", d.format, d.source_color))
            .or_insert(0) += 1;
    }
    for k in [
        "Jpeg/Rgb8",
        "Jpeg/L8",
        "Jpeg/Cmyk8",
        "Png/Rgb8",
        "Png/Rgba16",
    ] {
        assert!(kinds.contains_key(k), "no {k} file among {kinds:?}");
    }
}

#[test]
fn fingerprint_independent_of_threads_and_verify_passes() {
    let src = tempfile::tempdir().unwrap();
    synth(src.path(), 1);
    let out1 = tempfile::tempdir().unwrap();
    let out2 = tempfile::tempdir().unwrap();
    for (out, threads) in [(out1.path(), "1"), (out2.path(), "2")] {
        run_ok(&[
            "shard",
            "--input",
            p(src.path()),
            "--out",
            p(out),
            "--max-side",
            "160",
            "--shard-bytes",
            "64KiB",
            "--threads",
            threads,
            "--seed",
            "3",
        ]);
    }
    for split in ["train", "val"] {
        let m1 = manifest(&out1.path().join(split));
        let m2 = manifest(&out2.path().join(split));
        assert_eq!(m1, m2);
        assert!(
            m1.shards.len() > 1,
            "small --shard-bytes must give several shards"
        );
        assert_eq!(
            tree_bytes(&out1.path().join(split)),
            tree_bytes(&out2.path().join(split))
        );
    }
    let m = manifest(&out1.path().join("train"));
    assert_eq!(m.num_records, 30);
    assert_eq!(m.counts_per_class, vec![10, 10, 10]);
    assert!(m.skipped.is_empty());
    // Shuffled at write time: the first 10 records are not all one class.
    let set = ShardSet::open(&out1.path().join("train")).unwrap();
    let first: Vec<u32> = (0..10).map(|i| set.record(i).unwrap().label).collect();
    assert!(first.iter().any(|&l| l != first[0]), "{first:?}");
    // Another seed: another order, another fingerprint.
    let out3 = tempfile::tempdir().unwrap();
    run_ok(&[
        "shard",
        "--input",
        p(src.path()),
        "--out",
        p(out3.path()),
        "--max-side",
        "160",
        "--shard-bytes",
        "64KiB",
        "--seed",
        "4",
    ]);
    assert_ne!(
        manifest(&out3.path().join("train")).fingerprint,
        m.fingerprint
    );

    let text = run_ok(&["inspect", p(out1.path()), "--verify"]);
    assert!(text.contains("verify OK: 30 records"), "{text}");
    assert!(text.contains(&m.fingerprint));
    let dump = tempfile::tempdir().unwrap();
    let text = run_ok(&[
        "inspect",
        p(&out1.path().join("val")),
        "--dump",
        "4",
        "--out",
        p(dump.path()),
    ]);
    assert!(text.contains("dumped 4 records"), "{text}");
    assert_eq!(files(dump.path()).len(), 4);
}

/// Expected stored pixels of a source file: decode, then the same shorter-side resize.
fn expected(bytes: &[u8], max_side: u32) -> image::RgbImage {
    let d = decode_input(bytes, u64::MAX).unwrap();
    let (w, h) = d.rgb.dimensions();
    let out = resize::shorter_side_resize(&d.rgb, max_side).unwrap();
    assert_eq!(out.dimensions(), resize::target_size(w, h, max_side));
    out
}

#[test]
fn round_trip_raw_is_exact_and_jpeg_is_the_same_encoding() {
    let src = tempfile::tempdir().unwrap();
    synth(src.path(), 2);
    let max_side = 150u32;
    // Source files of train/, with their labels (class folder order).
    let mut sources = Vec::new();
    for f in files(&src.path().join("train")) {
        let class = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let label = class[1..3].parse::<u32>().unwrap();
        let bytes = std::fs::read(&f).unwrap();
        sources.push((label, expected(&bytes, max_side), bytes));
    }
    let raw = tempfile::tempdir().unwrap();
    let jpg = tempfile::tempdir().unwrap();
    for (out, fmt) in [(raw.path(), "raw"), (jpg.path(), "jpeg")] {
        run_ok(&[
            "shard",
            "--input",
            p(src.path()),
            "--out",
            p(out),
            "--max-side",
            "150",
            "--format",
            fmt,
            "--quality",
            "95",
        ]);
    }
    // Raw: every record is exactly one source's resized pixels, with that source's label.
    let set = ShardSet::open(&raw.path().join("train")).unwrap();
    assert_eq!(set.len(), sources.len());
    let mut used = vec![false; sources.len()];
    for i in 0..set.len() {
        let r = set.verify_record(i).unwrap();
        assert_eq!(r.encoding, Encoding::RawRgbZstd);
        let img = decode_record(&r).unwrap();
        let k = sources
            .iter()
            .position(|(l, e, _)| *l == r.label && e == &img)
            .unwrap_or_else(|| panic!("record {i} matches no source"));
        assert!(!used[k]);
        used[k] = true;
        let (ow, oh) = decode_input(&sources[k].2, u64::MAX)
            .unwrap()
            .rgb
            .dimensions();
        assert_eq!((r.orig_width, r.orig_height), (ow, oh));
    }
    // JPEG: a small RGB JPEG is kept, re-written losslessly with restart markers (the
    // default --restart-mcus 4); others are exactly the JPEG encoding (quality 95, same
    // restart interval) of the source's resized pixels.
    let set = ShardSet::open(&jpg.path().join("train")).unwrap();
    let encoded: Vec<Vec<u8>> = sources
        .iter()
        .map(|(_, e, _)| pipeline::ingest::encode::encode_jpeg(e, 95, 4).unwrap())
        .collect();
    let kept: Vec<Option<Vec<u8>>> = sources
        .iter()
        .map(|(_, _, b)| {
            pipeline::ingest::jpeg::add_restart_markers(b, 4)
                .ok()
                .map(|r| r.0)
        })
        .collect();
    let mut passed_through = 0;
    for i in 0..set.len() {
        let r = set.verify_record(i).unwrap();
        assert_eq!(r.encoding, Encoding::Jpeg);
        let img = decode_record(&r).unwrap();
        assert_eq!(img.dimensions(), (r.width, r.height));
        assert!(
            pipeline::ingest::jpeg_tiles::TileLayout::parse(r.bytes).is_some(),
            "record {i} has restart intervals tiling its rows"
        );
        let k = (0..sources.len())
            .find(|&k| kept[k].as_deref() == Some(r.bytes) || encoded[k].as_slice() == r.bytes)
            .unwrap_or_else(|| panic!("record {i} matches no source"));
        assert_eq!(sources[k].0, r.label, "record {i}");
        if kept[k].as_deref() == Some(r.bytes) {
            passed_through += 1;
            // Lossless: libjpeg-turbo (Pillow's decoder) gives the original file's pixels.
            let whole = pipeline::transforms::crop::CropRect::whole(r.width, r.height);
            let original =
                pipeline::ingest::jpeg::decode_region(&sources[k].2, (r.width, r.height), whole)
                    .unwrap()
                    .unwrap();
            assert_eq!(img.as_raw(), &original, "record {i}");
        }
    }
    assert!(passed_through > 0);
    assert!(passed_through < set.len());
}

fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    // A tiny IDAT (an empty zlib stream) and IEND: the classic bomb shape.
    let empty_zlib = [0x78u8, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01];
    for (kind, data) in [
        (&b"IHDR"[..], &ihdr[..]),
        (b"IDAT", &empty_zlib),
        (b"IEND", &[]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        v.extend_from_slice(&(data.len() as u32).to_be_bytes());
        v.extend_from_slice(&chunk);
        v.extend_from_slice(&crc(&chunk).to_be_bytes());
    }
    v
}

#[test]
fn corrupt_inputs_are_skipped_and_reported() {
    let src = tempfile::tempdir().unwrap();
    synth(src.path(), 3);
    let class = files(&src.path().join("train"))[0]
        .parent()
        .unwrap()
        .to_path_buf();
    let good = std::fs::read(
        files(&class)
            .into_iter()
            .find(|f| f.extension().unwrap() == "JPEG")
            .unwrap(),
    )
    .unwrap();
    let png = std::fs::read(
        files(&class)
            .into_iter()
            .find(|f| f.extension().unwrap() == "png")
            .unwrap(),
    )
    .unwrap();
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "zz_truncated.JPEG",
            good[..good.len() / 2].to_vec(),
            "truncated JPEG",
        ),
        ("zz_empty.JPEG", vec![], "empty file"),
        (
            "zz_notes.txt",
            b"not an image at all".to_vec(),
            "not an image",
        ),
        ("zz_truncated.png", png[..png.len() / 2].to_vec(), "PNG"),
        (
            "zz_bomb.png",
            png_header_only(100_000, 100_000),
            "exceeds the limit",
        ),
    ];
    for (name, bytes, _) in &bad {
        std::fs::write(class.join(name), bytes).unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let text = run_ok(&[
        "shard",
        "--input",
        p(src.path()),
        "--out",
        p(out.path()),
        "--threads",
        "2",
    ]);
    assert!(
        text.contains("train: 30 records") && text.contains("5 skipped"),
        "{text}"
    );
    let m = manifest(&out.path().join("train"));
    assert_eq!(m.num_records, 30);
    assert_eq!(m.skipped.len(), 5);
    for (name, _, reason) in &bad {
        let s = m
            .skipped
            .iter()
            .find(|s| s.path.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {:?}", m.skipped));
        assert!(s.reason.contains(reason), "{name}: {}", s.reason);
    }
}

fn shard_args<'a>(src: &'a Path, out: &'a Path, threads: &'a str) -> Vec<&'a str> {
    vec![
        "shard",
        "--input",
        p(src),
        "--out",
        p(out),
        "--max-side",
        "128",
        "--shard-bytes",
        "48KiB",
        "--threads",
        threads,
    ]
}

#[test]
fn killed_job_resumes_to_the_same_result() {
    let src = tempfile::tempdir().unwrap();
    synth(src.path(), 4);
    let reference = tempfile::tempdir().unwrap();
    run_ok(&shard_args(src.path(), reference.path(), "2"));
    let shards = manifest(&reference.path().join("train")).shards.len();
    assert!(shards >= 3, "{shards} shards");

    // Crash (abort, no cleanup) after 17 records, twice, then finish.
    let out = tempfile::tempdir().unwrap();
    for k in ["17", "9"] {
        let o = bin()
            .args(shard_args(src.path(), out.path(), "2"))
            .env(pipeline::ingest::job::ABORT_AFTER_ENV, k)
            .output()
            .unwrap();
        assert!(!o.status.success());
    }
    let train = out.path().join("train");
    assert!(train.join("journal.jsonl").exists());
    assert!(!train.join("manifest.json").exists());
    let text = run_ok(&shard_args(src.path(), out.path(), "2"));
    assert!(text.contains("resumed"), "{text}");
    for split in ["train", "val"] {
        assert_eq!(
            manifest(&out.path().join(split)),
            manifest(&reference.path().join(split))
        );
    }
    assert!(!train.join("journal.jsonl").exists());
    let leftovers: Vec<PathBuf> = files(&train)
        .into_iter()
        .filter(|f| f.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    run_ok(&["inspect", p(out.path()), "--verify"]);

    // A real SIGKILL once the journal holds a finished shard.
    let out2 = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(shard_args(src.path(), out2.path(), "1"))
        .spawn()
        .unwrap();
    let journal = out2.path().join("train/journal.jsonl");
    let t0 = std::time::Instant::now();
    while t0.elapsed().as_secs() < 60 {
        let lines = std::fs::read_to_string(&journal).map_or(0, |s| s.lines().count());
        if lines >= 2 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    run_ok(&shard_args(src.path(), out2.path(), "2"));
    assert_eq!(
        manifest(&out2.path().join("train")).fingerprint,
        manifest(&reference.path().join("train")).fingerprint
    );
    // Rerun with other options into a finished directory is refused.
    let o = run(&[
        "shard",
        "--input",
        p(src.path()),
        "--out",
        p(out2.path()),
        "--quality",
        "50",
    ]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn truncated_or_newer_shards_are_refused_and_bad_records_named() {
    let src = tempfile::tempdir().unwrap();
    synth(src.path(), 5);
    let out = tempfile::tempdir().unwrap();
    run_ok(&[
        "shard",
        "--input",
        p(src.path()),
        "--out",
        p(out.path()),
        "--shard-bytes",
        "64KiB",
    ]);
    let val = out.path().join("val");
    let m = manifest(&val);

    // Flip one byte inside the last record of the first shard: --verify names the record.
    let data = val.join(&m.shards[0].data);
    let original = std::fs::read(&data).unwrap();
    let mut bytes = original.clone();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    let o = run(&["inspect", p(&val), "--verify"]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last = m.shards[0].records - 1;
    assert!(
        stdout.contains(&format!("record {last}: checksum mismatch")),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.starts_with("error: verification failed"), "{stderr}");

    // Truncated shard: refused when opened.
    std::fs::write(&data, &original[..original.len() - 100]).unwrap();
    let o = run(&["inspect", p(&val)]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("truncated") && stderr.contains(&m.shards[0].data),
        "{stderr}"
    );
    std::fs::write(&data, &original).unwrap();

    // A newer format version is refused with a clear message.
    let mpath = val.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).unwrap();
    std::fs::write(
        &mpath,
        text.replace("\"format_version\": 1", "\"format_version\": 2"),
    )
    .unwrap();
    let o = run(&["inspect", p(&val)]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("format version 2 is not supported"),
        "{stderr}"
    );
}

#[test]
fn exit_codes() {
    // Usage errors: 2.
    assert_eq!(run(&["shard"]).status.code(), Some(2));
    assert_eq!(
        run(&["shard", "--input", "a", "--out", "b", "--format", "gif"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["synth", "--out", "x", "--classes", "0"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["inspect", "x", "--dump", "3"]).status.code(), Some(2));
    // Failures: 1 with a one-line cause first.
    let o = run(&["inspect", "/nonexistent/deit-pipe-shards"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("/nonexistent/deit-pipe-shards"),
        "{stderr}"
    );
    let o = run(&["shard", "--input", "/nonexistent/in", "--out", "/tmp/x"]);
    assert_eq!(o.status.code(), Some(1));
    for sub in ["synth", "shard", "inspect"] {
        assert_eq!(run(&[sub, "--help"]).status.code(), Some(0));
    }
}
