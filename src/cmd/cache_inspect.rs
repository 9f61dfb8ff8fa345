//! `deit-pipe cache inspect`: epochs and rows of a teacher cache, bytes per view, gaps and
//! duplicates, the checksums of every file, and (with `--data`) teacher top-1 against the
//! ground-truth labels. Exits 1 when it finds a problem.

use anyhow::Result;
use clap::Args as ClapArgs;
use std::path::PathBuf;

/// Arguments of `deit-pipe cache`.
#[derive(ClapArgs, Debug)]
pub struct CacheArgs {
    /// Which cache command.
    #[command(subcommand)]
    pub which: Which,
}

/// The commands of the `cache` group.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Summarize a teacher cache: coverage, sizes, checksums, label agreement; exits 1 on a
    /// problem (missing parts or slots, a corrupt file).
    Inspect(Args),
}

/// Arguments of `deit-pipe cache inspect`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Cache directory.
    pub cache: PathBuf,
    /// Dataset the cache was made from: compare hard labels with its labels.
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Run `deit-pipe cache ...`.
pub fn run(args: CacheArgs) -> Result<()> {
    match args.which {
        Which::Inspect(a) => {
            let report = cache::inspect(&a.cache, a.data.as_deref())?;
            print!("{report}");
            let n = report.problems();
            if n > 0 {
                anyhow::bail!(
                    "{}: {n} problem(s) found (the PROBLEM lines above)",
                    a.cache.display()
                );
            }
            Ok(())
        }
    }
}
