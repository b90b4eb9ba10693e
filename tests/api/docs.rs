//! The docs hold to the code. The README is a user's reference for
//! configuration: every setting `herald --help` offers is in its
//! Configuration table, so a flag added to the code cannot go
//! undocumented. The code's citations of `docs/ARCHITECTURE.md` name
//! sections the page has.

use std::collections::BTreeSet;
use std::process::Command;

/// The long flags a `--help` text offers, without `--help` and `--version`.
fn long_flags(help: &str) -> BTreeSet<String> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_owned)
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// The README's `## Configuration` section, up to the next section.
fn configuration_section(readme: &str) -> &str {
    let start = readme
        .find("\n## Configuration\n")
        .expect("the README has a Configuration section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_server_flag_is_in_the_readme_configuration_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .expect("herald --help runs");
    assert!(out.status.success());
    let flags = long_flags(&String::from_utf8_lossy(&out.stdout));
    assert!(flags.contains("--listen"), "{flags:?}");

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let table = configuration_section(&readme);
    let missing: Vec<_> = flags
        .iter()
        .filter(|flag| !table.contains(&format!("`{flag}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "flags of `herald --help` missing from the README's Configuration table: {missing:?}"
    );
}

/// The code cites the sections of `docs/ARCHITECTURE.md` by name (the page,
/// a comma, then the heading in quotes): every such citation in `src/`
/// and `tests/` names a heading the page has, so renaming a section
/// cannot leave the code pointing at nothing.
#[test]
fn every_architecture_citation_in_the_code_names_a_heading_of_the_page() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("the page");
    let headings: BTreeSet<&str> = page
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .map(|h| h.strip_suffix(" (planned)").unwrap_or(h))
        .collect();

    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    rust_files(&root.join("tests"), &mut files);
    let marker = "ARCHITECTURE.md, \"";
    let mut cited = 0;
    let mut unknown = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Comment markers and line breaks out: a citation may wrap.
        let flat: Vec<&str> = text
            .lines()
            .map(|l| {
                l.trim()
                    .trim_start_matches('/')
                    .trim_start_matches('!')
                    .trim()
            })
            .collect();
        let flat = flat.join(" ");
        for (at, _) in flat.match_indices(marker) {
            let rest = &flat[at + marker.len()..];
            let name = &rest[..rest.find('"').expect("a closing quote")];
            cited += 1;
            if !headings.contains(name) {
                unknown.push(format!("{}: {name:?}", file.display()));
            }
        }
    }
    assert!(cited >= 10, "only {cited} citations found");
    assert!(
        unknown.is_empty(),
        "citations of sections docs/ARCHITECTURE.md does not have: {unknown:?}"
    );
}

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}
