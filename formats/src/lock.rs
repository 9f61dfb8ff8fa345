//! One writer per output folder: an exclusive `flock(2)` on a lock file inside the folder
//! a command writes (`train --out`, each `teacher-cache` part, each `shard` split, ...).
//!
//! The lock belongs to the open file, so the kernel drops it when the process ends,
//! however it ends (SIGKILL included): a lock never outlives its process and no stale
//! lock needs removing by hand. The holder removes the file when it is done (while still
//! holding the lock), so a finished command leaves no file behind; a killed one leaves
//! an unlocked file that the next writer simply locks. A process that locked a file which
//! was removed meanwhile sees that the path no longer names its file and tries again, so
//! two processes never hold two different files of one path. The file's content, the
//! holder's pid, only names the holder when a second writer is refused.
//!
//! `flock` is advisory: it stops a second deit-pipe, not another program. On NFS, Linux
//! emulates it with POSIX byte-range locks, which the server keeps (NFSv4) across clients.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Lock file of a folder written by one process (a `train` run, a `shard` split, a
/// whole teacher cache).
pub const LOCK_FILE: &str = ".deit-pipe.lock";

/// Lock file of part `index` of `count` of a teacher cache: parts of one cache may be
/// written at the same time (by MPI ranks or by separate `--part` jobs), the same part
/// only once. A whole cache (1 of 1) takes [`LOCK_FILE`].
pub fn cache_part_lock_name(index: u32, count: u32) -> String {
    if count == 1 {
        LOCK_FILE.to_string()
    } else {
        format!(".deit-pipe.part-{index}-of-{count}.lock")
    }
}

/// Bytes of a lock file read to name its holder.
const HOLDER_BYTES: u64 = 4096;

/// Attempts when the lock file keeps being removed under us (a holder ending each time).
const ATTEMPTS: usize = 100;

/// An exclusive lock on a folder, held until it is dropped (or the process ends).
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
}

impl Drop for OutputLock {
    /// Removes the lock file while still holding the lock (then the lock ends with the
    /// file's closing).
    fn drop(&mut self) {
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `path` (not followed if a link) names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl OutputLock {
    /// Locks `dir` (created if missing) through its lock file `name` without waiting.
    /// Another process holding it gives an error of kind `WouldBlock` that says
    /// "DIR is already in use by pid N (lock file PATH)". A lock file that is a link or
    /// not a regular file is refused (nothing is written through it).
    pub fn acquire(dir: &Path, name: &str) -> io::Result<OutputLock> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
        let path = dir.join(name);
        for _ in 0..ATTEMPTS {
            if let Some(lock) = Self::try_once(dir, &path)? {
                return Ok(lock);
            }
        }
        Err(io::Error::other(format!(
            "{}: the lock file was replaced {ATTEMPTS} times while locking it",
            path.display()
        )))
    }

    /// One attempt: `None` when the locked file is no longer the one at `path` (its
    /// holder removed it as we locked it).
    fn try_once(dir: &Path, path: &Path) -> io::Result<Option<OutputLock>> {
        let path = path.to_path_buf();
        let ctx = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("lock file {} is a symbolic link: refused", path.display()),
                ),
                _ => ctx(e),
            })?;
        let kind = file.metadata().map_err(ctx)?.file_type();
        if !kind.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "lock file {} is {}, not a regular file",
                    path.display(),
                    crate::open::file_kind(&kind)
                ),
            ));
        }
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = match read_holder(&mut file) {
                    Some(pid) => format!("pid {pid}"),
                    None => "another process (its pid is not recorded yet)".to_string(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is already in use by {holder} (lock file {}); wait for it to \
                         end or write somewhere else",
                        dir.display(),
                        path.display()
                    ),
                ));
            }
            return Err(ctx(e));
        }
        if !same_file(&file, &path) {
            return Ok(None);
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "pid {}", std::process::id()))
            .map_err(ctx)?;
        Ok(Some(OutputLock { file, path }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid a lock file records (`pid N`), if it records one.
fn read_holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(HOLDER_BYTES).read_to_string(&mut text).ok()?;
    text.trim().strip_prefix("pid ")?.trim().parse().ok()
}

/// The pid recorded in `dir`'s lock file `name` (whether or not it still holds it).
pub fn recorded_holder(dir: &Path, name: &str) -> Option<u32> {
    let mut file = crate::open::open_regular(&dir.join(name)).ok()?;
    read_holder(&mut file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        let held = OutputLock::acquire(&dir, LOCK_FILE).unwrap();
        assert_eq!(held.path(), dir.join(LOCK_FILE));
        assert_eq!(recorded_holder(&dir, LOCK_FILE), Some(std::process::id()));
        // A second open file description is a second holder, even in this process.
        let e = OutputLock::acquire(&dir, LOCK_FILE).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("already in use by pid {}", std::process::id()))
                && msg.contains(LOCK_FILE),
            "{msg}"
        );
        // Another lock name in the same folder is independent.
        let _other = OutputLock::acquire(&dir, ".other.lock").unwrap();
        drop(held);
        assert!(
            !dir.join(LOCK_FILE).exists(),
            "a finished holder removes its file"
        );
        let again = OutputLock::acquire(&dir, LOCK_FILE).unwrap();
        // A file left by a killed holder (unlocked) is simply locked again.
        drop(again);
        std::fs::write(dir.join(LOCK_FILE), "pid 1\n").unwrap();
        let _again = OutputLock::acquire(&dir, LOCK_FILE).unwrap();
        assert_eq!(recorded_holder(&dir, LOCK_FILE), Some(std::process::id()));
    }

    #[test]
    fn a_linked_or_special_lock_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("victim");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join(LOCK_FILE)).unwrap();
        let e = OutputLock::acquire(tmp.path(), LOCK_FILE).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        std::fs::create_dir(tmp.path().join("d.lock")).unwrap();
        assert!(OutputLock::acquire(tmp.path(), "d.lock").is_err());
    }
}
