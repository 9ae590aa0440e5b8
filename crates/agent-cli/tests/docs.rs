//! The documents say what the code and the tests are: every test a document names (a backticked
//! `snake_case_name` of four words or more, or a `module::path` to one) exists in the sources, and every
//! file it names under `scripts/`, `examples/`, `crates/` or `it/` exists. A renamed or removed test
//! cannot leave a document claiming it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if p.is_dir() {
            files(&p, ext, out);
        } else if name.ends_with(ext) {
            out.push(p);
        }
    }
}

/// The documents: the README, the reliability and benchmark reports, the crates' index, `docs/`.
fn documents() -> Vec<PathBuf> {
    let root = root();
    let mut docs: Vec<PathBuf> = ["README.md", "RELIABILITY.md", "BENCHMARKS.md", "crates/README.md"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    files(&root.join("docs"), ".md", &mut docs);
    files(&root.join("examples"), ".md", &mut docs);
    docs
}

/// Every word of the Rust sources (identifiers and string contents alike).
fn source_words() -> BTreeSet<String> {
    let root = root();
    let mut sources = Vec::new();
    for dir in ["crates", "benches", "examples", "fuzz"] {
        files(&root.join(dir), ".rs", &mut sources);
    }
    let mut words = BTreeSet::new();
    for f in sources {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for w in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if w.len() > 3 {
                words.insert(w.to_owned());
            }
        }
    }
    words
}

/// Backticked spans of `text`.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

#[test]
fn every_test_and_file_a_document_names_exists() {
    let words = source_words();
    let root = root();
    let mut missing = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap_or_default();
        let name = doc.strip_prefix(&root).unwrap_or(&doc).display().to_string();
        for span in backticked(&text) {
            let span = span.trim();
            // A test named by its path or its name: snake case of four words or more.
            let last = span
                .rsplit("::")
                .next()
                .unwrap_or(span)
                .rsplit(' ')
                .next()
                .unwrap_or_default();
            let snake = !last.is_empty()
                && last
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            // (A command line's test filter may name the start of a test's name.)
            let last = last.rsplit(' ').next().unwrap_or(last);
            let known = words.contains(last)
                || words
                    .range(last.to_owned()..)
                    .next()
                    .is_some_and(|w| w.starts_with(last));
            if snake && last.matches('_').count() >= 3 && !known {
                missing.push(format!("{name}: `{span}` names nothing in the sources"));
            }
            // A file of this workspace.
            for prefix in ["scripts/", "examples/", "crates/", "it/"] {
                if let Some(rest) = span.strip_prefix(prefix) {
                    let path: &str = rest.split([' ', ':', '#']).next().unwrap_or_default();
                    if path.is_empty() || path.contains(['*', '{', '<']) {
                        continue;
                    }
                    let candidates = match prefix {
                        "it/" => vec![root.join("crates/agent-cli/tests/it").join(path)],
                        _ => vec![root.join(prefix).join(path)],
                    };
                    if !candidates.iter().any(|c| c.exists()) {
                        missing.push(format!("{name}: `{span}` is not a file of the workspace"));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "documents name what does not exist:\n{}",
        missing.join("\n")
    );
}
