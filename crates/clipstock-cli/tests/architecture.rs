//! docs/ARCHITECTURE.md's "Dependencies" paragraph, checked against the crates' manifests: the
//! arrows between the workspace crates, which crates stay free of burn and of the model, and
//! that only the binary uses `anyhow`. A new dependency either matches the document or fails
//! here, so the document cannot drift from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod common;
use common::root;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn crate_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("clipstock-"))
        .collect();
    names.sort();
    names
}

/// The `[dependencies]` names of `crates/<name>/Cargo.toml` (dev-dependencies do not count).
fn dependencies(name: &str) -> BTreeSet<String> {
    let path = root().join("crates").join(name).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).expect("manifest");
    let manifest: toml::Table = text.parse().expect("valid TOML");
    manifest
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

/// The manifests' graph between workspace crates, with the `clipstock-` prefix dropped.
fn manifest_graph() -> Graph {
    crate_names()
        .iter()
        .map(|name| {
            let deps = dependencies(name)
                .iter()
                .filter_map(|d| d.strip_prefix("clipstock-").map(str::to_owned))
                .collect();
            (name["clipstock-".len()..].to_owned(), deps)
        })
        .collect()
}

/// The paragraph under "## Dependencies", as one line.
fn dependencies_paragraph(doc: &Path) -> String {
    let text = std::fs::read_to_string(doc).expect("docs/ARCHITECTURE.md");
    let start = text
        .find("## Dependencies\n")
        .expect("a Dependencies section")
        + 16;
    let body = text[start..].trim_start();
    let para = body.split("\n\n").next().expect("a paragraph");
    para.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `a, b and c` (or `{a, b}`) as names.
fn names(list: &str) -> Vec<String> {
    list.trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .flat_map(|part| part.split(" and "))
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect()
}

/// The graph the paragraph's first sentence draws: `a → b → {x, y}; c → {z}; … ; cli also
/// uses p and q directly …`.
fn documented_graph(para: &str) -> Graph {
    let first = para.split(". ").next().expect("a sentence");
    let mut graph = Graph::new();
    for clause in first.split("; ") {
        if let Some(rest) = clause.strip_prefix("cli also uses ") {
            let list = rest.split(" directly").next().expect("a list");
            graph.entry("cli".into()).or_default().extend(names(list));
            continue;
        }
        let chain: Vec<Vec<String>> = clause.split(" → ").map(names).collect();
        assert!(chain.len() >= 2, "not an arrow clause: `{clause}`");
        for pair in chain.windows(2) {
            for from in &pair[0] {
                graph
                    .entry(from.clone())
                    .or_default()
                    .extend(pair[1].iter().cloned());
            }
        }
    }
    graph
}

#[test]
fn the_documented_crate_graph_is_the_manifests_graph() {
    let para = dependencies_paragraph(&root().join("docs/ARCHITECTURE.md"));
    let documented = documented_graph(&para);
    let mut actual = manifest_graph();
    // Crates with no workspace dependency appear in the document only as targets.
    actual.retain(|_, deps| !deps.is_empty());
    assert_eq!(
        documented, actual,
        "docs/ARCHITECTURE.md's Dependencies paragraph and the Cargo.toml files disagree"
    );
}

#[test]
fn the_documented_burn_free_crates_use_neither_burn_nor_model() {
    let para = dependencies_paragraph(&root().join("docs/ARCHITECTURE.md"));
    let sentence = para
        .split(". ")
        .find(|s| s.contains("depend on neither burn nor model"))
        .expect("the burn-free sentence");
    let free = names(sentence.split(" depend on").next().expect("a list"));
    assert!(free.len() >= 5, "{free:?}");
    for name in free {
        let deps = dependencies(&format!("clipstock-{name}"));
        let offending: Vec<&String> = deps
            .iter()
            .filter(|d| d.starts_with("burn") || *d == "clipstock-model")
            .collect();
        assert!(offending.is_empty(), "{name} depends on {offending:?}");
    }
}

#[test]
fn only_the_binary_uses_anyhow() {
    for name in crate_names() {
        let uses = dependencies(&name).contains("anyhow");
        assert_eq!(uses, name == "clipstock-cli", "{name}");
    }
}

/// Every `.rs` file under `crates/*/src`, with its text.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                out.push((p.display().to_string(), text));
            }
        }
    }
    let mut out = Vec::new();
    for name in crate_names() {
        walk(&root().join("crates").join(name).join("src"), &mut out);
    }
    out
}

#[test]
fn the_unsafe_sites_are_the_documented_four() {
    // The workspace denies `unsafe_code`; each site allows it by name.
    let sources = sources();
    let sites: Vec<String> = sources
        .iter()
        .flat_map(|(path, text)| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| l.trim() == "#[allow(unsafe_code)]")
                .map(move |(i, _)| format!("{path}:{}", i + 1))
        })
        .collect();
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("doc");
    assert!(
        doc.contains("four `unsafe` sites"),
        "the document's count changed"
    );
    assert_eq!(sites.len(), 4, "{sites:#?}");
}

#[test]
fn splitmix64_is_written_once() {
    // The finalizer's first multiplier marks a copy of the generator (or of its mixer).
    let sources = sources();
    let copies: Vec<&String> = sources
        .iter()
        .filter(|(_, text)| {
            let t = text.to_ascii_lowercase().replace('_', "");
            t.contains("0xbf58476d1ce4e5b9")
        })
        .map(|(path, _)| path)
        .collect();
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert!(
        copies[0].ends_with("clipstock-tensors/src/rng.rs"),
        "{copies:?}"
    );
}
