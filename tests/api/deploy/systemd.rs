//! `deploy/systemd/herald.service`, read as `[Section]` and `Key=value`
//! lines (a key may repeat, as `Environment=` does).

use super::*;

const UNIT: &str = "deploy/systemd/herald.service";

struct Unit(Vec<(String, String, String)>);

impl Unit {
    fn load() -> Self {
        let mut section = String::new();
        let mut lines = Vec::new();
        for line in read(UNIT).lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {line}"));
            lines.push((section.clone(), key.to_owned(), value.to_owned()));
        }
        Self(lines)
    }

    /// Every value of `key` in `[section]`, in order.
    fn all(&self, section: &str, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The one value of `key` in `[Service]`.
    fn service(&self, key: &str) -> &str {
        match self.all("Service", key)[..] {
            [value] => value,
            ref values => panic!("{key}= set {} times: {values:?}", values.len()),
        }
    }

    /// The variables of the `Environment=` lines (`NAME=value NAME=value`).
    fn environment(&self) -> Vec<(&str, &str)> {
        self.all("Service", "Environment")
            .into_iter()
            .flat_map(str::split_whitespace)
            .map(|a| a.split_once('=').expect("NAME=value"))
            .collect()
    }
}

/// A systemd time span: `30s`, `1min 30s`, or bare seconds.
fn time_span(s: &str) -> Duration {
    match s.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => duration(&s.replace("min", "m")),
    }
}

#[test]
fn deploy_systemd_unit_restarts_on_failure_and_lets_the_drain_finish() {
    let unit = Unit::load();
    assert!(
        ["exec", "notify"].contains(&unit.service("Type")),
        "Type=exec reports a binary that cannot start"
    );
    assert!(
        unit.service("ExecStart")
            .starts_with("/usr/local/bin/herald")
    );
    assert_eq!(unit.service("Restart"), "on-failure");
    assert_eq!(unit.service("KillSignal"), "SIGTERM");
    let env = unit.environment();
    let drain = env
        .iter()
        .find(|(name, _)| *name == "HERALD_DRAIN")
        .map_or(DEFAULT_DRAIN, |(_, value)| value);
    let stop = time_span(unit.service("TimeoutStopSec"));
    assert!(stop > longest_stop(duration(drain)), "{stop:?} vs {drain}");
    assert_eq!(
        unit.service("EnvironmentFile"),
        "-/etc/herald/herald.env",
        "optional settings file"
    );
    assert_eq!(unit.all("Install", "WantedBy"), ["multi-user.target"]);
}

#[test]
fn deploy_systemd_unit_runs_with_tokens_from_a_credential_unprivileged() {
    let unit = Unit::load();
    let env = unit.environment();
    assert_known_variables(UNIT, env.iter().map(|(name, _)| *name));
    let var = |name: &str| env.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);

    // The key is a systemd credential: a root-only file on the host, a copy
    // in the service's credentials directory (%d).
    let (credential, source) = unit
        .service("LoadCredential")
        .split_once(':')
        .expect("LoadCredential=NAME:PATH");
    assert!(source.starts_with("/etc/herald/"));
    assert_eq!(
        var("HERALD_JWT_SECRET_FILE"),
        Some(format!("%d/{credential}").as_str())
    );
    assert!(var("HERALD_JWT_AUDIENCE").is_some());
    assert_eq!(var("HERALD_ALLOW_ANONYMOUS"), None);

    let dynamic = unit.all("Service", "DynamicUser") == ["yes"];
    let user = unit.all("Service", "User");
    assert!(
        dynamic || (user.len() == 1 && !["root", "0"].contains(&user[0])),
        "DynamicUser=yes or a user of its own"
    );
    assert_eq!(unit.service("ProtectSystem"), "strict");
    assert_eq!(unit.service("NoNewPrivileges"), "yes");
    assert_eq!(unit.service("CapabilityBoundingSet"), "");
}
