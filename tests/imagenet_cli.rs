//! ImageNet as users have it (issue 23): wnid class folders for train, a flat `val/`
//! (files named `ILSVRC2012_val_000000NN.JPEG`, no class folders) whose labels come from
//! Kaggle's `LOC_val_solution.csv`, the devkit's ground truth with its `meta.mat`, or
//! `file<TAB>class` lines, with odd files among them (a CMYK JPEG, a PNG named `.JPEG`).
//! The tree is generated here; it runs through shard -> teacher-cache -> train -> eval
//! with the right val counts and class names, and each silent trap of the issue is a
//! refusal: a flat val without labels, an empty val split in train and eval, a val split
//! whose class names differ from the model's.

mod common;

use common::{bin, config, run_err, run_ok};
use std::path::{Path, PathBuf};

/// Sorted, as train/'s class folders; the devkit fixture's meta.mat gives them the
/// ILSVRC2012_IDs 2, 4, 3 (tools/make_val_label_fixtures.py), not sorted order.
const WNIDS: [&str; 3] = ["n01440764", "n01443537", "n01484850"];

fn devkit_id(wnid: &str) -> u32 {
    match wnid {
        "n01440764" => 2,
        "n01484850" => 3,
        "n01443537" => 4,
        _ => unreachable!(),
    }
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn manifest(split: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(split.join("manifest.json")).expect("manifest"))
        .expect("json")
}

/// The ImageNet-shaped tree: (root, class of each val file k = 1..=N).
fn imagenet_tree(tmp: &Path) -> (PathBuf, Vec<&'static str>) {
    let synth = tmp.join("synth");
    run_ok(
        bin()
            .args(["synth", "--classes", "3", "--train-per-class", "8"])
            .args(["--val-per-class", "3", "--seed", "5", "--out"])
            .arg(&synth),
    );
    let root = tmp.join("imagenet");
    // train/<wnid>/..., from synth's class folders in sorted order.
    let mut synth_classes: Vec<_> = std::fs::read_dir(synth.join("train"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    synth_classes.sort();
    assert_eq!(synth_classes.len(), 3);
    std::fs::create_dir_all(root.join("train")).unwrap();
    for (c, w) in synth_classes.iter().zip(WNIDS) {
        std::fs::rename(synth.join("train").join(c), root.join("train").join(w)).unwrap();
    }
    let odd = [
        ("predict/images/o_cmyk_q90_119x83.jpg", WNIDS[0]),
        ("predict/images/r_rgb_png_109x73.png", WNIDS[2]),
    ];
    for (i, (f, _)) in odd.iter().enumerate() {
        let dst = root
            .join("train")
            .join(WNIDS[1])
            .join(format!("odd_{i}.JPEG"));
        std::fs::copy(fixture(f), dst).unwrap();
    }
    // A flat val/: synth's val images and the odd ones, numbered in a scrambled order.
    let mut val: Vec<(PathBuf, &str)> = Vec::new();
    for (c, w) in synth_classes.iter().zip(WNIDS) {
        let mut files: Vec<_> = std::fs::read_dir(synth.join("val").join(c))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        val.extend(files.into_iter().map(|p| (p, w)));
    }
    val.extend(odd.iter().map(|(f, w)| (fixture(f), *w)));
    let n = val.len();
    assert_eq!(n, 11);
    std::fs::create_dir_all(root.join("val")).unwrap();
    let mut classes = vec![""; n];
    for (i, (src, w)) in val.into_iter().enumerate() {
        let k = (i * 7) % n; // 7 is prime to 11: a permutation
        std::fs::copy(
            &src,
            root.join("val")
                .join(format!("ILSVRC2012_val_{:08}.JPEG", k + 1)),
        )
        .unwrap();
        classes[k] = w;
    }
    (root, classes)
}

fn shard(input: &Path, out: &Path) -> std::process::Command {
    let mut c = bin();
    c.args(["shard", "--max-side", "40", "--format", "raw", "--input"])
        .arg(input)
        .arg("--out")
        .arg(out);
    c
}

#[test]
fn imagenet_layouts_shard_cache_train_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, classes) = imagenet_tree(tmp.path());
    let n = classes.len();

    // A flat val/ without labels is refused, naming the layout and the fix.
    let e = run_err(&mut shard(&root, &tmp.path().join("refused")));
    assert!(e.contains("11 files and no class folders"), "{e}");
    assert!(
        e.contains("flat layout of ImageNet's validation images"),
        "{e}"
    );
    assert!(e.contains("--val-labels"), "{e}");

    // The three label files.
    let mut kaggle = String::from("ImageId,PredictionString\n");
    for k in (0..n).rev() {
        let w = classes[k];
        kaggle.push_str(&format!("ILSVRC2012_val_{:08},{w} 10 20 30 40\n", k + 1));
    }
    let kaggle_file = root.join("LOC_val_solution.csv");
    std::fs::write(&kaggle_file, kaggle).unwrap();
    let devkit = root.join("ILSVRC2012_devkit_t12/data");
    std::fs::create_dir_all(&devkit).unwrap();
    let gt: String = classes
        .iter()
        .map(|w| format!("{}\n", devkit_id(w)))
        .collect();
    std::fs::write(devkit.join("ILSVRC2012_validation_ground_truth.txt"), gt).unwrap();
    std::fs::copy(fixture("val_labels/meta.mat"), devkit.join("meta.mat")).unwrap();
    let plain_file = root.join("val.tsv");
    let plain: String = (0..n)
        .map(|k| format!("ILSVRC2012_val_{:08}.JPEG\t{}\n", k + 1, classes[k]))
        .collect();
    std::fs::write(&plain_file, plain).unwrap();

    let mut want_counts = [0u64; 3];
    for w in &classes {
        want_counts[WNIDS.iter().position(|x| x == w).unwrap()] += 1;
    }
    let mut fingerprints = Vec::new();
    for (kind, labels) in [
        ("kaggle", &kaggle_file),
        ("devkit", &devkit),
        ("plain", &plain_file),
    ] {
        let out = tmp.path().join(format!("shards_{kind}"));
        run_ok(shard(&root, &out).arg("--val-labels").arg(labels));
        let m = manifest(&out.join("val"));
        assert_eq!(m["num_records"].as_u64(), Some(n as u64), "{kind}: {m}");
        assert_eq!(m["classes"], serde_json::json!(WNIDS), "{kind}");
        assert_eq!(
            m["counts_per_class"],
            serde_json::json!(want_counts),
            "{kind}"
        );
        assert_eq!(m["skipped"], serde_json::json!([]), "{kind}");
        assert_eq!(
            manifest(&out.join("train"))["num_records"].as_u64(),
            Some(26)
        );
        fingerprints.push(m["fingerprint"].as_str().unwrap().to_string());
    }
    // Three label files, one labelling: the same records.
    assert!(
        fingerprints.iter().all(|f| *f == fingerprints[0]),
        "{fingerprints:?}"
    );

    // shard -> teacher -> teacher-cache -> student -> eval on the devkit's labels.
    let data = tmp.path().join("shards_devkit");
    let teacher = tmp.path().join("teacher");
    run_ok(
        bin()
            .arg("train")
            .arg("--config")
            .arg(config("teacher_resnet_tiny.toml"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&teacher)
            .args(["--epochs", "1", "--batch-size", "8"]),
    );
    let cache = tmp.path().join("cache");
    run_ok(
        bin()
            .arg("teacher-cache")
            .arg("--data")
            .arg(&data)
            .arg("--teacher")
            .arg(&teacher)
            .arg("--config")
            .arg(config("small_image.toml"))
            .args(["--epochs", "0..1", "--top-k", "3", "--aa", "none", "--out"])
            .arg(&cache),
    );
    let student = tmp.path().join("student");
    run_ok(
        bin()
            .arg("train")
            .arg("--config")
            .arg(config("small_image.toml"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&student)
            .args(["--epochs", "1", "--batch-size", "8", "--aa", "none"])
            .args(["--distillation", "hard", "--teacher-targets"])
            .arg(&cache),
    );
    let run_classes: Vec<String> =
        serde_json::from_slice(&std::fs::read(student.join("classes.json")).unwrap()).unwrap();
    assert_eq!(run_classes, WNIDS);
    let out = run_ok(
        bin()
            .args(["eval", "--json", "--weights"])
            .arg(&student)
            .arg("--data")
            .arg(&data),
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["images"].as_u64(), Some(n as u64), "{s}");

    // eval checks class names, not only their number: a val split of 3 other classes.
    let other = tmp.path().join("other");
    for (split, w) in [("train", "a"), ("train", "b"), ("train", "c"), ("val", "b")] {
        let d = other.join(split).join(w);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            fixture("predict/images/a420_q90_131x97.jpg"),
            d.join("x.JPEG"),
        )
        .unwrap();
    }
    let other_data = tmp.path().join("shards_other");
    run_ok(&mut shard(&other, &other_data));
    let e = run_err(
        bin()
            .args(["eval", "--weights"])
            .arg(&student)
            .arg("--data")
            .arg(&other_data),
    );
    assert!(e.contains("its classes are not the model's"), "{e}");
    assert!(e.contains("only in val: \"a\", \"b\", \"c\""), "{e}");
}

/// A split whose every file is unreadable: shard says so and fails (the manifest stays
/// for its skip list), and train and eval refuse the empty val split instead of scoring
/// 0.00 on 0 images.
#[test]
fn empty_val_split_is_refused_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tree");
    for (split, class, bytes) in [
        (
            "train",
            "a",
            std::fs::read(fixture("predict/images/a420_q90_131x97.jpg")).unwrap(),
        ),
        (
            "train",
            "b",
            std::fs::read(fixture("predict/images/b420_q75_200x150.jpg")).unwrap(),
        ),
        ("val", "a", b"not an image".to_vec()),
    ] {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..4 {
            std::fs::write(d.join(format!("{i}.JPEG")), &bytes).unwrap();
        }
    }
    let data = tmp.path().join("shards");
    let e = run_err(&mut shard(&root, &data));
    assert!(e.contains("val: 0 of 4 files could be read"), "{e}");
    assert_eq!(manifest(&data.join("val"))["num_records"].as_u64(), Some(0));
    // A val folder with class folders but no files at all: refused before writing.
    let root2 = tmp.path().join("tree2");
    std::fs::create_dir_all(root2.join("val/a")).unwrap();
    std::fs::create_dir_all(root2.join("train")).unwrap();
    std::fs::rename(root.join("train/a"), root2.join("train/a")).unwrap();
    let e = run_err(&mut shard(&root2, &tmp.path().join("shards2")));
    assert!(e.contains("split \"val\" has no input files"), "{e}");
    assert!(!tmp.path().join("shards2/val").exists());

    let run = tmp.path().join("run");
    let e = run_err(
        bin()
            .arg("train")
            .arg("--config")
            .arg(config("small_image.toml"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(["--epochs", "1", "--batch-size", "2"]),
    );
    assert!(e.contains("the val split has 0 records"), "{e}");
    // Without evaluation the same data trains.
    run_ok(
        bin()
            .arg("train")
            .arg("--config")
            .arg(config("small_image.toml"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&run)
            .args(["--epochs", "1", "--batch-size", "2"])
            .args(["--set", "run.eval_every=0"]),
    );
    let e = run_err(
        bin()
            .args(["eval", "--weights"])
            .arg(&run)
            .arg("--data")
            .arg(&data),
    );
    assert!(e.contains("the split has 0 records"), "{e}");
}
