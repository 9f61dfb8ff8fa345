//! Damaged and hostile weight files through the binary (issue 19): `predict` ends with
//! exit status 1 and an error naming the file and the field, never a panic (101), an
//! abort (134) or a signal. The byte-level cases live in
//! `formats/tests/weights_hostile.rs`; this checks the exit path.

use std::path::Path;
use std::process::Command;

fn predict(weights: &Path, image: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
        .args(["--quiet", "predict", "--model", "resnet_small", "--weights"])
        .arg(weights)
        .arg(image)
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// torch's legacy stream around `obj` (magic, protocol 1001, sys info), then the key
/// list `keys` and the raw `tail`.
fn legacy(obj: &[u8], keys: &[&str], tail: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80, 2, 0x8a, 10];
    out.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
    out.extend_from_slice(&[b'.', 0x80, 2, b'M', 0xe9, 0x03, b'.']);
    out.extend_from_slice(&[0x80, 2, b'}', b'X', 13, 0, 0, 0]);
    out.extend_from_slice(b"little_endian");
    out.extend_from_slice(&[0x88, b's', b'.']);
    out.extend_from_slice(obj);
    out.extend_from_slice(&[0x80, 2, b']', b'(']);
    for k in keys {
        out.push(b'X');
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
    }
    out.extend_from_slice(b"e.");
    out.extend_from_slice(tail);
    out
}

#[test]
fn hostile_weight_files_exit_1_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.png");
    image::RgbImage::new(8, 8).save(&image).unwrap();

    let dup = dir.path().join("dup.safetensors");
    let hdr = r#"{"fc.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"fc.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    std::fs::write(&dup, safetensors(hdr, &[0; 4])).unwrap();

    let nan = dir.path().join("nan.safetensors");
    let hdr = r#"{"fc.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    std::fs::write(&nan, safetensors(hdr, &f32::NAN.to_le_bytes())).unwrap();

    // {'fc.bias': _rebuild_tensor_v2()} with no arguments at all
    let short = dir.path().join("short.pt");
    let mut obj = vec![0x80, 2, b'}', b'X', 7, 0, 0, 0];
    obj.extend_from_slice(b"fc.bias");
    obj.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n)Rs.");
    std::fs::write(&short, legacy(&obj, &[], &[])).unwrap();

    // a storage declaring 2^33 floats
    let huge = dir.path().join("huge.pt");
    let mut obj = vec![0x80, 2, b'}', b'X', 7, 0, 0, 0];
    obj.extend_from_slice(b"fc.bias");
    obj.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage");
    obj.extend_from_slice(b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    obj.extend_from_slice(&[0x8a, 8, 0, 0, 0, 0, 2, 0, 0, 0]);
    obj.extend_from_slice(b"NtQK\x00(\x8a\x08\x00\x00\x00\x00\x02\x00\x00\x00t(K\x01t\x89NtRs.");
    let mut tail = (1i64 << 33).to_le_bytes().to_vec();
    tail.extend_from_slice(&[0; 16]);
    std::fs::write(&huge, legacy(&obj, &["0"], &tail)).unwrap();

    for (file, field) in [
        (&dup, "duplicate key \"fc.bias\""),
        (&nan, "tensor fc.bias holds a non-finite value"),
        (&short, "_rebuild_tensor_v2 takes 6 or 7 arguments"),
        (&huge, "declares 8589934592 elements"),
    ] {
        let (code, err) = predict(file, &image);
        assert_eq!(code, Some(1), "{}: {err}", file.display());
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(field), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
