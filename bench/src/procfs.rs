//! The server's memory and CPU, read from `/proc`: VmRSS and utime+stime of
//! a process and all its descendants (nginx is a master and its workers;
//! PostgreSQL a postmaster and its backends), and its open descriptors; or
//! of one process alone (the harness, whose children are the servers it
//! started). Sampled during a run for the peak.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Sum of VmRSS, KiB.
    pub rss_kib: u64,
    /// Sum of utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Open descriptors, summed.
    pub fds: usize,
    pub processes: usize,
}

/// Clock ticks per second (`CLK_TCK`), for `/proc/PID/stat` times.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// What `/proc/PID/stat` says about a process's parent and CPU time.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: u32,
    /// utime + stime: its own threads.
    ticks: u64,
    /// cutime + cstime: children it has reaped (waited for).
    reaped_ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields are
    // counted from the last ')'. After it come field 3 (state), 4 (ppid),
    // …, 14 (utime), 15 (stime), 16 (cutime), 17 (cstime).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        ticks: field(11)? + field(12)?,
        reaped_ticks: field(13)? + field(14)?,
    })
}

/// The parent of `pid`, if `pid` exists.
pub fn parent(pid: u32) -> Option<u32> {
    stat(pid).map(|s| s.ppid)
}

/// The command name of `pid` (`/proc/PID/comm`: the executable's name,
/// which PostgreSQL's backends keep while they rewrite their titles).
pub fn command_name(pid: u32) -> Option<String> {
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(name.trim_end().to_owned())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// `root` and every process descended from it.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(s) = stat(pid) {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// What to measure from a root process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The process and every descendant. CPU includes what the root's
    /// children used before they exited and were reaped (its cutime and
    /// cstime), so a PostgreSQL backend that ends during a window is still
    /// counted: its time was in the tree's sum at the start and is in the
    /// postmaster's reaped time at the end.
    Tree,
    /// The process alone: its own threads, not its children.
    Process,
}

/// The usage of `root`'s process tree; `None` if `root` is gone.
pub fn usage(root: u32) -> Option<Usage> {
    usage_of(root, Scope::Tree)
}

/// The usage of `root` (and its descendants, for [`Scope::Tree`]); `None`
/// if `root` is gone.
pub fn usage_of(root: u32, scope: Scope) -> Option<Usage> {
    let root_stat = stat(root)?;
    let pids = match scope {
        Scope::Tree => tree(root),
        Scope::Process => vec![root],
    };
    let mut u = Usage::default();
    if scope == Scope::Tree {
        u.cpu_ticks += root_stat.reaped_ticks;
    }
    for pid in pids {
        let Some(s) = stat(pid) else {
            continue;
        };
        u.cpu_ticks += s.ticks;
        u.rss_kib += rss_kib(pid);
        u.fds += fds(pid);
        u.processes += 1;
    }
    Some(u)
}

/// Memory and CPU of a process tree over a measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Resources {
    pub pid: u32,
    pub processes: usize,
    pub rss_start_mib: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    pub cpu_seconds: f64,
    /// CPU time over wall time, in percent of one core (200 = both cores).
    pub cpu_percent: f64,
    pub fds_end: usize,
}

impl Resources {
    /// Several processes' (herald instances') together, over the same
    /// window: memory, CPU and descriptors summed (the peaks too, so the
    /// peak is an upper bound); the first one's pid. `None` unless every
    /// one was measured.
    pub fn sum(all: &[Option<Self>]) -> Option<Self> {
        let all: Vec<&Self> = all.iter().map(Option::as_ref).collect::<Option<_>>()?;
        let (first, rest) = all.split_first()?;
        let mut total = (*first).clone();
        for r in rest {
            total.processes += r.processes;
            total.rss_start_mib += r.rss_start_mib;
            total.rss_peak_mib += r.rss_peak_mib;
            total.rss_end_mib += r.rss_end_mib;
            total.cpu_seconds += r.cpu_seconds;
            total.cpu_percent += r.cpu_percent;
            total.fds_end += r.fds_end;
        }
        Some(total)
    }
}

/// Samples a process tree until [`Sampler::finish`].
pub struct Sampler {
    pid: u32,
    scope: Scope,
    start: Usage,
    started: Instant,
    peak_kib: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `pid`'s tree every `period`; `None` if it is gone.
    pub fn start(pid: u32, period: Duration) -> Option<Self> {
        Self::start_scoped(pid, Scope::Tree, period)
    }

    /// Starts sampling `pid` (its tree, or it alone) every `period`;
    /// `None` if it is gone.
    pub fn start_scoped(pid: u32, scope: Scope, period: Duration) -> Option<Self> {
        let start = usage_of(pid, scope)?;
        let peak_kib = Arc::new(Mutex::new(start.rss_kib));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (peak, stop) = (peak_kib.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(period);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => return,
                    }
                    let u = tokio::task::spawn_blocking(move || usage_of(pid, scope))
                        .await
                        .ok()
                        .flatten();
                    if let Some(u) = u {
                        let mut p = peak
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        *p = (*p).max(u.rss_kib);
                    }
                }
            }
        });
        Some(Self {
            pid,
            scope,
            start,
            started: Instant::now(),
            peak_kib,
            stop,
            task,
        })
    }

    /// Stops sampling and sums up the window.
    pub async fn finish(self) -> Option<Resources> {
        self.stop.cancel();
        let _ = self.task.await;
        let wall = self.started.elapsed().as_secs_f64();
        let end = usage_of(self.pid, self.scope)?;
        let peak = (*self
            .peak_kib
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
        .max(end.rss_kib);
        let cpu = end.cpu_ticks.saturating_sub(self.start.cpu_ticks) as f64 / clock_ticks() as f64;
        let mib = |k: u64| k as f64 / 1024.0;
        Some(Resources {
            pid: self.pid,
            processes: end.processes,
            rss_start_mib: mib(self.start.rss_kib),
            rss_peak_mib: mib(peak),
            rss_end_mib: mib(end.rss_kib),
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { cpu / wall * 100.0 } else { 0.0 },
            fds_end: end.fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_alone_leaves_its_children_out() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let alone = usage_of(me, Scope::Process).unwrap();
        let tree = usage_of(me, Scope::Tree).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(alone.processes, 1);
        assert!(tree.processes >= 2, "{tree:?}");
        assert_eq!(parent(child.id()), None, "reaped");
        assert_eq!(command_name(me).as_deref().map(str::is_empty), Some(false));
    }

    #[test]
    fn reads_this_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kib > 0);
        assert!(u.fds > 0);
        assert!(u.processes >= 1);
        assert!(usage(u32::MAX).is_none());
    }
}
