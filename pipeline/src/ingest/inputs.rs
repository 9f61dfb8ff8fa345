//! Input discovery: ImageFolder trees (`ROOT/<split>/<class>/...`, class folder names sorted
//! give label ids, as torchvision does) and list files (`path<TAB>label` lines).

use super::IngestError;
use std::path::{Path, PathBuf};

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

fn walk_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), IngestError> {
    for e in sorted_entries(dir)? {
        let p = e.path();
        if p.is_dir() {
            walk_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
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
        walk_files(&split_dir.join(name), &mut files)?;
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

/// Read a list file: one `path<TAB>label` per line (blank lines and `#` comments ignored).
/// Relative paths are resolved against the list file's folder. Labels are either all
/// non-negative integers (kept as ids; classes are named "0".."max") or all names (sorted
/// names give ids).
pub fn read_list(list: &Path, split: &str) -> Result<SplitInput, IngestError> {
    let text = std::fs::read_to_string(list).map_err(|e| IngestError::io(list, e))?;
    let base = list.parent().unwrap_or(Path::new("."));
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (p, label) = line.rsplit_once('\t').ok_or_else(|| {
            IngestError::Layout(format!(
                "{}:{}: expected `path<TAB>label`, got {line:?}",
                list.display(),
                n + 1
            ))
        })?;
        if p.is_empty() || label.trim().is_empty() {
            return Err(IngestError::Layout(format!(
                "{}:{}: empty path or label",
                list.display(),
                n + 1
            )));
        }
        rows.push((p.to_string(), label.trim().to_string()));
    }
    let numeric = rows.iter().all(|(_, l)| l.parse::<u32>().is_ok());
    let classes: Vec<String> = if numeric {
        let max = rows.iter().filter_map(|(_, l)| l.parse::<u32>().ok()).max();
        match max {
            Some(m) => (0..=m).map(|i| i.to_string()).collect(),
            None => Vec::new(),
        }
    } else {
        let mut names: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let items = rows
        .into_iter()
        .map(|(p, l)| {
            let label = if numeric {
                l.parse::<u32>().unwrap_or(0)
            } else {
                classes.binary_search(&l).unwrap_or(0) as u32
            };
            let path = Path::new(&p);
            InputItem {
                path: if path.is_absolute() {
                    path.to_path_buf()
                } else {
                    base.join(path)
                },
                display: p,
                label,
            }
        })
        .collect();
    Ok(SplitInput {
        name: split.to_string(),
        classes,
        items,
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
