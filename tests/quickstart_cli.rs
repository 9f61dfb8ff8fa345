//! End to end through the CLI: `deit-pipe quickstart` at tiny sizes runs every stage
//! (synth, shard, teacher training, teacher cache, three students, eval, report), leaves
//! the files each stage promises, and a re-run reuses every finished stage.

use std::path::Path;
use std::process::Command;

fn deit_pipe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deit-pipe"))
}

fn run_quickstart(work: &Path) -> String {
    let out = deit_pipe()
        .args(["--quiet", "quickstart", "--work"])
        .arg(work)
        .args([
            "--classes",
            "3",
            "--train-per-class",
            "8",
            "--val-per-class",
            "4",
            "--teacher-epochs",
            "1",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--top-k",
            "2",
        ])
        .output()
        .expect("starting deit-pipe");
    assert!(
        out.status.success(),
        "quickstart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The rows of the final results table (one per model).
fn result_rows(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| {
            [
                "teacher ",
                "student-none ",
                "student-soft ",
                "student-hard ",
            ]
            .iter()
            .any(|name| l.starts_with(name))
                && l.contains('%')
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn quickstart_runs_every_stage_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("qs");
    let table = run_quickstart(&work);

    assert_eq!(
        result_rows(&table).len(),
        4,
        "one row per model in:\n{table}"
    );
    for file in [
        "data/train",
        "data/val",
        "shards/train/manifest.json",
        "shards/val/manifest.json",
        "teacher/metrics.jsonl",
        "student-none/metrics.jsonl",
        "student-soft/metrics.jsonl",
        "student-hard/metrics.jsonl",
        "report.png",
    ] {
        assert!(work.join(file).exists(), "missing {file}");
    }
    let parquet: Vec<_> = std::fs::read_dir(work.join("cache"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert_eq!(parquet.len(), 1, "one cached epoch expected");

    // The cache is bound to the shards the quickstart made.
    let inspect = deit_pipe()
        .args(["--quiet", "cache", "inspect"])
        .arg(work.join("cache"))
        .arg("--data")
        .arg(work.join("shards"))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "cache inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // Second run: every stage is reused, the table is printed again.
    let weights_before = std::fs::read(work.join("report.png")).unwrap();
    let again = run_quickstart(&work);
    assert!(again.contains("synth (reused)"), "{again}");
    assert!(again.contains("student-hard (reused)"), "{again}");
    // Evaluation is deterministic: the reused runs give the same table.
    assert_eq!(result_rows(&again), result_rows(&table));
    assert!(!weights_before.is_empty());
}
