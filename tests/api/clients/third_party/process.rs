//! herald as a process of the test's own (the built binary), so that it
//! can be killed and started again on the same port, as a crash or a
//! deploy does to a real one. Its clients see its port refuse, then the
//! same address answer again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::process::Command;

use super::super::run::Running;
use crate::helpers::{SECRET, WAIT};

/// The `retry:` herald sends: short, so that reconnects are quick.
pub(super) const RETRY: &str = "500ms";

pub(super) struct HeraldProcess {
    process: Running,
    pub(super) addr: SocketAddr,
}

impl HeraldProcess {
    /// herald on `database_url` at `127.0.0.1:<port>`, with tokens required
    /// (HS256, the tests' [`SECRET`]). Returns once it serves.
    pub(super) async fn start(database_url: &str, port: u16) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") || name == "DATABASE_URL" {
                command.env_remove(name);
            }
        }
        command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url])
            .args(["--log-format", "json"])
            .args(["--retry", RETRY])
            .args(["--heartbeat", "300ms"])
            .args(["--drain", "200ms"])
            .args(["--poll-interval", "200ms"])
            .env("HERALD_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info");
        let mut process = Running::spawn(&mut command);
        let log = process
            .wait_stderr("herald to serve", |err| {
                err.contains("\"herald is serving\"")
            })
            .await;
        let addr = log
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|entry| entry["message"] == "herald is serving")
            .and_then(|entry| entry["address"].as_str()?.parse().ok())
            .unwrap_or_else(|| panic!("no address in herald's log:\n{log}"));
        Self { process, addr }
    }

    /// SIGKILL, as a crash: every connection ends at once, nothing drains.
    pub(super) async fn kill(self) -> u16 {
        self.process.kill();
        self.exit().await
    }

    /// SIGTERM, as a deploy: streams end within the drain window.
    pub(super) async fn stop(self) -> u16 {
        self.process.signal("-TERM");
        self.exit().await
    }

    /// Waits for the process to be gone; returns the port it served on,
    /// free again.
    async fn exit(self) -> u16 {
        let port = self.addr.port();
        let _ = self.process.finish(WAIT).await;
        port
    }
}

/// A free port below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768 and up by default), to start herald on and start it again on.
/// A port from the ephemeral range (what binding port 0 gives) can be
/// taken while herald is down, by another test's listener or by any
/// outgoing connection's local end, and herald could then not come back.
pub(super) fn unused_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = std::process::id() as u16
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u16);
    (0..1000)
        .map(|_| 20_000 + (seed.wrapping_add(NEXT.fetch_add(7, Ordering::Relaxed)) % 12_000))
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free port between 20000 and 32000")
}
