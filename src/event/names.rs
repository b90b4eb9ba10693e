//! Names and filters: topics, event types, idempotency keys and topic
//! filters, each existing only if its text passed the rules (docs/ARCHITECTURE.md,
//! "Events"). Nothing a publisher sends can therefore reach an SSE `id:`,
//! `event:` or `data:` line with a CR or LF in it.

use std::fmt;
use std::sync::Arc;

/// Longest topic accepted, in bytes (all accepted characters are ASCII).
pub const MAX_TOPIC_LEN: usize = 256;
/// Longest event type accepted.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 256;
/// Event types the stream itself or browsers give a meaning to: browsers
/// fire `error` and `open` themselves; herald's streams send `stream`,
/// `reset` and `auth-expiring`, and `replaced` and `revoked` are kept for
/// the streams a subject's cap or an admin ends (docs/ARCHITECTURE.md, "Streams you
/// can name and steer").
pub const RESERVED_TYPES: [&str; 7] = [
    "reset",
    "error",
    "open",
    "auth-expiring",
    "stream",
    "replaced",
    "revoked",
];

/// Why a topic, type, filter or key was refused; the text goes to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error(
        "topic {0:?} is invalid: 1-256 characters, segments of [A-Za-z0-9._-] separated by ':' or '/'"
    )]
    Topic(String),
    #[error("topic filter {0:?} is invalid: an exact topic, or a topic prefix ending in '*'")]
    Filter(String),
    #[error("event type {0:?} is invalid: 1-64 characters of [A-Za-z0-9._-]")]
    Type(String),
    #[error(
        "event type {0:?} is reserved (reset, error, open, auth-expiring, stream, replaced \
         and revoked have a meaning on herald's streams)"
    )]
    ReservedType(String),
    #[error("idempotency key is invalid: 1-256 visible ASCII characters")]
    Key,
    /// `data` is JSON but not I-JSON, or nests too deep (see `data.rs`).
    #[error("data is refused: {0}")]
    Data(String),
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

/// Whether `s` is one topic segment: non-empty, of `[A-Za-z0-9._-]` only,
/// with no separator and no `*`.
pub fn is_topic_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_TOPIC_LEN && s.bytes().all(is_name_char)
}

fn is_separator(c: u8) -> bool {
    matches!(c, b':' | b'/')
}

/// A topic such as `incident:inc-123` or `tenant/acme/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// # Errors
    /// [`Invalid::Topic`] unless the text is 1-256 characters of non-empty
    /// `[A-Za-z0-9._-]` segments separated by `:` or `/`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        // One pass: every byte a name character or a separator, and no
        // segment empty (no separator first, last, or after another).
        let mut after_separator = true;
        let ok = s.len() <= MAX_TOPIC_LEN
            && s.bytes().all(|c| {
                if is_separator(c) {
                    !std::mem::replace(&mut after_separator, true)
                } else {
                    after_separator = false;
                    is_name_char(c)
                }
            })
            && !after_separator;
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(Invalid::Topic(s.to_owned()))
        }
    }

    /// A topic read back from the log, which only ever stored valid ones.
    pub(crate) fn from_log(s: String) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SSE `event:` name; `message` unless the publisher names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(Arc<str>);

impl EventType {
    /// # Errors
    /// [`Invalid::Type`] for anything but 1-64 `[A-Za-z0-9._-]`;
    /// [`Invalid::ReservedType`] for `reset`, `error` and `open`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > MAX_TYPE_LEN || !s.bytes().all(is_name_char) {
            return Err(Invalid::Type(s.to_owned()));
        }
        if RESERVED_TYPES.contains(&s) {
            return Err(Invalid::ReservedType(s.to_owned()));
        }
        Ok(Self(s.into()))
    }

    /// A type read back from the log, which only ever stored valid ones.
    pub(crate) fn from_log(s: String) -> Self {
        Self(s.into())
    }

    pub fn message() -> Self {
        Self("message".into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A publisher-chosen idempotency key: visible ASCII, so it is safe in logs
/// and headers. A key given in the `Idempotency-Key` header of a batch names
/// the whole batch; each event of it carries the key and its position, so
/// batch keys can never collide with a key some single event chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    key: String,
    index: Option<i32>,
}

impl IdempotencyKey {
    /// # Errors
    /// [`Invalid::Key`] unless 1-256 characters in `!`..=`~`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > MAX_KEY_LEN || !s.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(Invalid::Key);
        }
        Ok(Self {
            key: s.to_owned(),
            index: None,
        })
    }

    /// The key of event `index` of a batch named by this key.
    #[must_use]
    pub fn in_batch(&self, index: usize) -> Self {
        Self {
            key: self.key.clone(),
            index: Some(i32::try_from(index).unwrap_or(i32::MAX)),
        }
    }

    /// A key read back from the log.
    pub(crate) fn from_log(key: String, index: Option<i32>) -> Self {
        Self { key, index }
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The position in a batch, for keys that name a batch.
    pub fn index(&self) -> Option<i32> {
        self.index
    }
}

/// One subscription filter: an exact topic, or a prefix ending in `*`
/// (`incident:*` matches `incident:inc-1` and `incident:a/b`; `*` alone
/// matches every topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicFilter {
    Exact(Topic),
    Prefix(Arc<str>),
}

impl TopicFilter {
    /// # Errors
    /// [`Invalid::Filter`] unless an exact topic, or a prefix of
    /// topic characters followed by one final `*`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || Invalid::Filter(s.to_owned());
        match s.strip_suffix('*') {
            Some(prefix) => {
                let ok = prefix.len() < MAX_TOPIC_LEN
                    && prefix.bytes().all(|c| is_name_char(c) || is_separator(c))
                    && !prefix.starts_with([':', '/'])
                    && !prefix.contains("::")
                    && !prefix.contains("//")
                    && !prefix.contains(":/")
                    && !prefix.contains("/:");
                if ok {
                    Ok(Self::Prefix(prefix.into()))
                } else {
                    Err(bad())
                }
            }
            None => Topic::parse(s).map(Self::Exact).map_err(|_| bad()),
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            Self::Exact(t) => t.as_str() == topic,
            Self::Prefix(p) => topic.starts_with(&**p),
        }
    }

    /// The filter as it is written: the topic, or the prefix and `*`.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Self::Exact(t) => t.as_str().into(),
            Self::Prefix(p) => format!("{p}*").into(),
        }
    }

    /// The filter as a SQL `LIKE` pattern (prefix characters never include
    /// `%`, `_` is escaped).
    pub fn like_pattern(&self) -> String {
        match self {
            Self::Exact(t) => t.as_str().replace('_', "\\_"),
            Self::Prefix(p) => format!("{}%", p.replace('_', "\\_")),
        }
    }
}

/// The set of filters one subscriber or history query asked for; empty means
/// every topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(Vec<TopicFilter>);

impl Filters {
    pub fn new(filters: Vec<TopicFilter>) -> Self {
        Self(filters)
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|f| f.matches(topic))
    }

    /// Each filter as asked (the hub indexes subscribers by them).
    pub fn iter(&self) -> std::slice::Iter<'_, TopicFilter> {
        self.0.iter()
    }

    /// Filters from their text (as a stream's record keeps them).
    ///
    /// # Errors
    /// The first text that is not a filter.
    pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Self, Invalid> {
        let filters: Vec<TopicFilter> = list
            .iter()
            .map(|f| TopicFilter::parse(f.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self(filters))
    }

    /// Every topic any of `sets` matches.
    pub fn union<'a>(sets: impl IntoIterator<Item = &'a Filters>) -> Self {
        let mut out: Vec<TopicFilter> = Vec::new();
        for set in sets {
            if set.is_all() {
                return Self::default();
            }
            for f in &set.0 {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        Self(out)
    }

    pub fn is_all(&self) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|f| matches!(f, TopicFilter::Prefix(p) if p.is_empty()))
    }

    /// The filters as the log query takes them (`log::read_after`): the
    /// exact topics no prefix already covers (each found through the
    /// `(topic, id)` index, so a per-user topic is read without reading
    /// anyone else's events), and the prefixes as `LIKE` patterns (read in
    /// id order with a filter). Both empty when every topic matches.
    pub fn log_selection(&self) -> LogSelection {
        let mut selection = LogSelection::default();
        if self.is_all() {
            return selection;
        }
        for f in &self.0 {
            match f {
                TopicFilter::Exact(t) => {
                    let covered = self
                        .0
                        .iter()
                        .any(|p| matches!(p, TopicFilter::Prefix(_)) && p.matches(t.as_str()));
                    if !covered && !selection.exact.iter().any(|e| e == t.as_str()) {
                        selection.exact.push(t.as_str().to_owned());
                    }
                }
                TopicFilter::Prefix(_) => selection.prefixes.push(f.like_pattern()),
            }
        }
        selection
    }
}

#[cfg(test)]
impl Filters {
    /// Filters from their text, for tests; panics on an invalid one.
    pub fn of(list: &[&str]) -> Self {
        Self::new(
            list.iter()
                .map(|f| TopicFilter::parse(f).unwrap())
                .collect(),
        )
    }
}

/// [`Filters::log_selection`]: what the log query reads. Every event it
/// returns matches exactly one part, so none comes twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSelection {
    /// Exact topics, each not matched by any of `prefixes`.
    pub exact: Vec<String>,
    /// `LIKE` patterns of the prefix filters.
    pub prefixes: Vec<String>,
}

impl LogSelection {
    /// Every topic: neither part restricts the read.
    pub fn is_all(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_accepts_segments_with_both_separators() {
        for ok in ["a", "incident:inc-123", "tenant/acme/alerts", "a.b_c-d:e/f"] {
            assert!(Topic::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn topic_refuses_empty_segments_and_foreign_characters() {
        let long = "a".repeat(257);
        for bad in [
            "",
            ":a",
            "a:",
            "a::b",
            "/",
            "a/:b",
            "a:/",
            "a b",
            "a\nb",
            "é",
            "a*",
            long.as_str(),
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Topic::parse(&"a".repeat(256)).is_ok());
    }

    #[test]
    fn type_refuses_reserved_names_and_newlines() {
        assert!(EventType::parse("incident.updated").is_ok());
        for bad in ["", "a b", "x\r", &"a".repeat(65)] {
            assert_eq!(EventType::parse(bad), Err(Invalid::Type(bad.to_owned())));
        }
        for reserved in RESERVED_TYPES {
            assert!(matches!(
                EventType::parse(reserved),
                Err(Invalid::ReservedType(_))
            ));
        }
    }

    #[test]
    fn filters_match_exact_and_prefix() {
        let f = Filters::new(vec![
            TopicFilter::parse("incident:*").unwrap(),
            TopicFilter::parse("ops").unwrap(),
        ]);
        assert!(f.matches("incident:inc-1"));
        assert!(f.matches("ops"));
        assert!(!f.matches("ops:x"));
        assert!(!f.matches("incidents"));
        assert!(Filters::default().matches("anything"));
        assert!(Filters::new(vec![TopicFilter::parse("*").unwrap()]).is_all());
        for bad in ["", "**", "a*b", ":*", "a::*", "a b*"] {
            assert!(TopicFilter::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_selection_reads_each_event_through_one_part() {
        let sel = Filters::of(&["user:1", "user:2", "team:*", "team:a", "user:1"]).log_selection();
        assert_eq!(
            sel.exact,
            ["user:1", "user:2"],
            "team:a is in team:*, user:1 once"
        );
        assert_eq!(sel.prefixes, ["team:%"]);
        assert!(!sel.is_all());
        assert!(Filters::of(&["*", "user:1"]).log_selection().is_all());
        assert!(Filters::default().log_selection().is_all());
    }

    #[test]
    fn like_pattern_escapes_underscore() {
        assert_eq!(
            TopicFilter::parse("a_b:*").unwrap().like_pattern(),
            "a\\_b:%"
        );
    }
}
