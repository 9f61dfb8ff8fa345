//! DeiT `main.py` compatibility, in one place: the habits of the official training script
//! that `deit-pipe train` keeps so that its users' flags, files and scripts carry over.
//! The training loop and the binary's `train` command call this module only (through
//! the items re-exported here); none of it changes what the loop computes.
//!
//! - [`flags`]: main.py flags the recipe has no field for (`--opt`, `--sched`,
//!   `--opt-betas`, `--color-jitter`, the teacher flags), refused with the reason when
//!   this trainer would not honour them, and what `--resume [PATH]` names.
//! - [`log`]: `RUN_DIR/log.txt`, one `json.dumps`-style dict per epoch as main.py writes.
//! - [`resume`]: `--resume FILE.pth`, a run started from a main.py `checkpoint.pth`
//!   (weights, AdamW moments and steps, EMA, next epoch).
//! - [`finetune`]: `--finetune PATH` as main.py does it (heads of another shape dropped,
//!   `pos_embed` resampled bicubically, loaded like `strict=False`).

pub mod finetune;
pub mod flags;
pub mod log;
pub mod resume;

pub use finetune::load_finetune;
pub use flags::{
    check_color_jitter, check_opt, check_resume_finetune, check_sched, check_teacher, opt_betas,
    resume_target, ResumeTarget,
};
pub use log::MainPyLog;
pub use resume::MainPyCheckpoint;
