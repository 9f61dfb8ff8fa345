//! Crash-safe file writing: write to a temporary name, fsync, rename, fsync the directory.
//! A reader never sees a partial file under the final name.

use crate::shard::FormatError;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used while `path` is being written (`<name>.tmp`).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Flush a directory entry to disk so a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FormatError> {
    let d = File::open(dir).map_err(|e| FormatError::io(dir, e))?;
    d.sync_all().map_err(|e| FormatError::io(dir, e))
}

/// Replace `path` atomically by `bytes` (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    let tmp = temp_path(path);
    let mut f = File::create(&tmp).map_err(|e| FormatError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| FormatError::io(&tmp, e))?;
    f.sync_all().map_err(|e| FormatError::io(&tmp, e))?;
    drop(f);
    rename_synced(&tmp, path)
}

/// Rename `from` to `to` and fsync the parent directory of `to`.
pub fn rename_synced(from: &Path, to: &Path) -> Result<(), FormatError> {
    std::fs::rename(from, to).map_err(|e| FormatError::io(to, e))?;
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    sync_dir(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!temp_path(&p).exists());
    }
}
