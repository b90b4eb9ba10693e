// `sqlx::migrate!` embeds `migrations/` at compile time; rebuild when it
// changes. `HERALD_COMMIT` is the git commit built, for `herald_build_info`
// (`unknown` outside a git checkout, as in a container build).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
    for git in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }
    println!("cargo:rerun-if-env-changed=HERALD_COMMIT");
    let commit = std::env::var("HERALD_COMMIT").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!(
        "cargo:rustc-env=HERALD_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
