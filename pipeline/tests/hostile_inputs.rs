//! Hostile and damaged inputs (issue 19): oversized index entries and zstd frames, flipped
//! payload bytes, and input trees with FIFOs, device links and link cycles. Each case ends
//! in an error naming the file and record, or a skip listed in the manifest; never an
//! abort, a hang or silently stored garbage.

use formats::shard::layout::{ENTRY_LEN, INDEX_HEADER_LEN, MAX_PIXELS_CAP};
use formats::shard::{Encoding, Manifest, RecordRef, MANIFEST_FILE};
use pipeline::ingest::decode_record;
use pipeline::ingest::inputs::scan_root;
use pipeline::ingest::job::{shard_split, JobConfig};
use pipeline::ingest::process::IngestOptions;
use pipeline::ingest::synth::{render_file, write_sharded, SynthConfig};
use pipeline::source::{RecordSource, ShardSource};
use std::path::{Path, PathBuf};

/// A tiny sharded synthetic set (raw records); returns the train split folder.
fn shards(dir: &Path) -> PathBuf {
    let cfg = SynthConfig {
        classes: 2,
        train_per_class: 3,
        val_per_class: 1,
        seed: 5,
    };
    write_sharded(dir, &cfg, 24).unwrap().join("train")
}

/// Overwrite a u32 field of index entry `entry` in `idx` and re-hash the entries, as a
/// hostile or buggy writer would (so the damage gets past the index hash).
fn patch_entry(idx: &Path, entry: usize, field_at: usize, value: u32) {
    let mut b = std::fs::read(idx).unwrap();
    let at = INDEX_HEADER_LEN + entry * ENTRY_LEN + field_at;
    b[at..at + 4].copy_from_slice(&value.to_le_bytes());
    let h = blake3::hash(&b[INDEX_HEADER_LEN..]);
    b[32..64].copy_from_slice(h.as_bytes());
    std::fs::write(idx, b).unwrap();
}

const WIDTH_AT: usize = 28;
const HEIGHT_AT: usize = 32;

#[test]
fn index_sizes_beyond_the_pixel_limit_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let train = shards(tmp.path());
    let idx = train.join("shard-00000.idx");
    // 65536 x 65536 (the largest side the layout allows): 4.3 G pixels.
    patch_entry(&idx, 0, WIDTH_AT, 65536);
    patch_entry(&idx, 0, HEIGHT_AT, 65536);
    // 40000 x 40000 (a zstd record would expand to 4.8 GB).
    patch_entry(&idx, 1, WIDTH_AT, 40000);
    patch_entry(&idx, 1, HEIGHT_AT, 40000);
    // Over the manifest's limit (89,478,485) but under the hard cap: refused too.
    patch_entry(&idx, 2, WIDTH_AT, 10000);
    patch_entry(&idx, 2, HEIGHT_AT, 10000);
    let src = ShardSource::open(&train).unwrap();
    for i in 0..3 {
        for err in [
            src.decode(i).unwrap_err().to_string(),
            src.info(i).unwrap_err().to_string(),
        ] {
            assert!(
                err.contains("shard-00000.bin")
                    && err.contains(&format!("record {i}"))
                    && err.contains("exceeds the set's limit of 89478485"),
                "{err}"
            );
        }
    }
    assert!(src.decode(3).is_ok());
    // A manifest edited to allow anything is still held to the hard cap.
    let mpath = train.join(MANIFEST_FILE);
    let mut m = Manifest::read(&train).unwrap();
    m.options.max_pixels = u64::MAX;
    std::fs::write(&mpath, m.to_json()).unwrap();
    let src = ShardSource::open(&train).unwrap();
    assert_eq!(src.shards().pixel_limit(), MAX_PIXELS_CAP);
    for i in 0..2 {
        let err = src.decode(i).unwrap_err().to_string();
        assert!(err.contains(&format!("limit of {MAX_PIXELS_CAP}")), "{err}");
    }
    // Under the cap now: the size passes the index check, and the decoder refuses the
    // record from its zstd header (it declares the real, smaller size) before allocating.
    let err = src.decode(2).unwrap_err().to_string();
    assert!(err.contains("zstd frame declares"), "{err}");
}

#[test]
fn zstd_frames_are_held_to_the_size_the_index_gives() {
    let raw = |bytes: &[u8], w: u32, h: u32| {
        let r = RecordRef {
            label: 0,
            orig_width: w,
            orig_height: h,
            width: w,
            height: h,
            encoding: Encoding::RawRgbZstd,
            bytes,
        };
        decode_record(&r).map(|_| ()).unwrap_err().to_string()
    };
    // A frame declaring more than the index's size: refused from its header.
    let big = zstd::bulk::compress(&vec![7u8; 300 * 300 * 3], 3).unwrap();
    let e = raw(&big, 10, 10);
    assert!(
        e.contains("zstd frame declares 270000 bytes, 10x10 RGB needs 300"),
        "{e}"
    );
    // A frame without a declared size that expands past it: decompression stops at the
    // record's size.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    std::io::Write::write_all(&mut enc, &vec![7u8; 100_000]).unwrap();
    let stream = enc.finish().unwrap();
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&stream).unwrap(),
        None
    );
    let e = raw(&stream, 10, 10);
    assert!(e.contains("zstd"), "{e}");
    // Sizes past the hard cap, whoever built the record.
    let e = raw(&big, 40000, 40000);
    assert!(e.contains("exceeds the limit"), "{e}");
}

#[test]
fn a_flipped_payload_byte_is_a_checksum_error_on_first_read() {
    let tmp = tempfile::tempdir().unwrap();
    let train = shards(tmp.path());
    let src = ShardSource::open(&train).unwrap();
    let e = src.shards().entry(1).unwrap();
    let good = src.decode(1).unwrap();
    drop(src);
    let data = train.join("shard-00000.bin");
    let mut b = std::fs::read(&data).unwrap();
    b[(e.offset + e.length / 2) as usize] ^= 0x10;
    std::fs::write(&data, b).unwrap();
    let src = ShardSource::open(&train).unwrap();
    for _ in 0..2 {
        let err = src.decode(1).unwrap_err().to_string();
        assert!(
            err.contains("shard-00000.bin")
                && err.contains("record 1")
                && err.contains("checksum mismatch"),
            "{err}"
        );
    }
    let rect = pipeline::transforms::crop::CropRect::whole(2, 2);
    assert!(src.decode_region(1, rect).is_err());
    assert!(src.decode_region_around(1, rect).is_err());
    // Other records are unaffected; without the check the damaged payload is read.
    assert!(src.decode(0).is_ok());
    let unchecked = ShardSource::open(&train).unwrap().without_crc_check();
    if let Ok(img) = unchecked.decode(1) {
        assert_ne!(img, good, "the flipped byte changed the pixels");
    }
}

/// A tree with real images next to a FIFO, a link to /dev/zero, a link cycle and a
/// second link to a class folder.
#[cfg(unix)]
#[test]
fn fifos_devices_and_link_cycles_are_skipped_and_listed() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("in");
    for (class, n) in [("a", 2), ("b", 2)] {
        let d = root.join("train").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let (name, bytes) = render_file(1, "train", usize::from(class == "b"), i).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
    }
    let a = root.join("train/a");
    let fifo = a.join("x.jpg");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo only creates the node.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    symlink("/dev/zero", a.join("zero.jpg")).unwrap();
    symlink("..", a.join("up")).unwrap(); // train/ again: a cycle
    symlink("../..", a.join("root")).unwrap(); // the input root: a cycle
    symlink(".", a.join("self")).unwrap(); // a/ itself
    symlink("../a", root.join("train/b/a-again")).unwrap(); // a second link to a/
    let splits = scan_root(&root).unwrap();
    assert_eq!(splits.len(), 1);
    let cfg = JobConfig {
        ingest: IngestOptions::default(),
        shard_bytes: 1 << 24,
        seed: 0,
        threads: 2,
        input_kind: "imagefolder".into(),
        abort_after: None,
    };
    let out = tmp.path().join("out/train");
    let done = shard_split(&splits[0], &out, &cfg, &mut |_, _| {}).unwrap();
    let m = done.manifest;
    assert_eq!(
        m.num_records, 4,
        "each real image stored once: {:?}",
        m.skipped
    );
    assert_eq!(m.counts_per_class, vec![2, 2]);
    let reason = |path: &str| {
        m.skipped
            .iter()
            .find(|s| s.path == path)
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{path} not listed: {:?}", m.skipped))
    };
    assert!(reason("train/a/x.jpg").contains("not a regular file (FIFO)"));
    assert!(reason("train/a/zero.jpg").contains("not a regular file (character device)"));
    for cycle in [
        "train/a/up",
        "train/a/root",
        "train/a/self",
        "train/b/a-again",
    ] {
        assert!(reason(cycle).contains("folder already read"), "{cycle}");
    }
    assert_eq!(m.skipped.len(), 6, "{:?}", m.skipped);
}
