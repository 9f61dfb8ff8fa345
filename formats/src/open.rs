//! One way to open a user-supplied path, used by every crate (issue 25).
//!
//! - [`open_regular`] opens a path for reading without blocking (`O_NONBLOCK`, so a FIFO
//!   with no writer does not hang the open) and refuses, from `fstat` and before any byte
//!   is read, anything that is not a regular file once links are resolved: FIFOs,
//!   sockets, character and block devices (`/dev/zero`), folders.
//! - [`read_bounded`] / [`read_text`] do that and read the whole file, refusing files over
//!   a stated [`Limit`] (checked from `fstat` and again while reading, so a file that
//!   grows, or a `/proc` file that reports size 0, cannot exceed it either).
//!
//! Errors are `std::io::Error`s with a one-line reason; callers add the path (every
//! caller already wraps I/O errors with the file's name).
//!
//! The limits and the reason for each number are listed in `docs/LIMITS.md`.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// A size limit for one kind of file, with the name used in the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Most bytes the file may hold.
    pub bytes: u64,
    /// What the file is, for the message ("a shard manifest").
    pub what: &'static str,
}

impl Limit {
    /// A limit of `bytes` for files described as `what`.
    pub const fn new(bytes: u64, what: &'static str) -> Limit {
        Limit { bytes, what }
    }
}

const MIB: u64 = 1 << 20;

/// `manifest.json` of a shard split: class names (at most 1,000,000 classes of up to 255
/// bytes) plus the skip list fit in 256 MiB with room to spare.
pub const MANIFEST: Limit = Limit::new(256 * MIB, "a shard manifest");
/// A shard `.idx` file: 64-byte header + 40 bytes per record; 1 GiB is 26 million
/// records per shard, far above what `shard` writes (shards are capped by bytes).
pub const SHARD_INDEX: Limit = Limit::new(1024 * MIB, "a shard index");
/// A TOML config (`--config`, `--augment-config`, a run's `config.toml`): recipes are a
/// few KiB.
pub const CONFIG: Limit = Limit::new(MIB, "a config file");
/// Small JSON records of a run (`best.json`, `last.json`, `state.json`, `teacher.json`,
/// a cache's `binding.json`): each is under 4 KiB when we write it.
pub const RUN_RECORD: Limit = Limit::new(MIB, "a run record");
/// A list file (`shard --list`): ImageNet-21k's 14.2 million lines of ~100 bytes are
/// 1.4 GB; 4 GiB leaves room for long paths.
pub const LIST_FILE: Limit = Limit::new(4096 * MIB, "a list file");
/// A class-name file (`predict --classes`): 1,000,000 names of up to 64 bytes.
pub const CLASS_NAMES: Limit = Limit::new(64 * MIB, "a class-name file");
/// An image file read whole (`predict`): the largest JPEG/PNG under the default
/// 89.5-megapixel decompression-bomb guard is far below 1 GiB.
pub const IMAGE: Limit = Limit::new(1024 * MIB, "an image file");
/// A teacher-cache epoch file read whole for verification: 64 GiB, above any epoch of
/// ImageNet-21k at K=100 (about 10 GB) yet a bound on a forged size.
pub const CACHE_EPOCH: Limit = Limit::new(64 * 1024 * MIB, "a teacher-cache epoch file");
/// A weights file read whole (`.safetensors`, `.pth`): ViT-g is 4 GB in fp32; 32 GiB.
pub const WEIGHTS: Limit = Limit::new(32 * 1024 * MIB, "a weights file");

/// Opens `path` for reading if it is a regular file (links followed); refuses FIFOs,
/// sockets, devices and folders without blocking and without reading a byte.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NONBLOCK);
    }
    let file = opts.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a regular file ({}): refused",
                file_kind(&meta.file_type())
            ),
        ));
    }
    Ok(file)
}

/// What kind of non-regular file this is, for messages.
pub fn file_kind(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO";
        }
        if t.is_char_device() {
            return "character device";
        }
        if t.is_block_device() {
            return "block device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if t.is_dir() {
        "folder"
    } else {
        "special file"
    }
}

fn too_big(size: &str, limit: Limit) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{size} is over the {} limit for {} (see docs/LIMITS.md)",
            human(limit.bytes),
            limit.what
        ),
    )
}

fn human(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else if b >= MIB && b.is_multiple_of(MIB) {
        format!("{} MiB", b >> 20)
    } else {
        format!("{b}-byte")
    }
}

/// Reads a regular file whole, refusing it (before reading) when `fstat` says it is over
/// `limit`, and while reading if it holds more than `limit` bytes anyway.
pub fn read_bounded(path: &Path, limit: Limit) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata()?.len();
    if len > limit.bytes {
        return Err(too_big(&format!("{len} bytes"), limit));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(limit.bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit.bytes {
        return Err(too_big("the file (growing while read)", limit));
    }
    Ok(bytes)
}

/// [`read_bounded`] for UTF-8 text; a leading UTF-8 byte-order mark is dropped.
pub fn read_text(path: &Path, limit: Limit) -> io::Result<String> {
    let bytes = read_bounded(path, limit)?;
    let mut text = String::from_utf8(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })?;
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn fifos_devices_and_folders_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let e = read_bounded(&fifo, CONFIG).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (FIFO): refused");
        let zero = dir.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = read_bounded(&zero, MANIFEST).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a regular file (character device): refused"
        );
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file (folder): refused");
    }

    #[test]
    fn sizes_over_the_limit_are_refused_and_a_bom_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, vec![b'x'; 1025]).unwrap();
        let small = Limit::new(1024, "a test file");
        let e = read_bounded(&f, small).unwrap_err();
        assert_eq!(
            e.to_string(),
            "1025 bytes is over the 1024-byte limit for a test file (see docs/LIMITS.md)"
        );
        assert_eq!(read_bounded(&f, Limit::new(1025, "x")).unwrap().len(), 1025);
        std::fs::write(&f, "\u{feff}a = 1\n").unwrap();
        assert_eq!(read_text(&f, CONFIG).unwrap(), "a = 1\n");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert!(read_text(&f, CONFIG)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_proc_file_reporting_size_zero_is_still_bounded() {
        // /proc files are regular with st_size 0; the read itself stops at the limit.
        let e = read_bounded(Path::new("/proc/self/maps"), Limit::new(16, "a test file"));
        assert!(e.unwrap_err().to_string().contains("growing while read"));
    }
}
