use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn stream_starts_with_retry_then_delivers_published_event() {
    let app = spawn_app().await;
    let topic = unique_topic("smoke");
    let mut sse = app.stream(&format!("topic={topic}"), None).await;
    let first = sse.next_frame().await.unwrap();
    assert_eq!(first.retry, Some(200));

    let id = app.publish_ok(&topic, json!({"n": 1})).await;
    let ev = sse.next_event().await.unwrap();

    assert_eq!(ev.id_num(), id);
    assert_eq!(ev.json()["data"], json!({"n": 1}));
    app.stop().await;
}
