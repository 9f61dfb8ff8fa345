//! The DeiT `main.py` flags of `deit-pipe train` that need more than a field override:
//! `--resume [PATH]` (this run, or a main.py `checkpoint.pth`), `--opt`, `--sched`,
//! `--opt-betas`, and the teacher checks (a teacher that would not be used, or does not
//! exist, is refused).

use super::train::Args;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use trainer::train::config::{Overrides, TrainConfig};
use trainer::train::mainpy_flags;

/// What `--resume` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeTarget {
    /// No `--resume`: a new run.
    None,
    /// Continue the `--out` run directory from its last checkpoint.
    RunDir,
    /// Start `--out` from a main.py checkpoint file.
    MainPy(PathBuf),
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Decide what `--resume` means: alone, or naming the `--out` directory (or a file or
/// directory inside it, e.g. its checkpoint), the run continues; a file elsewhere is read
/// as a main.py checkpoint; anything else is an error that says what is accepted.
pub fn resume_target(resume: &Option<Option<PathBuf>>, out: &Path) -> Result<ResumeTarget> {
    let path = match resume {
        None => return Ok(ResumeTarget::None),
        Some(None) => return Ok(ResumeTarget::RunDir),
        Some(Some(p)) => p,
    };
    if path
        .ancestors()
        .any(|a| !a.as_os_str().is_empty() && same_dir(a, out))
    {
        return Ok(ResumeTarget::RunDir);
    }
    if path.is_file() {
        return Ok(ResumeTarget::MainPy(path.clone()));
    }
    if !path.exists() {
        bail!("--resume {}: no such file or directory", path.display());
    }
    bail!(
        "--resume {}: a directory other than --out {}. To continue a deit-pipe run, pass its \
         directory as --out with --resume; to start from a main.py checkpoint, name the \
         file (e.g. output_dir/checkpoint.pth)",
        path.display(),
        out.display()
    )
}

/// Check `--opt` and `--sched`, and fill the override of `--opt-betas`.
pub fn add_overrides(args: &Args, o: &mut Overrides) -> Result<()> {
    if let Some(name) = &args.opt {
        mainpy_flags::check_opt(name)?;
    }
    if let Some(name) = &args.sched {
        mainpy_flags::check_sched(name)?;
    }
    if let Some(b) = &args.opt_betas {
        o.opt_betas = Some(mainpy_flags::opt_betas(b)?);
    }
    if let (ResumeTarget::MainPy(p), Some(f)) =
        (resume_target(&args.resume, &args.out)?, &args.finetune)
    {
        bail!(
            "--resume {} starts from that checkpoint's weights and --finetune {} from              others: give one (a plain --resume of this run may repeat --finetune)",
            p.display(),
            f.display()
        );
    }
    Ok(())
}

/// `--teacher` / `--teacher-targets` given with `--distillation none`, or naming a path
/// that does not exist, is an error (a teacher only in the config file is a warning).
pub fn check_teacher(args: &Args, cfg: &TrainConfig) -> Result<()> {
    let from_flags = args.teacher.is_some() || args.teacher_targets.is_some();
    mainpy_flags::check_teacher(cfg, from_flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_names_the_run_or_a_main_py_file() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        std::fs::create_dir_all(out.join("checkpoints")).unwrap();
        let pth = tmp.path().join("checkpoint.pth");
        std::fs::write(&pth, b"x").unwrap();
        assert_eq!(resume_target(&None, &out).unwrap(), ResumeTarget::None);
        assert_eq!(
            resume_target(&Some(None), &out).unwrap(),
            ResumeTarget::RunDir
        );
        assert_eq!(
            resume_target(&Some(Some(out.clone())), &out).unwrap(),
            ResumeTarget::RunDir
        );
        assert_eq!(
            resume_target(&Some(Some(out.join("checkpoints"))), &out).unwrap(),
            ResumeTarget::RunDir
        );
        assert_eq!(
            resume_target(&Some(Some(pth.clone())), &out).unwrap(),
            ResumeTarget::MainPy(pth)
        );
        let e = resume_target(&Some(Some(tmp.path().join("nope"))), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
        let e = resume_target(&Some(Some(tmp.path().to_path_buf())), &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out"), "{e}");
    }
}
