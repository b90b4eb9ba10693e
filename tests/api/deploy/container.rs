//! `deploy/Dockerfile`, `.dockerignore` and `deploy/compose.yaml`.

use std::time::Duration;

use serde_norway::Value;

use super::*;
use crate::helpers::*;

/// One Dockerfile instruction: its keyword and the rest, continuation
/// lines joined, comments dropped.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
                instructions.push(Instruction {
                    keyword: keyword.to_uppercase(),
                    args: args.split_whitespace().collect::<Vec<_>>().join(" "),
                });
                current.clear();
            }
        }
    }
    instructions
}

/// The instructions of each stage, split at `FROM`.
fn stages() -> Vec<Vec<Instruction>> {
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for instruction in dockerfile() {
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn find<'a>(stage: &'a [Instruction], keyword: &str) -> Option<&'a Instruction> {
    stage.iter().find(|i| i.keyword == keyword)
}

/// The exec-form command of the image's `HEALTHCHECK … CMD [...]`.
fn image_healthcheck() -> Vec<String> {
    let stages = stages();
    let check = find(stages.last().unwrap(), "HEALTHCHECK").expect("a HEALTHCHECK");
    let (_, argv) = check.args.split_once("CMD ").expect("HEALTHCHECK … CMD");
    serde_json::from_str(argv).expect("HEALTHCHECK CMD in exec form (a JSON array)")
}

/// The command of a compose service's healthcheck (`["CMD", …]`), with
/// compose's `$$` turned into the `$` the container's shell sees.
fn compose_healthcheck(service: &Value) -> Vec<String> {
    let test = service["healthcheck"]["test"].as_sequence().unwrap();
    assert_eq!(test[0].as_str(), Some("CMD"));
    test[1..]
        .iter()
        .map(|a| a.as_str().unwrap().replace("$$", "$"))
        .collect()
}

#[test]
fn deploy_dockerfile_caches_dependencies_and_ships_a_stripped_binary() {
    let stages = stages();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let build = &stages[0];
    let runs: Vec<usize> = build
        .iter()
        .enumerate()
        .filter(|(_, i)| i.keyword == "RUN" && i.args.contains("cargo build"))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        runs.len(),
        2,
        "a dependency build, then herald's: {build:?}"
    );
    let copies_before = |n: usize| {
        build[..n]
            .iter()
            .filter(|i| i.keyword == "COPY")
            .map(|i| i.args.as_str())
            .collect::<Vec<_>>()
    };
    // The first build sees the manifests and the lock file, not the code.
    let first = copies_before(runs[0]);
    assert!(first.iter().any(|c| c.contains("Cargo.lock")), "{first:?}");
    assert!(
        first.iter().any(|c| c.contains("bench/Cargo.toml")),
        "{first:?}"
    );
    assert!(
        !first
            .iter()
            .any(|c| c.starts_with(". ") || c.starts_with("src ")),
        "the dependency layer must not depend on the sources: {first:?}"
    );
    assert!(copies_before(runs[1]).contains(&"src src"));
    for n in runs {
        assert!(build[n].args.contains("--release --locked -p herald"));
    }
    assert!(build.iter().any(|i| i.args.contains("strip ")));
}

#[test]
fn deploy_image_runs_unprivileged_with_a_healthcheck() {
    let stages = stages();
    let runtime = stages.last().unwrap();
    let user = find(runtime, "USER").expect("USER in the runtime stage");
    let uid = user.args.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|uid| uid != 0),
        "USER must be a numeric non-root uid (Kubernetes' runAsNonRoot checks it): {uid}"
    );
    assert!(find(runtime, "HEALTHCHECK").is_some());
    assert_eq!(find(runtime, "STOPSIGNAL").unwrap().args, "SIGTERM");
    assert_eq!(find(runtime, "EXPOSE").unwrap().args, "8080");
    let env = &find(runtime, "ENV").unwrap().args;
    assert!(env.contains("HERALD_LISTEN=0.0.0.0:8080"), "{env}");
}

#[test]
fn dockerignore_keeps_build_output_and_test_artifacts_out() {
    let text = read(".dockerignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for wanted in [
        "**/target",
        "tests/artifacts",
        "**/node_modules",
        ".git",
        "deploy/secrets",
    ] {
        assert!(patterns.contains(&wanted), "{wanted} in {patterns:?}");
    }
}

/// Runs a health-check command as the container would (HERALD_LISTEN
/// pointing at `addr`); true if it exits 0.
async fn check_passes(argv: &[String], addr: &str) -> bool {
    let status = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("HERALD_LISTEN", addr)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("the health check ends within its timeout")
    .expect("run the health check");
    status.success()
}

#[tokio::test]
async fn deploy_healthchecks_pass_on_a_ready_instance_and_fail_on_a_gone_one() {
    let compose = yaml("deploy/compose.yaml");
    let checks = [
        ("image (/healthz)", image_healthcheck()),
        (
            "compose (/readyz)",
            compose_healthcheck(&compose["services"]["herald-1"]),
        ),
    ];
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    wait_for("herald to be ready", || async {
        app.get("/readyz").await.status() == 200
    })
    .await;

    for (name, argv) in &checks {
        assert!(check_passes(argv, &addr).await, "{name} check: {argv:?}");
    }
    app.stop().await;
    for (name, argv) in &checks {
        assert!(!check_passes(argv, &addr).await, "{name} check, stopped");
    }
}

#[test]
fn deploy_compose_runs_tokens_from_a_secret_behind_the_nginx_config() {
    let compose = yaml("deploy/compose.yaml");
    let services = compose["services"].as_mapping().unwrap();
    let heralds: Vec<(&str, &Value)> = services
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile"))
        .map(|(name, s)| (name.as_str().unwrap(), s))
        .collect();
    assert_eq!(heralds.len(), 2, "two herald instances");
    let nginx_conf = read("deploy/nginx/nginx.conf");

    for (name, service) in &heralds {
        let env = service["environment"].as_mapping().unwrap();
        let var = |key: &str| env.get(key).and_then(Value::as_str);
        assert_known_variables("deploy/compose.yaml", env.keys().filter_map(Value::as_str));
        // Tokens on, the key from a compose secret (a file, not a variable).
        let secret_file = var("HERALD_JWT_SECRET_FILE").expect("HERALD_JWT_SECRET_FILE");
        let secret = secret_file
            .strip_prefix("/run/secrets/")
            .expect("a compose secret is mounted under /run/secrets/");
        let used = service["secrets"].as_sequence().unwrap();
        assert!(used.iter().any(|s| s.as_str() == Some(secret)), "{name}");
        let source = compose["secrets"][secret]["file"].as_str().unwrap();
        let example = std::fs::read_to_string(repo_path("deploy").join(source)).unwrap();
        assert!(
            source.contains("example") && example.starts_with("EXAMPLE-ONLY"),
            "the key in the repository is marked as an example: {source}"
        );
        assert!(var("HERALD_JWT_AUDIENCE").is_some());
        assert!(var("HERALD_ALLOW_ANONYMOUS").is_none());
        // `docker compose stop` waits for the drain.
        let drain = duration(var("HERALD_DRAIN").unwrap_or(DEFAULT_DRAIN));
        let grace = duration(service["stop_grace_period"].as_str().unwrap());
        assert!(
            grace > longest_stop(drain),
            "{name}: {grace:?} vs {drain:?}"
        );
        // nginx's upstreams are these services.
        assert!(
            nginx_conf.contains(&format!("server {name}:8080 ")),
            "{name}"
        );
    }

    let nginx = &compose["services"]["nginx"];
    let volumes: Vec<&str> = nginx["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(volumes.contains(&"./nginx/nginx.conf:/etc/nginx/nginx.conf:ro"));
    for (name, _) in &heralds {
        assert!(
            nginx["depends_on"][*name].is_mapping(),
            "nginx waits for {name}"
        );
    }
}
