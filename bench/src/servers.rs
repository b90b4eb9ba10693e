//! Servers the harness starts itself, so one command compares them on the
//! same machine with the same workload:
//! - herald from its release binary, on a fresh PostgreSQL database that is
//!   dropped afterwards;
//! - nginx with the nchan module, from `bench/nchan/nginx.conf`, in a
//!   temporary prefix.
//!
//! Each runs in a process group of its own, so stopping it also stops
//! nginx's workers, and a harness stopped with Ctrl-C leaves nothing behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::http::{self, Conn};
use crate::postgres::drop_database;
use crate::target::{self, Kind};

/// The nchan configuration, built in so the binary runs from anywhere.
pub const NCHAN_CONFIG: &str = include_str!("../nchan/nginx.conf");
/// The listen address written in [`NCHAN_CONFIG`], replaced at start.
const NCHAN_CONFIG_LISTEN: &str = "127.0.0.1:8090";
/// The module path written in [`NCHAN_CONFIG`], replaced when elsewhere.
const NCHAN_CONFIG_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// Where Debian installs the module.
const NCHAN_MODULE_PATHS: [&str; 2] = [
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
];
/// Longest wait for a started server to answer its readiness check.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for a stopping server to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// How to start the servers.
#[derive(Debug, Clone)]
pub struct Options {
    /// The herald binary (default: the workspace's `target/release/herald`).
    pub herald_bin: Option<PathBuf>,
    /// Extra flags for herald, e.g. `--ring-size=100000`.
    pub herald_args: Vec<String>,
    /// A PostgreSQL database the role can `CREATE DATABASE` from.
    pub admin_url: String,
    pub nginx_bin: PathBuf,
    /// The nchan module (default: where Debian installs it).
    pub nchan_module: Option<PathBuf>,
    /// An nginx config to use instead of the built-in one.
    pub nchan_config: Option<PathBuf>,
}

/// A server the harness started.
pub struct Spawned {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub pid: u32,
    child: Option<Child>,
    dir: PathBuf,
    database: Option<String>,
    admin_url: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A scratch directory, removed when dropped unless handed on with
/// [`Scratch::keep`] (to a [`Spawned`], which removes it itself).
struct Scratch(Option<PathBuf>);

impl Scratch {
    fn new(kind: Kind) -> anyhow::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "herald-bench-{kind}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Self(Some(dir)))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().expect("not kept yet")
    }

    fn keep(mut self) -> PathBuf {
        self.0.take().expect("not kept yet")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The herald binary to start.
/// Checks that `kind` could be started (its binary, nchan's module),
/// without starting it: a comparison checks every server before the first
/// run, rather than find the second missing after the first has run.
///
/// # Errors
/// What is missing, and how to install it.
pub fn preflight(kind: Kind, opts: &Options) -> anyhow::Result<()> {
    match kind {
        Kind::Herald => herald_bin(opts).map(drop),
        Kind::Nchan => nchan_config(opts, SocketAddr::from(([127, 0, 0, 1], 0))).map(drop),
    }
}

fn herald_bin(opts: &Options) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &opts.herald_bin {
        if !bin.exists() {
            bail!("--herald-bin {} does not exist", bin.display());
        }
        return Ok(bin.clone());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let bin = target_dir.join("release/herald");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p herald`, or pass --herald-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// Starts `kind` and waits until it is ready.
///
/// # Errors
/// The server cannot be started or does not become ready.
pub async fn spawn(kind: Kind, opts: &Options) -> anyhow::Result<Spawned> {
    // The free port is found by binding and releasing it, so another process
    // can take it first: try again (with another port) before giving up.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = match kind {
            Kind::Herald => spawn_herald(opts).await,
            Kind::Nchan => spawn_nchan(opts).await,
        };
        match started {
            Err(e) if attempt < 3 && format!("{e:#}").contains("exited at start") => {}
            other => return other,
        }
    }
}

/// Drops database `name` from outside async code (a `Drop`): on a runtime
/// of its own, on a thread of its own.
pub(crate) fn drop_database_blocking(admin_url: &str, name: String) {
    let admin = admin_url.to_owned();
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        rt.block_on(drop_database(&admin, &name)).ok()
    })
    .join();
}

/// A database name of this run's own, and the URL it has on the server of
/// `--database-admin-url`.
pub(crate) fn fresh_database(admin_url: &str) -> anyhow::Result<(String, String)> {
    let name = format!(
        "herald_bench_{}_{}",
        std::process::id(),
        crate::payload::now_nanos() % 1_000_000_000_000
    );
    let base = admin_url
        .rsplit_once('/')
        .context("--database-admin-url has no database path")?
        .0;
    let url = format!("{base}/{name}");
    Ok((name, url))
}

async fn spawn_herald(opts: &Options) -> anyhow::Result<Spawned> {
    let bin = herald_bin(opts)?;
    let dir = Scratch::new(Kind::Herald)?;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let (database, url) = fresh_database(&opts.admin_url)?;
    let has = |flag: &str| opts.herald_args.iter().any(|a| a.starts_with(flag));
    let mut cmd = Command::new(&bin);
    if !has("--listen") {
        cmd.args(["--listen", &addr.to_string()]);
    }
    // A database named in the flags is someone else's (a cluster's, the
    // retention scenario's): they drop it, not this instance.
    let database = if has("--database-url") {
        None
    } else {
        cmd.args(["--database-url", &url]);
        Some(database)
    };
    if !has("--drain") {
        // Streams are closed by the harness before it stops herald.
        cmd.args(["--drain", "200ms"]);
    }
    cmd.args(["--log-format", "json"]).args(&opts.herald_args);
    cmd.env(
        "RUST_LOG",
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let child = start(cmd, &dir.path().join("herald.log"))
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut spawned = Spawned {
        kind: Kind::Herald,
        addr,
        pid: child.id().unwrap_or(0),
        child: Some(child),
        dir: dir.keep(),
        database,
        admin_url: opts.admin_url.clone(),
    };
    spawned.wait_ready().await?;
    Ok(spawned)
}

/// The built-in (or given) nchan config with its listen address and module
/// path set.
///
/// # Errors
/// The config cannot be read, or lacks the lines the harness rewrites.
pub fn nchan_config(opts: &Options, addr: SocketAddr) -> anyhow::Result<String> {
    let text = match &opts.nchan_config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => NCHAN_CONFIG.to_owned(),
    };
    if !text.contains(NCHAN_CONFIG_LISTEN) || !text.contains(NCHAN_CONFIG_MODULE) {
        bail!(
            "the nchan config must listen on {NCHAN_CONFIG_LISTEN} and load {NCHAN_CONFIG_MODULE}: \
             the harness replaces both"
        );
    }
    let module = match &opts.nchan_module {
        Some(m) if !m.exists() => bail!("--nchan-module {} does not exist", m.display()),
        Some(m) => m.clone(),
        None => NCHAN_MODULE_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("the nchan module is not installed: apt-get install libnginx-mod-nchan")?,
    };
    Ok(text
        .replace(NCHAN_CONFIG_LISTEN, &addr.to_string())
        .replace(NCHAN_CONFIG_MODULE, &module.display().to_string()))
}

async fn spawn_nchan(opts: &Options) -> anyhow::Result<Spawned> {
    let scratch = Scratch::new(Kind::Nchan)?;
    let dir = scratch.path().to_owned();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nchan_config(opts, addr)?)?;
    let args = [
        "-p".to_owned(),
        dir.display().to_string(),
        "-c".to_owned(),
        conf.display().to_string(),
        "-g".to_owned(),
        format!(
            "daemon off; pid {}; error_log {} warn;",
            dir.join("nginx.pid").display(),
            dir.join("error.log").display()
        ),
    ];
    let check = Command::new(&opts.nginx_bin)
        .arg("-t")
        .args(&args)
        .output()
        .await
        .with_context(|| {
            format!(
                "cannot run {}: apt-get install nginx-light libnginx-mod-nchan",
                opts.nginx_bin.display()
            )
        })?;
    if !check.status.success() {
        bail!(
            "nginx -t refused the nchan config: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let mut cmd = Command::new(&opts.nginx_bin);
    cmd.args(&args);
    let child = start(cmd, &dir.join("nginx.out"))?;
    let mut spawned = Spawned {
        kind: Kind::Nchan,
        addr,
        pid: child.id().unwrap_or(0),
        child: Some(child),
        dir: scratch.keep(),
        database: None,
        admin_url: opts.admin_url.clone(),
    };
    spawned.wait_ready().await?;
    Ok(spawned)
}

/// Starts `cmd` in a process group of its own with output to `log`.
fn start(mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    Ok(cmd.spawn()?)
}

impl Spawned {
    /// Polls the readiness path until it answers `200`.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let target = target::make(self.kind, self.addr);
        let request = http::get(target.ready_path(), &self.addr.to_string(), &[]);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "{} exited at start ({status}): {}",
                    self.kind,
                    self.log_tail()
                );
            }
            if let Ok(mut conn) = Conn::open(self.addr, None).await
                && let Ok(res) = conn.roundtrip(&request).await
                && res.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after {READY_TIMEOUT:?}: {}",
                    self.kind,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The end of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["herald.log", "nginx.out", "error.log"] {
            if let Ok(t) = std::fs::read_to_string(self.dir.join(name)) {
                text.push_str(&t);
            }
        }
        let lines: Vec<&str> = text.lines().rev().take(10).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Stops the server (SIGTERM, then SIGKILL to its group), drops its
    /// database and removes its scratch directory.
    ///
    /// # Errors
    /// The database cannot be dropped.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            signal_group(self.pid, libc::SIGTERM, false);
            if tokio::time::timeout(STOP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                signal_group(self.pid, libc::SIGKILL, true);
                let _ = child.wait().await;
            }
            // nginx's workers are in the same group; make sure none is left.
            signal_group(self.pid, libc::SIGKILL, true);
        }
        if let Some(db) = self.database.take() {
            drop_database(&self.admin_url, &db).await?;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.take().is_some() {
            signal_group(self.pid, libc::SIGKILL, true);
        }
        if let Some(db) = self.database.take() {
            drop_database_blocking(&self.admin_url, db);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `sig` to process `pid`, or to its whole process group.
fn signal_group(pid: u32, sig: libc::c_int, group: bool) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is one this
    // harness started (and, for the group, made a group leader).
    unsafe {
        libc::kill(if group { -pid } else { pid }, sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preflight_names_what_is_missing_before_anything_starts() {
        let opts = Options {
            herald_bin: Some("/nonexistent/herald".into()),
            herald_args: Vec::new(),
            admin_url: String::new(),
            nginx_bin: "nginx".into(),
            nchan_module: Some("/nonexistent/ngx_nchan_module.so".into()),
            nchan_config: None,
        };
        for (kind, missing) in [
            (Kind::Herald, "/nonexistent/herald"),
            (Kind::Nchan, "/nonexistent/ngx_nchan_module.so"),
        ] {
            let err = preflight(kind, &opts).expect_err("missing").to_string();
            assert!(err.contains(missing), "{kind}: {err}");
        }
    }
}
