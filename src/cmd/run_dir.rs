//! Which folders `deit-pipe train --out` may write into: a new or empty folder, or a run
//! of ours. A run is marked by [`MARKER`], a JSON record `{"format": "deit-pipe-run",
//! "version": 1, "run_id": "<32 hex digits>"}` written (whole, by a hard link that fails if
//! one exists) when `train` first claims the folder. A marker is recognised only in that
//! form, and a marked folder that holds anything besides the marker, the lock file and
//! `checkpoints/` must hold our `config.toml` too: a marker file of any other content (or
//! a marker next to a user's files) is refused, naming the file, so `train` never
//! overwrites files it did not write. A run made before the marker existed is recognised
//! by its layout (a `config.toml` that parses as a training config next to a
//! `checkpoints/` folder) and gets the marker then; so does a run whose marker is the
//! plain-text one of earlier versions (`deit-pipe train run directory`), if it has that
//! layout.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use trainer::train::config::TrainConfig;
use trainer::train::CONFIG_FILE;

/// Marker file of a run directory written by `deit-pipe train`.
pub const MARKER: &str = ".deit-pipe-run";

/// `format` of a marker.
const MARKER_FORMAT: &str = "deit-pipe-run";

/// Version of the marker record.
const MARKER_VERSION: u32 = 1;

/// The whole content of the markers earlier versions wrote.
const LEGACY_MARKER: &str = "deit-pipe train run directory\n";

/// Folder of checkpoints inside a run (`trainer::train::checkpoint`'s layout).
const CHECKPOINT_DIR: &str = "checkpoints";

/// The record a marker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunMarker {
    /// Always [`MARKER_FORMAT`].
    pub format: String,
    /// [`MARKER_VERSION`].
    pub version: u32,
    /// 32 lowercase hex digits naming the run (unique per claimed folder).
    pub run_id: String,
}

impl RunMarker {
    /// A marker for a run claimed now: the run id digests the folder, the process and the
    /// time (no randomness; unique per claim).
    fn new(out: &Path) -> RunMarker {
        let mut h = blake3::Hasher::new();
        h.update(out.as_os_str().as_encoded_bytes());
        h.update(&std::process::id().to_le_bytes());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        h.update(&now.to_le_bytes());
        RunMarker {
            format: MARKER_FORMAT.to_string(),
            version: MARKER_VERSION,
            run_id: h.finalize().to_hex()[..32].to_string(),
        }
    }

    /// Parses a marker's text; `None` unless it is a marker we write.
    fn parse(text: &str) -> Option<RunMarker> {
        let m: RunMarker = serde_json::from_str(text).ok()?;
        let id_ok = m.run_id.len() == 32
            && m.run_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (m.format == MARKER_FORMAT && m.version == MARKER_VERSION && id_ok).then_some(m)
    }
}

/// True for our config and checkpoint layout (a run written before [`MARKER`] existed).
fn has_run_layout(out: &Path) -> bool {
    let config = out.join(CONFIG_FILE);
    config.is_file() && out.join(CHECKPOINT_DIR).is_dir() && TrainConfig::from_file(&config).is_ok()
}

/// What the marker of `out` says.
enum MarkerState {
    /// No marker file.
    Absent,
    /// A marker we write.
    Ours(RunMarker),
    /// The plain-text marker of earlier versions.
    Legacy,
    /// Anything else: the reason.
    Foreign(String),
}

fn read_marker(path: &Path) -> MarkerState {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return MarkerState::Absent,
        Err(e) => return MarkerState::Foreign(format!("cannot read it: {e}")),
        Ok(m) if !m.file_type().is_file() => {
            return MarkerState::Foreign(format!(
                "it is a {}, not a regular file",
                if m.file_type().is_symlink() {
                    "symbolic link"
                } else {
                    formats::open::file_kind(&m.file_type())
                }
            ))
        }
        Ok(_) => {}
    }
    let text = match formats::open::read_text(path, formats::open::RUN_RECORD) {
        Ok(t) => t,
        Err(e) => return MarkerState::Foreign(format!("cannot read it: {e}")),
    };
    if text == LEGACY_MARKER {
        return MarkerState::Legacy;
    }
    match RunMarker::parse(&text) {
        Some(m) => MarkerState::Ours(m),
        None => MarkerState::Foreign(format!(
            "its content is not a marker deit-pipe writes ({{\"format\": \"{MARKER_FORMAT}\", \
             \"version\": {MARKER_VERSION}, \"run_id\": ...}})"
        )),
    }
}

/// Writes `marker` to `path` whole, unless a marker is there already (then that one
/// stays). Returns the marker the folder holds.
fn write_marker(path: &Path, marker: &RunMarker, replace: bool) -> Result<()> {
    let json = serde_json::to_string(marker).context("run marker")? + "\n";
    let tmp = path.with_file_name(format!("{MARKER}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
    let placed = if replace {
        std::fs::rename(&tmp, path)
    } else {
        // A hard link fails if the marker exists: two trains claiming one folder agree on
        // the first marker.
        let r = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    };
    placed.with_context(|| format!("writing {}", path.display()))
}

/// Names of the folder's entries (escaped for messages), sorted, without our transient
/// files (a marker being placed, the lock file).
fn entry_names(out: &Path) -> Result<Option<Vec<String>>> {
    match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("--out {}: cannot list it", out.display())),
        Ok(entries) => {
            let mut names = Vec::new();
            for e in entries {
                let e = e.with_context(|| format!("listing {}", out.display()))?;
                let name = e.file_name().to_string_lossy().escape_debug().to_string();
                // Our own transient files: another rank's marker being placed, a lock.
                if name.starts_with(&format!("{MARKER}.tmp-")) || name == formats::lock::LOCK_FILE {
                    continue;
                }
                names.push(name);
            }
            names.sort();
            Ok(Some(names))
        }
    }
}

fn listing(names: &[String]) -> String {
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        format!("{shown} and {} more", names.len() - 5)
    } else {
        shown
    }
}

/// Check that `out` is new, empty or a run of ours, create it if needed and mark it as a
/// run. Errors name the folder and what it holds, or the marker file and what is wrong
/// with it.
pub fn claim(out: &Path) -> Result<()> {
    let marker_path = out.join(MARKER);
    let names = entry_names(out)?;
    let state = read_marker(&marker_path);
    let mut upgrade = false;
    if let Some(names) = names.as_ref().filter(|n| !n.is_empty()) {
        match &state {
            MarkerState::Foreign(why) => bail!(
                "--out {}: {} was not written by deit-pipe ({why}); refusing to write over \
                 files train did not write; choose a new or empty folder",
                out.display(),
                marker_path.display()
            ),
            MarkerState::Legacy | MarkerState::Absent if !has_run_layout(out) => bail!(
                "--out {} is not empty and is not a deit-pipe run (no {MARKER} marker of \
                 ours; it holds {}): refusing to write over files train did not write; \
                 choose a new or empty folder",
                out.display(),
                listing(names)
            ),
            MarkerState::Legacy | MarkerState::Absent => upgrade = true,
            MarkerState::Ours(_) => {
                // A run of ours writes its config.toml before any other file.
                let ours = [MARKER, CHECKPOINT_DIR];
                let others: Vec<String> = names
                    .iter()
                    .filter(|n| !ours.contains(&n.as_str()))
                    .cloned()
                    .collect();
                let config = out.join(CONFIG_FILE);
                let has_config = config.is_file() && TrainConfig::from_file(&config).is_ok();
                if !others.is_empty() && !has_config {
                    bail!(
                        "--out {}: {} marks it as a run, but it holds {} without the run's \
                         {CONFIG_FILE}: refusing to write over files train did not write; \
                         choose a new or empty folder",
                        out.display(),
                        marker_path.display(),
                        listing(&others)
                    );
                }
            }
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    if upgrade || matches!(state, MarkerState::Absent) {
        write_marker(&marker_path, &RunMarker::new(out), upgrade)?;
    }
    match read_marker(&marker_path) {
        MarkerState::Ours(_) => Ok(()),
        _ => bail!(
            "{}: the run marker did not read back",
            marker_path.display()
        ),
    }
}

/// The run id recorded in `out`'s marker, if it holds one of ours.
pub fn run_id(out: &Path) -> Option<String> {
    match read_marker(&out.join(MARKER)) {
        MarkerState::Ours(m) => Some(m.run_id),
        _ => None,
    }
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

    /// Issue 25: a marker file of any content used to let `train` overwrite the folder.
    #[test]
    fn a_forged_marker_is_refused_naming_it_and_the_users_files_stay() {
        let tmp = tempfile::tempdir().unwrap();
        for forged in [
            "",
            "x",
            "{}",
            "deit-pipe train run directory\n",
            r#"{"format":"deit-pipe-run","version":1,"run_id":"not hex"}"#,
        ] {
            let user = tmp.path().join(format!("user{}", forged.len()));
            std::fs::create_dir(&user).unwrap();
            std::fs::write(user.join(MARKER), forged).unwrap();
            std::fs::write(user.join("metrics.jsonl"), "mine\n").unwrap();
            let err = format!("{:#}", claim(&user).unwrap_err());
            assert!(err.contains("refusing to write over"), "{forged:?}: {err}");
            if !forged.starts_with("deit-pipe train") {
                assert!(
                    err.contains(&user.join(MARKER).display().to_string()),
                    "{err}"
                );
            }
            assert_eq!(
                std::fs::read_to_string(user.join("metrics.jsonl")).unwrap(),
                "mine\n"
            );
            assert_eq!(std::fs::read_to_string(user.join(MARKER)).unwrap(), forged);
        }
        // A well-formed marker next to a user's files without the run's config.toml.
        let copied = tmp.path().join("copied");
        claim(&copied).unwrap();
        std::fs::write(copied.join("metrics.jsonl"), "mine\n").unwrap();
        let err = format!("{:#}", claim(&copied).unwrap_err());
        assert!(err.contains("without the run's config.toml"), "{err}");
        // With the run's config it is a run of ours (a resume).
        let cfg = TrainConfig::default().to_toml().unwrap();
        std::fs::write(copied.join(CONFIG_FILE), &cfg).unwrap();
        let id = run_id(&copied).unwrap();
        claim(&copied).unwrap();
        assert_eq!(run_id(&copied).unwrap(), id, "the run keeps its id");
        // A marker of earlier versions, in a folder with our layout, is upgraded.
        let old = tmp.path().join("old");
        std::fs::create_dir_all(old.join(CHECKPOINT_DIR)).unwrap();
        std::fs::write(old.join(CONFIG_FILE), &cfg).unwrap();
        std::fs::write(old.join(MARKER), LEGACY_MARKER).unwrap();
        claim(&old).unwrap();
        let m = RunMarker::parse(&std::fs::read_to_string(old.join(MARKER)).unwrap()).unwrap();
        assert_eq!(
            (m.format.as_str(), m.version, m.run_id.len()),
            (MARKER_FORMAT, 1, 32)
        );
        // Two claims of new folders get different run ids.
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        claim(&a).unwrap();
        claim(&b).unwrap();
        assert_ne!(run_id(&a), run_id(&b));
        // A marker that is a link is not followed.
        let linked = tmp.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(a.join(MARKER), linked.join(MARKER)).unwrap();
        let err = format!("{:#}", claim(&linked).unwrap_err());
        assert!(err.contains("symbolic link"), "{err}");
    }
}
