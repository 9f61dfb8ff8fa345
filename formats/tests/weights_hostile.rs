//! Hostile and damaged weight files (issue 19) and the formats of issue 18 (legacy
//! `torch.save`, protocol 4, `{"format": "pt"}`): every case ends in an ordinary error
//! naming the file and the field, never a panic, an abort or a hang; nothing in a
//! pickle is ever executed. The files are written byte by byte here
//! (`weights_util`), or by `tools/make_weights_fixtures.py` (committed fixtures).
//! Loading into a model, and the files the trainer writes: `trainer/tests/weights_hostile.rs`.

#![cfg(feature = "weights")]

mod weights_util;

use formats::weights::{read_weights, read_weights_bytes};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use weights_util::*;

const FILE: &str = "hostile.pth";

fn err(bytes: &[u8]) -> String {
    match read_weights_bytes(bytes, FILE, false) {
        Ok(w) => panic!("accepted: {:?}", w.tensors.keys().collect::<Vec<_>>()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_err(bytes: &[u8], parts: &[&str]) {
    let e = err(bytes);
    assert!(e.contains(FILE), "error does not name the file: {e}");
    for p in parts {
        assert!(e.contains(p), "error lacks {p:?}: {e}");
    }
}

fn values(w: &formats::weights::WeightsFile, name: &str) -> Vec<f32> {
    w.tensors[name].data.clone()
}

#[test]
fn a_well_formed_zip_checkpoint_loads_with_strides_and_offsets() {
    // w: contiguous; t: the transpose of w (stride (1, 3)) over the same storage;
    // s: a 2-element slice at offset 4; h: f16; b: bf16
    let mut p = Pickle::new(2);
    p.op(b"}").mark().str("model");
    p.state_dict(|p| {
        p.str("w").tensor(&TensorSpec::f32("0", &[2, 3]), false);
        let mut t = TensorSpec::f32("0", &[3, 2]);
        t.stride = vec![1, 3];
        t.numel = 6;
        p.str("t").tensor(&t, false);
        let mut s = TensorSpec::f32("0", &[2]);
        s.offset = 4;
        s.numel = 6;
        p.str("s").tensor(&s, false);
        let mut h = TensorSpec::f32("1", &[2]);
        h.class = "HalfStorage".into();
        p.str("h").tensor(&h, false);
        let mut b = TensorSpec::f32("2", &[2]);
        b.class = "BFloat16Storage".into();
        p.str("module.b").tensor(&b, false);
        let mut n = TensorSpec::f32("3", &[]);
        n.class = "LongStorage".into();
        n.numel = 1;
        p.str("bn.num_batches_tracked").tensor(&n, false);
    });
    p.op(b"u");
    let pkl = p.stop();
    let half: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect();
    let bf: Vec<u8> = [0.25f32, 8.0]
        .iter()
        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
        .collect();
    let bytes = zip_checkpoint(
        "archive",
        &pkl,
        &[
            ("0", f32_bytes(&[0., 1., 2., 3., 4., 5.])),
            ("1", half),
            ("2", bf),
            ("3", 7i64.to_le_bytes().to_vec()),
        ],
    );
    let w = read_weights_bytes(&bytes, FILE, false).unwrap();
    assert_eq!(
        w.tensors.keys().collect::<Vec<_>>(),
        ["b", "h", "s", "t", "w"]
    );
    assert_eq!(values(&w, "w"), [0., 1., 2., 3., 4., 5.]);
    assert_eq!(w.tensors["t"].shape.as_slice(), &[3, 2]);
    assert_eq!(values(&w, "t"), [0., 3., 1., 4., 2., 5.]);
    assert_eq!(values(&w, "s"), [4., 5.]);
    assert_eq!(values(&w, "h"), [1.5, -2.0]);
    assert_eq!(values(&w, "b"), [0.25, 8.0]);
    assert!(w.ignored.is_empty(), "{:?}", w.ignored);
}

#[test]
fn short_rebuild_tuples_are_errors_naming_the_tensor() {
    // _rebuild_tensor_v2 with 2 arguments
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .mark();
        p.storage("FloatStorage", "0", 6, false).int(0).op(b"tR");
    });
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 6]))]);
    assert_err(
        &b,
        &[
            "\"w\"",
            "_rebuild_tensor_v2 takes 6 or 7 arguments",
            "gives 2",
        ],
    );

    // a persistent id with 3 fields
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .mark();
        p.mark()
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .op(b"tQ");
        p.int(0)
            .int_tuple(&[6])
            .int_tuple(&[1])
            .op(&[0x89])
            .ordered_dict()
            .op(b"tR");
    });
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 6]))]);
    assert_err(&b, &["persistent id has 3 fields"]);

    // _rebuild_from_type_v2 with 2 arguments
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w")
            .global("torch._tensor", "_rebuild_from_type_v2")
            .mark();
        p.global("torch._utils", "_rebuild_tensor_v2")
            .global("torch.nn.parameter", "Parameter")
            .op(b"tR");
    });
    let b = zip_checkpoint("a", &p.stop(), &[]);
    assert_err(
        &b,
        &[
            "\"w\"",
            "_rebuild_from_type_v2 takes 4 arguments",
            "gives 2",
        ],
    );

    // _rebuild_parameter with 1 argument
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w")
            .global("torch._utils", "_rebuild_parameter")
            .mark();
        p.tensor(&TensorSpec::f32("0", &[6]), false).op(b"tR");
    });
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 6]))]);
    assert_err(
        &b,
        &["\"w\"", "_rebuild_parameter takes 3 arguments", "gives 1"],
    );
}

#[test]
fn rebuild_wrappers_of_torch_load_as_the_tensor() {
    // Parameter(_rebuild_tensor_v2(...)) and _rebuild_from_type_v2(_rebuild_tensor_v2,
    // Parameter, args, state), as torch 2.x writes parameters and tensor subclasses
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("p")
            .global("torch._utils", "_rebuild_parameter")
            .mark();
        p.tensor(&TensorSpec::f32("0", &[2]), false)
            .op(&[0x88])
            .ordered_dict()
            .op(b"tR");
        p.str("q")
            .global("torch._tensor", "_rebuild_from_type_v2")
            .mark();
        p.global("torch._utils", "_rebuild_tensor_v2")
            .global("torch.nn.parameter", "Parameter")
            .mark();
        let t = TensorSpec::f32("1", &[2]);
        p.storage(&t.class, &t.key, 2, false)
            .int(0)
            .int_tuple(&[2])
            .int_tuple(&[1])
            .op(&[0x89])
            .ordered_dict()
            .op(b"t}tR");
    });
    let b = zip_checkpoint(
        "a",
        &p.stop(),
        &[("0", f32_bytes(&[1., 2.])), ("1", f32_bytes(&[3., 4.]))],
    );
    let w = read_weights_bytes(&b, FILE, false).unwrap();
    assert_eq!(values(&w, "p"), [1., 2.]);
    assert_eq!(values(&w, "q"), [3., 4.]);
}

#[test]
fn declared_sizes_are_checked_against_the_real_data_before_allocating() {
    // shape (2^31-1)^2 over a 6-element storage
    let mut t = TensorSpec::f32("0", &[6]);
    t.size = vec![(1 << 31) - 1, (1 << 31) - 1];
    t.stride = vec![(1 << 31) - 1, 1];
    let pkl = state_dict_pickle(&[("w", t)], false);
    let b = zip_checkpoint("a", &pkl, &[("0", f32_bytes(&[0.; 6]))]);
    assert_err(&b, &["\"w\"", "storage \"0\", which holds 6"]);

    // a storage declaring 2^33 elements in a file of a few hundred bytes
    let mut t = TensorSpec::f32("0", &[1 << 33]);
    t.numel = 1 << 33;
    let pkl = state_dict_pickle(&[("w", t)], false);
    let b = zip_checkpoint("a", &pkl, &[("0", f32_bytes(&[0.; 4]))]);
    assert!(b.len() < 1000);
    assert_err(
        &b,
        &[
            "storage \"0\" declares 8589934592 elements",
            "holds 16 bytes",
        ],
    );

    // a shape whose product overflows u64
    let mut t = TensorSpec::f32("0", &[6]);
    t.size = vec![1 << 40, 1 << 40];
    t.stride = vec![0, 0];
    let pkl = state_dict_pickle(&[("w", t)], false);
    let b = zip_checkpoint("a", &pkl, &[("0", f32_bytes(&[0.; 6]))]);
    assert_err(&b, &["\"w\"", "overflows"]);

    // stride-0 views that would expand one storage far beyond its size
    let mut t = TensorSpec::f32("0", &[6]);
    t.size = vec![1 << 20, 1 << 10];
    t.stride = vec![0, 0];
    let pkl = state_dict_pickle(&[("w", t)], false);
    let b = zip_checkpoint("a", &pkl, &[("0", f32_bytes(&[0.; 6]))]);
    assert_err(&b, &["\"w\"", "more than 8 times"]);

    // a string length running past the end of the pickle
    let mut p = Pickle::new(2);
    p.op(&[b'X', 0xff, 0xff, 0xff, 0x7f]).op(b"abc");
    let b = zip_checkpoint("a", &p.0, &[]);
    assert_err(&b, &["needs 2147483647 bytes but only 3 are left"]);
}

#[test]
fn deep_nesting_and_memo_doubling_cost_neither_stack_nor_memory() {
    // a value nested 10^6 deep (TUPLE1 of TUPLE1 of ...) next to a real tensor: built
    // without recursion, ignored, dropped flat
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w").tensor(&TensorSpec::f32("0", &[2, 3]), false);
        p.str("deep").op(b")");
        p.op(&vec![0x85u8; 1_000_000]);
        // and 10^6 lists appended each into the one below it
        p.str("deep_list").op(&vec![b']'; 1_000_000]);
        p.op(&vec![b'a'; 999_999]);
    });
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 6]))]);
    let w = read_weights_bytes(&b, FILE, false).unwrap();
    assert_eq!(w.tensors.len(), 1);
    assert!(
        w.ignored.iter().any(|l| l.contains("\"deep\"")),
        "{:?}",
        w.ignored
    );
    assert!(
        w.ignored.iter().any(|l| l.contains("\"deep_list\"")),
        "{:?}",
        w.ignored
    );

    // 10^6 nested marks: refused at the mark limit
    let mut p = Pickle::new(2);
    p.op(&vec![b'('; 1_000_000]);
    let b = zip_checkpoint("a", &p.0, &[]);
    assert_err(&b, &["nests more than 1000 marks"]);

    // a list doubled 40 times through the memo: 40 list objects, not 2^40 elements
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w").tensor(&TensorSpec::f32("0", &[2, 3]), false);
        // L0 = []; then 40 times L = [L, L] (memo 0 holds the latest); then L40
        p.str("bomb").op(b"]q\x000");
        for _ in 0..40 {
            p.op(b"(h\x00h\x00lq\x000");
        }
        p.op(b"h\x00");
    });
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 6]))]);
    let t0 = std::time::Instant::now();
    let w = read_weights_bytes(&b, FILE, false).unwrap();
    assert!(t0.elapsed().as_secs() < 5);
    assert_eq!(w.tensors.len(), 1);
    assert!(
        w.ignored.iter().any(|l| l.contains("\"bomb\"")),
        "{:?}",
        w.ignored
    );
}

#[test]
fn protocol_4_pickles_with_frames_load() {
    // what pickle protocol 4 writes: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL,
    // BINUNICODE8 (a key), EMPTY_DICT + SETITEMS
    let mut body = Pickle(Vec::new());
    body.op(b"}").op(&[0x94]).mark();
    // key as BINUNICODE8
    body.op(&[0x8d])
        .op(&5u64.to_le_bytes())
        .op(b"model")
        .op(&[0x94]);
    body.short_str("collections")
        .op(&[0x94])
        .short_str("OrderedDict")
        .op(&[0x94, 0x93, 0x94]);
    body.op(b")R").op(&[0x94]).mark();
    body.short_str("w").op(&[0x94]);
    body.short_str("torch._utils")
        .op(&[0x94])
        .short_str("_rebuild_tensor_v2")
        .op(&[0x94, 0x93, 0x94])
        .mark();
    body.mark()
        .short_str("storage")
        .op(&[0x94])
        .short_str("torch")
        .op(&[0x94])
        .short_str("FloatStorage")
        .op(&[0x94, 0x93, 0x94])
        .short_str("0")
        .op(&[0x94])
        .short_str("cpu")
        .op(&[0x94])
        .op(&[b'K', 3, b't', 0x94, b'Q']);
    body.op(&[b'K', 0, b'K', 3, 0x85, 0x94, b'K', 1, 0x85, 0x94, 0x89]);
    // OrderedDict() again through the memo (index 4 is the OrderedDict global)
    body.op(&[b'h', 4, b')', b'R', 0x94, b't', 0x94, b'R', 0x94]);
    body.op(b"uu.");
    let mut pkl = vec![0x80, 4, 0x95];
    pkl.extend_from_slice(&(body.0.len() as u64).to_le_bytes());
    pkl.extend_from_slice(&body.0);
    let b = zip_checkpoint("a", &pkl, &[("0", f32_bytes(&[7., 8., 9.]))]);
    let w = read_weights_bytes(&b, FILE, false).unwrap();
    assert_eq!(values(&w, "w"), [7., 8., 9.]);

    // a frame longer than the file
    let mut bad = vec![0x80, 4, 0x95];
    bad.extend_from_slice(&(1u64 << 40).to_le_bytes());
    bad.extend_from_slice(b"N.");
    let b = zip_checkpoint("a", &bad, &[]);
    assert_err(&b, &["a frame of 1099511627776 bytes"]);
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let pkl = state_dict_pickle(&[("blocks.0.w", TensorSpec::f32("0", &[3]))], false);
        let b = zip_checkpoint("a", &pkl, &[("0", f32_bytes(&[0., bad, 1.]))]);
        assert_err(&b, &["blocks.0.w", "non-finite", "element 1"]);

        let hdr = r#"{"blocks.1.w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
        let st = safetensors_raw(hdr, &f32_bytes(&[bad, 0., 0.]));
        assert_err(&st, &["blocks.1.w", "non-finite", "element 0"]);
    }
    // f64 values too large for f32 become infinite: refused as well
    let hdr = r#"{"big":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}"#;
    let st = safetensors_raw(hdr, &1e300f64.to_le_bytes());
    assert_err(&st, &["big", "non-finite"]);
}

#[test]
fn safetensors_headers_are_checked_by_us() {
    let data = f32_bytes(&[1., 2., 3., 4.]);
    // duplicate tensor key
    let hdr = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#;
    assert_err(&safetensors_raw(hdr, &data), &["duplicate key \"a\""]);
    // duplicate key inside __metadata__ and inside an entry
    let hdr = r#"{"__metadata__":{"format":"pt","format":"np"},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    assert_err(&safetensors_raw(hdr, &data), &["duplicate key \"format\""]);
    let hdr = r#"{"a":{"dtype":"F32","dtype":"F16","shape":[4],"data_offsets":[0,16]}}"#;
    assert_err(&safetensors_raw(hdr, &data), &["duplicate key \"dtype\""]);
    // offsets errors name the tensor at fault, not a neighbour
    let hdr = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},"c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#;
    let e = err(&safetensors_raw(hdr, &data));
    assert!(
        e.contains("tensor \"b\" starts at data byte 2 inside tensor \"a\""),
        "{e}"
    );
    let hdr = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},"c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#;
    let e = err(&safetensors_raw(hdr, &data));
    assert!(
        e.contains("tensor \"b\" starts at data byte 8 but tensor \"a\" ends at 4"),
        "{e}"
    );
    let hdr = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"z":{"dtype":"F32","shape":[2],"data_offsets":[4,16]}}"#;
    let e = err(&safetensors_raw(hdr, &data));
    assert!(
        e.contains("tensor \"z\": shape [2] of F32 needs 8 bytes"),
        "{e}"
    );
    let hdr = r#"{"a":{"dtype":"F32","shape":[5],"data_offsets":[0,20]}}"#;
    let e = err(&safetensors_raw(hdr, &data));
    assert!(
        e.contains("tensor \"a\": data_offsets [0, 20] outside the 16 data bytes"),
        "{e}"
    );
    // a header length beyond the file
    let mut b = safetensors_raw("{}", &[]);
    b[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let e = format!("{:#}", read_weights_bytes(&b, FILE, true).unwrap_err());
    assert!(e.contains("declares 4611686018427387904 bytes"), "{e}");
    // a well-formed file reads, with any tensor order in the header
    let hdr = r#"{"__metadata__":{"format":"pt"},"z":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
    let w = read_weights_bytes(&safetensors_raw(hdr, &data), FILE, false).unwrap();
    assert_eq!(values(&w, "a"), [1., 2., 3.]);
    assert_eq!(values(&w, "z"), [4.]);
}

#[test]
fn unknown_storage_types_are_named() {
    let mut t = TensorSpec::f32("0", &[2]);
    t.class = "ComplexFloatStorage".into();
    let pkl = state_dict_pickle(&[("w", t)], false);
    let b = zip_checkpoint("a", &pkl, &[("0", vec![0; 16])]);
    assert_err(
        &b,
        &["unknown storage type torch.ComplexFloatStorage in file hostile.pth"],
    );
    // and for one that is not torch's at all
    let mut p = Pickle::new(2);
    p.state_dict(|p| {
        p.str("w")
            .global("torch._utils", "_rebuild_tensor_v2")
            .mark();
        p.mark()
            .str("storage")
            .global("numpy", "ndarray")
            .str("0")
            .str("cpu")
            .int(2)
            .op(b"tQ");
        p.int(0)
            .int_tuple(&[2])
            .int_tuple(&[1])
            .op(&[0x89])
            .ordered_dict()
            .op(b"tR");
    });
    let b = zip_checkpoint("a", &p.stop(), &[("0", f32_bytes(&[0.; 2]))]);
    assert_err(
        &b,
        &["unknown storage type numpy.ndarray in file hostile.pth"],
    );
}

#[test]
fn legacy_torch_save_streams_load_like_zip_archives() {
    let mut t = TensorSpec::f32("140234", &[2, 2]);
    t.numel = 6;
    t.offset = 2;
    let pkl = {
        let mut p = Pickle::new(2);
        p.op(b"}").mark().str("state_dict");
        p.state_dict(|p| {
            p.str("module.w").tensor(&t, true);
            let mut d = TensorSpec::f32("99", &[1]);
            d.class = "DoubleStorage".into();
            p.str("d").tensor(&d, true);
        });
        p.str("epoch").int(3).op(b"u");
        p.stop()
    };
    let b = legacy_checkpoint(
        &pkl,
        &[
            ("140234", 6, f32_bytes(&[0., 1., 2., 3., 4., 5.])),
            ("99", 1, 0.5f64.to_le_bytes().to_vec()),
        ],
    );
    let w = read_weights_bytes(&b, FILE, false).unwrap();
    assert_eq!(values(&w, "w"), [2., 3., 4., 5.]);
    assert_eq!(values(&w, "d"), [0.5]);

    // a storage whose element count disagrees with its declaration
    let bad = legacy_checkpoint(
        &pkl,
        &[
            ("140234", 5, f32_bytes(&[0., 1., 2., 3., 4.])),
            ("99", 1, 0.5f64.to_le_bytes().to_vec()),
        ],
    );
    assert_err(
        &bad,
        &["storage \"140234\" holds 5 elements but its tensors declare 6"],
    );
    // truncated inside the raw storages
    assert_err(
        &b[..b.len() - 3],
        &["storage \"99\"", "only 5 bytes are left"],
    );
    // a pickle that is not a torch checkpoint
    let mut p = Pickle::new(2);
    p.str("hello");
    assert_err(&p.stop(), &["not a torch.save checkpoint"]);
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/weights")
}

/// The fixtures of `tools/make_weights_fixtures.py`: the same tensors in every layout
/// torch.save writes; each must load to the values in `expected.json`.
#[test]
fn torch_layout_fixtures_load_to_the_same_values() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap();
    let want: BTreeMap<String, (Vec<usize>, Vec<f32>)> = expected["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let vals = v["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_f64().unwrap() as f32)
                .collect();
            (k.clone(), (shape, vals))
        })
        .collect();
    let files = expected["files"].as_array().unwrap();
    assert!(files.len() >= 4);
    for f in files {
        let path = fixtures().join(f.as_str().unwrap());
        let w = read_weights(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(
            w.tensors.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{}",
            path.display()
        );
        for (name, (shape, vals)) in &want {
            assert_eq!(
                w.tensors[name].shape.as_slice(),
                shape.as_slice(),
                "{name} in {f}"
            );
            assert_eq!(&values(&w, name), vals, "{name} in {f}");
        }
        assert!(w.ignored.is_empty(), "{f}: {:?}", w.ignored);
    }
}

#[test]
fn odd_paths_and_unknown_bytes_are_clean_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = format!("{:#}", read_weights(dir.path()).unwrap_err());
    assert!(e.contains("is not a regular file"), "{e}");
    let e = format!(
        "{:#}",
        read_weights(&dir.path().join("nope.pth")).unwrap_err()
    );
    assert!(e.contains("nope.pth"), "{e}");
    assert_err(
        b"hello world",
        &["neither a safetensors file nor a PyTorch checkpoint"],
    );
    assert_err(b"", &["neither"]);
    // a TorchScript archive
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.start_file("m/constants.pkl", zip::write::SimpleFileOptions::default())
        .unwrap();
    let b = z.finish().unwrap().into_inner();
    assert_err(&b, &["TorchScript"]);
    // a big-endian archive
    let pkl = state_dict_pickle(&[("w", TensorSpec::f32("0", &[1]))], false);
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in [
        ("m/data.pkl", pkl.as_slice()),
        ("m/byteorder", b"big".as_slice()),
        ("m/data/0", &[0u8; 4]),
    ] {
        z.start_file(name, opts).unwrap();
        std::io::Write::write_all(&mut z, data).unwrap();
    }
    let b = z.finish().unwrap().into_inner();
    assert_err(&b, &["byte order \"big\""]);
}

/// Overwrites the field at `local` (local header) and `central` (central directory
/// header) of every record named `name`, as a forger would.
fn patch_field(zip: &mut [u8], name: &str, local: usize, central: usize, value: &[u8]) {
    let n = name.as_bytes();
    for at in 0..zip.len().saturating_sub(4) {
        let sig = &zip[at..at + 4];
        let (name_at, field_at) = if sig == b"PK\x03\x04" {
            (at + 30, at + local)
        } else if sig == b"PK\x01\x02" {
            (at + 46, at + central)
        } else {
            continue;
        };
        if zip.get(name_at..name_at + n.len()) == Some(n) {
            zip[field_at..field_at + value.len()].copy_from_slice(value);
        }
    }
}

/// Sets the declared uncompressed size of the records named `name`.
fn patch_declared_size(zip: &mut [u8], name: &str, size: u32) {
    patch_field(zip, name, 22, 24, &size.to_le_bytes());
}

#[test]
fn deflated_zip_checkpoints_load_bounded() {
    let pkl = state_dict_pickle(
        &[
            ("w", TensorSpec::f32("0", &[2, 3])),
            ("b", TensorSpec::f32("1", &[1000])),
        ],
        false,
    );
    let storages = [
        ("0", f32_bytes(&[0., 1., 2., 3., 4., 5.])),
        ("1", f32_bytes(&[0.5; 1000])),
    ];
    let deflated = zip_checkpoint_with(zip::CompressionMethod::Deflated, "m", &pkl, &storages);
    // Really compressed: 4 KiB of one value deflate to a few bytes.
    assert!(deflated.len() < 2000, "{}", deflated.len());
    let w = read_weights_bytes(&deflated, FILE, false).unwrap();
    let stored = read_weights_bytes(&zip_checkpoint("m", &pkl, &storages), FILE, false).unwrap();
    for name in ["w", "b"] {
        assert_eq!(values(&w, name), values(&stored, name), "{name}");
    }
    assert_eq!(values(&w, "w"), [0., 1., 2., 3., 4., 5.]);

    // A record that inflates past its declared size, or short of it.
    let mut b = deflated.clone();
    patch_declared_size(&mut b, "m/data.pkl", pkl.len() as u32 - 5);
    let short = pkl.len() - 5;
    assert_err(
        &b,
        &[&format!(
            "record m/data.pkl holds more than {short} bytes, not the {short} it declares"
        )],
    );
    let mut b = deflated.clone();
    patch_declared_size(&mut b, "m/data.pkl", pkl.len() as u32 + 5);
    let long = pkl.len() + 5;
    assert_err(
        &b,
        &[&format!(
            "record m/data.pkl holds {} bytes, not the {long} it declares",
            pkl.len()
        )],
    );
    // A declared size past the stated bound is refused before inflating.
    let mut b = deflated.clone();
    patch_declared_size(&mut b, "m/data.pkl", 3 << 30);
    assert_err(
        &b,
        &["record m/data.pkl declares 3221225472 bytes (at most 1073741824 expected)"],
    );
    // A storage whose record inflates to more than the pickle declares for it.
    let mut big = storages.clone();
    big[1].1 = f32_bytes(&[0.5; 1001]);
    let b = zip_checkpoint_with(zip::CompressionMethod::Deflated, "m", &pkl, &big);
    assert_err(
        &b,
        &["storage \"1\" declares 1000 elements", "holds 4004 bytes"],
    );
    // Other methods are named.
    let mut b = deflated.clone();
    patch_field(&mut b, "m/data.pkl", 8, 10, &12u16.to_le_bytes()); // bzip2
    assert_err(&b, &["record m/data.pkl is compressed with"]);
}

#[test]
fn zip_checkpoints_with_a_name_twice_are_refused() {
    // torch.load reads the first `m/data/0`, a last-wins reader the second: refused.
    let pkl = state_dict_pickle(&[("w", TensorSpec::f32("0", &[2]))], false);
    for method in [
        zip::CompressionMethod::Stored,
        zip::CompressionMethod::Deflated,
    ] {
        let mut b = zip_checkpoint_with(
            method,
            "m",
            &pkl,
            &[("0", f32_bytes(&[1., 2.])), ("9", f32_bytes(&[3., 4.]))],
        );
        assert!(read_weights_bytes(&b, FILE, false).is_ok());
        // Rename m/data/9 to m/data/0 in both headers.
        let (from, to) = (b"m/data/9", b"m/data/0");
        for at in 0..b.len() - from.len() {
            if &b[at..at + from.len()] == from {
                b[at..at + to.len()].copy_from_slice(to);
            }
        }
        assert_err(&b, &["two records of one name", "refused"]);
    }
}
