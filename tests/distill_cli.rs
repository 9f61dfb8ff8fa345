//! The product's main path end to end through the binary, as a user types it: `synth`,
//! `shard`, train a ConvNet teacher from labels (it must learn: well above chance), fill a
//! teacher cache from the teacher's run directory with the student's view flags, train a
//! DeiT student from the cache (hard distillation), `eval` it (it must learn too). Asserts
//! the files each stage leaves, that the cache is bound to the shards' fingerprint, and that
//! a student whose view flags differ from the cache's is refused with the field named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CLASSES: usize = 4;
/// Epochs of the student (and of the cache).
const STUDENT_EPOCHS: usize = 10;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
}

fn output(cmd: &mut Command) -> Output {
    cmd.arg("--quiet").output().expect("deit-pipe runs")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name)
}

/// `deit-pipe eval --json` of a run directory.
fn eval(run: &Path, data: &Path) -> serde_json::Value {
    let text = run_ok(
        bin()
            .args(["eval", "--json", "--weights"])
            .arg(run)
            .arg("--data")
            .arg(data),
    );
    serde_json::from_str(&text).expect("eval --json prints JSON")
}

fn manifest_fingerprint(split: &Path) -> String {
    let text = std::fs::read_to_string(split.join("manifest.json")).expect("manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    m["fingerprint"].as_str().expect("fingerprint").to_string()
}

/// A student run from the cache with the view flag `--aa AA`.
fn student(data: &Path, cache: &Path, out: &Path, aa: &str) -> Command {
    let mut c = bin();
    c.arg("train")
        .arg("--config")
        .arg(config("small_image.toml"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--epochs", &STUDENT_EPOCHS.to_string()])
        .args(["--batch-size", "16", "--aa", aa])
        .args(["--distillation", "hard", "--teacher-targets"])
        .arg(cache);
    c
}

#[test]
fn synth_shard_teacher_cache_student_eval() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (folder, data) = (tmp.path().join("folder"), tmp.path().join("shards"));
    run_ok(
        bin()
            .args(["synth", "--classes", &CLASSES.to_string()])
            .args([
                "--train-per-class",
                "60",
                "--val-per-class",
                "20",
                "--seed",
                "11",
            ])
            .arg("--out")
            .arg(&folder),
    );
    run_ok(
        bin()
            .args(["shard", "--max-side", "40", "--seed", "11", "--input"])
            .arg(&folder)
            .arg("--out")
            .arg(&data),
    );

    // The teacher, from labels with the shipped recipe, learns the task.
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
            .args(["--epochs", "12", "--batch-size", "16"]),
    );
    for f in ["config.toml", "metrics.jsonl", "best.json", "last.json"] {
        assert!(teacher.join(f).is_file(), "teacher run lacks {f}");
    }
    let t = eval(&teacher, &data);
    let top1 = t["top1"].as_f64().expect("top1");
    assert_eq!(t["images"].as_u64(), Some((CLASSES * 20) as u64));
    assert!(
        top1 >= 50.0,
        "teacher val top-1 {top1:.1}% is not well above the 25% of chance: {t}"
    );

    // The cache, from the teacher's run directory (architecture read from its config),
    // with the student's view flags.
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
            .args(["--epochs", &format!("0..{STUDENT_EPOCHS}")])
            .args(["--top-k", "4", "--aa", "none", "--out"])
            .arg(&cache),
    );
    let parquet = std::fs::read_dir(&cache)
        .expect("cache dir")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        })
        .count();
    assert_eq!(parquet, STUDENT_EPOCHS, "one Parquet file per epoch");
    let inspect = run_ok(
        bin()
            .args(["cache", "inspect"])
            .arg(&cache)
            .arg("--data")
            .arg(&data),
    );
    let fingerprint = manifest_fingerprint(&data.join("train"));
    assert!(
        inspect.contains(&fingerprint),
        "the cache is not bound to the train shards' fingerprint {fingerprint}:\n{inspect}"
    );

    // A student with other view flags than the cache's is refused, naming the field.
    let refused = output(&mut student(
        &data,
        &cache,
        &tmp.path().join("wrong"),
        "rand-m9-mstd0.5-inc1",
    ));
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("augment_config"), "{err}");

    // The student with the same flags trains from the cache and evaluates.
    let run = tmp.path().join("student");
    run_ok(&mut student(&data, &cache, &run, "none"));
    let s = eval(&run, &data);
    for key in ["top1", "top1_cls", "top1_dist"] {
        assert!(s[key].as_f64().is_some(), "eval lacks {key}: {s}");
    }
    // It learned from the cached targets too (48.75% here on 2 cores, 80 val images:
    // the bound leaves two standard errors of margin).
    let top1 = s["top1"].as_f64().expect("top1");
    assert!(
        top1 >= 37.5,
        "student val top-1 {top1:.1}% is not well above the 25% of chance: {s}"
    );
}
