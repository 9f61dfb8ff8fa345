//! DeiT `main.py` flags that the recipe has no field for, checked so that a value this
//! trainer would not honour is refused with the reason instead of being ignored:
//! `--opt`, `--sched`, `--color-jitter`, and the teacher flags (`--teacher` with
//! `--distillation none`, a teacher path that does not exist); and what `--resume [PATH]`
//! names (this run, or a main.py `checkpoint.pth`).

use crate::train::config::{DistillationType, TrainConfig};
use anyhow::{bail, Result};
use pipeline::config::AugmentConfig;
use std::path::{Path, PathBuf};

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

/// `--resume FILE.pth` (a main.py checkpoint) with `--finetune PATH` is an error: both
/// name the starting weights.
pub fn check_resume_finetune(target: &ResumeTarget, finetune: Option<&Path>) -> Result<()> {
    if let (ResumeTarget::MainPy(p), Some(f)) = (target, finetune) {
        bail!(
            "--resume {} starts from that checkpoint's weights and --finetune {} from              others: give one (a plain --resume of this run may repeat --finetune)",
            p.display(),
            f.display()
        );
    }
    Ok(())
}

/// `--opt NAME`: the trainer implements AdamW (`torch.optim.AdamW`, what timm's
/// `create_optimizer` builds for main.py's default `adamw`); any other name is refused.
pub fn check_opt(name: &str) -> Result<()> {
    match name.to_ascii_lowercase().as_str() {
        "adamw" => Ok(()),
        other => bail!(
            "--opt {other}: this trainer implements AdamW only (torch.optim.AdamW with DeiT's \
             weight-decay groups, main.py's default `--opt adamw`); {other} is not implemented"
        ),
    }
}

/// `--sched NAME`: the trainer implements timm's cosine schedule with linear warmup
/// (main.py's default `--sched cosine`); any other name is refused.
pub fn check_sched(name: &str) -> Result<()> {
    match name.to_ascii_lowercase().as_str() {
        "cosine" => Ok(()),
        other => bail!(
            "--sched {other}: this trainer implements timm's cosine schedule with linear \
             warmup only (main.py's default `--sched cosine`); {other} is not implemented"
        ),
    }
}

/// `--opt-betas B1 B2` (main.py takes `nargs='+'`; AdamW needs exactly two).
pub fn opt_betas(values: &[f64]) -> Result<[f64; 2]> {
    match values {
        [b1, b2] => Ok([*b1, *b2]),
        _ => bail!(
            "--opt-betas takes two numbers (AdamW's beta1 beta2, e.g. --opt-betas 0.9 0.999), \
             got {}",
            values.len()
        ),
    }
}

/// `--color-jitter F`. The augmentation has no ColorJitter. timm's
/// `create_transform` drops colour jitter whenever an auto-augment policy is set, so with
/// RandAugment on (DeiT's recipe) any value matches what timm does and is accepted; with
/// RandAugment off timm would apply `ColorJitter(F, F, F)`, which this pipeline does not
/// implement, so only 0 is accepted.
pub fn check_color_jitter(value: f64, augment: &AugmentConfig) -> Result<()> {
    if !value.is_finite() || value < 0.0 {
        bail!("--color-jitter {value}: must be a number >= 0");
    }
    if augment.rand_augment().is_some() || value == 0.0 {
        return Ok(());
    }
    bail!(
        "--color-jitter {value} with RandAugment off (--aa none): timm would apply \
         ColorJitter({value}, {value}, {value}) here, and this pipeline has no colour jitter; \
         use --color-jitter 0, or keep RandAugment on (--aa rand-m9-mstd0.5-inc1), with which \
         timm ignores --color-jitter as this trainer does"
    )
}

/// The teacher flags must do something: a teacher with `--distillation none` would be
/// loaded and never used, and a teacher path must exist. `from_flags` says whether the
/// teacher was named on the command line (an error) or only in the config file (a
/// warning: a recipe file may keep its teacher for runs that turn distillation off).
pub fn check_teacher(cfg: &TrainConfig, from_flags: bool) -> Result<()> {
    let d = &cfg.distillation;
    let named: Vec<String> = [
        d.teacher
            .as_ref()
            .map(|p| format!("--teacher {}", p.display())),
        d.teacher_targets
            .as_ref()
            .map(|p| format!("--teacher-targets {}", p.display())),
    ]
    .into_iter()
    .flatten()
    .collect();
    if d.kind == DistillationType::None && !named.is_empty() {
        if from_flags {
            bail!(
                "{} with --distillation none: the teacher would never be used. Pass \
                 --distillation hard or soft to distil from it, or leave the teacher out",
                named.join(" and ")
            );
        }
        tracing::warn!(
            "the config names a teacher ({}) but distillation.type is none: it is not used",
            named.join(", ")
        );
        return Ok(());
    }
    if let Some(p) = &d.teacher {
        if !p.exists() {
            bail!(
                "--teacher {}: no such file or directory (expected a weights file, a \
                 checkpoint directory or a `deit-pipe train` run directory)",
                p.display()
            );
        }
    }
    if let Some(p) = &d.teacher_targets {
        if !p.is_dir() {
            bail!(
                "--teacher-targets {}: no such directory (expected a `deit-pipe teacher-cache` \
                 output directory)",
                p.display()
            );
        }
    }
    Ok(())
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

    #[test]
    fn opt_and_sched_accept_what_is_implemented_only() {
        check_opt("adamw").unwrap();
        check_opt("AdamW").unwrap();
        let e = check_opt("sgd").unwrap_err().to_string();
        assert!(e.contains("AdamW only") && e.contains("sgd"), "{e}");
        check_sched("cosine").unwrap();
        let e = check_sched("step").unwrap_err().to_string();
        assert!(e.contains("cosine") && e.contains("step"), "{e}");
        assert_eq!(opt_betas(&[0.8, 0.99]).unwrap(), [0.8, 0.99]);
        assert!(opt_betas(&[0.9]).is_err());
    }

    #[test]
    fn color_jitter_is_accepted_only_where_it_matches() {
        let with_ra = AugmentConfig::default();
        assert!(with_ra.rand_augment().is_some());
        check_color_jitter(0.4, &with_ra).unwrap();
        let mut no_ra = AugmentConfig::default();
        no_ra.set_timm_arg("aa", "none").unwrap();
        check_color_jitter(0.0, &no_ra).unwrap();
        let e = check_color_jitter(0.4, &no_ra).unwrap_err().to_string();
        assert!(e.contains("ColorJitter") && e.contains("--aa none"), "{e}");
        assert!(check_color_jitter(-1.0, &with_ra).is_err());
    }

    #[test]
    fn a_teacher_with_distillation_none_is_refused() {
        let mut c = TrainConfig::default();
        c.distillation.teacher = Some(std::env::temp_dir());
        let e = check_teacher(&c, true).unwrap_err().to_string();
        assert!(e.contains("--distillation none"), "{e}");
        check_teacher(&c, false).unwrap();
        c.distillation.kind = DistillationType::Hard;
        check_teacher(&c, true).unwrap();
        c.distillation.teacher = Some("/nonexistent/teacher.pth".into());
        let e = check_teacher(&c, true).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
