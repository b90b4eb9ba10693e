//! The table for people: one report per column (targets side by side),
//! one row per number, each formatted for reading (the JSON has them all
//! at full precision).

use std::fmt::Write as _;

use crate::report::{ChurnStats, PerUserStats, Report, RetentionStats, TableSizes};
use crate::stats::Percentiles;

mod cluster;

fn pct(p: Option<&Percentiles>) -> String {
    p.map_or_else(
        || "-".into(),
        |p| {
            format!(
                "{} / {} / {} / {} / {}",
                ms(p.p50_ms),
                ms(p.p90_ms),
                ms(p.p99_ms),
                ms(p.p999_ms),
                ms(p.max_ms)
            )
        },
    )
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn rate(v: f64) -> String {
    format!("{v:.0}")
}

impl Report {
    /// The table rows: label and value.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        if let Some(p) = &self.publish {
            row(
                "published: events acked / errors",
                format!("{} / {}", p.events_acked, p.errors),
            );
            row("publish rate (events/s)", rate(p.events_per_sec));
            row(
                "publish latency ms p50/p90/p99/p99.9/max",
                pct(p.latency.as_ref()),
            );
        }
        if let Some(c) = &self.cluster {
            c.rows(&mut row);
        }
        if let Some(u) = &self.per_user {
            row(
                "topics / wildcard subscribers",
                format!("{} / {}", u.topics, u.wildcard_subscribers),
            );
        }
        if let Some(d) = &self.delivery {
            row("deliveries", d.deliveries.to_string());
            if d.deliveries_per_sec > 0.0 || d.offered_per_sec.is_some() {
                row("deliveries/s", rate(d.deliveries_per_sec));
            }
            if let Some(o) = d.offered_per_sec {
                row("deliveries/s offered", rate(o));
            }
            if let Some(ms) = d.drain_ms {
                row("drained after publishing (ms)", format!("{ms:.0}"));
            }
            row(
                "delivery latency ms p50/p90/p99/p99.9/max",
                pct(d.latency.as_ref()),
            );
        }
        if let Some(u) = &self.per_user {
            u.rows(&mut row);
        }
        if let Some(r) = &self.retention {
            r.rows(&mut row);
        }
        if let Some(c) = &self.churn {
            c.rows(&mut row);
        }
        if let Some(c) = &self.catch_up {
            row(
                "clients caught up",
                format!("{} / {}", c.caught_up, c.clients),
            );
            row("missed events per client", c.events_per_client.to_string());
            row("catch-up ms p50/p90/p99/p99.9/max", pct(c.time.as_ref()));
            if let Some(all) = c.all_caught_up_ms {
                row("all caught up (ms)", ms(all));
            }
            if let Some(r) = c.replay_events_per_sec {
                row("replay rate per client (events/s)", rate(r));
            }
        }
        if let Some(i) = &self.idle {
            row("streams open", i.streams.to_string());
            row(
                "server RSS before / after (MiB)",
                format!(
                    "{:.1} / {:.1}",
                    i.rss_before_kib as f64 / 1024.0,
                    i.rss_after_kib as f64 / 1024.0
                ),
            );
            row(
                "server RSS per stream (KiB)",
                format!("{:.2}", i.rss_per_stream_bytes / 1024.0),
            );
            row(
                "server fds before / after",
                format!("{} / {}", i.server_fds_before, i.server_fds_after),
            );
            row("client fds", i.client_fds.to_string());
        }
        let c = &self.correctness;
        row(
            "missing / duplicate / out of order",
            format!("{} / {} / {}", c.missing, c.duplicates, c.out_of_order),
        );
        row(
            "subscribers with errors / failed",
            format!("{} / {}", c.subscribers_with_errors, c.failed_subscribers),
        );
        row(
            "id regressions / resets / reconnects",
            format!("{} / {} / {}", c.id_regressions, c.resets, c.reconnects),
        );
        if let Some(s) = &self.server {
            row(
                "server RSS start / peak / end (MiB)",
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    s.rss_start_mib, s.rss_peak_mib, s.rss_end_mib
                ),
            );
            row(
                "server CPU (% of one core)",
                format!("{:.0}", s.cpu_percent),
            );
        }
        if let Some(pg) = &self.postgres {
            row(
                "PostgreSQL CPU (% of one core)",
                format!("{:.0}", pg.cpu_percent),
            );
            if let Some(s) = &self.server {
                row(
                    "server + PostgreSQL CPU",
                    format!("{:.0}", s.cpu_percent + pg.cpu_percent),
                );
            }
        }
        if let Some(s) = &self.client {
            row(
                "client CPU (% of one core)",
                format!("{:.0}", s.cpu_percent),
            );
        }
        row("measured for (s)", format!("{:.2}", self.elapsed_s));
        row(
            "correctness",
            if self.is_clean() {
                "ok".into()
            } else {
                "ERRORS".into()
            },
        );
        rows
    }
}

impl PerUserStats {
    fn rows(&self, row: &mut impl FnMut(&str, String)) {
        if self.wildcard_subscribers > 0 {
            row(
                "wildcard subscribed to",
                self.wildcard_subscription.clone().unwrap_or_default(),
            );
            row(
                "wildcard latency ms p50/p90/p99/p99.9/max",
                pct(self.wildcard_latency.as_ref()),
            );
        }
        let Some(s) = &self.storm else { return };
        row(
            "fill: events / seconds",
            format!("{} / {:.1}", s.fill_events, s.fill_s),
        );
        row(
            "storm clients caught up",
            format!("{} / {}", s.caught_up, s.clients),
        );
        row(
            "storm: away (ms) / missed events in all",
            format!("{:.0} / {}", s.away_ms, s.missed_events),
        );
        row(
            "storm catch-up ms p50/p90/p99/p99.9/max",
            pct(s.catch_up.as_ref()),
        );
        row(
            "storm: all caught up (ms)",
            s.all_caught_up_ms.map_or_else(|| "-".into(), ms),
        );
        row(
            "live latency before the storm ms p50/p90/p99/p99.9/max",
            pct(s.live_latency_before.as_ref()),
        );
        row(
            "live latency during the storm ms p50/p90/p99/p99.9/max",
            pct(s.live_latency_during.as_ref()),
        );
        row("storm window for that (ms)", format!("{:.0}", s.during_ms));
    }
}

/// Reports of the same scenario and parameters, one column per target.
pub fn render(reports: &[&Report]) -> String {
    let Some(first) = reports.first() else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(r) = first.round {
        let _ = write!(out, "round {r}: ");
    }
    let _ = writeln!(out, "{}", first.params.describe(first.scenario));
    let columns: Vec<Vec<(String, String)>> = reports.iter().map(|r| r.rows()).collect();
    // Every label any report has, in first-seen order.
    let mut labels: Vec<&String> = Vec::new();
    for (k, _) in columns.iter().flatten() {
        if !labels.contains(&k) {
            labels.push(k);
        }
    }
    let label_w = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = columns
        .iter()
        .zip(reports)
        .map(|(col, r)| {
            col.iter()
                .map(|(_, v)| v.len())
                .chain([r.label().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = write!(out, "{:label_w$}", "");
    for (r, w) in reports.iter().zip(&widths) {
        let _ = write!(out, "  {:>w$}", r.label());
    }
    out.push('\n');
    for label in labels {
        let _ = write!(out, "{label:label_w$}");
        for (col, w) in columns.iter().zip(&widths) {
            let v = col.iter().find(|(k, _)| k == label).map_or("-", |(_, v)| v);
            let _ = write!(out, "  {v:>w$}");
        }
        out.push('\n');
    }
    for r in reports {
        if let Some(e) = r
            .correctness
            .first_error
            .as_ref()
            .or_else(|| r.publish.as_ref().and_then(|p| p.first_error.as_ref()))
            .or_else(|| r.churn.as_ref().and_then(|c| c.first_error.as_ref()))
        {
            let _ = writeln!(out, "{}: first error: {e}", r.label());
        }
    }
    out
}

impl ChurnStats {
    /// The publish rows above are the publishers'; these are the streams
    /// opened and dropped beside them, and the registry's lag.
    fn rows(&self, row: &mut impl FnMut(&str, String)) {
        row(
            "stream opens: started / opened / failed",
            format!("{} / {} / {}", self.opens, self.opened, self.failed),
        );
        row("streams opened per minute", rate(self.opened_per_minute));
        row(
            "streams held at once (peak) / ended early",
            format!("{} / {}", self.held_peak, self.ended_early),
        );
        row(
            "stream open ms p50/p90/p99/p99.9/max",
            pct(self.open_latency.as_ref()),
        );
        row(
            "registry write lag ms p50/p90/p99/p99.9/max",
            pct(self.registry_lag.as_ref()),
        );
        row(
            "registry lag: /metrics scrapes / samples",
            format!("{} / {}", self.scrapes, self.lag_samples),
        );
    }
}

fn sizes(s: &TableSizes) -> String {
    let mib = |b: i64| format!("{:.0}", b as f64 / (1024.0 * 1024.0));
    format!(
        "{} / {} / {} ({} live, {} dead)",
        mib(s.total_bytes),
        mib(s.table_bytes),
        mib(s.index_bytes),
        s.live_rows,
        s.dead_rows
    )
}

impl RetentionStats {
    /// The publish rows above are the prune window's; these add the
    /// baseline beside them, the replays and the sizes.
    fn rows(&self, row: &mut impl FnMut(&str, String)) {
        let b = &self.baseline;
        row(
            "baseline: events acked / errors",
            format!("{} / {}", b.events_acked, b.errors),
        );
        row("baseline publish rate (events/s)", rate(b.events_per_sec));
        row(
            "baseline publish ms p50/p90/p99/p99.9/max",
            pct(b.latency.as_ref()),
        );
        if let Some(ratio) = self.publish_p99_ratio {
            row("publish p99 prune / baseline", format!("{ratio:.2}"));
        }
        row(
            "windows: baseline / prune (s)",
            format!("{:.1} / {:.1}", self.baseline_s, self.prune_window_s),
        );
        row(
            "pruned through / took (s) / events/s",
            format!(
                "{} / {:.1} / {}",
                self.pruned_through,
                self.prune_s,
                rate(self.pruned_through as f64 / self.prune_s.max(1e-9))
            ),
        );
        row(
            "herald_retention_pruned_events_total",
            self.pruned_metric
                .map_or_else(|| "-".into(), |v| format!("{v:.0}")),
        );
        row(
            "replays baseline / prune (resets) / errors",
            format!(
                "{} / {} ({}) / {}",
                self.replays_baseline,
                self.replays_prune,
                self.replay_resets_prune,
                self.replay_errors
            ),
        );
        row(
            "replay wait ms p50/p90/p99/p99.9/max baseline",
            pct(self.replay_wait_baseline.as_ref()),
        );
        row(
            "replay wait ms p50/p90/p99/p99.9/max prune",
            pct(self.replay_wait_prune.as_ref()),
        );
        row(
            "events MiB total / table / indexes: before",
            sizes(&self.before),
        );
        row("... after the prune", sizes(&self.after));
        row(
            &format!("... after VACUUM ({:.1} s)", self.vacuum_s),
            sizes(&self.vacuumed),
        );
    }
}
