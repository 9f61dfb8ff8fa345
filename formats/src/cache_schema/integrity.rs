//! Checksums of a cache file (format version 2): every byte of the file is covered by a
//! BLAKE3 digest stored in the footer's key-value metadata under [`INTEGRITY_KEY`], so a
//! flipped byte anywhere is refused before any of its values is used.
//!
//! The value is `footer:HEX data:HEX slots:HEX` (three 64-digit BLAKE3 hex digests):
//! - `data`: bytes `[0, F)`, all row groups (`F` = where the footer starts);
//! - `footer`: bytes `[F, end)` (Thrift footer, its length and the `PAR1` magic) with
//!   this value's 212 bytes replaced by ASCII `0`s;
//! - `slots`: the `slot` column chunks, in row-group order (the only data that opening a
//!   cache decodes, so opening verifies them without reading the whole file).
//!
//! The writer stores a placeholder of the same length, closes the file, computes the
//! digests and patches them in place. Readers find the value by its bytes, without the
//! Parquet decoder: the key, then the Thrift compact header of a 212-byte string.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::col;
use super::error::{CacheError, Result};

/// Footer key of the checksums.
pub const INTEGRITY_KEY: &str = "deit_pipe.integrity";

const DIGEST_HEX: usize = 64;
const FIELDS: [&str; 3] = ["footer:", " data:", " slots:"];
/// Length of the stored value (`footer:` + 64 + ` data:` + 64 + ` slots:` + 64).
pub(crate) const VALUE_LEN: usize = 7 + 6 + 7 + 3 * DIGEST_HEX;
/// Thrift compact protocol: field 2 (delta 1) of type binary (8), then the length as a
/// varint (212 = 0xD4 0x01).
const VALUE_PREFIX: [u8; 3] = [0x18, 0xD4, 0x01];
/// Parquet's trailing magic.
const MAGIC: &[u8; 4] = b"PAR1";

/// The placeholder the writer stores before the digests are known.
pub(crate) fn placeholder() -> String {
    format_value(&[
        "0".repeat(DIGEST_HEX),
        "0".repeat(DIGEST_HEX),
        "0".repeat(DIGEST_HEX),
    ])
}

fn format_value(hex: &[String; 3]) -> String {
    let mut s = String::with_capacity(VALUE_LEN);
    for (name, h) in FIELDS.iter().zip(hex) {
        s.push_str(name);
        s.push_str(h);
    }
    s
}

/// The three digests stored in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digests {
    /// BLAKE3 of the footer (value zeroed).
    pub footer: String,
    /// BLAKE3 of `[0, footer start)`.
    pub data: String,
    /// BLAKE3 of the slot column chunks.
    pub slots: String,
}

fn parse_value(v: &[u8]) -> std::result::Result<Digests, String> {
    let s = std::str::from_utf8(v).map_err(|_| "checksum value is not text".to_string())?;
    let mut out = Vec::with_capacity(3);
    let mut rest = s;
    for name in FIELDS {
        let r = rest
            .strip_prefix(name)
            .ok_or_else(|| format!("checksum value lacks `{}`", name.trim()))?;
        let (hex, tail) = r
            .split_at_checked(DIGEST_HEX)
            .ok_or("checksum value too short")?;
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("checksum `{}` is not lowercase hex", name.trim()));
        }
        out.push(hex.to_string());
        rest = tail;
    }
    let [footer, data, slots]: [String; 3] = out.try_into().map_err(|_| "three digests")?;
    Ok(Digests {
        footer,
        data,
        slots,
    })
}

fn corrupt(path: &Path, reason: impl Into<String>) -> CacheError {
    CacheError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { path, source }
}

/// Where the footer starts, from the file's last 8 bytes; `Err` says why it cannot.
fn footer_start(len: u64, tail: &[u8; 8]) -> std::result::Result<u64, String> {
    if &tail[4..] != MAGIC {
        return Err("the file does not end in the Parquet magic PAR1".into());
    }
    let n = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if n + 8 + 4 > len {
        return Err(format!(
            "the footer claims {n} bytes but the file has only {len}"
        ));
    }
    Ok(len - 8 - n)
}

/// Offset of the checksum value inside `footer` (the footer region's bytes).
fn locate(footer: &[u8]) -> std::result::Result<Option<usize>, String> {
    let mut pattern = Vec::with_capacity(INTEGRITY_KEY.len() + VALUE_PREFIX.len());
    pattern.extend_from_slice(INTEGRITY_KEY.as_bytes());
    pattern.extend_from_slice(&VALUE_PREFIX);
    let mut found = None;
    for (i, w) in footer.windows(pattern.len()).enumerate() {
        if w == pattern.as_slice() {
            if found.is_some() {
                return Err(format!("footer key `{INTEGRITY_KEY}` appears twice"));
            }
            found = Some(i + pattern.len());
        }
    }
    match found {
        Some(at) if at + VALUE_LEN <= footer.len() => Ok(Some(at)),
        Some(_) => Err("the checksum value runs past the footer".into()),
        None => Ok(None),
    }
}

fn hex(h: blake3::Hash) -> String {
    h.to_hex().to_string()
}

/// BLAKE3 of the footer region with the value at `at` replaced by the placeholder.
fn footer_digest(footer: &[u8], at: usize) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&footer[..at]);
    h.update(placeholder().as_bytes());
    h.update(&footer[at + VALUE_LEN..]);
    hex(h.finalize())
}

/// The verified footer of a file: its digests and where the data ends.
#[derive(Debug, Clone)]
pub(crate) struct VerifiedFooter {
    /// The stored digests (the footer's own already checked).
    pub digests: Digests,
    /// Bytes before the footer (covered by `digests.data`).
    pub data_len: u64,
}

/// What reading a footer found.
pub(crate) enum FooterCheck {
    /// The footer is intact.
    Ok(VerifiedFooter),
    /// The footer has no checksum key at all (another format version, or not ours).
    NoChecksum,
}

/// Reads and checks the footer of `file` (`len` bytes long) without the Parquet decoder.
pub(crate) fn check_footer(path: &Path, file: &mut File, len: u64) -> Result<FooterCheck> {
    if len < 12 {
        return Err(corrupt(
            path,
            format!("{len} bytes is too short for Parquet"),
        ));
    }
    let mut tail = [0u8; 8];
    file.seek(SeekFrom::Start(len - 8)).map_err(io(path))?;
    file.read_exact(&mut tail).map_err(io(path))?;
    let start = footer_start(len, &tail).map_err(|r| corrupt(path, r))?;
    let mut footer = vec![0u8; (len - start) as usize];
    file.seek(SeekFrom::Start(start)).map_err(io(path))?;
    file.read_exact(&mut footer).map_err(io(path))?;
    check_footer_region(path, start, &footer)
}

/// Checks the footer and the data digest of a whole file held in memory.
pub(crate) fn check_whole(path: &Path, bytes: &[u8]) -> Result<FooterCheck> {
    let len = bytes.len() as u64;
    if len < 12 {
        return Err(corrupt(
            path,
            format!("{len} bytes is too short for Parquet"),
        ));
    }
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[bytes.len() - 8..]);
    let start = footer_start(len, &tail).map_err(|r| corrupt(path, r))?;
    let check = check_footer_region(path, start, &bytes[start as usize..])?;
    if let FooterCheck::Ok(f) = &check {
        check_data(path, bytes, f)?;
    }
    Ok(check)
}

/// Checks the footer region `footer` (bytes `start..` of the file).
fn check_footer_region(path: &Path, start: u64, footer: &[u8]) -> Result<FooterCheck> {
    let Some(at) = locate(footer).map_err(|r| corrupt(path, r))? else {
        return Ok(FooterCheck::NoChecksum);
    };
    let digests = parse_value(&footer[at..at + VALUE_LEN]).map_err(|r| corrupt(path, r))?;
    let actual = footer_digest(footer, at);
    if actual != digests.footer {
        return Err(corrupt(
            path,
            format!(
                "footer checksum mismatch (BLAKE3 of bytes {start}..{} is {actual}, the \
                 footer says {})",
                start + footer.len() as u64,
                digests.footer
            ),
        ));
    }
    Ok(FooterCheck::Ok(VerifiedFooter {
        digests,
        data_len: start,
    }))
}

/// Checks the data digest against the whole file's bytes `bytes`.
fn check_data(path: &Path, bytes: &[u8], footer: &VerifiedFooter) -> Result<()> {
    let n = footer.data_len as usize;
    let data = bytes
        .get(..n)
        .ok_or_else(|| corrupt(path, "the file shrank while being read"))?;
    let actual = hex(blake3::hash(data));
    if actual != footer.digests.data {
        return Err(corrupt(
            path,
            format!(
                "data checksum mismatch (BLAKE3 of bytes 0..{n} is {actual}, the footer says {})",
                footer.digests.data
            ),
        ));
    }
    Ok(())
}

/// BLAKE3 of the byte ranges `(start, len)` of `file`, in order.
fn ranges_digest(path: &Path, file: &mut File, ranges: &[(u64, u64)]) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut buf = Vec::new();
    for &(start, len) in ranges {
        buf.resize(len as usize, 0);
        file.seek(SeekFrom::Start(start)).map_err(io(path))?;
        file.read_exact(&mut buf).map_err(io(path))?;
        h.update(&buf);
    }
    Ok(hex(h.finalize()))
}

/// Checks the slot digest: reads the slot column chunks `ranges` (from the verified
/// footer) of `file`.
pub(crate) fn check_slots(
    path: &Path,
    file: &mut File,
    ranges: &[(u64, u64)],
    footer: &VerifiedFooter,
) -> Result<()> {
    check_slot_ranges(path, ranges, footer)?;
    let actual = ranges_digest(path, file, ranges)?;
    compare_slots(path, actual, footer)
}

/// [`check_slots`] on a whole file held in memory.
pub(crate) fn check_slots_in(
    path: &Path,
    bytes: &[u8],
    ranges: &[(u64, u64)],
    footer: &VerifiedFooter,
) -> Result<()> {
    check_slot_ranges(path, ranges, footer)?;
    let mut h = blake3::Hasher::new();
    for &(start, len) in ranges {
        h.update(&bytes[start as usize..(start + len) as usize]);
    }
    compare_slots(path, hex(h.finalize()), footer)
}

fn check_slot_ranges(path: &Path, ranges: &[(u64, u64)], footer: &VerifiedFooter) -> Result<()> {
    if let Some(&(s, l)) = ranges
        .iter()
        .find(|&&(s, l)| s.checked_add(l).is_none_or(|e| e > footer.data_len))
    {
        return Err(corrupt(
            path,
            format!("slot column chunk {s}+{l} runs past the data"),
        ));
    }
    Ok(())
}

fn compare_slots(path: &Path, actual: String, footer: &VerifiedFooter) -> Result<()> {
    if actual != footer.digests.slots {
        return Err(corrupt(
            path,
            format!(
                "slot column checksum mismatch (BLAKE3 {actual}, the footer says {})",
                footer.digests.slots
            ),
        ));
    }
    Ok(())
}

/// The byte ranges of the slot column chunks, in row-group order (panics on negative
/// offsets in the metadata: call inside [`guarded`](super::guard::guarded)).
pub(crate) fn slot_ranges(meta: &parquet::file::metadata::ParquetMetaData) -> Vec<(u64, u64)> {
    meta.row_groups()
        .iter()
        .flat_map(|rg| rg.columns().iter())
        .filter(|c| c.column_path().parts().first().map(String::as_str) == Some(col::SLOT))
        .map(|c| c.byte_range())
        .collect()
}

/// Computes the digests of a just-written file (holding the placeholder) and patches
/// them in. `slot_ranges` are its slot column chunks. Returns the file (to be synced).
pub(crate) fn seal(path: &Path, slot_ranges: &[(u64, u64)]) -> Result<File> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io(path))?;
    let len = bytes.len() as u64;
    let bad = |r: String| CacheError::InvalidParameter(format!("sealing {}: {r}", path.display()));
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[bytes.len().saturating_sub(8)..]);
    let start = footer_start(len, &tail).map_err(bad)?;
    let footer = &bytes[start as usize..];
    let at = locate(footer)
        .map_err(bad)?
        .ok_or_else(|| bad("the checksum placeholder is not in the footer".into()))?;
    if &footer[at..at + VALUE_LEN] != placeholder().as_bytes() {
        return Err(bad(
            "the checksum placeholder was not written as expected".into()
        ));
    }
    let data = hex(blake3::hash(&bytes[..start as usize]));
    let slots = ranges_digest(path, &mut file, slot_ranges)?;
    // The footer digest covers the footer with the placeholder in place: compute it now.
    let footer_hex = footer_digest(footer, at);
    let value = format_value(&[footer_hex, data, slots]);
    file.seek(SeekFrom::Start(start + at as u64))
        .map_err(io(path))?;
    file.write_all(value.as_bytes()).map_err(io(path))?;
    file.flush().map_err(io(path))?;
    Ok(file)
}

/// Writes `bytes` to `path` with the checksum value replaced by the placeholder (for
/// [`super::testing::reseal`]).
pub(crate) fn reset_placeholder(path: &Path, mut bytes: Vec<u8>) -> Result<()> {
    let bad = |r: String| CacheError::InvalidParameter(format!("{}: {r}", path.display()));
    let len = bytes.len() as u64;
    if len < 12 {
        return Err(bad("too short".into()));
    }
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&bytes[bytes.len() - 8..]);
    let start = footer_start(len, &tail).map_err(bad)? as usize;
    let at = locate(&bytes[start..])
        .map_err(bad)?
        .ok_or_else(|| bad("no checksum key".into()))?;
    bytes[start + at..start + at + VALUE_LEN].copy_from_slice(placeholder().as_bytes());
    std::fs::write(path, &bytes).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_has_its_length() {
        let v = format_value(&["a".repeat(64), "b".repeat(64), "0".repeat(64)]);
        assert_eq!(v.len(), VALUE_LEN);
        assert_eq!(placeholder().len(), VALUE_LEN);
        let d = parse_value(v.as_bytes()).expect("parses");
        assert_eq!(d.data, "b".repeat(64));
        let mut bad = v.into_bytes();
        bad[10] = b'G';
        assert!(parse_value(&bad).is_err());
    }
}
