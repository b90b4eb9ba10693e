//! The delivery audit: did subject S get event E, and if not, why
//! (`GET /v1/events/{id}/deliveries?subject=S`, `herald explain`).
//!
//! It is answered from the records, never from a guess: the event's id,
//! topic and commit time from the log, and every stream of S from the
//! registry, with the topics each had in force at E (a named stream's
//! history, `herald_topic_changes`), the cursor it started after, whether
//! it resumed, when and why it ended, the last id it wrote and the id a
//! reset made it go on after. For each stream whose topics matched E:
//!
//! - started after E's cursor and wrote past E: written, live, or on resume
//!   when E was committed before the stream opened (it was replayed);
//! - still open: its last id is written at its end, so the answer is the
//!   record's: "open and live on instance X since T; herald writes every
//!   matching event to a live stream unless it ends" (`presumed_written`).
//!   Asking the instance over the control channel would add a round trip
//!   through PostgreSQL for a fact that only changes by the stream ending,
//!   which the record then tells;
//! - a reset past E: E was pruned before the stream resumed;
//! - ended before writing E: why it ended, and what the next stream did.
//!
//! Then one answer for S, in a sentence a support engineer reads without
//! the code.

use std::collections::HashMap;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Registry;
use crate::event::TopicFilter;
use crate::log::LogError;

/// Most streams of a subject read for one event.
const MAX_STREAMS: i64 = 500;

/// The event asked about, as the log knows it.
#[derive(Debug, Serialize)]
pub struct EventFacts {
    pub id: String,
    /// `None` once retention pruned it: its topic is no longer known.
    pub topic: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub time: Option<OffsetDateTime>,
    pub pruned: bool,
}

/// What one stream of the subject did with the event.
#[derive(Debug, Serialize)]
pub struct StreamDelivery {
    pub stream: String,
    pub handle: Option<String>,
    pub instance: String,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    pub start_cursor: String,
    pub resumed: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    pub last_id: Option<String>,
    /// The topics in force at the event's id.
    pub topics: Vec<String>,
    /// `None` when the event's topic is no longer known (pruned).
    pub matched: Option<bool>,
    /// `written`, `presumed_written`, `not_written`, `pruned`,
    /// `did_not_match`, `started_after` or `unknown`.
    pub verdict: &'static str,
    /// `live` or `resume`, for a written event.
    pub how: Option<&'static str>,
    pub sentence: String,
}

/// The audit's answer.
#[derive(Debug, Serialize)]
pub struct Audit {
    pub event: EventFacts,
    pub subject: String,
    /// `true` when a stream wrote it (or, open, will have), `false` when
    /// none did, `None` when the records cannot tell (a pruned event's
    /// topic is unknown).
    pub delivered: Option<bool>,
    /// Why, in one code: `written`, `presumed_written`, `no_stream`,
    /// `ended_before`, `did_not_match`, `pruned`, `unknown`.
    pub reason: &'static str,
    /// The answer in words.
    pub answer: String,
    pub streams: Vec<StreamDelivery>,
}

/// Why the audit could not answer.
#[derive(Debug)]
pub enum AuditError {
    /// No event with that id was ever assigned.
    Unknown,
    Log(LogError),
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        Self::Log(e.into())
    }
}

type StreamRow = (
    String,
    Option<String>,
    String,
    Vec<String>,
    OffsetDateTime,
    i64,
    bool,
    Option<OffsetDateTime>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A stream's record, read for the audit.
struct Stream {
    id: String,
    handle: Option<String>,
    instance: String,
    topics: Vec<String>,
    opened_at: OffsetDateTime,
    start_cursor: i64,
    resumed: bool,
    ended_at: Option<OffsetDateTime>,
    end_reason: Option<String>,
    last_id: Option<i64>,
    reset_after: Option<i64>,
}

fn when(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000);
    t.map_or_else(
        |_| String::new(),
        |t| t.format(&Rfc3339).unwrap_or_default(),
    )
}

/// Why a stream ended, in words.
fn ended_because(reason: Option<&str>) -> &'static str {
    match reason.unwrap_or("") {
        "client_gone" => "the client closed the connection (or it broke)",
        "lagged" => "it fell behind and herald cut it (its queue was full)",
        "stalled" => "its client stopped reading",
        "drain" => "its instance was stopping (a deploy)",
        "token_expired" => "its token expired",
        "replaced" => "a newer stream of the same subject replaced it (over the cap)",
        "revoked" => "an admin ended it or revoked its subject",
        "ended" => "an admin ended it",
        "superseded" => "the same named stream connected again",
        "instance_lost" => "its instance was lost (killed, or cut off from the database)",
        "error" => "writing to it failed",
        _ => "it ended",
    }
}

impl Registry {
    /// Did `subject` get event `id`, and if not, why.
    ///
    /// # Errors
    /// [`AuditError::Unknown`] for an id never assigned; [`AuditError::Log`]
    /// when PostgreSQL cannot answer.
    pub async fn audit(&self, id: i64, subject: &str) -> Result<Audit, AuditError> {
        let pool = self.pool();
        let (last_id, pruned_through): (i64, i64) =
            sqlx::query_as("SELECT last_id, pruned_through FROM log_head")
                .fetch_one(pool)
                .await?;
        if id < 1 || id > last_id {
            return Err(AuditError::Unknown);
        }
        let event: Option<(String, OffsetDateTime)> =
            sqlx::query_as("SELECT topic, time FROM events WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        let facts = EventFacts {
            id: id.to_string(),
            topic: event.as_ref().map(|e| e.0.clone()),
            time: event.as_ref().map(|e| e.1),
            pruned: event.is_none() && id <= pruned_through,
        };
        // The streams that could have carried it: open, or ended after it
        // was committed, and the last one that ended before (the one that
        // explains a gap). A pruned event has no time: every stream that
        // ended at or after its cursor's start.
        let at = facts.time.unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let rows: Vec<StreamRow> = sqlx::query_as(
            "(SELECT s.id, s.handle, s.instance, s.topics, s.opened_at, s.start_cursor, \
               s.resumed, \
               CASE WHEN s.ended_at IS NULL AND (i.lease_until IS NULL OR i.lease_until < now()) \
               THEN coalesce(i.lease_until, now()) ELSE s.ended_at END, \
               CASE WHEN s.ended_at IS NULL AND (i.lease_until IS NULL OR i.lease_until < now()) \
               THEN 'instance_lost' ELSE s.end_reason END, s.last_id, s.reset_after \
             FROM herald_streams s LEFT JOIN herald_instances i ON i.id = s.instance \
             WHERE s.subject = $1 AND (s.ended_at IS NULL OR s.ended_at >= $2 \
               OR s.last_id >= $3) \
             ORDER BY s.opened_at LIMIT $4) \
             UNION ALL \
             (SELECT s.id, s.handle, s.instance, s.topics, s.opened_at, s.start_cursor, \
               s.resumed, s.ended_at, s.end_reason, s.last_id, s.reset_after \
             FROM herald_streams s \
             WHERE s.subject = $1 AND s.ended_at < $2 AND coalesce(s.last_id, 0) < $3 \
             ORDER BY s.ended_at DESC LIMIT 1)",
        )
        .bind(subject)
        .bind(at)
        .bind(id)
        .bind(MAX_STREAMS)
        .fetch_all(pool)
        .await?;
        let mut streams: Vec<Stream> = rows
            .into_iter()
            .map(|r| Stream {
                id: r.0,
                handle: r.1,
                instance: r.2,
                topics: r.3,
                opened_at: r.4,
                start_cursor: r.5,
                resumed: r.6,
                ended_at: r.7,
                end_reason: r.8,
                last_id: r.9,
                reset_after: r.10,
            })
            .collect();
        streams.sort_by(|a, b| (a.opened_at, &a.id).cmp(&(b.opened_at, &b.id)));
        let history = self.topic_history(&streams).await?;
        for s in &mut streams {
            if let Some(changes) = s.handle.as_ref().and_then(|h| history.get(h))
                && let Some((_, topics)) = changes.iter().rev().find(|(at, _)| *at < id)
            {
                s.topics = topics.clone();
            }
        }
        Ok(judge(facts, subject, &streams))
    }

    /// Each named stream's topics over time: `(effective_at, topics)`,
    /// oldest first, by handle.
    async fn topic_history(
        &self,
        streams: &[Stream],
    ) -> Result<HashMap<String, Vec<(i64, Vec<String>)>>, sqlx::Error> {
        let handles: Vec<&str> = streams.iter().filter_map(|s| s.handle.as_deref()).collect();
        if handles.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, i64, Vec<String>)> = sqlx::query_as(
            "SELECT handle, effective_at, topics FROM herald_topic_changes \
             WHERE handle = ANY($1) ORDER BY handle, effective_at",
        )
        .bind(&handles)
        .fetch_all(self.pool())
        .await?;
        let mut history: HashMap<String, Vec<(i64, Vec<String>)>> = HashMap::new();
        for (handle, at, topics) in rows {
            history.entry(handle).or_default().push((at, topics));
        }
        Ok(history)
    }
}

fn matches(topics: &[String], topic: &str) -> bool {
    topics
        .iter()
        .filter_map(|f| TopicFilter::parse(f).ok())
        .any(|f| f.matches(topic))
}

/// The verdict of each stream, then the subject's answer.
fn judge(event: EventFacts, subject: &str, streams: &[Stream]) -> Audit {
    let id: i64 = event.id.parse().unwrap_or_default();
    let name = format!("event #{id}");
    let what = match (&event.topic, event.time) {
        (Some(topic), Some(time)) => format!("{name} ({topic}, committed {})", when(time)),
        _ => name.clone(),
    };
    let mut out = Vec::new();
    for s in streams {
        let matched = event.topic.as_deref().map(|t| matches(&s.topics, t));
        let on = format!("stream {} on instance {}", s.id, s.instance);
        let replayed = s.resumed && event.time.is_some_and(|t| t < s.opened_at);
        let how = if replayed { "resume" } else { "live" };
        // Open when the event was committed: not ended by then, or it
        // wrote past it. A pruned event has no time: its last id tells.
        let open_at_event = s.ended_at.is_none()
            || s.last_id.is_some_and(|l| l >= id)
            || matches!((s.ended_at, event.time), (Some(e), Some(t)) if e >= t);
        let (verdict, sentence) = if s.start_cursor >= id {
            let resumed = if s.resumed {
                format!("resuming from #{}", s.start_cursor)
            } else {
                "without resuming (no Last-Event-ID)".to_owned()
            };
            (
                "started_after",
                format!(
                    "{on} opened at {} {resumed}: it starts after {name}.",
                    when(s.opened_at)
                ),
            )
        } else if s.reset_after.is_some_and(|r| r >= id) {
            (
                "pruned",
                format!(
                    "{on} resumed from #{} at {}, but herald had pruned {name} by then: it \
                     sent a reset and went on after #{}.",
                    s.start_cursor,
                    when(s.opened_at),
                    s.reset_after.unwrap_or_default()
                ),
            )
        } else if !open_at_event {
            let at = s.ended_at.map(when).unwrap_or_default();
            (
                "not_written",
                format!(
                    "{on} ended at {at}, before {name}: {}.",
                    ended_because(s.end_reason.as_deref())
                ),
            )
        } else if matched == Some(false) {
            (
                "did_not_match",
                format!(
                    "{on} followed {} at {name}, which does not match {}.",
                    s.topics.join(", "),
                    event.topic.as_deref().unwrap_or_default()
                ),
            )
        } else if s.ended_at.is_none() {
            let since = if replayed {
                format!(
                    "open since it resumed from #{} at {}, after {name} was committed, so \
                     herald replayed it",
                    s.start_cursor,
                    when(s.opened_at)
                )
            } else {
                format!(
                    "open and live since {}; herald writes every matching event to a live \
                     stream unless it ends",
                    when(s.opened_at)
                )
            };
            ("presumed_written", format!("{on} is {since}."))
        } else if s.last_id.is_some_and(|l| l >= id) {
            let how_words = if replayed {
                format!(
                    "on resume (it reconnected at {} from #{}, and herald replayed it)",
                    when(s.opened_at),
                    s.start_cursor
                )
            } else {
                "live".to_owned()
            };
            (
                "written",
                format!("herald wrote {name} to {on} {how_words}."),
            )
        } else {
            let at = s.ended_at.map(when).unwrap_or_default();
            (
                "not_written",
                format!(
                    "{on} ended at {at}, before herald wrote {name} to it: {}.",
                    ended_because(s.end_reason.as_deref())
                ),
            )
        };
        let written = matches!(verdict, "written" | "presumed_written");
        out.push(StreamDelivery {
            stream: s.id.clone(),
            handle: s.handle.clone(),
            instance: s.instance.clone(),
            opened_at: s.opened_at,
            start_cursor: s.start_cursor.to_string(),
            resumed: s.resumed,
            ended_at: s.ended_at,
            end_reason: s.end_reason.clone(),
            last_id: s.last_id.map(|l| l.to_string()),
            topics: s.topics.clone(),
            matched,
            verdict: if matched.is_none() && written {
                "unknown"
            } else {
                verdict
            },
            how: written.then_some(how),
            sentence,
        });
    }
    let (delivered, reason, answer) = answer(subject, &what, &event, &out);
    Audit {
        event,
        subject: subject.to_owned(),
        delivered,
        reason,
        answer,
        streams: out,
    }
}

/// The subject's answer, from its streams' verdicts.
fn answer(
    subject: &str,
    what: &str,
    event: &EventFacts,
    streams: &[StreamDelivery],
) -> (Option<bool>, &'static str, String) {
    let find = |v: &str| streams.iter().find(|s| s.verdict == v);
    if let Some(s) = find("written") {
        return (
            Some(true),
            "written",
            format!("{subject} got {what}: {}", s.sentence),
        );
    }
    if let Some(s) = find("presumed_written") {
        let text = format!(
            "{subject} got {what}, as far as the records tell: {}",
            s.sentence
        );
        return (Some(true), "presumed_written", text);
    }
    if let Some(s) = find("pruned") {
        let text = format!(
            "{subject} did not get {what}: no stream of theirs was open to carry it, and {}",
            lowercase_first(&s.sentence)
        );
        return (Some(false), "pruned", text);
    }
    if event.pruned {
        let text = format!(
            "{what} is no longer in the log (retention pruned it), so its topic is unknown and \
             herald cannot tell whether {subject}'s streams matched it."
        );
        return (None, "unknown", text);
    }
    if let Some(s) = find("did_not_match") {
        let text = format!(
            "{subject} did not get {what}: the topics their stream followed did not match it. {}",
            s.sentence
        );
        return (Some(false), "did_not_match", text);
    }
    let ended = streams
        .iter()
        .rev()
        .find(|s| s.verdict == "not_written" && s.matched != Some(false));
    if let Some(s) = ended {
        let next = streams
            .iter()
            .find(|n| n.verdict == "started_after" && n.opened_at >= s.opened_at);
        let then = match next {
            Some(n) if n.resumed => format!(
                " The next one, stream {}, resumed from #{}, after it.",
                n.stream, n.start_cursor
            ),
            Some(n) => format!(
                " The next one, stream {}, opened at {} without resuming (no Last-Event-ID), \
                 so it started after it.",
                n.stream,
                when(n.opened_at)
            ),
            None => " No stream of theirs has opened since.".to_owned(),
        };
        let text = format!("{subject} did not get {what}: {}{then}", s.sentence);
        return (Some(false), "ended_before", text);
    }
    let text = format!(
        "{subject} did not get {what}: no stream of theirs was open when it was committed, and \
         none has resumed from before it yet."
    );
    (Some(false), "no_stream", text)
}

fn lowercase_first(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map_or_else(String::new, |f| f.to_lowercase().chain(c).collect())
}
