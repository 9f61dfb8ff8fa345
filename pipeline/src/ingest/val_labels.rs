//! ImageNet as users have it: a flat `val/` folder (50,000 files, no class folders) and
//! its labels in a separate file, read by `deit-pipe shard --input ROOT --val-labels FILE`.
//!
//! Label files, told apart by their content:
//! - Kaggle's `LOC_val_solution.csv`: a header `ImageId,PredictionString`, then
//!   `ILSVRC2012_val_00000001,n01751748 x0 y0 x1 y1 n01751748 ...` (the wnid first).
//! - The devkit's `ILSVRC2012_validation_ground_truth.txt`: one ILSVRC2012_ID (1..1000)
//!   per line, line i for `ILSVRC2012_val_{i:08}.JPEG`. The IDs follow the devkit's
//!   `meta.mat` (`synsets`), not sorted wnid order, so the `meta.mat` beside the file (the
//!   devkit's `data/` folder) maps them to wnids; `--val-labels` may also name that folder.
//! - Plain `file<TAB>class` lines (paths relative to `ROOT/val`, `#` comments allowed).
//!
//! Val images take the training split's class list: every label must name one of
//! `ROOT/train`'s class folders (a mismatch names the first labels that differ), and a val
//! set may cover a subset of them. Kaggle and devkit labels match files by their name
//! without extension (`ILSVRC2012_val_00000001`), plain labels by path.

use super::inputs::{class_folders, scan_image_folder, scan_root, InputItem, SplitInput};
use super::IngestError;
use formats::shard::SkippedFile;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The devkit's ground-truth file name.
pub const DEVKIT_GROUND_TRUTH: &str = "ILSVRC2012_validation_ground_truth.txt";
/// Kaggle's val label file name.
pub const KAGGLE_SOLUTION: &str = "LOC_val_solution.csv";

/// Which kind of label file was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelFileKind {
    /// Kaggle's `LOC_val_solution.csv`.
    Kaggle,
    /// The devkit's ground truth with its `meta.mat`.
    Devkit,
    /// `file<TAB>class` lines.
    Plain,
}

impl std::fmt::Display for LabelFileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LabelFileKind::Kaggle => "Kaggle LOC_val_solution.csv",
            LabelFileKind::Devkit => "devkit ground truth + meta.mat",
            LabelFileKind::Plain => "file<TAB>class lines",
        })
    }
}

/// One label of a label file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValLabel {
    /// What it matches: a file name without extension (Kaggle, devkit) or a path relative
    /// to the val folder (plain).
    pub key: String,
    /// Class name (a wnid for ImageNet).
    pub class: String,
    /// Line number in the label file.
    pub line: usize,
}

/// A label file read: its kind, the file actually read, and its labels.
#[derive(Clone, Debug)]
pub struct ValLabels {
    /// The kind, told by content.
    pub kind: LabelFileKind,
    /// The label file (inside the folder when a folder was given).
    pub file: PathBuf,
    /// Labels in file order.
    pub labels: Vec<ValLabel>,
}

fn layout(msg: String) -> IngestError {
    IngestError::Layout(msg)
}

/// Read a label file (or the devkit's `data/` folder, or a folder holding
/// `LOC_val_solution.csv`), telling its kind by content.
pub fn read_val_labels(path: &Path) -> Result<ValLabels, IngestError> {
    let file = if path.is_dir() {
        [DEVKIT_GROUND_TRUTH, KAGGLE_SOLUTION]
            .iter()
            .map(|n| path.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                layout(format!(
                    "{}: a folder without {DEVKIT_GROUND_TRUTH} (the devkit's data/ folder) \
                     or {KAGGLE_SOLUTION}",
                    path.display()
                ))
            })?
    } else {
        path.to_path_buf()
    };
    let bytes = super::inputs::read_regular_file(&file)
        .map_err(|e| layout(format!("{}: {e}", file.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| layout(format!("{}: not UTF-8 text", file.display())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let at = |n: usize| format!("{}:{n}", file.display());
    let lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let first = lines.clone().next().map(|(_, l)| l.trim()).unwrap_or("");
    let mut labels = Vec::new();
    let kind = if first
        .replace(' ', "")
        .starts_with("ImageId,PredictionString")
    {
        for (n, l) in lines.skip(1) {
            let (id, pred) = l.split_once(',').ok_or_else(|| {
                layout(format!(
                    "{}: expected `ImageId,PredictionString`, got {l:?}",
                    at(n)
                ))
            })?;
            let class = pred
                .split_whitespace()
                .next()
                .ok_or_else(|| layout(format!("{}: empty PredictionString for {id:?}", at(n))))?;
            labels.push(ValLabel {
                key: id.trim().to_string(),
                class: class.to_string(),
                line: n,
            });
        }
        LabelFileKind::Kaggle
    } else if !first.is_empty() && first.bytes().all(|b| b.is_ascii_digit()) {
        let meta = file.with_file_name("meta.mat");
        let synsets = read_meta(&meta, &file)?;
        for (k, (n, l)) in lines.enumerate() {
            let l = l.trim();
            let id: u32 = l.parse().map_err(|_| {
                layout(format!(
                    "{}: {l:?} is not an ILSVRC2012_ID (the devkit's ground truth holds one \
                     integer per line)",
                    at(n)
                ))
            })?;
            let wnid = synsets.get(&id).ok_or_else(|| {
                layout(format!(
                    "{}: ILSVRC2012_ID {id} is not in {}",
                    at(n),
                    meta.display()
                ))
            })?;
            labels.push(ValLabel {
                key: format!("ILSVRC2012_val_{:08}", k + 1),
                class: wnid.clone(),
                line: n,
            });
        }
        LabelFileKind::Devkit
    } else {
        for (n, l) in lines {
            if l.starts_with('#') {
                continue;
            }
            let (p, class) = l.rsplit_once('\t').ok_or_else(|| {
                layout(format!(
                    "{}: expected `file<TAB>class` (or Kaggle's LOC_val_solution.csv, or \
                     the devkit's {DEVKIT_GROUND_TRUTH}), got {l:?}",
                    at(n)
                ))
            })?;
            let (p, class) = (p.trim(), class.trim());
            if p.is_empty() || class.is_empty() {
                return Err(layout(format!("{}: empty file or class", at(n))));
            }
            labels.push(ValLabel {
                key: normalise(p),
                class: class.to_string(),
                line: n,
            });
        }
        LabelFileKind::Plain
    };
    if labels.is_empty() {
        return Err(layout(format!("{}: no labels in it", file.display())));
    }
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    for l in &labels {
        if let Some(prev) = first_line.insert(l.key.as_str(), l.line) {
            return Err(layout(format!(
                "{}: {:?} is labelled twice (lines {prev} and {}); label each file once",
                at(l.line),
                l.key,
                l.line
            )));
        }
    }
    Ok(ValLabels { kind, file, labels })
}

/// `meta.mat`'s ILSVRC2012_ID -> wnid.
fn read_meta(meta: &Path, gt: &Path) -> Result<HashMap<u32, String>, IngestError> {
    if !meta.is_file() {
        return Err(layout(format!(
            "{}: a devkit ground-truth file (ILSVRC2012_IDs) needs the devkit's meta.mat \
             beside it to map IDs to wnids, and {} does not exist; pass the devkit's data/ \
             folder (ILSVRC2012_devkit_t12/data) as --val-labels",
            gt.display(),
            meta.display()
        )));
    }
    let bytes = super::inputs::read_regular_file(meta)
        .map_err(|e| layout(format!("{}: {e}", meta.display())))?;
    let synsets = super::matv5::read_synsets(&bytes)
        .map_err(|e| layout(format!("{}: {e}", meta.display())))?;
    Ok(synsets.into_iter().collect())
}

fn normalise(p: &str) -> String {
    let p = p.replace('\\', "/");
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// How two class lists differ, or `None` when they are equal: the counts, and the first
/// names of each that the other lacks (or the first position where they differ in order).
pub fn class_mismatch(
    want_what: &str,
    want: &[String],
    got_what: &str,
    got: &[String],
) -> Option<String> {
    if want == got {
        return None;
    }
    let a: BTreeSet<&String> = want.iter().collect();
    let b: BTreeSet<&String> = got.iter().collect();
    let first = |xs: &[&String]| {
        let n = xs.len();
        let mut s: Vec<String> = xs.iter().take(3).map(|x| format!("{x:?}")).collect();
        if n > 3 {
            s.push(format!("... ({n} in all)"));
        }
        s.join(", ")
    };
    let only_got: Vec<&String> = got.iter().filter(|c| !a.contains(c)).collect();
    let only_want: Vec<&String> = want.iter().filter(|c| !b.contains(c)).collect();
    let mut parts = vec![format!(
        "{want_what} has {} classes, {got_what} {}",
        want.len(),
        got.len()
    )];
    if !only_got.is_empty() {
        parts.push(format!("only in {got_what}: {}", first(&only_got)));
    }
    if !only_want.is_empty() {
        parts.push(format!("only in {want_what}: {}", first(&only_want)));
    }
    if only_got.is_empty() && only_want.is_empty() {
        let i = want.iter().zip(got).position(|(x, y)| x != y).unwrap_or(0);
        parts.push(format!(
            "same names in another order: class {i} is {:?} in {want_what} but {:?} in \
             {got_what}",
            want[i], got[i]
        ));
    }
    Some(parts.join("; "))
}

/// Files of `split_dir` directly inside it (not hidden), and its class folders: the flat
/// layout is files and no folders.
fn flat_files(split_dir: &Path) -> Result<(usize, usize), IngestError> {
    let rd = std::fs::read_dir(split_dir).map_err(|e| IngestError::io(split_dir, e))?;
    let (mut files, mut dirs) = (0, 0);
    for e in rd {
        let e = e.map_err(|e| IngestError::io(split_dir, e))?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if e.path().is_dir() {
            dirs += 1;
        } else {
            files += 1;
        }
    }
    Ok((files, dirs))
}

/// Refuse `ROOT/<split>` when it holds image files but no class folders (ImageNet's flat
/// val layout), which an ImageFolder walk would read as an empty split.
pub fn refuse_flat_split(root: &Path, split: &str) -> Result<(), IngestError> {
    let dir = root.join(split);
    if !dir.is_dir() {
        return Ok(());
    }
    let (files, dirs) = flat_files(&dir)?;
    if files == 0 || dirs > 0 {
        return Ok(());
    }
    Err(layout(if split == "val" {
        format!(
            "{}: {files} files and no class folders: this is the flat layout of ImageNet's \
             validation images (ILSVRC2012_img_val.tar, Kaggle's ILSVRC/Data/CLS-LOC/val), \
             which has no labels of its own. Give them with --val-labels: Kaggle's \
             LOC_val_solution.csv, the devkit's data/ folder (ILSVRC2012_validation_ground_\
             truth.txt with meta.mat), or a file of `file<TAB>class` lines; or move each \
             image into val/<class>/",
            dir.display()
        )
    } else {
        format!(
            "{}: {files} files and no class folders; an ImageFolder split needs \
             {split}/<class>/<image> (or give the labels with --list)",
            dir.display()
        )
    }))
}

/// Read `ROOT` for `shard --input`: `train/` and `val/` as ImageFolder splits, a flat
/// split refused ([`refuse_flat_split`]); with `val_labels`, `val/` is read flat with
/// those labels ([`scan_with_val_labels`]). Also returns notes for the user (one line each).
pub fn scan_input(
    root: &Path,
    val_labels: Option<&Path>,
) -> Result<(Vec<SplitInput>, Vec<String>), IngestError> {
    match val_labels {
        Some(labels) => scan_with_val_labels(root, labels),
        None => {
            for split in ["train", "val"] {
                refuse_flat_split(root, split)?;
            }
            Ok((scan_root(root)?, Vec::new()))
        }
    }
}

/// `train/` as an ImageFolder split, and `val/` (flat, or any tree) labelled by a label
/// file, on train's class list. Files of `val/` without a label are skipped and listed;
/// labels of files that are not there are allowed (a val subset) and counted in the
/// returned notes.
pub fn scan_with_val_labels(
    root: &Path,
    labels_path: &Path,
) -> Result<(Vec<SplitInput>, Vec<String>), IngestError> {
    let train_dir = root.join("train");
    if !train_dir.is_dir() {
        return Err(layout(format!(
            "{}: --val-labels needs the training split {} for its class list",
            root.display(),
            train_dir.display()
        )));
    }
    refuse_flat_split(root, "train")?;
    let classes = class_folders(&train_dir)?;
    if classes.is_empty() {
        return Err(layout(format!("{}: no class folders", train_dir.display())));
    }
    let train = scan_image_folder(root, "train", &classes)?;
    let val_dir = root.join("val");
    if !val_dir.is_dir() {
        return Err(layout(format!(
            "{}: no val/ folder for --val-labels",
            root.display()
        )));
    }
    let (files, dirs) = flat_files(&val_dir)?;
    if files == 0 && dirs > 0 {
        return Err(layout(format!(
            "{}: already in class folders and no files at its top; drop --val-labels (the \
             folders are the labels)",
            val_dir.display()
        )));
    }
    let labels = read_val_labels(labels_path)?;
    let (val, notes) = label_val(root, &val_dir, &labels, &classes)?;
    Ok((vec![train, val], notes))
}

fn label_val(
    root: &Path,
    val_dir: &Path,
    labels: &ValLabels,
    classes: &[String],
) -> Result<(SplitInput, Vec<String>), IngestError> {
    let by_key: HashMap<&str, &ValLabel> =
        labels.labels.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut files = Vec::new();
    walk(val_dir, 0, &mut files)?;
    let mut matched: Vec<(&ValLabel, PathBuf, String)> = Vec::new();
    let mut skipped = Vec::new();
    for path in files {
        let rel = path
            .strip_prefix(val_dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .replace('\\', "/");
        let key = match labels.kind {
            LabelFileKind::Plain => rel.clone(),
            _ => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let display = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        match by_key.get(key.as_str()) {
            Some(l) => matched.push((l, path, display)),
            None => skipped.push(SkippedFile {
                path: display,
                reason: format!("no label in {}: skipped", labels.file.display()),
            }),
        }
    }
    if matched.is_empty() {
        let example = labels.labels[0].key.clone();
        return Err(layout(format!(
            "{}: none of its {} files has a label in {} ({}; its first label is for {example:?})",
            val_dir.display(),
            skipped.len(),
            labels.file.display(),
            labels.kind
        )));
    }
    // Every label used must be a training class, by name.
    let index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let mut unknown: Vec<&ValLabel> = Vec::new();
    let mut seen = BTreeSet::new();
    for (l, _, _) in &matched {
        if !index.contains_key(l.class.as_str()) && seen.insert(l.class.as_str()) {
            unknown.push(l);
        }
    }
    if !unknown.is_empty() {
        let names: Vec<String> = unknown
            .iter()
            .take(3)
            .map(|l| format!("{:?} (line {})", l.class, l.line))
            .collect();
        let hint = if unknown
            .iter()
            .all(|l| l.class.bytes().all(|b| b.is_ascii_digit()))
        {
            " Integer labels are not class names: use the wnids (Kaggle's \
             LOC_val_solution.csv, or the devkit's ground truth with its meta.mat)."
        } else {
            ""
        };
        return Err(layout(format!(
            "{}: {} classes are not among the {} class folders of {}: {}{}; train's first \
             classes are {}.{hint}",
            labels.file.display(),
            unknown.len(),
            classes.len(),
            root.join("train").display(),
            names.join(", "),
            if unknown.len() > 3 { ", ..." } else { "" },
            classes
                .iter()
                .take(3)
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut notes = vec![format!(
        "val labels: {} ({}), {} of {} files of {} labelled, on train's {} classes",
        labels.file.display(),
        labels.kind,
        matched.len(),
        matched.len() + skipped.len(),
        val_dir.display(),
        classes.len()
    )];
    let missing = labels.labels.len() - matched.len();
    if missing > 0 {
        notes.push(format!(
            "{}: {missing} of its {} labels name files that are not in {} (a val subset?)",
            labels.file.display(),
            labels.labels.len(),
            val_dir.display()
        ));
    }
    let mut items: Vec<InputItem> = matched
        .into_iter()
        .map(|(l, path, display)| InputItem {
            path,
            display,
            label: index[l.class.as_str()],
        })
        .collect();
    items.sort_by(|a, b| (a.label, &a.display).cmp(&(b.label, &b.display)));
    let split = SplitInput {
        name: "val".into(),
        classes: classes.to_vec(),
        items,
        skipped,
    };
    Ok((split, notes))
}

/// Files under `dir` (not hidden), sorted, at most 8 folders deep.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), IngestError> {
    if depth > 8 {
        return Ok(());
    }
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| IngestError::io(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| IngestError::io(dir, e))?;
    v.sort_by_key(|e| e.file_name());
    for e in v {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            walk(&p, depth + 1, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Put a list-file split on the training split's class list (`shard --list FILE --split
/// val` when `OUT/train` exists). Labels that are all class names of train map by name;
/// otherwise integer labels are ids into train's sorted class list (torchvision's
/// ImageFolder ids). A name train lacks is refused, naming the first ones.
pub fn onto_train_classes(
    split: SplitInput,
    train: &[String],
    list: &Path,
) -> Result<(SplitInput, &'static str), IngestError> {
    let index: HashMap<&str, u32> = train
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let used: BTreeSet<u32> = split.items.iter().map(|i| i.label).collect();
    let used_names: Vec<&String> = used.iter().map(|&l| &split.classes[l as usize]).collect();
    let by_name = used_names.iter().all(|c| index.contains_key(c.as_str()));
    let numeric = split
        .classes
        .iter()
        .enumerate()
        .all(|(i, c)| *c == i.to_string());
    let (map, how): (Vec<Option<u32>>, &str) = if by_name {
        let m = split
            .classes
            .iter()
            .map(|c| index.get(c.as_str()).copied())
            .collect();
        (m, "by class name")
    } else if numeric {
        let m = (0..split.classes.len())
            .map(|i| (i < train.len()).then_some(i as u32))
            .collect();
        (m, "integer labels as ids into train's sorted class list")
    } else {
        let unknown: Vec<String> = used_names
            .iter()
            .filter(|c| !index.contains_key(c.as_str()))
            .take(3)
            .map(|c| format!("{c:?}"))
            .collect();
        return Err(layout(format!(
            "{}: classes not among the training split's {} classes: {}; train's first \
             classes are {}",
            list.display(),
            train.len(),
            unknown.join(", "),
            train
                .iter()
                .take(3)
                .map(|c| format!("{c:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let mut items = Vec::with_capacity(split.items.len());
    for it in split.items {
        let label = map[it.label as usize].ok_or_else(|| {
            layout(format!(
                "{}: {}: label {} but the training split has {} classes (ids 0..{})",
                list.display(),
                it.display,
                it.label,
                train.len(),
                train.len().saturating_sub(1)
            ))
        })?;
        items.push(InputItem { label, ..it });
    }
    Ok((
        SplitInput {
            name: split.name,
            classes: train.to_vec(),
            items,
            skipped: split.skipped,
        },
        how,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WNIDS: [&str; 3] = ["n01440764", "n01443537", "n01484850"];

    /// train/<wnid>/t.JPEG for three wnids, and a flat val/ of 6 files, file k of class
    /// WNIDS[k % 3] in reverse order (so label ids are not file order).
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for w in WNIDS {
            let d = dir.path().join("train").join(w);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("t.JPEG"), b"x").unwrap();
        }
        let v = dir.path().join("val");
        std::fs::create_dir_all(&v).unwrap();
        for k in 1..=6 {
            std::fs::write(v.join(format!("ILSVRC2012_val_{k:08}.JPEG")), b"x").unwrap();
        }
        dir
    }

    fn class_of(k: usize) -> &'static str {
        WNIDS[2 - (k - 1) % 3]
    }

    fn val_labels_of(splits: &[SplitInput]) -> Vec<(String, String)> {
        let v = &splits[1];
        let mut out: Vec<(String, String)> = v
            .items
            .iter()
            .map(|i| (i.display.clone(), v.classes[i.label as usize].clone()))
            .collect();
        out.sort();
        out
    }

    fn want() -> Vec<(String, String)> {
        (1..=6)
            .map(|k| {
                (
                    format!("val/ILSVRC2012_val_{k:08}.JPEG"),
                    class_of(k).to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn flat_val_is_refused_with_the_fix() {
        let dir = tree();
        let e = scan_input(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("6 files and no class folders"), "{e}");
        assert!(
            e.contains("flat layout of ImageNet's validation images"),
            "{e}"
        );
        assert!(e.contains("--val-labels"), "{e}");
        // A val/ in class folders is read as before.
        std::fs::remove_dir_all(dir.path().join("val")).unwrap();
        std::fs::create_dir_all(dir.path().join("val").join(WNIDS[1])).unwrap();
        std::fs::write(dir.path().join("val").join(WNIDS[1]).join("a.JPEG"), b"x").unwrap();
        let (s, _) = scan_input(dir.path(), None).unwrap();
        assert_eq!(s[1].items.len(), 1);
        assert_eq!(s[1].items[0].label, 1);
    }

    #[test]
    fn kaggle_csv_by_content() {
        let dir = tree();
        let mut csv = String::from("ImageId,PredictionString\r\n");
        for k in (1..=6).rev() {
            let c = class_of(k);
            csv.push_str(&format!(
                "ILSVRC2012_val_{k:08},{c} 1 2 30 40 {c} 5 6 7 8\r\n"
            ));
        }
        let p = dir.path().join("whatever.csv");
        std::fs::write(&p, csv).unwrap();
        let (splits, notes) = scan_input(dir.path(), Some(&p)).unwrap();
        assert_eq!(read_val_labels(&p).unwrap().kind, LabelFileKind::Kaggle);
        assert_eq!(val_labels_of(&splits), want());
        assert_eq!(splits[1].classes, WNIDS);
        assert!(notes[0].contains("6 of 6 files"), "{notes:?}");
    }

    #[test]
    fn devkit_ground_truth_goes_through_meta_mat_order() {
        let dir = tree();
        let data = dir.path().join("devkit/data");
        std::fs::create_dir_all(&data).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/val_labels");
        // meta.mat: ID 2 = n01440764, 3 = n01484850, 4 = n01443537 (not sorted order).
        let id = |w: &str| match w {
            "n01440764" => 2,
            "n01484850" => 3,
            "n01443537" => 4,
            _ => unreachable!(),
        };
        let gt: String = (1..=6).map(|k| format!("{}\n", id(class_of(k)))).collect();
        std::fs::write(data.join(DEVKIT_GROUND_TRUTH), gt).unwrap();
        // Without meta.mat beside it: refused, naming the fix.
        let e = scan_input(dir.path(), Some(&data)).unwrap_err().to_string();
        assert!(e.contains("needs the devkit's meta.mat"), "{e}");
        for meta in ["meta.mat", "meta_uncompressed.mat"] {
            std::fs::copy(fixture.join(meta), data.join("meta.mat")).unwrap();
            // The folder or the file itself.
            for arg in [data.clone(), data.join(DEVKIT_GROUND_TRUTH)] {
                let (splits, _) = scan_input(dir.path(), Some(&arg)).unwrap();
                assert_eq!(read_val_labels(&arg).unwrap().kind, LabelFileKind::Devkit);
                assert_eq!(val_labels_of(&splits), want(), "{meta}");
            }
        }
        // ID 1 is n01751748, which train/ lacks: named with its line.
        std::fs::write(data.join(DEVKIT_GROUND_TRUTH), "2\n1\n3\n").unwrap();
        let e = scan_input(dir.path(), Some(&data)).unwrap_err().to_string();
        assert!(e.contains("\"n01751748\" (line 2)"), "{e}");
        assert!(e.contains("not among the 3 class folders"), "{e}");
        std::fs::write(data.join(DEVKIT_GROUND_TRUTH), "2\n99\n").unwrap();
        let e = scan_input(dir.path(), Some(&data)).unwrap_err().to_string();
        assert!(e.contains(":2: ILSVRC2012_ID 99 is not in"), "{e}");
    }

    #[test]
    fn plain_lines_subsets_and_mismatches() {
        let dir = tree();
        let p = dir.path().join("val.tsv");
        // Labels for 2 of the 6 files, 1 class: the other files are skipped and listed.
        std::fs::write(
            &p,
            "# file\tclass\nILSVRC2012_val_00000001.JPEG\tn01443537\n./ILSVRC2012_val_00000002.JPEG\tn01443537\nnot_there.JPEG\tn01443537\n",
        )
        .unwrap();
        let (splits, notes) = scan_input(dir.path(), Some(&p)).unwrap();
        assert_eq!(read_val_labels(&p).unwrap().kind, LabelFileKind::Plain);
        let v = &splits[1];
        assert_eq!(v.classes, WNIDS, "val takes train's class list");
        assert_eq!(v.items.len(), 2);
        assert!(v.items.iter().all(|i| i.label == 1));
        assert_eq!(v.skipped.len(), 4);
        assert!(v.skipped[0].reason.contains("no label in"));
        assert!(
            notes[1].contains("1 of its 3 labels name files that are not in"),
            "{notes:?}"
        );
        // Integer labels are not class names: refused with the hint.
        std::fs::write(&p, "ILSVRC2012_val_00000001.JPEG\t7\n").unwrap();
        let e = scan_input(dir.path(), Some(&p)).unwrap_err().to_string();
        assert!(e.contains("\"7\" (line 1)"), "{e}");
        assert!(e.contains("Integer labels are not class names"), "{e}");
        // A file labelled twice.
        std::fs::write(&p, "a.JPEG\tx\n./a.JPEG\ty\n").unwrap();
        let e = read_val_labels(&p).unwrap_err().to_string();
        assert!(e.contains("labelled twice (lines 1 and 2)"), "{e}");
        // No file labelled at all.
        std::fs::write(&p, "zzz.JPEG\tn01443537\n").unwrap();
        let e = scan_input(dir.path(), Some(&p)).unwrap_err().to_string();
        assert!(e.contains("none of its 6 files has a label"), "{e}");
    }

    #[test]
    fn class_mismatch_names_the_first_differences() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            class_mismatch("a", &s(&["x", "y"]), "b", &s(&["x", "y"])),
            None
        );
        let d = class_mismatch("train", &s(&["x", "y", "z"]), "val", &s(&["x", "1", "2"])).unwrap();
        assert_eq!(
            d,
            "train has 3 classes, val 3; only in val: \"1\", \"2\"; only in train: \"y\", \"z\""
        );
        let d = class_mismatch("train", &s(&["x", "y"]), "val", &s(&["y", "x"])).unwrap();
        assert!(
            d.contains("class 0 is \"x\" in train but \"y\" in val"),
            "{d}"
        );
    }

    #[test]
    fn list_split_takes_train_classes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.tsv");
        let train: Vec<String> = ["cat", "dog", "eel"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Names: a subset of train's classes keeps train's ids.
        std::fs::write(&p, "a.jpg\teel\nb.jpg\tcat\n").unwrap();
        let s = super::super::inputs::read_list(&p, "val").unwrap();
        let (s, how) = onto_train_classes(s, &train, &p).unwrap();
        assert_eq!(how, "by class name");
        assert_eq!(s.classes, train);
        let mut l: Vec<(String, u32)> = s
            .items
            .iter()
            .map(|i| (i.display.clone(), i.label))
            .collect();
        l.sort();
        assert_eq!(l, vec![("a.jpg".into(), 2), ("b.jpg".into(), 0)]);
        // Integers: ids into train's list (not a class list of its own).
        std::fs::write(&p, "a.jpg\t2\nb.jpg\t0\n").unwrap();
        let s = super::super::inputs::read_list(&p, "val").unwrap();
        let (s, _) = onto_train_classes(s, &train, &p).unwrap();
        assert_eq!(s.classes, train);
        assert_eq!(
            s.items.iter().map(|i| i.label).collect::<Vec<_>>(),
            vec![2, 0]
        );
        std::fs::write(&p, "a.jpg\t3\n").unwrap();
        let s = super::super::inputs::read_list(&p, "val").unwrap();
        let e = onto_train_classes(s, &train, &p).unwrap_err().to_string();
        assert!(
            e.contains("label 3 but the training split has 3 classes"),
            "{e}"
        );
        std::fs::write(&p, "a.jpg\tcow\n").unwrap();
        let s = super::super::inputs::read_list(&p, "val").unwrap();
        let e = onto_train_classes(s, &train, &p).unwrap_err().to_string();
        assert!(e.contains("\"cow\""), "{e}");
    }
}
