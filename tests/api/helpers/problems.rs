//! Assertions shared by the publish, idempotency, refusal and outage tests.

use serde_json::Value;

use super::{TestApp, TestDb};

/// `POST /v1/events` with this JSON text as the body, byte for byte
/// (`serde_json::Value` would sort keys and respell `1.50` as `1.5`).
pub async fn post_text(app: &TestApp, body: &str) -> reqwest::Response {
    app.post_raw("/v1/events", Some("application/json"), body.to_owned())
        .await
}

/// Rows in the event log, read straight from PostgreSQL.
pub async fn stored_rows(db: &TestDb) -> i64 {
    let mut conn = db.connect().await;
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(&mut conn)
        .await
        .expect("count events")
}

pub async fn assert_nothing_stored(app: &TestApp) {
    assert_eq!(stored_rows(&app.db).await, 0, "rows in the event log");
    let history: Vec<Value> = app.get("/v1/events").await.json().await.unwrap();
    assert_eq!(history, Vec::<Value>::new(), "history");
}

/// Asserts an RFC 9457 refusal: status, content type, `status`, `code`, and
/// a `detail` that mentions `mentions`. Returns the body.
pub async fn assert_problem(
    res: reqwest::Response,
    status: u16,
    code: &str,
    mentions: &str,
) -> Value {
    assert_eq!(res.status(), status, "status");
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "content type"
    );
    let body: Value = res.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    let detail = body["detail"].as_str().expect("detail is a string");
    assert!(
        detail.contains(mentions),
        "detail {detail:?} should mention {mentions:?}"
    );
    body
}

/// The envelope's id, checking that it is a string of a positive integer.
pub fn id_of(envelope: &Value) -> i64 {
    let id: i64 = envelope["id"]
        .as_str()
        .expect("id is a string")
        .parse()
        .expect("id is an integer");
    assert!(id > 0, "id {id} is positive");
    id
}

pub fn assert_rfc3339(envelope: &Value) {
    let time = envelope["time"].as_str().expect("time is a string");
    ::time::OffsetDateTime::parse(time, &::time::format_description::well_known::Rfc3339)
        .expect("time is RFC 3339");
}
