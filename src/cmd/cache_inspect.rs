//! `deit-pipe cache inspect`: epochs and rows of a teacher cache, bytes per view, gaps and
//! duplicates, and (with `--data`) teacher top-1 against the ground-truth labels.

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
    /// Summarize a teacher cache: coverage, sizes, label agreement.
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
            Ok(())
        }
    }
}
