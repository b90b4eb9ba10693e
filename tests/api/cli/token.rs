//! `herald token` mints what the server verifies, and `--token` /
//! `HERALD_TOKEN` carry it for `herald publish` and `herald tail`.

use crate::helpers::*;

use super::*;

#[tokio::test]
async fn a_minted_token_publishes_and_tails_within_its_grants() {
    let app = spawn_app_with_tokens(|_| {}).await;
    let minted = run(
        &[
            "token",
            "--subject",
            "alice",
            "--subscribe",
            "user:{sub}:*",
            "--publish",
            "user:{sub}:outbox",
            "--jwt-secret",
            SECRET,
        ],
        None,
    )
    .await;
    assert!(minted.status.success(), "{}", stderr(&minted));
    let token = stdout(&minted).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "{token}");

    let mut tail = Tail::connected(&app.base, &["--token", &token, "user:alice:*"]).await;
    let out = publish(
        &app,
        &["--token", &token, "user:alice:outbox", "hello"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let line = tail.line().await;
    assert!(
        line.contains("user:alice:outbox") && line.contains("hello"),
        "{line}"
    );

    let refused = publish(&app, &["--token", &token, "user:bob:inbox", "x"], None).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("does not grant publishing"),
        "{}",
        stderr(&refused)
    );
    let anonymous = publish(&app, &["user:alice:outbox", "x"], None).await;
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        stderr(&anonymous).contains("token is required"),
        "{}",
        stderr(&anonymous)
    );
    tail.signal("TERM");
    app.stop().await;
}

#[tokio::test]
async fn token_without_a_secret_is_a_usage_error() {
    let out = run(&["token", "--subject", "alice"], None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--jwt-secret-file"),
        "{}",
        stderr(&out)
    );
}
