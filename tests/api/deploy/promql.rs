//! The metric names a PromQL expression reads, found by a small tokenizer:
//! enough of PromQL's lexical rules to tell a metric name from a function
//! or aggregation (a name followed by `(`), a keyword (`by`, `on`, `and`,
//! `offset`…), a label name (inside `{…}` matchers and the label lists of
//! `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`), a string,
//! a number or duration, and a Grafana variable (`$instance`,
//! `$__rate_interval`). Prometheus' own parser is Go; the expressions are
//! also run by a real Prometheus in `prometheus.rs`, which proves they
//! parse, while this proves they name metrics that exist.

use std::collections::BTreeSet;

/// Names that are operators or keywords where a metric name could stand.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every metric name `expr` selects.
pub(super) fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_until(&chars, i, '}'),
            '[' => i = skip_until(&chars, i, ']'),
            '#' => i = skip_while(&chars, i, |c| c != '\n'),
            '$' => i = skip_while(&chars, i + 1, is_name_char),
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (`5m`, `1e3`, `0x1f`, `1h30m`).
                i = skip_while(&chars, i, |c| c.is_ascii_alphanumeric() || c == '.');
            }
            c if is_name_start(c) => {
                let end = skip_while(&chars, i, is_name_char);
                let word: String = chars[i..end].iter().collect();
                let next = skip_while(&chars, end, char::is_whitespace);
                let lower = word.to_ascii_lowercase();
                if LABEL_LISTS.contains(&lower.as_str()) {
                    i = if chars.get(next) == Some(&'(') {
                        skip_until(&chars, next, ')')
                    } else {
                        end
                    };
                    continue;
                }
                // A function or aggregation: `rate(`, `sum(`, `sum by (`.
                let next_word: String = chars[next..skip_while(&chars, next, is_name_char)]
                    .iter()
                    .collect();
                let is_call = chars.get(next) == Some(&'(')
                    || matches!(next_word.to_ascii_lowercase().as_str(), "by" | "without");
                if !is_call && !KEYWORDS.contains(&lower.as_str()) {
                    names.insert(word);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    names
}

/// A Grafana template variable's query: `label_values(selector, label)`
/// reads the selector's metric; its last argument is a label name.
pub(super) fn template_metric_names(query: &str) -> BTreeSet<String> {
    let query = query.trim();
    match query
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    {
        Some(args) => match args.rsplit_once(',') {
            Some((selector, _label)) => metric_names(selector),
            // `label_values(label)` reads every metric.
            None => BTreeSet::new(),
        },
        None => metric_names(query),
    }
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_while(chars: &[char], mut i: usize, keep: impl Fn(char) -> bool) -> usize {
    while i < chars.len() && keep(chars[i]) {
        i += 1;
    }
    i
}

/// Past the string that starts at `i` (backslash escapes, except in raw
/// backtick strings).
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if quote != '`' && chars[j] == '\\' {
            2
        } else {
            1
        };
    }
    j + 1
}

/// Past the `close` that ends the bracket opened at `i`, skipping strings
/// (a label value may hold `}` or `)`).
fn skip_until(chars: &[char], i: usize, close: char) -> usize {
    let mut j = i + 1;
    while j < chars.len() && chars[j] != close {
        j = match chars[j] {
            '"' | '\'' | '`' => skip_string(chars, j),
            _ => j + 1,
        };
    }
    j + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(expr: &str) -> Vec<String> {
        metric_names(expr).into_iter().collect()
    }

    #[test]
    fn finds_metric_names_and_nothing_else() {
        assert_eq!(
            names(
                r#"histogram_quantile(0.99, sum by (job, le) (rate(herald_publish_duration_seconds_bucket{job=~"$job", instance=~"a}b"}[$__rate_interval])))"#
            ),
            ["herald_publish_duration_seconds_bucket"]
        );
        assert_eq!(
            names(
                "(sum by (job, instance) (herald_db_pool_connections{state=\"in_use\"}) \
                 >= on (job, instance) herald_db_pool_max_connections) \
                 and on (job, instance) herald_db_pool_waiting > 0"
            ),
            [
                "herald_db_pool_connections",
                "herald_db_pool_max_connections",
                "herald_db_pool_waiting",
            ]
        );
        assert_eq!(
            names("(sum(herald_ready) or vector(0)) < 1"),
            ["herald_ready"]
        );
        assert_eq!(
            names("time() - max(x_seconds offset 5m) > 1e3 unless bool NaN"),
            ["x_seconds"]
        );
        assert_eq!(
            names("sum(a) by (le) / ignoring(le) group_left(x) b * c:recorded"),
            ["a", "b", "c:recorded"]
        );
        assert_eq!(
            names("sum without (instance) (rate(y_total[5m:30s])) # a comment naming z"),
            ["y_total"]
        );
    }

    #[test]
    fn reads_the_selector_of_a_grafana_label_query() {
        assert_eq!(
            template_metric_names(r#"label_values(herald_build_info{job=~"$job"}, instance)"#)
                .into_iter()
                .collect::<Vec<_>>(),
            ["herald_build_info"]
        );
        assert!(template_metric_names("label_values(job)").is_empty());
    }
}
