//! Hostile inputs, round two (issue 25), through the real binary with `RUST_BACKTRACE=1`:
//! empty class folders, a PNG whose colour profile inflates to 3 GiB, progressive JPEGs
//! of more scans than the decoder policy allows. `shard` and `predict` apply one decoder
//! policy (`pipeline::ingest::policy`); each case ends in a clear error or a listed skip,
//! never in a backtrace, a panic or gigabytes of memory.

use formats::shard::Manifest;
use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use common::hostile::{p, run, run_err, run_ok, synth_two_classes};

/// `predict` flags for the committed 32 px DeiT fixture (bare weights, heads given).
fn predict_args(weights_dir: &Path) -> Vec<String> {
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/predict/deit32.safetensors");
    let bare = weights_dir.join("bare.safetensors");
    std::fs::copy(w, &bare).unwrap();
    vec![
        "predict".into(),
        "--weights".into(),
        p(&bare).into(),
        "--num-heads".into(),
        "2".into(),
    ]
}

fn predict(weights_dir: &Path, image: &Path) -> Output {
    let mut a = predict_args(weights_dir);
    a.push(p(image).into());
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run(&a)
}

#[test]
fn empty_class_folders_are_refused_by_name_or_kept_with_their_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    synth_two_classes(&folder, 2, 4);
    // 10,000 empty class folders sorted before the two real ones.
    for i in 0..10_000 {
        std::fs::create_dir(folder.join(format!("train/a{i:05}"))).unwrap();
    }
    let out = tmp.path().join("out");
    let stderr = run_err(&["shard", "--input", p(&folder), "--out", p(&out)]);
    assert!(
        stderr.contains(
            "10000 of 10002 class folders hold no file (\"a00000\", \"a00001\", \"a00002\", \
             \"a00003\", \"a00004\", ...)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-empty-classes"), "{stderr}");
    assert!(
        !out.join("train").exists(),
        "nothing written before the refusal"
    );
    // Kept: the class list is every folder, sorted (torchvision's ids), and val's images
    // carry train's ids for their class names.
    let text = run_ok(&[
        "shard",
        "--input",
        p(&folder),
        "--out",
        p(&out),
        "--allow-empty-classes",
    ]);
    assert!(text.contains("train: 4 records, 10002 classes"), "{text}");
    let train = Manifest::read(&out.join("train")).unwrap();
    let mut folders: Vec<String> = std::fs::read_dir(folder.join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    folders.sort();
    assert_eq!(train.classes, folders);
    let val = Manifest::read(&out.join("val")).unwrap();
    assert_eq!(val.classes, folders);
}

// ---- crafted images ----

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A zlib stream of `mib` MiB of zeros built without compressing them: one MiB of zeros
/// deflated with a sync flush (byte-aligned, not final) repeated `mib` times, a final
/// empty block and the Adler-32 of the whole. About 1 KiB per MiB.
fn zlib_zeros_mib(mib: u64) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut block = Vec::with_capacity(64 << 10);
    c.compress_vec(&vec![0u8; 1 << 20], &mut block, flate2::FlushCompress::Sync)
        .unwrap();
    assert_eq!(c.total_in(), 1 << 20, "one call deflates the whole MiB");
    let mut z = vec![0x78, 0xDA];
    for _ in 0..mib {
        z.extend_from_slice(&block);
    }
    z.extend_from_slice(&[0x03, 0x00]); // final fixed-Huffman block with no symbols
    let n = mib << 20;
    let adler = ((n % 65521) << 16) | 1; // a = 1 + 0s, b = n * 1 (mod 65521)
    z.extend_from_slice(&(adler as u32).to_be_bytes());
    z
}

/// An 8x8 RGB PNG with an iCCP chunk whose profile inflates to `mib` MiB.
fn png_with_profile(mib: u64) -> Vec<u8> {
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut b, b"IHDR", &[0, 0, 0, 8, 0, 0, 0, 8, 8, 2, 0, 0, 0]);
    let mut icc = b"bomb\0\0".to_vec();
    icc.extend(zlib_zeros_mib(mib));
    png_chunk(&mut b, b"iCCP", &icc);
    // 8 rows: filter byte 0, then 8 grey-ish RGB pixels.
    let mut raw = Vec::new();
    for y in 0..8u8 {
        raw.push(0);
        for x in 0..8u8 {
            raw.extend_from_slice(&[x * 30, y * 30, 128]);
        }
    }
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut e, &raw).unwrap();
    png_chunk(&mut b, b"IDAT", &e.finish().unwrap());
    png_chunk(&mut b, b"IEND", &[]);
    b
}

/// A valid 8x8 grey progressive JPEG (all coefficients zero: mid grey) of
/// `1 + 2 * bands` scans: the DC scan, then for each of the first `bands` AC coefficients a
/// first scan at bit 1 and a refinement scan at bit 0 (a legal successive-approximation
/// progression). Huffman tables of one 1-bit code; each scan's data is that code.
fn progressive_jpeg(bands: u8) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8];
    b.extend_from_slice(&[0xFF, 0xDB, 0, 67, 0]);
    b.extend_from_slice(&[1; 64]);
    b.extend_from_slice(&[0xFF, 0xC2, 0, 11, 8, 0, 8, 0, 8, 1, 1, 0x11, 0]);
    for class in [0x00, 0x10] {
        b.extend_from_slice(&[0xFF, 0xC4, 0, 20, class, 1]);
        b.extend_from_slice(&[0; 15]);
        b.push(0); // the one symbol: DC category 0 / AC end-of-band
    }
    let mut scan = |ss: u8, ah_al: u8| {
        b.extend_from_slice(&[0xFF, 0xDA, 0, 8, 1, 1, 0x00, ss, ss, ah_al]);
        b.push(0x7F); // the code "0", padded with ones
    };
    scan(0, 0x00);
    for k in 1..=bands {
        scan(k, 0x01);
    }
    for k in 1..=bands {
        scan(k, 0x10);
    }
    b.extend_from_slice(&[0xFF, 0xD9]);
    b
}

/// An ImageFolder of two classes holding `files` plus one ordinary image each.
fn folder_with(tmp: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let folder = tmp.join("folder");
    synth_two_classes(&folder, 2, 4);
    for (name, bytes) in files {
        std::fs::write(folder.join("train").join(name), bytes).unwrap();
    }
    folder
}

fn skip_reasons(split: &Path) -> Vec<String> {
    Manifest::read(split)
        .unwrap()
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.path, s.reason))
        .collect()
}

/// Shards a two-class folder holding `cases` (case `i` in class `i`, beside the ordinary
/// images) and checks that exactly the failing case is skipped, its reason containing
/// `reason`; then runs `predict` on each case's file alone: the passing one is classified,
/// the failing one refused (exit 1) with its file named and `reason` said.
fn refused_by_shard_and_predict(cases: [(&str, &[u8], bool); 2], reason: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let classes = synth_class_names();
    let placed: Vec<(String, &[u8])> = cases
        .iter()
        .zip(&classes)
        .map(|((name, bytes, _), class)| (format!("{class}/{name}"), *bytes))
        .collect();
    let files: Vec<(&str, &[u8])> = placed.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let folder = folder_with(tmp.path(), &files);
    let out = tmp.path().join("out");
    let text = run_ok(&["shard", "--input", p(&folder), "--out", p(&out)]);
    assert!(
        text.contains("train: 5 records") && text.contains("1 skipped"),
        "{text}"
    );
    let reasons = skip_reasons(&out.join("train"));
    let (bad, _, _) = cases.iter().find(|c| !c.2).expect("one failing case");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(bad) && r.contains(reason)),
        "{reasons:?}"
    );
    // predict: the same policy, the file named.
    for (name, bytes, ok) in cases {
        let f = tmp.path().join(name);
        std::fs::write(&f, bytes).unwrap();
        let o = predict(tmp.path(), &f);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if ok {
            assert!(o.status.success(), "{name}: {stderr}");
        } else {
            assert_eq!(o.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains(name) && stderr.contains(reason), "{stderr}");
        }
    }
}

#[test]
fn a_png_profile_inflating_to_3_gib_is_refused_by_shard_and_predict() {
    let bomb = png_with_profile(3 << 10);
    assert!(bomb.len() < 8 << 20, "{}", bomb.len()); // a few MB on disk
    let ok = png_with_profile(1);
    refused_by_shard_and_predict(
        [("bomb.png", &bomb, false), ("small_profile.png", &ok, true)],
        "PNG iCCP chunk inflates past 1048576 bytes",
    );
}

#[test]
fn progressive_jpegs_over_the_scan_limit_are_refused_by_shard_and_predict() {
    let within = progressive_jpeg(49); // 99 scans
    let over = progressive_jpeg(63); // 127 scans
    refused_by_shard_and_predict(
        [
            ("scans99.jpg", &within, true),
            ("scans127.jpg", &over, false),
        ],
        "more than 100 scans",
    );
}

/// The class folder names `synth` writes for two classes.
fn synth_class_names() -> Vec<String> {
    (0..2).map(pipeline::ingest::synth::class_name).collect()
}
