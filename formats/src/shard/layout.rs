//! Binary layout of the shard data (`.bin`) and index (`.idx`) files.
//!
//! All integers are little-endian. A data file is a 32-byte header followed by the record
//! bytes back to back. An index file is a 64-byte header followed by one 48-byte entry per
//! record; its header carries the BLAKE3 hash of the entries, checked when the set is opened.

use super::FormatError;
use std::path::Path;

/// The shard format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Magic bytes at the start of every shard data file.
pub const DATA_MAGIC: [u8; 8] = *b"DEITSHD\0";
/// Magic bytes at the start of every index file.
pub const INDEX_MAGIC: [u8; 8] = *b"DEITIDX\0";
/// Size of the data file header; the first record starts here.
pub const DATA_HEADER_LEN: usize = 32;
/// Size of the index file header.
pub const INDEX_HEADER_LEN: usize = 64;
/// Size of one index entry.
pub const ENTRY_LEN: usize = 48;
/// Largest side a stored image may have (sanity bound checked on every entry).
pub const MAX_SIDE: u32 = 1 << 16;
/// Largest pixel count a stored image may have, whatever a manifest's `max_pixels` says
/// (2^30 pixels: 3 GiB of RGB). Readers refuse larger index entries before allocating, and
/// `deit-pipe shard --max-pixels` refuses larger limits, so no record a reader accepts
/// needs a bigger buffer.
pub const MAX_PIXELS_CAP: u64 = 1 << 30;

/// How a record's bytes encode its pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// A baseline or progressive JPEG file (3-component, 8-bit).
    Jpeg,
    /// `width * height * 3` RGB bytes, row-major, compressed as one zstd frame.
    RawRgbZstd,
}

impl Encoding {
    /// The code stored in the index.
    pub fn code(self) -> u8 {
        match self {
            Encoding::Jpeg => 0,
            Encoding::RawRgbZstd => 1,
        }
    }

    /// The encoding for a stored code, if known.
    pub fn from_code(code: u8) -> Option<Encoding> {
        match code {
            0 => Some(Encoding::Jpeg),
            1 => Some(Encoding::RawRgbZstd),
            _ => None,
        }
    }
}

/// One index entry: where a record lives and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Byte offset of the record in the data file.
    pub offset: u64,
    /// Length of the record in bytes.
    pub length: u64,
    /// Class label.
    pub label: u32,
    /// Width of the source image before any resize.
    pub orig_width: u32,
    /// Height of the source image before any resize.
    pub orig_height: u32,
    /// Width of the stored image.
    pub width: u32,
    /// Height of the stored image.
    pub height: u32,
    /// How the bytes are encoded.
    pub encoding: Encoding,
    /// CRC-32 (IEEE) of the record bytes.
    pub crc32: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl IndexEntry {
    /// Serialize to the 48-byte on-disk form.
    pub fn to_bytes(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.length.to_le_bytes());
        b[16..20].copy_from_slice(&self.label.to_le_bytes());
        b[20..24].copy_from_slice(&self.orig_width.to_le_bytes());
        b[24..28].copy_from_slice(&self.orig_height.to_le_bytes());
        b[28..32].copy_from_slice(&self.width.to_le_bytes());
        b[32..36].copy_from_slice(&self.height.to_le_bytes());
        b[36] = self.encoding.code();
        b[40..44].copy_from_slice(&self.crc32.to_le_bytes());
        b
    }

    /// Parse a 48-byte entry; `Err` holds a description of what is wrong.
    pub fn parse(b: &[u8]) -> Result<IndexEntry, String> {
        if b.len() != ENTRY_LEN {
            return Err(format!(
                "index entry is {} bytes, expected {ENTRY_LEN}",
                b.len()
            ));
        }
        let encoding =
            Encoding::from_code(b[36]).ok_or_else(|| format!("unknown encoding code {}", b[36]))?;
        let e = IndexEntry {
            offset: u64_at(b, 0),
            length: u64_at(b, 8),
            label: u32_at(b, 16),
            orig_width: u32_at(b, 20),
            orig_height: u32_at(b, 24),
            width: u32_at(b, 28),
            height: u32_at(b, 32),
            encoding,
            crc32: u32_at(b, 40),
        };
        for (name, v) in [
            ("width", e.width),
            ("height", e.height),
            ("original width", e.orig_width),
            ("original height", e.orig_height),
        ] {
            if v == 0 || v > MAX_SIDE {
                return Err(format!("{name} {v} outside 1..={MAX_SIDE}"));
            }
        }
        Ok(e)
    }

    /// Fold this record (metadata and bytes) into a running content digest.
    pub fn hash_into(&self, hasher: &mut blake3::Hasher, bytes: &[u8]) {
        hasher.update(&self.label.to_le_bytes());
        hasher.update(&self.orig_width.to_le_bytes());
        hasher.update(&self.orig_height.to_le_bytes());
        hasher.update(&self.width.to_le_bytes());
        hasher.update(&self.height.to_le_bytes());
        hasher.update(&[self.encoding.code()]);
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
}

/// Build the data file header for a shard of `count` records.
pub fn data_header(count: u64) -> [u8; DATA_HEADER_LEN] {
    let mut b = [0u8; DATA_HEADER_LEN];
    b[0..8].copy_from_slice(&DATA_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&count.to_le_bytes());
    b
}

/// Build the index header for `count` entries over a data file of `data_len` bytes.
pub fn index_header(count: u64, data_len: u64, entries_hash: &[u8; 32]) -> [u8; INDEX_HEADER_LEN] {
    let mut b = [0u8; INDEX_HEADER_LEN];
    b[0..8].copy_from_slice(&INDEX_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(ENTRY_LEN as u32).to_le_bytes());
    b[16..24].copy_from_slice(&count.to_le_bytes());
    b[24..32].copy_from_slice(&data_len.to_le_bytes());
    b[32..64].copy_from_slice(entries_hash);
    b
}

/// The parsed, checked header of a data file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// Records in the shard.
    pub count: u64,
}

/// Parse and check a data file header.
pub fn parse_data_header(path: &Path, b: &[u8]) -> Result<DataHeader, FormatError> {
    if b.len() < DATA_HEADER_LEN {
        return Err(FormatError::corrupt(
            path,
            format!(
                "file is {} bytes, shorter than its {DATA_HEADER_LEN}-byte header",
                b.len()
            ),
        ));
    }
    if b[0..8] != DATA_MAGIC {
        return Err(FormatError::corrupt(
            path,
            "not a deit-pipe shard data file (bad magic)",
        ));
    }
    check_version(path, u32_at(b, 8))?;
    if b[12..16] != [0; 4] || b[24..32] != [0; 8] {
        return Err(FormatError::corrupt(
            path,
            "reserved header bytes are not zero",
        ));
    }
    Ok(DataHeader {
        count: u64_at(b, 16),
    })
}

/// The parsed, checked header of an index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    /// Entries in the index.
    pub count: u64,
    /// Length of the data file the index describes.
    pub data_len: u64,
    /// BLAKE3 hash of the entry bytes.
    pub entries_hash: [u8; 32],
}

/// Parse and check an index header, including that the file holds exactly `count` entries.
pub fn parse_index_header(path: &Path, b: &[u8]) -> Result<IndexHeader, FormatError> {
    if b.len() < INDEX_HEADER_LEN {
        return Err(FormatError::corrupt(
            path,
            format!(
                "file is {} bytes, shorter than its {INDEX_HEADER_LEN}-byte header",
                b.len()
            ),
        ));
    }
    if b[0..8] != INDEX_MAGIC {
        return Err(FormatError::corrupt(
            path,
            "not a deit-pipe index file (bad magic)",
        ));
    }
    check_version(path, u32_at(b, 8))?;
    let entry_len = u32_at(b, 12);
    if entry_len as usize != ENTRY_LEN {
        return Err(FormatError::corrupt(
            path,
            format!("entry size {entry_len}, expected {ENTRY_LEN}"),
        ));
    }
    let count = u64_at(b, 16);
    let expected = (count as u128) * (ENTRY_LEN as u128) + INDEX_HEADER_LEN as u128;
    if expected != b.len() as u128 {
        return Err(FormatError::corrupt(
            path,
            format!(
                "index of {count} entries should be {expected} bytes, file is {} (truncated or damaged)",
                b.len()
            ),
        ));
    }
    let mut entries_hash = [0u8; 32];
    entries_hash.copy_from_slice(&b[32..64]);
    Ok(IndexHeader {
        count,
        data_len: u64_at(b, 24),
        entries_hash,
    })
}

/// Refuse versions other than [`FORMAT_VERSION`].
pub fn check_version(path: &Path, found: u32) -> Result<(), FormatError> {
    if found != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip() {
        let e = IndexEntry {
            offset: 32,
            length: 1234,
            label: 7,
            orig_width: 500,
            orig_height: 375,
            width: 341,
            height: 256,
            encoding: Encoding::RawRgbZstd,
            crc32: 0xdead_beef,
        };
        assert_eq!(IndexEntry::parse(&e.to_bytes()), Ok(e));
    }

    #[test]
    fn entry_rejects_unknown_encoding_and_zero_size() {
        let e = IndexEntry {
            offset: 32,
            length: 1,
            label: 0,
            orig_width: 1,
            orig_height: 1,
            width: 1,
            height: 1,
            encoding: Encoding::Jpeg,
            crc32: 0,
        };
        let mut b = e.to_bytes();
        b[36] = 9;
        assert!(IndexEntry::parse(&b)
            .unwrap_err()
            .contains("unknown encoding"));
        let mut b = e.to_bytes();
        b[28..32].copy_from_slice(&0u32.to_le_bytes());
        assert!(IndexEntry::parse(&b).unwrap_err().contains("width 0"));
    }

    #[test]
    fn newer_version_is_refused() {
        let mut h = data_header(3);
        h[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = parse_data_header(Path::new("x.bin"), &h).unwrap_err();
        assert!(matches!(
            err,
            FormatError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("version 2 is not supported"));
    }
}
