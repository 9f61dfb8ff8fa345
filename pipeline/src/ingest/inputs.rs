//! Input discovery: ImageFolder trees (`ROOT/<split>/<class>/...`, class folder names sorted
//! give label ids, as torchvision does) and list files (`path<TAB>label` lines).
//!
//! Hostile trees: symbolic links are followed, but a folder reached a second time (a link
//! back to an ancestor, or two links to one folder) is read once and the other paths are
//! listed as skipped, so a link cycle neither loops nor stores an image twice. Inputs are
//! opened with [`read_regular_file`], which refuses anything that is not a regular file
//! (FIFOs, devices such as `/dev/zero`, sockets) without blocking or reading it.

use super::IngestError;
use formats::shard::SkippedFile;
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

/// Most classes a list file may have: integer labels must be below this (a label of
/// 4294967295 would otherwise name four billion classes).
pub const MAX_CLASSES: usize = 1_000_000;

/// One input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputItem {
    /// Where to read it.
    pub path: PathBuf,
    /// How to name it in reports (relative to the input root, or as listed).
    pub display: String,
    /// Label id.
    pub label: u32,
}

/// The inputs of one split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitInput {
    /// Split name (`train`, `val`).
    pub name: String,
    /// Class names; labels index this list.
    pub classes: Vec<String>,
    /// Files in a stable order (class, then path).
    pub items: Vec<InputItem>,
    /// Paths found but not read (folders reached twice through links), with reasons; they
    /// join the manifest's skip list.
    pub skipped: Vec<SkippedFile>,
}

/// `p` with `.` dropped and each `..` removing the component before it (lexically, as
/// Python's `os.path.normpath`), so `sub/../a.JPEG` and `a.JPEG` are one key.
fn lexical_normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !matches!(out.components().next_back(), Some(Component::Normal(_))) || !out.pop()
                {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Read an input file that must be a regular file (symbolic links followed). A FIFO,
/// device, socket or folder is refused with a one-line reason without blocking: the file
/// is opened non-blocking and checked with `fstat` before any byte is read.
pub fn read_regular_file(path: &Path) -> Result<Vec<u8>, String> {
    formats::open::read_bounded(path, formats::open::IMAGE).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
            format!("{e}: skipped")
        }
        _ => format!("unreadable: {e}"),
    })
}

/// Folders already read in one split walk, by canonical path (links resolved).
struct Walk<'a> {
    root: &'a Path,
    /// `root` with links resolved: no folder outside it is read.
    canon_root: PathBuf,
    seen: HashSet<PathBuf>,
    skipped: Vec<SkippedFile>,
}

impl Walk<'_> {
    fn display(&self, p: &Path) -> String {
        p.strip_prefix(self.root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    /// True the first time a folder is met; later it is listed as skipped.
    fn first_visit(&mut self, dir: &Path) -> Result<bool, IngestError> {
        let canon = std::fs::canonicalize(dir).map_err(|e| IngestError::io(dir, e))?;
        if self.seen.insert(canon) {
            return Ok(true);
        }
        self.skipped.push(SkippedFile {
            path: self.display(dir),
            reason: "folder already read through another path (a symbolic-link cycle or a \
                     second link to it): skipped"
                .into(),
        });
        Ok(false)
    }

    fn skip(&mut self, dir: &Path, reason: String) {
        self.skipped.push(SkippedFile {
            path: self.display(dir),
            reason,
        });
    }

    /// Reads `dir` and its sub-folders, links followed only while they stay inside the
    /// input root: a folder whose real path leaves the root (a class folder linked to
    /// `/`) is listed as skipped, not read. An unreadable folder is skipped and listed as
    /// an unreadable file is.
    fn files(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), IngestError> {
        let canon = match std::fs::canonicalize(dir) {
            Ok(c) => c,
            Err(e) => {
                self.skip(dir, format!("unreadable folder: {e}: skipped"));
                return Ok(());
            }
        };
        if !canon.starts_with(&self.canon_root) {
            self.skip(
                dir,
                format!(
                    "folder link leaves the input root (to {}): skipped; links are followed \
                     only to folders inside the root",
                    canon.display()
                ),
            );
            return Ok(());
        }
        if !self.first_visit(dir)? {
            return Ok(());
        }
        let entries = match sorted_entries(dir) {
            Ok(v) => v,
            Err(e) => {
                self.skip(dir, format!("unreadable folder: {e}: skipped"));
                return Ok(());
            }
        };
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                self.files(&p, out)?;
            } else {
                out.push(p);
            }
        }
        Ok(())
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<std::fs::DirEntry>, IngestError> {
    let rd = std::fs::read_dir(dir).map_err(|e| IngestError::io(dir, e))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|e| IngestError::io(dir, e))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue; // hidden files (.DS_Store, editor temp files)
        }
        v.push(e);
    }
    v.sort_by_key(|e| e.file_name());
    Ok(v)
}

/// Class folder names of `split_dir`, sorted.
pub fn class_folders(split_dir: &Path) -> Result<Vec<String>, IngestError> {
    let mut classes = Vec::new();
    for e in sorted_entries(split_dir)? {
        let p = e.path();
        if p.is_dir() {
            let name = e.file_name().into_string().map_err(|n| {
                IngestError::Layout(format!(
                    "{}: class folder name {n:?} is not UTF-8",
                    split_dir.display()
                ))
            })?;
            classes.push(name);
        }
    }
    Ok(classes)
}

/// Read one ImageFolder split (`root/<split>/<class>/**`) with the given class list. Every
/// regular file is an input; files that are not images are skipped later, with a reason.
/// A class folder not in `classes` is an error.
pub fn scan_image_folder(
    root: &Path,
    split: &str,
    classes: &[String],
) -> Result<SplitInput, IngestError> {
    let split_dir = root.join(split);
    let found = class_folders(&split_dir)?;
    let mut walk = Walk {
        root,
        canon_root: std::fs::canonicalize(root).map_err(|e| IngestError::io(root, e))?,
        seen: HashSet::new(),
        skipped: Vec::new(),
    };
    // The root and the split folder count as read: a link back to either is a cycle.
    for d in [root, split_dir.as_path()] {
        walk.first_visit(d)?;
    }
    let mut items = Vec::new();
    for name in &found {
        let label = classes.iter().position(|c| c == name).ok_or_else(|| {
            IngestError::Layout(format!(
                "{}: class folder {name:?} is not among the {} classes of the training split",
                split_dir.display(),
                classes.len()
            ))
        })?;
        let mut files = Vec::new();
        walk.files(&split_dir.join(name), &mut files)?;
        for path in files {
            let display = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            items.push(InputItem {
                path,
                display,
                label: label as u32,
            });
        }
    }
    Ok(SplitInput {
        name: split.to_string(),
        classes: classes.to_vec(),
        items,
        skipped: walk.skipped,
    })
}

/// Read an ImageFolder root: every split folder among `train` and `val` that exists.
/// Classes come from `train/` (or the first split present) and apply to all splits.
pub fn scan_root(root: &Path) -> Result<Vec<SplitInput>, IngestError> {
    let splits: Vec<&str> = ["train", "val"]
        .into_iter()
        .filter(|s| root.join(s).is_dir())
        .collect();
    let Some(first) = splits.first() else {
        return Err(IngestError::Layout(format!(
            "{}: no train/ or val/ folder (expected ROOT/train/<class>/<image> or use --list)",
            root.display()
        )));
    };
    let classes = class_folders(&root.join(first))?;
    if classes.is_empty() {
        return Err(IngestError::Layout(format!(
            "{}: no class folders",
            root.join(first).display()
        )));
    }
    splits
        .iter()
        .map(|s| scan_image_folder(root, s, &classes))
        .collect()
}

/// Class names of `split` that have no input file (hidden files aside), in label order.
pub fn empty_classes(split: &SplitInput) -> Vec<&str> {
    let mut count = vec![0usize; split.classes.len()];
    for item in &split.items {
        if let Some(c) = count.get_mut(item.label as usize) {
            *c += 1;
        }
    }
    split
        .classes
        .iter()
        .zip(count)
        .filter(|(_, n)| *n == 0)
        .map(|(name, _)| name.as_str())
        .collect()
}

/// Refuses, as torchvision's `ImageFolder` does (`Found no valid file for the classes
/// ...`), a class-defining split (`train/`, or the first split present) with class folders
/// that hold no file: they would become classes that no image teaches. The error names
/// the first five empty folders and their count. Dropping them instead would renumber
/// the label ids of every later class between this set and another split or tool that
/// reads the same tree, so they are kept or refused, never dropped (`shard
/// --allow-empty-classes` keeps them, as torchvision's `allow_empty=True`).
pub fn refuse_empty_classes(root: &Path, split: &SplitInput) -> Result<(), IngestError> {
    let empty = empty_classes(split);
    if empty.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = empty.iter().take(5).map(|c| format!("{c:?}")).collect();
    let more = if empty.len() > 5 { ", ..." } else { "" };
    Err(IngestError::Layout(format!(
        "{}: {} of {} class folders hold no file ({}{more}); torchvision's ImageFolder \
         refuses this too. Remove the empty folders, or keep them as classes without \
         images (their label ids unchanged) with --allow-empty-classes",
        root.join(&split.name).display(),
        empty.len(),
        split.classes.len(),
        shown.join(", ")
    )))
}

/// Read a list file: one `path<TAB>label` per line (blank lines and `#` comments ignored).
/// Relative paths are resolved against the list file's folder. Labels are either all
/// non-negative integers below [`MAX_CLASSES`] (kept as ids; classes are named "0".."max")
/// or all names (sorted names give ids): a file mixing the two styles is refused, naming the
/// first line whose style differs from the first label's. A path listed twice (after
/// resolving it against the list's folder, dropping `.` components and resolving `..`
/// lexically) is refused with both line numbers, whatever its labels. A leading UTF-8
/// byte-order mark is dropped; a list without entries is refused.
pub fn read_list(list: &Path, split: &str) -> Result<SplitInput, IngestError> {
    let text = formats::open::read_text(list, formats::open::LIST_FILE)
        .map_err(|e| IngestError::io(list, e))?;
    let base = list.parent().unwrap_or(Path::new("."));
    let at = |n: usize| format!("{}:{n}", list.display());
    // (line number, path as written, resolved path, label)
    let mut rows: Vec<(usize, String, PathBuf, String)> = Vec::new();
    let mut first_line: HashMap<PathBuf, usize> = HashMap::new();
    let mut numeric: Option<(bool, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (p, label) = line.rsplit_once('\t').ok_or_else(|| {
            IngestError::Layout(format!(
                "{}: expected `path<TAB>label`, got {line:?}",
                at(n)
            ))
        })?;
        let label = label.trim();
        if p.is_empty() || label.is_empty() {
            return Err(IngestError::Layout(format!(
                "{}: empty path or label",
                at(n)
            )));
        }
        let is_int = !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit());
        match numeric {
            None => numeric = Some((is_int, n)),
            Some((style, first)) if style != is_int => {
                let (this, that) = if style {
                    ("a class name", "integer labels")
                } else {
                    ("an integer", "class names")
                };
                return Err(IngestError::Layout(format!(
                    "{}: label {label:?} is {this} but line {first} starts {that}; labels \
                     must be all integers or all class names",
                    at(n)
                )));
            }
            Some(_) => {}
        }
        if is_int {
            let ok = label.parse::<u64>().is_ok_and(|v| v < MAX_CLASSES as u64);
            if !ok {
                return Err(IngestError::Layout(format!(
                    "{}: label {label} is too large (integer labels must be below \
                     {MAX_CLASSES}, the most classes a data set may have)",
                    at(n)
                )));
            }
        }
        let path = Path::new(p);
        let resolved = if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        };
        let key = lexical_normal(&resolved);
        if let Some(first) = first_line.insert(key, n) {
            return Err(IngestError::Layout(format!(
                "{}: {p:?} is listed twice (lines {first} and {n}); list each file once",
                at(n)
            )));
        }
        rows.push((n, p.to_string(), resolved, label.to_string()));
    }
    if rows.is_empty() {
        return Err(IngestError::Layout(format!(
            "{}: the list has no entries (only blank or # lines): nothing to shard",
            list.display()
        )));
    }
    let numeric = numeric.is_some_and(|(s, _)| s);
    let classes: Vec<String> = if numeric {
        let max = rows.iter().filter_map(|r| r.3.parse::<u32>().ok()).max();
        match max {
            Some(m) => (0..=m).map(|i| i.to_string()).collect(),
            None => Vec::new(),
        }
    } else {
        let mut names: Vec<String> = rows.iter().map(|r| r.3.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let mut items = Vec::with_capacity(rows.len());
    for (n, p, path, l) in rows {
        let label = if numeric {
            l.parse::<u32>().ok()
        } else {
            classes
                .binary_search(&l)
                .ok()
                .and_then(|i| u32::try_from(i).ok())
        }
        .ok_or_else(|| IngestError::Layout(format!("{}: bad label {l:?}", at(n))))?;
        items.push(InputItem {
            path,
            display: p,
            label,
        });
    }
    Ok(SplitInput {
        name: split.to_string(),
        classes,
        items,
        skipped: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_with_names_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.tsv");
        std::fs::write(&p, "# c\na.jpg\tzebra\n\nsub/b.png\tant\nc.jpg\tzebra\n").unwrap();
        let s = read_list(&p, "train").unwrap();
        assert_eq!(s.classes, vec!["ant", "zebra"]);
        let labels: Vec<u32> = s.items.iter().map(|i| i.label).collect();
        assert_eq!(labels, vec![1, 0, 1]);
        assert_eq!(s.items[1].path, dir.path().join("sub/b.png"));
        std::fs::write(&p, "a.jpg\t3\nb.jpg\t0\n").unwrap();
        let s = read_list(&p, "train").unwrap();
        assert_eq!(s.classes.len(), 4);
        assert_eq!(s.items[0].label, 3);
        std::fs::write(&p, "a.jpg 3\n").unwrap();
        let err = read_list(&p, "train").unwrap_err().to_string();
        assert!(err.contains(":1: expected"), "{err}");
    }

    #[test]
    fn list_labels_are_bounded_single_style_and_paths_unique() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.tsv");
        let err = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read_list(&p, "train").unwrap_err().to_string()
        };
        // A huge label is refused before any class list is built.
        let e = err("a.jpg\t1\nb.jpg\t4294967295\n");
        assert!(e.contains("l.tsv:2: label 4294967295 is too large"), "{e}");
        assert!(e.contains("below 1000000"), "{e}");
        let e = err("a.jpg\t99999999999999999999999\n");
        assert!(
            e.contains(":1: label 99999999999999999999999 is too large"),
            "{e}"
        );
        std::fs::write(&p, "a.jpg\t999999\n").unwrap();
        assert_eq!(read_list(&p, "train").unwrap().classes.len(), MAX_CLASSES);
        // Mixed styles: the first line that differs is named, with the first label's line.
        let e = err("# header\na.jpg\t3\nb.jpg\t0\nc.jpg\tcat\n");
        assert!(
            e.contains("l.tsv:4: label \"cat\" is a class name but line 2 starts integer labels"),
            "{e}"
        );
        let e = err("a.jpg\tcat\nb.jpg\t7\n");
        assert!(
            e.contains("l.tsv:2: label \"7\" is an integer but line 1 starts class names"),
            "{e}"
        );
        // The same file twice, even spelled differently or with another label.
        let e = err("a.jpg\tcat\nb.jpg\tdog\n./a.jpg\tdog\n");
        assert!(
            e.contains("l.tsv:3: \"./a.jpg\" is listed twice (lines 1 and 3)"),
            "{e}"
        );
        let abs = dir.path().join("sub/b.jpg");
        let e = err(&format!("sub/b.jpg\t0\n{}\t1\n", abs.display()));
        assert!(e.contains("listed twice (lines 1 and 2)"), "{e}");
    }

    #[test]
    fn list_paths_are_normalized_bom_dropped_and_empty_lists_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.tsv");
        std::fs::write(&p, "a.JPEG\tcat\nsub/../a.JPEG\tdog\n").unwrap();
        let e = read_list(&p, "train").unwrap_err().to_string();
        assert!(
            e.contains("l.tsv:2: \"sub/../a.JPEG\" is listed twice (lines 1 and 2)"),
            "{e}"
        );
        // `..` past the start stays (it names another folder), so no false duplicate.
        assert_eq!(
            lexical_normal(Path::new("../a/./b/../c")),
            Path::new("../a/c")
        );
        std::fs::write(&p, "\u{feff}a.JPEG\tcat\n").unwrap();
        let s = read_list(&p, "train").unwrap();
        assert_eq!(s.classes, vec!["cat"]);
        assert_eq!(s.items[0].display, "a.JPEG");
        for empty in ["", "# only a comment\n\n"] {
            std::fs::write(&p, empty).unwrap();
            let e = read_list(&p, "train").unwrap_err().to_string();
            assert!(e.contains("the list has no entries"), "{e}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn folder_links_out_of_the_root_and_unreadable_folders_are_skipped_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let cat = dir.path().join("train/cat");
        std::fs::create_dir_all(cat.join("deep")).unwrap();
        std::fs::write(cat.join("1.jpg"), b"x").unwrap();
        std::fs::write(cat.join("deep/2.jpg"), b"x").unwrap();
        // A class folder linked to `/` and a sub-folder linked to /etc.
        std::os::unix::fs::symlink("/", dir.path().join("train/root")).unwrap();
        std::os::unix::fs::symlink("/etc", cat.join("etc")).unwrap();
        let classes = class_folders(&dir.path().join("train")).unwrap();
        let s = scan_image_folder(dir.path(), "train", &classes).unwrap();
        let names: Vec<&str> = s.items.iter().map(|i| i.display.as_str()).collect();
        assert_eq!(names, vec!["train/cat/1.jpg", "train/cat/deep/2.jpg"]);
        let skipped: Vec<String> = s
            .skipped
            .iter()
            .map(|k| format!("{}: {}", k.path, k.reason))
            .collect();
        assert!(
            skipped.contains(
                &"train/root: folder link leaves the input root (to /): skipped; \
                 links are followed only to folders inside the root"
                    .to_string()
            ),
            "{skipped:?}"
        );
        assert!(
            skipped
                .iter()
                .any(|k| k.starts_with("train/cat/etc: folder link leaves")),
            "{skipped:?}"
        );
        // An unreadable sub-folder (only testable without root's override of modes).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            use std::os::unix::fs::PermissionsExt;
            let deep = cat.join("deep");
            std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o000)).unwrap();
            let s = scan_image_folder(dir.path(), "train", &classes);
            std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o755)).unwrap();
            let s = s.unwrap();
            assert_eq!(s.items.len(), 1);
            assert!(
                s.skipped.iter().any(
                    |k| k.path == "train/cat/deep" && k.reason.starts_with("unreadable folder")
                ),
                "{:?}",
                s.skipped
            );
        }
    }

    #[test]
    fn empty_class_folders_are_refused_by_name_and_count() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("train/a")).unwrap();
        std::fs::write(dir.path().join("train/a/1.jpg"), b"x").unwrap();
        for i in 0..7 {
            std::fs::create_dir_all(dir.path().join(format!("train/e{i}"))).unwrap();
        }
        // Only a hidden file: still empty.
        std::fs::write(dir.path().join("train/e0/.DS_Store"), b"x").unwrap();
        let splits = scan_root(dir.path()).unwrap();
        assert_eq!(splits[0].classes.len(), 8);
        assert_eq!(
            empty_classes(&splits[0]),
            vec!["e0", "e1", "e2", "e3", "e4", "e5", "e6"]
        );
        let e = refuse_empty_classes(dir.path(), &splits[0])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "train: 7 of 8 class folders hold no file (\"e0\", \"e1\", \"e2\", \"e3\", \"e4\", ...)"
            ),
            "{e}"
        );
        assert!(e.contains("--allow-empty-classes"), "{e}");
        // A val split may leave classes empty (a subset): only the class-defining split is
        // checked, and label ids stay train's.
        std::fs::create_dir_all(dir.path().join("val/e3")).unwrap();
        std::fs::write(dir.path().join("val/e3/v.jpg"), b"x").unwrap();
        let splits = scan_root(dir.path()).unwrap();
        assert_eq!(splits[1].items[0].label, 4);
        for d in 0..7 {
            std::fs::write(dir.path().join(format!("train/e{d}/f.jpg")), b"x").unwrap();
        }
        let splits = scan_root(dir.path()).unwrap();
        refuse_empty_classes(dir.path(), &splits[0]).unwrap();
    }

    #[test]
    fn image_folder_sorted_classes_and_val_uses_train_classes() {
        let dir = tempfile::tempdir().unwrap();
        for (split, class, file) in [
            ("train", "b", "1.jpg"),
            ("train", "a", "2.jpg"),
            ("train", "a", "0.jpg"),
            ("val", "b", "3.jpg"),
        ] {
            let d = dir.path().join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), b"x").unwrap();
        }
        let splits = scan_root(dir.path()).unwrap();
        assert_eq!(splits[0].classes, vec!["a", "b"]);
        let names: Vec<&str> = splits[0].items.iter().map(|i| i.display.as_str()).collect();
        assert_eq!(
            names,
            vec!["train/a/0.jpg", "train/a/2.jpg", "train/b/1.jpg"]
        );
        assert_eq!(splits[1].items[0].label, 1);
        std::fs::create_dir_all(dir.path().join("val/zzz")).unwrap();
        assert!(scan_root(dir.path()).is_err());
    }
}
