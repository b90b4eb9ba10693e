//! `compare --rounds`: the medians of each side's rounds. The rounds are
//! interleaved (every side once, then every side again), so a machine
//! whose speed drifts during the comparison slows every side alike, and a
//! median of three is what issue 26 asks the figures to be.

use std::fmt::Write as _;

use crate::report::Report;

/// The median (of an even count, the mean of the two middle values);
/// `None` for none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        f64::midpoint(values[mid - 1], values[mid])
    })
}

/// One figure of the summary: its label and how to read it from a report.
struct Figure {
    label: &'static str,
    of: fn(&Report) -> Option<f64>,
    digits: usize,
}

const FIGURES: [Figure; 9] = [
    Figure {
        label: "publish latency p50 (ms)",
        of: |r| Some(r.publish.as_ref()?.latency.as_ref()?.p50_ms),
        digits: 2,
    },
    Figure {
        label: "publish latency p99 (ms)",
        of: |r| Some(r.publish.as_ref()?.latency.as_ref()?.p99_ms),
        digits: 2,
    },
    Figure {
        label: "append commits/s, all instances",
        of: |r| r.cluster.as_ref()?.append_commits_per_sec,
        digits: 0,
    },
    Figure {
        label: "events per commit (all instances)",
        of: |r| {
            let c = r.cluster.as_ref()?;
            let (mut events, mut commits) = (0, 0);
            for i in &c.per_instance {
                let a = i.appends.as_ref()?;
                events += a.events;
                commits += a.commits;
            }
            (commits > 0).then(|| events as f64 / commits as f64)
        },
        digits: 1,
    },
    Figure {
        label: "samples with an append waiting on a row lock (%)",
        of: |r| Some(waits(r)?.lock_wait_fraction * 100.0),
        digits: 0,
    },
    Figure {
        label: "appends waiting on a row lock, mean",
        of: |r| Some(waits(r)?.lock_waiters_mean),
        digits: 2,
    },
    Figure {
        label: "samples with a backend waiting on WAL (%)",
        of: |r| Some(waits(r)?.wal_wait_fraction * 100.0),
        digits: 0,
    },
    Figure {
        label: "server CPU (% of one core, all instances)",
        of: |r| Some(r.server.as_ref()?.cpu_percent),
        digits: 0,
    },
    Figure {
        label: "PostgreSQL CPU (% of one core)",
        of: |r| Some(r.postgres.as_ref()?.cpu_percent),
        digits: 0,
    },
];

/// The database's wait samples of a run, when it sampled them.
fn waits(r: &Report) -> Option<&crate::report::WaitStats> {
    Some(&r.cluster.as_ref()?.database.as_ref()?.waits)
}

fn fixed(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// A side's rounds: its label and its reports.
type Side<'a> = (String, Vec<&'a Report>);

/// For each parameter set, one column per side (target, instances): the
/// publish rate of every round, its median and its ratio to the first
/// side's median, then the medians of the other figures.
pub fn summary(reports: &[&Report]) -> String {
    // Parameter sets, then sides, in first-seen order.
    let mut sets: Vec<(String, Vec<Side<'_>>)> = Vec::new();
    for r in reports {
        let set = r.params.describe(r.scenario);
        let i = sets.iter().position(|(d, _)| *d == set).unwrap_or_else(|| {
            sets.push((set, Vec::new()));
            sets.len() - 1
        });
        let sides = &mut sets[i].1;
        let label = r.label();
        match sides.iter_mut().find(|(l, _)| *l == label) {
            Some((_, runs)) => runs.push(r),
            None => sides.push((label, vec![r])),
        }
    }
    let mut out = String::new();
    for (set, sides) in &sets {
        let _ = writeln!(out, "medians of the rounds: {set}");
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let rates: Vec<Vec<f64>> = sides
            .iter()
            .map(|(_, runs)| {
                runs.iter()
                    .filter_map(|r| Some(r.publish.as_ref()?.events_per_sec))
                    .collect()
            })
            .collect();
        let medians: Vec<Option<f64>> = rates.iter().map(|v| median(v.clone())).collect();
        rows.push((
            "rounds".into(),
            sides.iter().map(|(_, r)| r.len().to_string()).collect(),
        ));
        rows.push((
            "publish rate (events/s), each round".into(),
            rates
                .iter()
                .map(|v| {
                    let each: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
                    each.join(" / ")
                })
                .collect(),
        ));
        rows.push((
            "publish rate (events/s), median".into(),
            medians.iter().map(|m| fixed(*m, 0)).collect(),
        ));
        let base = medians.first().copied().flatten();
        rows.push((
            format!("... / {}'s median", sides[0].0),
            medians
                .iter()
                .map(|m| fixed(m.zip(base).map(|(m, b)| m / b), 2))
                .collect(),
        ));
        for f in &FIGURES {
            let values: Vec<String> = sides
                .iter()
                .map(|(_, runs)| {
                    fixed(
                        median(runs.iter().filter_map(|r| (f.of)(r)).collect()),
                        f.digits,
                    )
                })
                .collect();
            if values.iter().any(|v| v != "-") {
                rows.push((format!("{}, median", f.label), values));
            }
        }
        write_table(&mut out, sides.iter().map(|(l, _)| l.as_str()), &rows);
    }
    out
}

fn write_table<'a>(
    out: &mut String,
    heads: impl Iterator<Item = &'a str>,
    rows: &[(String, Vec<String>)],
) {
    let heads: Vec<&str> = heads.collect();
    let label_w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..heads.len())
        .map(|c| {
            rows.iter()
                .map(|(_, v)| v[c].len())
                .chain([heads[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let _ = write!(out, "{:label_w$}", "");
    for (h, w) in heads.iter().zip(&widths) {
        let _ = write!(out, "  {h:>w$}");
    }
    out.push('\n');
    for (label, values) in rows {
        let _ = write!(out, "{label:label_w$}");
        for (v, w) in values.iter().zip(&widths) {
            let _ = write!(out, "  {v:>w$}");
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
        assert_eq!(median(Vec::new()), None);
    }
}
