//! `deit-pipe quickstart`: the whole product end to end on generated data, with nothing but
//! the binary: synth → shard → train a ConvNet teacher from labels → fill the teacher cache →
//! train the DeiT student three ways (no distillation, soft, hard) from the same seed →
//! evaluate → print a table and write `report.png`.
//!
//! Each stage runs this same executable as a child process with the public subcommands, so
//! the quickstart exercises exactly what a user would type. A stage that finished leaves a
//! `.done-<stage>` marker in the work directory; re-running reuses finished stages.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The small-image recipes the quickstart trains with, shipped inside the binary.
const STUDENT_CONFIG: &str = include_str!("../../configs/small_image.toml");
const TEACHER_CONFIG: &str = include_str!("../../configs/teacher_resnet_tiny.toml");

/// Arguments of `deit-pipe quickstart`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Work directory (data, shards, runs, cache, report).
    #[arg(long, default_value = "quickstart-work")]
    pub work: PathBuf,
    /// Number of synthetic classes.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Training images per class.
    #[arg(long, default_value_t = 100)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 50)]
    pub val_per_class: usize,
    /// Epochs of teacher training.
    #[arg(long, default_value_t = 16)]
    pub teacher_epochs: usize,
    /// Epochs of each student run (and epochs in the teacher cache).
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    /// Batch size of every training run.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Top-K classes kept per cached view (capped at the class count).
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Seed of data generation, sharding and every run.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One student variant of the comparison.
struct Student {
    name: &'static str,
    distillation: &'static str,
}

const STUDENTS: [Student; 3] = [
    Student {
        name: "student-none",
        distillation: "none",
    },
    Student {
        name: "student-soft",
        distillation: "soft",
    },
    Student {
        name: "student-hard",
        distillation: "hard",
    },
];

/// Runs every stage, then prints the comparison table.
pub fn run(args: Args) -> Result<()> {
    if args.classes < 2 {
        bail!("--classes must be at least 2, got {}", args.classes);
    }
    let work = &args.work;
    // One quickstart per work folder (its stages lock their own folders too).
    let _lock = formats::lock::OutputLock::acquire(work, formats::lock::LOCK_FILE)
        .with_context(|| format!("--work {}", work.display()))?;
    std::fs::create_dir_all(work.join("configs"))
        .with_context(|| format!("creating {}", work.display()))?;
    let student_cfg = work.join("configs/small_image.toml");
    let teacher_cfg = work.join("configs/teacher_resnet_tiny.toml");
    write_if_changed(&student_cfg, STUDENT_CONFIG)?;
    write_if_changed(&teacher_cfg, TEACHER_CONFIG)?;

    let exe = std::env::current_exe().context("locating the deit-pipe executable")?;
    let stages = Stages { exe, work };
    let seed = args.seed.to_string();
    let epochs = args.epochs.to_string();
    let batch = args.batch_size.to_string();
    let mut times: Vec<(String, f64)> = Vec::new();

    let raw = work.join("data");
    let shards = work.join("shards");
    times.push(stages.run(
        "synth",
        &[
            "synth",
            "--out",
            path(&raw)?,
            "--classes",
            &args.classes.to_string(),
            "--train-per-class",
            &args.train_per_class.to_string(),
            "--val-per-class",
            &args.val_per_class.to_string(),
            "--seed",
            &seed,
        ],
    )?);
    times.push(stages.run(
        "shard",
        &[
            "shard",
            "--input",
            path(&raw)?,
            "--out",
            path(&shards)?,
            "--max-side",
            "40",
            "--seed",
            &seed,
        ],
    )?);

    let teacher_run = work.join("teacher");
    times.push(stages.run(
        "teacher",
        &[
            "train",
            "--config",
            path(&teacher_cfg)?,
            "--data",
            path(&shards)?,
            "--out",
            path(&teacher_run)?,
            "--epochs",
            &args.teacher_epochs.to_string(),
            "--batch-size",
            &batch,
            "--seed",
            &seed,
        ],
    )?);

    let cache = work.join("cache");
    let top_k = args.top_k.min(args.classes).to_string();
    let epoch_range = format!("0..{}", args.epochs);
    times.push(stages.run(
        "teacher-cache",
        &[
            "teacher-cache",
            "--data",
            path(&shards)?,
            "--teacher",
            path(&teacher_run)?,
            "--config",
            path(&student_cfg)?,
            "--seed",
            &seed,
            "--epochs",
            &epoch_range,
            "--top-k",
            &top_k,
            "--out",
            path(&cache)?,
        ],
    )?);

    for student in &STUDENTS {
        let out = work.join(student.name);
        let mut argv = vec![
            "train",
            "--config",
            path(&student_cfg)?,
            "--data",
            path(&shards)?,
            "--out",
            path(&out)?,
            "--epochs",
            &epochs,
            "--batch-size",
            &batch,
            "--seed",
            &seed,
            "--distillation",
            student.distillation,
        ];
        if student.distillation != "none" {
            argv.extend(["--teacher-targets", path(&cache)?]);
        }
        times.push(stages.run(student.name, &argv)?);
    }

    let report_png = work.join("report.png");
    stages.run(
        "report",
        &[
            "report",
            path(&work.join("student-hard"))?,
            "--out",
            path(&report_png)?,
        ],
    )?;

    println!();
    println!(
        "quickstart results ({} val images per class, {} classes)",
        args.val_per_class, args.classes
    );
    println!(
        "{:<14} {:>10} {:>10} {:>10}",
        "model", "cls head", "dist head", "mean"
    );
    for name in ["teacher", "student-none", "student-soft", "student-hard"] {
        let eval = stages.eval(&work.join(name), &shards)?;
        let field = |key: &str| {
            eval.get(key)
                .and_then(|v| v.as_f64())
                .map(|v| format!("{v:.2}%"))
                .unwrap_or_else(|| "-".to_string())
        };
        println!(
            "{:<14} {:>10} {:>10} {:>10}",
            name,
            field("top1_cls"),
            field("top1_dist"),
            field("top1")
        );
    }
    println!();
    println!("{:<14} {:>10}", "stage", "wall s");
    for (stage, secs) in &times {
        println!("{stage:<14} {secs:>10.1}");
    }
    println!("report: {}", report_png.display());
    Ok(())
}

/// Runs stages as child processes of this executable, skipping finished ones.
struct Stages<'a> {
    exe: PathBuf,
    work: &'a Path,
}

impl Stages<'_> {
    /// Runs one stage unless its marker exists; returns (stage, wall seconds; 0 if reused).
    fn run(&self, stage: &str, argv: &[&str]) -> Result<(String, f64)> {
        let marker = self.work.join(format!(".done-{stage}"));
        if marker.exists() {
            tracing::info!("{stage}: finished earlier, reused");
            return Ok((format!("{stage} (reused)"), 0.0));
        }
        tracing::info!("{stage}: deit-pipe {}", argv.join(" "));
        let start = Instant::now();
        let status = Command::new(&self.exe)
            .args(argv)
            .status()
            .with_context(|| format!("starting stage {stage}"))?;
        if !status.success() {
            bail!("stage {stage} failed ({status}); re-run quickstart to resume from it");
        }
        let secs = start.elapsed().as_secs_f64();
        std::fs::write(&marker, format!("{secs:.1}\n"))
            .with_context(|| format!("writing {}", marker.display()))?;
        Ok((stage.to_string(), secs))
    }

    /// Evaluates a run directory on the val split; returns `deit-pipe eval --json`'s object.
    fn eval(&self, run_dir: &Path, shards: &Path) -> Result<serde_json::Value> {
        let output = Command::new(&self.exe)
            .args(["--quiet", "eval", "--json", "--weights"])
            .arg(run_dir)
            .arg("--data")
            .arg(shards)
            .output()
            .with_context(|| format!("evaluating {}", run_dir.display()))?;
        if !output.status.success() {
            bail!(
                "evaluating {} failed: {}",
                run_dir.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        serde_json::from_slice(&output.stdout)
            .with_context(|| format!("reading the eval output of {}", run_dir.display()))
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not valid UTF-8: {}", p.display()))
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
