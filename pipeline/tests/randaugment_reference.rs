//! RandAugment against timm 1.0.31 / Pillow 11.3 fixtures made by
//! `tools/make_augment_fixtures.py` (see that script for what each case runs).
//!
//! Bounds asserted: every op (all 21 timm op names: the increasing set of 15 plus the six
//! of the original set) is **bit-exact** on all 4 images x all magnitude levels x both
//! signs, including the bicubic geometric ops (Geometry.c is replicated in f64 operation
//! for operation). Op arguments equal timm's level-function outputs bit for bit.

use std::path::{Path, PathBuf};

use image::RgbImage;
use pipeline::randaugment::{apply_op_f64, Op, OpArg, RandAugmentConfig};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/randaugment")
}

fn index() -> Value {
    let path = fixture_dir().join("index.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_png(name: &str) -> RgbImage {
    let path = fixture_dir().join(name);
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_rgb8()
}

struct Case {
    op: Op,
    name: String,
    level: f64,
    negate: bool,
}

fn cases(idx: &Value) -> Vec<Case> {
    idx["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c["op"].as_str().expect("op").to_string();
            Case {
                op: Op::from_timm_name(&name).unwrap_or_else(|| panic!("unknown op {name}")),
                name,
                level: c["level"].as_f64().expect("level"),
                negate: c["negate"].as_bool().expect("negate"),
            }
        })
        .collect()
}

#[test]
fn op_arguments_match_timm_level_functions() {
    let idx = index();
    for (c, raw) in cases(&idx).iter().zip(idx["cases"].as_array().unwrap()) {
        let arg = c.op.arg(c.level / 10.0, c.negate);
        let want = &raw["arg"];
        match want["kind"].as_str().unwrap() {
            "none" => assert_eq!(arg, OpArg::None, "{} {}", c.name, c.level),
            "int" => assert_eq!(
                arg,
                OpArg::Int(want["value"].as_i64().unwrap()),
                "{} {}",
                c.name,
                c.level
            ),
            "float" => {
                let bits: u64 = want["bits"].as_str().unwrap().parse().unwrap();
                match arg {
                    OpArg::Float(v) => assert_eq!(
                        v.to_bits(),
                        bits,
                        "{} level {} negate {}: ours {v}, timm {}",
                        c.name,
                        c.level,
                        c.negate,
                        f64::from_bits(bits)
                    ),
                    other => panic!("{}: expected float arg, got {other:?}", c.name),
                }
            }
            k => panic!("unknown arg kind {k}"),
        }
        let draws = raw["sign_draws"].as_u64().unwrap();
        assert_eq!(
            c.op.has_sign(),
            draws == 1,
            "{}: timm drew {draws} signs",
            c.name
        );
    }
}

/// Per-op comparison of our output with PIL's over all images and cases.
#[test]
fn every_op_is_bit_exact_with_pillow() {
    let idx = index();
    let cases = cases(&idx);
    let fill = [124, 116, 104];
    assert_eq!(idx["fill"], serde_json::json!(fill));
    let mut failures = Vec::new();
    let mut compared = 0usize;
    for im in idx["images"].as_array().unwrap() {
        let input = load_png(im["input"].as_str().unwrap());
        let sheet = load_png(im["output"].as_str().unwrap());
        let (w, h) = (input.width(), input.height());
        assert_eq!(
            (w, h),
            (
                im["width"].as_u64().unwrap() as u32,
                im["height"].as_u64().unwrap() as u32
            )
        );
        assert_eq!(
            sheet.height(),
            h * cases.len() as u32,
            "sheet of {}",
            im["name"]
        );
        for (i, c) in cases.iter().enumerate() {
            let want = image::imageops::crop_imm(&sheet, 0, i as u32 * h, w, h).to_image();
            let got = apply_op_f64(&input, c.op, c.level / 10.0, c.negate, fill);
            compared += 1;
            if got != want {
                let diffs: Vec<i32> = got
                    .as_raw()
                    .iter()
                    .zip(want.as_raw())
                    .map(|(&a, &b)| (a as i32 - b as i32).abs())
                    .filter(|&d| d > 0)
                    .collect();
                failures.push(format!(
                    "{} on {} level {} negate {}: {} bytes differ, max |diff| {}",
                    c.name,
                    im["name"],
                    c.level,
                    c.negate,
                    diffs.len(),
                    diffs.iter().max().unwrap_or(&0)
                ));
            }
        }
    }
    assert_eq!(compared, 4 * cases.len());
    assert!(
        failures.is_empty(),
        "{} of {compared} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_increasing_and_standard_op_has_fixtures() {
    let idx = index();
    let cases = cases(&idx);
    for op in Op::INCREASING.iter().chain(Op::STANDARD.iter()) {
        let n = cases.iter().filter(|c| c.op == *op).count();
        assert!(n >= 1, "{op:?} has no fixture case");
        if op.has_sign() {
            assert!(
                cases.iter().any(|c| c.op == *op && c.negate),
                "{op:?}: no negated case"
            );
        }
    }
}

#[test]
fn parse_timm_matches_rand_augment_transform() {
    let idx = index();
    for p in idx["parse"].as_array().unwrap() {
        let s = p["string"].as_str().unwrap();
        let cfg = RandAugmentConfig::parse_timm(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(cfg.num_ops as u64, p["num_layers"].as_u64().unwrap(), "{s}");
        let names: Vec<&str> = cfg.ops().iter().map(|o| o.timm_name()).collect();
        let want: Vec<&str> = p["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(names, want, "{s}");
        assert_eq!(
            f64::from(cfg.prob),
            p["prob"].as_f64().unwrap() as f32 as f64,
            "{s}"
        );
        assert_eq!(
            f64::from(cfg.magnitude),
            p["magnitude"].as_f64().unwrap(),
            "{s}"
        );
        match &p["magnitude_std"] {
            Value::String(inf) => {
                assert_eq!(inf, "inf");
                assert!(cfg.uniform_magnitude(), "{s}");
            }
            v => {
                assert!(!cfg.uniform_magnitude(), "{s}");
                assert_eq!(f64::from(cfg.magnitude_std), v.as_f64().unwrap(), "{s}");
            }
        }
        // timm: `magnitude_max or 10`
        let mmax = p["magnitude_max"]
            .as_f64()
            .filter(|&v| v != 0.0)
            .unwrap_or(10.0);
        assert_eq!(f64::from(cfg.magnitude_max), mmax, "{s}");
        // and our string reads back to the same config
        assert_eq!(
            RandAugmentConfig::parse_timm(&cfg.to_timm_string()).unwrap(),
            cfg,
            "{s}"
        );
    }
}

#[test]
fn default_is_deits_timm_transform() {
    let idx = index();
    let d = &idx["deit"];
    let cfg = RandAugmentConfig::default();
    assert_eq!(cfg.num_ops as u64, d["num_layers"].as_u64().unwrap());
    let names: Vec<&str> = cfg.ops().iter().map(|o| o.timm_name()).collect();
    let want: Vec<&str> = d["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(names, want);
    assert_eq!(f64::from(cfg.prob), d["prob"].as_f64().unwrap());
    assert_eq!(f64::from(cfg.magnitude), d["magnitude"].as_f64().unwrap());
    assert_eq!(
        f64::from(cfg.magnitude_std),
        d["magnitude_std"].as_f64().unwrap()
    );
    assert_eq!(serde_json::json!(cfg.fill), d["fillcolor"]);
    assert_eq!(d["resample"], "BICUBIC");
}
