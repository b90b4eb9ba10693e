//! The rows of several instances (issue 26): each one's share of the
//! publishers, its commits, and where its appends wait.

use super::{ms, rate};
use crate::report::{ClusterStats, WaitStats};

fn percent(fraction: f64) -> String {
    format!("{:.0}", fraction * 100.0)
}

impl ClusterStats {
    /// The publish rows above are all instances together; these split
    /// them per instance (numbered from 1, as `herald/bench-K`), with
    /// each one's commits, and where the appends wait.
    pub(super) fn rows(&self, row: &mut impl FnMut(&str, String)) {
        let shares: Vec<String> = self
            .per_instance
            .iter()
            .map(|i| i.publish.publishers.to_string())
            .collect();
        row(
            "instances (publishers each)",
            format!("{} ({})", self.instances, shares.join(" + ")),
        );
        for (k, i) in self.per_instance.iter().enumerate() {
            let k = k + 1;
            row(
                &format!("#{k} publish rate (events/s) / errors"),
                format!("{} / {}", rate(i.publish.events_per_sec), i.publish.errors),
            );
            row(
                &format!("#{k} publish latency ms p50/p99"),
                i.publish.latency.as_ref().map_or_else(
                    || "-".into(),
                    |p| format!("{} / {}", ms(p.p50_ms), ms(p.p99_ms)),
                ),
            );
            if let Some(a) = &i.appends {
                row(
                    &format!("#{k} commits/s / events per commit"),
                    format!("{} / {:.1}", rate(a.commits_per_sec), a.group_events_mean),
                );
                row(
                    &format!("#{k} append ms mean / committer busy %"),
                    format!(
                        "{} / {}",
                        ms(a.transaction_ms_mean),
                        percent(a.committer_busy)
                    ),
                );
            }
            if let Some(w) = &i.waits {
                row(&format!("#{k} {WAITS}"), waits(w));
            }
            if let Some(cpu) = i.cpu_percent {
                row(&format!("#{k} CPU (% of one core)"), format!("{cpu:.0}"));
            }
        }
        if let Some(c) = self.append_commits_per_sec {
            row("append commits/s, all instances", rate(c));
        }
        if let Some(d) = &self.database {
            row(
                "database: xact commits/s / WAL syncs/s",
                format!(
                    "{} / {}",
                    rate(d.xact_commits_per_sec),
                    d.wal_syncs_per_sec.map_or_else(|| "-".into(), rate)
                ),
            );
            row(&format!("all {WAITS}"), waits(&d.waits));
            row(
                "appends waiting on a row lock, mean",
                format!("{:.2}", d.waits.lock_waiters_mean),
            );
        }
    }
}

/// The label of [`waits`]: shares of the probe's samples.
const WAITS: &str = "% of samples: lock wait / WAL wait / active";

fn waits(w: &WaitStats) -> String {
    format!(
        "{} / {} / {}",
        percent(w.lock_wait_fraction),
        percent(w.wal_wait_fraction),
        percent(w.active_fraction)
    )
}
