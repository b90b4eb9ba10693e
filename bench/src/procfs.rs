//! The server's memory and CPU, read from `/proc`: VmRSS and utime+stime of
//! a process and all its descendants (nginx is a master and its workers),
//! and its open descriptors. Sampled during a run for the peak.

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

/// `(ppid, utime + stime)` from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields are
    // counted from the last ')'. After it come field 3 (state), 4 (ppid),
    // …, 14 (utime), 15 (stime).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
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
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
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

/// The usage of `root`'s process tree; `None` if `root` is gone.
pub fn usage(root: u32) -> Option<Usage> {
    stat(root)?;
    let mut u = Usage::default();
    for pid in tree(root) {
        let Some((_, ticks)) = stat(pid) else {
            continue;
        };
        u.cpu_ticks += ticks;
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

/// Samples a process tree until [`Sampler::finish`].
pub struct Sampler {
    pid: u32,
    start: Usage,
    started: Instant,
    peak_kib: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling `pid`'s tree every `period`; `None` if it is gone.
    pub fn start(pid: u32, period: Duration) -> Option<Self> {
        let start = usage(pid)?;
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
                    let u = tokio::task::spawn_blocking(move || usage(pid))
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
        let end = usage(self.pid)?;
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
    fn reads_this_process() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.rss_kib > 0);
        assert!(u.fds > 0);
        assert!(u.processes >= 1);
        assert!(usage(u32::MAX).is_none());
    }
}
