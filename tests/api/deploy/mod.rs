//! The deploy files (`deploy/`, `.dockerignore`, `LICENSE`), read as their
//! tools read them: this machine has no Docker engine, no Kubernetes and no
//! systemd as init, so the files are parsed (YAML, the Dockerfile's
//! instructions, the unit's lines) and the fields that keep a deploy
//! correct are checked: tokens on, from a secret file; a stop that lets the
//! drain finish; probes on the right endpoints; no root. The health-check
//! commands, plain bash, are run against a real instance. The nginx config
//! runs in a real nginx in `proxy.rs`. The alert rules and the dashboard
//! are checked by promtool and by a real Prometheus scraping a real herald
//! (`alerts.rs`, `prometheus.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod alerts;
mod container;
mod kubernetes;
mod prometheus;
mod promql;
mod systemd;

/// A file of the repository, by its path from the root.
fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_path(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> serde_norway::Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// A duration as herald's flags take it (`10s`, `500ms`).
fn duration(s: &str) -> Duration {
    herald::config::parse_duration(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// HERALD_DRAIN when a file does not set it (`herald --help`).
const DEFAULT_DRAIN: &str = "5s";

/// The longest a stop takes once SIGTERM arrives: the drain window plus
/// herald's own margins (`app.rs`: the drain plus twice `STOP_GRACE`). Every
/// deploy file gives it more than that before SIGKILL.
fn longest_stop(drain: Duration) -> Duration {
    drain + 2 * herald::app::STOP_GRACE
}

/// Variables docs/ARCHITECTURE.md fixes for settings that herald does not read yet
/// (tokens, retention): deploy files set them ahead, and herald ignores
/// unknown variables until then.
const PLANNED_VARIABLES: &[&str] = &[
    "HERALD_JWT_SECRET_FILE",
    "HERALD_JWT_AUDIENCE",
    "HERALD_ALLOW_ANONYMOUS",
    "HERALD_RETENTION",
];

/// The variables `herald --help` lists (`[env: NAME=]`), plus the planned
/// ones: a misspelt name in a deploy file would be silently ignored.
fn known_variables() -> BTreeSet<String> {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    command.arg("--help");
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") || name == "DATABASE_URL" {
            command.env_remove(name);
        }
    }
    let out = command.output().expect("run herald --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| Some(rest.split_once('=')?.0.to_owned()))
        .collect();
    assert!(names.contains("HERALD_LISTEN"), "{help}");
    names.extend(PLANNED_VARIABLES.iter().map(|n| (*n).to_owned()));
    names
}

/// Fails on any `HERALD_…` name that herald does not know.
fn assert_known_variables<'a>(file: &str, names: impl IntoIterator<Item = &'a str>) {
    let known = known_variables();
    for name in names {
        assert!(
            !name.starts_with("HERALD_") || known.contains(name),
            "{file} sets {name}, which herald does not know"
        );
    }
}

#[test]
fn license_file_names_the_license_of_the_manifests() {
    let license = read("LICENSE");
    for manifest in ["Cargo.toml", "bench/Cargo.toml"] {
        let declared = read(manifest)
            .lines()
            .find_map(|l| l.strip_prefix("license = "))
            .map(|v| v.trim_matches('"').to_owned());
        assert_eq!(declared.as_deref(), Some("MIT"), "{manifest}");
    }
    assert_eq!(license.lines().next(), Some("MIT License"));
    assert!(license.contains("Copyright (c) 2026 herald contributors"));
    assert!(license.contains("THE SOFTWARE IS PROVIDED \"AS IS\""));
}
