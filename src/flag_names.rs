//! Test: every `--flag` that a string literal of the workspace names (error messages,
//! hints, log lines) is a flag of some `deit-pipe` command, read from clap's command
//! definition, so no message tells a user to pass a flag that does not exist.

use clap::CommandFactory;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Flags that literals name on purpose and that are not ours: cargo's (build hints) and
/// Slurm's `srun --mpi=pmix` (launch hints).
const NOT_OURS: [&str; 4] = ["--features", "--release", "--no-default-features", "--mpi"];

/// Literals known to name a flag that does not exist, in files this change may not edit.
/// Each entry is a bug to fix where the literal lives (then the entry goes).
const KNOWN_BAD: [(&str, &str); 0] = [];

fn all_flags(cmd: &clap::Command, out: &mut BTreeSet<String>) {
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            out.insert(format!("--{l}"));
        }
        for al in a.get_all_aliases().unwrap_or_default() {
            out.insert(format!("--{al}"));
        }
    }
    for s in cmd.get_subcommands() {
        all_flags(s, out);
    }
}

/// The text inside the string literals of Rust source (comments skipped).
fn literals(src: &str) -> Vec<String> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '\'' {
            // A char literal ('"', '\'') or a lifetime: skip what could hide a quote.
            if next == Some('\\') {
                i += 4;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !b[i - 1].is_alphanumeric() && b[i - 1] != '_')
        {
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == '#' {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                i += 1;
                continue;
            }
            j += 1;
            let start = j;
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let rest: String = b[start..].iter().collect();
            let end = rest.find(&close).unwrap_or(rest.len());
            out.push(rest[..end].to_string());
            i = start + rest[..end].chars().count() + close.chars().count();
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = b.get(i) {
                    s.push(ch);
                }
                i += 1;
            }
            out.push(s);
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// `--name` tokens in a text (a `--` that starts a word, followed by a letter).
fn flag_tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i + 2 < b.len() {
        let starts_word = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-');
        if starts_word && b[i] == b'-' && b[i + 1] == b'-' && b[i + 2].is_ascii_lowercase() {
            let mut j = i + 2;
            while j < b.len()
                && (b[j].is_ascii_lowercase() || b[j].is_ascii_digit() || b[j] == b'-')
            {
                j += 1;
            }
            out.push(text[i..j].trim_end_matches('-').to_string());
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_flag_a_message_names_exists() {
    let mut flags = BTreeSet::new();
    all_flags(&crate::Cli::command(), &mut flags);
    flags.extend(["--help", "--version"].map(String::from));
    assert!(flags.contains("--distillation-type") && flags.contains("--finetune"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for d in [
        "src",
        "formats/src",
        "pipeline/src",
        "cache/src",
        "trainer/src",
    ] {
        rust_files(&root.join(d), &mut files);
    }
    assert!(files.len() > 20);
    let mut unknown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(root)
            .unwrap_or(f)
            .to_string_lossy()
            .into_owned();
        if rel == "src/flag_names.rs" {
            continue;
        }
        let src = std::fs::read_to_string(f).unwrap();
        // Unit tests (at the end of a file) feed made-up flags on purpose.
        let src = src.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        for lit in literals(src) {
            for t in flag_tokens(&lit) {
                let known_bad = KNOWN_BAD
                    .iter()
                    .any(|(file, flag)| rel == *file && t == *flag);
                if !flags.contains(&t) && !NOT_OURS.contains(&t.as_str()) && !known_bad {
                    unknown.entry(t).or_default().insert(rel.clone());
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "messages name flags that do not exist: {unknown:?}"
    );
}

#[test]
fn the_scanner_finds_flags_in_literals_only() {
    let src = "// \"--not-this\"\nlet a = \"use --partial here\"; let c = '\"'; let b = r#\"x --raw-one\"#;";
    let lits = literals(src);
    let toks: Vec<String> = lits.iter().flat_map(|l| flag_tokens(l)).collect();
    assert_eq!(toks, vec!["--partial", "--raw-one"]);
}
