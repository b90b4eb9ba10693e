//! The README is a user's reference for configuration: every setting
//! `herald --help` offers is in its Configuration table, so a flag added
//! to the code cannot go undocumented.

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
