//! `deit-pipe synth`: write a procedural, learnable ImageFolder data set (see
//! `pipeline::ingest::synth`).

use crate::progress;
use anyhow::Context;
use pipeline::ingest::synth::{write_dataset, SynthConfig};
use std::path::PathBuf;

/// Arguments of `deit-pipe synth`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output root; images go to OUT/train/<class>/ and OUT/val/<class>/.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of classes (1..=72).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=72))]
    pub classes: u16,
    /// Training images per class.
    #[arg(long, default_value_t = 200)]
    pub train_per_class: usize,
    /// Validation images per class.
    #[arg(long, default_value_t = 50)]
    pub val_per_class: usize,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long, value_parser = super::positive)]
    pub threads: Option<usize>,
}

/// Run `deit-pipe synth`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = SynthConfig {
        classes: usize::from(args.classes),
        train_per_class: args.train_per_class,
        val_per_class: args.val_per_class,
        seed: args.seed,
    };
    // One writer per output folder.
    let _lock = formats::lock::OutputLock::acquire(&args.out, formats::lock::LOCK_FILE)
        .with_context(|| format!("--out {}", args.out.display()))?;
    let total = cfg.classes * (cfg.train_per_class + cfg.val_per_class);
    let bar = progress::bar(total as u64, "synth", "img");
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = args.threads {
        builder = builder.num_threads(t.max(1));
    }
    let pool = builder.build().context("cannot start worker threads")?;
    let n = pool
        .install(|| write_dataset(&args.out, &cfg, &|| bar.inc(1)))
        .with_context(|| format!("writing the synthetic data set to {}", args.out.display()))?;
    bar.finish();
    println!(
        "wrote {n} images ({} classes) to {}",
        cfg.classes,
        args.out.display()
    );
    Ok(())
}
