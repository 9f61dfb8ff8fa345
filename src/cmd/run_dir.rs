//! Which folders `deit-pipe train --out` may write into: a new or empty folder, or a run
//! of ours. A run is marked by [`MARKER`], written when `train` first claims the folder;
//! a run made before the marker existed is recognised by its layout (a `config.toml` that
//! parses as a training config next to a `checkpoints/` folder) and gets the marker then.
//! Anything else that is not empty (a user's own `config.toml` or `metrics.jsonl`) is
//! refused, so `train` never overwrites files it did not write.

use anyhow::{bail, Context, Result};
use std::path::Path;
use trainer::train::config::TrainConfig;
use trainer::train::CONFIG_FILE;

/// Marker file of a run directory written by `deit-pipe train`.
pub const MARKER: &str = ".deit-pipe-run";

/// Folder of checkpoints inside a run (`trainer::train::checkpoint`'s layout).
const CHECKPOINT_DIR: &str = "checkpoints";

/// True for a run written before [`MARKER`] existed: our config and checkpoint layout.
fn is_unmarked_run(out: &Path) -> bool {
    let config = out.join(CONFIG_FILE);
    config.is_file() && out.join(CHECKPOINT_DIR).is_dir() && TrainConfig::from_file(&config).is_ok()
}

/// Check that `out` is new, empty or a run of ours, create it if needed and mark it as a
/// run. Errors name the folder and what it holds.
pub fn claim(out: &Path) -> Result<()> {
    let marker = out.join(MARKER);
    match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("--out {}: cannot list it", out.display()))
        }
        Ok(entries) => {
            let mut names = Vec::new();
            for e in entries {
                let e = e.with_context(|| format!("listing {}", out.display()))?;
                names.push(e.file_name().to_string_lossy().escape_debug().to_string());
            }
            names.sort();
            if !names.is_empty() && !marker.is_file() && !is_unmarked_run(out) {
                let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                let more = if names.len() > 5 {
                    format!(" and {} more", names.len() - 5)
                } else {
                    String::new()
                };
                bail!(
                    "--out {} is not empty and is not a deit-pipe run (no {MARKER} marker; it \
                     holds {shown}{more}): refusing to write over files train did not write; \
                     choose a new or empty folder",
                    out.display()
                );
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if !marker.is_file() {
        std::fs::write(&marker, b"deit-pipe train run directory\n")
            .with_context(|| format!("writing {}", marker.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_empty_marked_and_old_runs_are_accepted_other_folders_refused() {
        let tmp = tempfile::tempdir().unwrap();
        // New and empty folders are claimed and marked.
        let new = tmp.path().join("new");
        claim(&new).unwrap();
        assert!(new.join(MARKER).is_file());
        claim(&new).unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        claim(&empty).unwrap();
        assert!(empty.join(MARKER).is_file());
        // A user's files: refused, named, untouched.
        let user = tmp.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join(CONFIG_FILE), "my notes = 1\n").unwrap();
        std::fs::write(user.join("metrics.jsonl"), "{}\n").unwrap();
        let err = format!("{:#}", claim(&user).unwrap_err());
        assert!(
            err.contains("not a deit-pipe run") && err.contains("config.toml, metrics.jsonl"),
            "{err}"
        );
        assert!(!user.join(MARKER).exists());
        assert_eq!(
            std::fs::read_to_string(user.join(CONFIG_FILE)).unwrap(),
            "my notes = 1\n"
        );
        // Our config but no checkpoint folder: still not a run.
        let recipe = tmp.path().join("recipe");
        std::fs::create_dir(&recipe).unwrap();
        let cfg = TrainConfig::default().to_toml().unwrap();
        std::fs::write(recipe.join(CONFIG_FILE), &cfg).unwrap();
        assert!(claim(&recipe).is_err());
        // A run from before the marker: our config and checkpoint layout.
        std::fs::create_dir(recipe.join(CHECKPOINT_DIR)).unwrap();
        claim(&recipe).unwrap();
        assert!(recipe.join(MARKER).is_file());
        // --out naming a file.
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(claim(&file).is_err());
    }
}
