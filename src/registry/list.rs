//! `GET /v1/streams`: the registry's streams across instances, as the admin
//! API lists them. A stream whose instance's lease has passed is shown
//! ended (`instance_lost`, at the lease's end) even before an instance's
//! upkeep marks it so.

use serde::Serialize;
use time::OffsetDateTime;

use super::Registry;
use crate::event::TopicFilter;
use crate::log::LogError;

/// Most streams in one answer.
pub const MAX_LISTED: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    Open,
    Ended,
    All,
}

pub struct ListQuery {
    pub subject: Option<String>,
    /// Streams that would receive an event of this topic.
    pub topic: Option<String>,
    pub handle: Option<String>,
    pub state: StreamState,
    pub limit: i64,
}

#[derive(Debug, Serialize)]
pub struct StreamView {
    pub id: String,
    pub handle: Option<String>,
    pub subject: Option<String>,
    pub instance: String,
    pub instance_name: Option<String>,
    pub client_addr: String,
    pub user_agent: Option<String>,
    pub topics: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub opened_at: OffsetDateTime,
    /// The id it started after, a string as ids are everywhere.
    pub start_cursor: String,
    pub resumed: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<String>,
    pub last_id: Option<String>,
}

type Row = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    Option<String>,
    Vec<String>,
    OffsetDateTime,
    i64,
    bool,
    Option<OffsetDateTime>,
    Option<String>,
    Option<i64>,
);

impl Registry {
    /// The streams `query` asks for, newest first.
    ///
    /// # Errors
    /// [`LogError`] when PostgreSQL cannot answer.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<StreamView>, LogError> {
        let state = match query.state {
            StreamState::Open => "AND s.ended_at IS NULL AND i.lease_until >= now()",
            StreamState::Ended => {
                "AND (s.ended_at IS NOT NULL OR i.lease_until IS NULL OR i.lease_until < now())"
            }
            StreamState::All => "",
        };
        let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.id, s.handle, s.subject, s.instance, i.name, s.client_addr, s.user_agent, \
             s.topics, s.opened_at, s.start_cursor, s.resumed, \
             CASE WHEN s.ended_at IS NULL AND (i.lease_until IS NULL OR i.lease_until < now()) \
             THEN coalesce(i.lease_until, now()) ELSE s.ended_at END, \
             CASE WHEN s.ended_at IS NULL AND (i.lease_until IS NULL OR i.lease_until < now()) \
             THEN 'instance_lost' ELSE s.end_reason END, s.last_id \
             FROM herald_streams s LEFT JOIN herald_instances i ON i.id = s.instance \
             WHERE ($1::text IS NULL OR s.subject = $1) AND ($2::text IS NULL OR s.handle = $2) \
             {state} ORDER BY s.opened_at DESC, s.id DESC LIMIT $3"
        )))
        .bind(query.subject.as_deref())
        .bind(query.handle.as_deref())
        .bind(query.limit.clamp(1, MAX_LISTED))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter(|r| {
                query.topic.as_deref().is_none_or(|topic| {
                    r.7.iter()
                        .filter_map(|f| TopicFilter::parse(f).ok())
                        .any(|f| f.matches(topic))
                })
            })
            .map(|r| StreamView {
                id: r.0,
                handle: r.1,
                subject: r.2,
                instance: r.3,
                instance_name: r.4,
                client_addr: r.5,
                user_agent: r.6,
                topics: r.7,
                opened_at: r.8,
                start_cursor: r.9.to_string(),
                resumed: r.10,
                ended_at: r.11,
                end_reason: r.12,
                last_id: r.13.map(|id| id.to_string()),
            })
            .collect())
    }
}
