//! `deit-pipe predict` on ordinary image files against timm: fixtures made by
//! `tools/make_predict_fixtures.py` (timm 1.0.31, Pillow 11.3.0) hold 26 small photo crops
//! (JPEG 4:2:0 / 4:2:2 / 4:4:4, progressive, grayscale, CMYK; PNG RGB, RGBA, LA, palette
//! with transparency, 16-bit), two random-weight DeiTs (32 px distilled, 224 px), and per
//! case timm's `create_transform(**resolve_data_config(overrides, model=m))` inputs and
//! the model's logits.
//!
//! - Item 1: the input tensors of our decode + eval transform equal timm's (max relative
//!   error 1e-5; in fact every value is equal) and the logits `predict --json` prints
//!   agree to 1e-5 relative, with the default transform (the model's timm config) and
//!   with `--crop-pct` / `--interpolation`.
//! - Item 2: `predict` runs a model `train` makes (configs/small_image.toml's student at
//!   the fixture's width and depth) from its run directory, from a weights file next to
//!   the run config, and from bare weights with the shape flags; weights that do not fit
//!   are refused naming the tensor and both shapes, suggesting only flags that exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use pipeline::ingest::open::decode_like_pillow;
use pipeline::transforms::normalize::Normalizer;
use pipeline::transforms::pillow_resize::PilFilter;
use serde_json::Value;
use trainer::train::checkpoint::{CheckpointStore, TrainState, MODEL_FILE};
use trainer::train::model_source::{resolve_model, ModelQuery, ShapeFlags};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/predict")
}

fn index() -> Value {
    serde_json::from_slice(&std::fs::read(dir().join("cases.json")).unwrap()).unwrap()
}

fn case<'a>(index: &'a Value, name: &str) -> &'a Value {
    index["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

/// The `predict` flags naming a fixture model by its timm name and shape flags.
fn model_flags(index: &Value, model: &str) -> Vec<String> {
    let m = &index["models"][model];
    let mut v = vec![
        "--weights".to_string(),
        dir()
            .join(m["file"].as_str().unwrap())
            .display()
            .to_string(),
        "--model".into(),
        m["timm_name"].as_str().unwrap().into(),
    ];
    for (k, val) in m["flags"].as_object().unwrap() {
        v.push(format!("--{}", k.replace('_', "-")));
        v.push(val.to_string());
    }
    v
}

fn shape_of(index: &Value, model: &str) -> ShapeFlags {
    let f = &index["models"][model]["flags"];
    let g = |k: &str| f.get(k).and_then(Value::as_u64).map(|v| v as usize);
    ShapeFlags {
        img_size: g("img_size"),
        patch_size: g("patch_size"),
        embed_dim: g("embed_dim"),
        depth: g("depth"),
        num_heads: g("num_heads"),
        mlp_ratio: None,
        num_classes: g("num_classes"),
    }
}

/// `crop_pct` / `interpolation` overrides of a case, as predict's flags.
fn override_flags(case: &Value) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(c) = case["overrides"].get("crop_pct") {
        v.extend(["--crop-pct".to_string(), c.to_string()]);
    }
    if let Some(i) = case["overrides"]
        .get("interpolation")
        .and_then(Value::as_str)
    {
        v.extend(["--interpolation".to_string(), i.to_string()]);
    }
    v
}

fn images(case: &Value) -> Vec<String> {
    case["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dir().join(f.as_str().unwrap()).display().to_string())
        .collect()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    });
    diff / scale.max(1e-30)
}

fn predict(args: &[String]) -> (bool, Vec<Value>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
        .arg("--quiet")
        .arg("predict")
        .arg("--json")
        .args(args)
        .output()
        .expect("runs");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs predict and checks its logits against the case's, returning the worst error.
fn check_logits(case: &Value, args: &[String]) -> f64 {
    let files = images(case);
    let (ok, lines, err) = predict(&[args, &files].concat());
    assert!(ok, "predict {args:?} failed: {err}");
    assert_eq!(lines.len(), files.len());
    let mut worst = 0f64;
    for ((line, want), file) in lines
        .iter()
        .zip(case["logits"].as_array().unwrap())
        .zip(&files)
    {
        assert_eq!(line["file"].as_str().unwrap(), file);
        let got: Vec<f32> = serde_json::from_value(line["logits"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(want.clone()).unwrap();
        let e = rel_err(&got, &want);
        assert!(e <= 1e-5, "{} {file}: logits rel err {e:.2e}", case["name"]);
        worst = worst.max(e);
    }
    worst
}

const CASES: [&str; 7] = [
    "default32",
    "default224",
    "run875",
    "crop1_bilinear",
    "crop95_lanczos",
    "crop8_box",
    "crop85_hamming",
];

#[test]
fn fixtures_cover_the_file_kinds() {
    let index = index();
    let imgs = index["images"].as_array().unwrap();
    assert!(imgs.len() >= 20);
    let kinds: std::collections::BTreeSet<&str> =
        imgs.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    for k in [
        "jpeg",
        "jpeg_gray",
        "jpeg_cmyk",
        "png",
        "png_rgba",
        "png_la",
        "png_p",
    ] {
        assert!(kinds.contains(k), "{k}");
    }
    let names: Vec<&str> = imgs.iter().map(|i| i["file"].as_str().unwrap()).collect();
    for part in ["420", "444", "prog"] {
        assert!(names.iter().any(|n| n.contains(part)), "{part}");
    }
}

#[test]
fn input_tensors_equal_timms_transform() {
    let index = index();
    for name in CASES {
        let case = case(&index, name);
        let model = case["model"].as_str().unwrap();
        let m = &index["models"][model];
        let resolved = resolve_model(&ModelQuery {
            weights: dir().join(m["file"].as_str().unwrap()),
            model: Some(m["timm_name"].as_str().unwrap().into()),
            shape: shape_of(&index, model),
            crop_pct: case["overrides"].get("crop_pct").and_then(Value::as_f64),
            interpolation: case["overrides"]
                .get("interpolation")
                .and_then(Value::as_str)
                .map(|s| PilFilter::parse(s).unwrap()),
            ..ModelQuery::default()
        })
        .unwrap();
        let t = resolved.eval;
        // The resolved defaults are timm's resolve_data_config.
        assert_eq!(t.crop_pct, case["crop_pct"].as_f64().unwrap(), "{name}");
        assert_eq!(t.filter.name(), case["interpolation"].as_str().unwrap());
        assert_eq!(u64::from(t.size), case["input_size"][2].as_u64().unwrap());
        let norm = Normalizer::new(resolved.augment.mean, resolved.augment.std);
        let plane = 3 * (t.size as usize).pow(2);
        let ours: Vec<Vec<f32>> = images(case)
            .iter()
            .map(|f| {
                let img = decode_like_pillow(&std::fs::read(f).unwrap(), 1 << 30).unwrap();
                let mut out = vec![0f32; plane];
                t.view(&img, &norm, &mut out).unwrap();
                out
            })
            .collect();
        if let Some(file) = case["inputs"].as_str() {
            let want: BTreeMap<String, Tensor> =
                candle_core::safetensors::load(dir().join(file), &Device::Cpu)
                    .unwrap()
                    .into_iter()
                    .collect();
            let want = want["inputs"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (i, (got, want)) in ours.iter().zip(want.chunks(plane)).enumerate() {
                let e = rel_err(got, want);
                assert!(e <= 1e-5, "{name} image {i}: inputs rel err {e:.2e}");
                assert!(
                    got == want,
                    "{name} image {i}: inputs differ (rel err {e:.2e})"
                );
            }
        } else {
            for (i, (got, want)) in ours
                .iter()
                .zip(case["input_stats"].as_array().unwrap())
                .enumerate()
            {
                let bytes: Vec<u8> = got.iter().flat_map(|v| v.to_le_bytes()).collect();
                let (min, max) = got
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let mean = got.iter().map(|&v| f64::from(v)).sum::<f64>() / got.len() as f64;
                assert_eq!(
                    blake3::hash(&bytes).to_hex().as_str(),
                    want["blake3"].as_str().unwrap(),
                    "{name} image {i}: inputs differ from timm's (ours min {min} max {max} \
                     mean {mean}; timm {want})"
                );
            }
        }
    }
}

#[test]
fn predict_logits_equal_timms() {
    let index = index();
    for name in CASES {
        let case = case(&index, name);
        let args = [
            model_flags(&index, case["model"].as_str().unwrap()),
            override_flags(case),
        ]
        .concat();
        let worst = check_logits(case, &args);
        eprintln!("{name}: worst logits rel err {worst:.2e}");
    }
}

/// A run directory as `train` leaves it: configs/small_image.toml at the fixture's width
/// and depth, its checkpoint holding the fixture's weights.
fn make_run(root: &Path) -> PathBuf {
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    let recipe = include_str!("../configs/small_image.toml")
        .replace("embed_dim = 128", "embed_dim = 64")
        .replace("depth = 4", "depth = 2");
    assert!(recipe.contains("embed_dim = 64") && recipe.contains("depth = 2"));
    std::fs::write(run.join("config.toml"), recipe).unwrap();
    let store = CheckpointStore::open(&run).unwrap();
    let state = TrainState {
        version: 1,
        epoch: 1,
        batch_in_epoch: 0,
        global_step: 10,
        images_seen: 640,
        best: None,
        config_hash: String::new(),
        dataset_fingerprint: String::new(),
        epoch_loss_sum: 0.0,
        epoch_batches: 0,
        world_size: 1,
    };
    store
        .save(&state, false, |d| {
            std::fs::copy(dir().join("deit32.safetensors"), d.join(MODEL_FILE))?;
            Ok(())
        })
        .unwrap();
    run
}

#[test]
fn predict_runs_the_models_train_makes() {
    let index = index();
    let tmp = tempfile::tempdir().unwrap();
    let run = make_run(tmp.path());
    // The run's eval transform: small_image.toml's eval_crop_pct 0.875 at 32 px (resize
    // to 36, crop 32), as timm with crop_pct 0.875.
    let run875 = case(&index, "run875");
    check_logits(run875, &["--weights".into(), run.display().to_string()]);
    // A weights file next to the run's config.
    let next_to = run.join("student.safetensors");
    std::fs::copy(dir().join("deit32.safetensors"), &next_to).unwrap();
    check_logits(run875, &["--weights".into(), next_to.display().to_string()]);
    // Bare weights (no config anywhere above): dimensions from the tensors, heads given;
    // the transform is then timm's DeiT default.
    let bare = tmp.path().join("bare.safetensors");
    std::fs::copy(dir().join("deit32.safetensors"), &bare).unwrap();
    let default32 = case(&index, "default32");
    let bare_args = vec!["--weights".to_string(), bare.display().to_string()];
    check_logits(
        default32,
        &[bare_args.clone(), vec!["--num-heads".into(), "2".into()]].concat(),
    );
    // ... and `--model deit` with the free dimensions.
    let free: Vec<String> = "--model deit --patch-size 8 --embed-dim 64 --depth 2 --num-heads 2"
        .split(' ')
        .map(String::from)
        .collect();
    check_logits(default32, &[bare_args.clone(), free].concat());
    // Without the heads: a clear request for the one flag the weights cannot tell.
    let (ok, _, err) = predict(&[bare_args, images(default32)[..1].to_vec()].concat());
    assert!(!ok);
    assert!(err.contains("give --num-heads"), "{err}");
    assert!(err.contains("width 64, depth 2, patch 8, 32 px"), "{err}");
}

/// Every `--flag` a message names is one of `predict --help`'s.
fn assert_flags_exist(msg: &str) {
    let help = Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
        .args(["predict", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for word in msg.split(|c: char| c.is_whitespace() || c == '(' || c == ',' || c == ')') {
        if let Some(flag) = word.strip_prefix("--") {
            let flag = flag.trim_end_matches(['.', ':', ';']);
            assert!(
                help.contains(&format!("--{flag} ")) || help.contains(&format!("--{flag}\n")),
                "message names --{flag}, which predict does not have:\n{msg}"
            );
        }
    }
}

#[test]
fn misfitting_weights_name_the_tensor_and_both_shapes() {
    let index = index();
    let one = images(case(&index, "default32"))[..1].to_vec();
    let base = model_flags(&index, "deit32");
    let with = |flag: &str, value: &str| -> Vec<String> {
        let mut v = base.clone();
        let at = v.iter().position(|a| a == flag).unwrap();
        v[at + 1] = value.into();
        [v, one.clone()].concat()
    };
    // Width: every tensor misfits; the first lines name them with both shapes.
    let (ok, _, err) = predict(&with("--embed-dim", "32"));
    assert!(!ok);
    assert!(
        err.contains(
            "tensor cls_token: the weights have shape [1, 1, 64], the model expects [1, 1, 32]"
        ),
        "{err}"
    );
    // The message describes the weights as the flags that fit them.
    assert!(
        err.contains("--patch-size 8 --embed-dim 64 --depth 2"),
        "{err}"
    );
    assert!(!err.contains("--partial"), "{err}");
    assert_flags_exist(&err);
    // Depth: missing and unexpected blocks.
    let (ok, _, err) = predict(&with("--depth", "3"));
    assert!(!ok);
    assert!(
        err.contains("missing tensor blocks.2.attn.qkv.weight (model shape [192, 64])"),
        "{err}"
    );
    assert_flags_exist(&err);
    let (ok, _, err) = predict(&with("--depth", "1"));
    assert!(!ok);
    assert!(
        err.contains("unexpected tensor blocks.1.attn.qkv.weight (shape [192, 64])"),
        "{err}"
    );
    // Class count.
    let (ok, _, err) = predict(&with("--num-classes", "7"));
    assert!(!ok);
    assert!(
        err.contains(
            "tensor head.weight: the weights have shape [10, 64], the model expects [7, 64]"
        ),
        "{err}"
    );
    assert_flags_exist(&err);
    // A ConvNet name on DeiT weights, and DeiT flags on a ConvNet.
    let mut v = base.clone();
    v.truncate(2);
    let (ok, _, err) = predict(
        &[
            v.clone(),
            vec!["--model".into(), "resnet18".into()],
            one.clone(),
        ]
        .concat(),
    );
    assert!(!ok);
    assert!(err.contains("missing tensor conv1.weight"), "{err}");
    assert_flags_exist(&err);
    let (ok, _, err) = predict(
        &[
            v,
            "--model resnet18 --depth 3"
                .split(' ')
                .map(String::from)
                .collect(),
            one,
        ]
        .concat(),
    );
    assert!(!ok);
    assert!(
        err.contains("--depth: only DeiT models take these flags, and resnet18 is a ConvNet"),
        "{err}"
    );
}

/// Mean cross-entropy and top-1 (percent) of logit rows against labels.
fn ce_top1(rows: &[Vec<f32>], labels: &[usize]) -> (f64, f64) {
    let mut loss = 0f64;
    let mut hits = 0usize;
    for (row, &l) in rows.iter().zip(labels) {
        let max = row.iter().fold(f64::MIN, |m, &v| m.max(f64::from(v)));
        let lse = row
            .iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        loss += lse - f64::from(row[l]);
        let best = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .unwrap();
        hits += usize::from(best == l);
    }
    let n = rows.len() as f64;
    (loss / n, 100.0 * hits as f64 / n)
}

#[test]
fn eval_uses_the_same_transform_and_model_as_predict() {
    // The RGB JPEGs (4:2:0, 4:2:2, 4:4:4, progressive) are stored by `shard` with their
    // pixels unchanged (no resize under --max-side 512; restart markers added
    // losslessly), so eval over the records must see timm's inputs.
    let index = index();
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("folder");
    let mut picked = Vec::new();
    for img in index["images"].as_array().unwrap() {
        if img["kind"] != "jpeg" {
            continue;
        }
        let file = img["file"].as_str().unwrap();
        let label = picked.len() % 2;
        let class_dir = folder.join("val").join(format!("c{label}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        let name = Path::new(file).file_name().unwrap();
        std::fs::copy(dir().join(file), class_dir.join(name)).unwrap();
        picked.push((file.to_string(), label));
    }
    assert!(picked.len() >= 12);
    let data = tmp.path().join("shards");
    let out = Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
        .args(["--quiet", "shard", "--max-side", "512", "--input"])
        .arg(&folder)
        .arg("--out")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = make_run(tmp.path());
    let bare = tmp.path().join("bare.safetensors");
    std::fs::copy(dir().join("deit32.safetensors"), &bare).unwrap();
    let heads: Vec<String> = vec!["--num-heads".into(), "2".into()];
    for (case_name, weights, extra) in [("run875", run.clone(), vec![]), ("default32", bare, heads)]
    {
        let case = case(&index, case_name);
        let files: Vec<&str> = case["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for (file, label) in &picked {
            let at = files.iter().position(|f| f == file).unwrap();
            rows.push(serde_json::from_value::<Vec<f32>>(case["logits"][at].clone()).unwrap());
            labels.push(*label);
        }
        let (loss, top1) = ce_top1(&rows, &labels);
        let out = Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
            .args(["--quiet", "eval", "--json", "--split", "val", "--weights"])
            .arg(&weights)
            .arg("--data")
            .arg(&data)
            .args(&extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["images"].as_u64().unwrap() as usize, picked.len());
        let got = s["loss"].as_f64().unwrap();
        assert!(
            (got - loss).abs() <= 1e-5 * loss.abs(),
            "{case_name}: eval loss {got}, timm's logits give {loss}"
        );
        assert_eq!(s["top1"].as_f64().unwrap(), top1, "{case_name}");
    }
}
