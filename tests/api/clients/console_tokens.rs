//! The console at `/` with herald requiring tokens (issue #10): it reads
//! and publishes with the browser's cookie, and says in words why it may
//! not, including when its session ran out.

use std::time::Duration;

use super::run::{node, run_ok};
use super::tokens::{ALICE_READS, SECRET, backend_token, mint, with_tokens};
use crate::helpers::*;

#[tokio::test]
async fn console_with_a_cookie_reads_its_topics_and_says_why_it_may_not_read_or_publish() {
    let app = spawn_app_with(with_tokens).await;
    let (alice, _) = mint("alice", Duration::from_secs(3600), ALICE_READS, &[]);

    run_ok(
        node("console_tokens.mjs")
            .env("HERALD_URL", &app.base)
            .env("ALICE_TOKEN", alice)
            .env("BACKEND_TOKEN", backend_token()),
    )
    .await;

    app.stop().await;
}

#[tokio::test]
async fn console_says_the_session_expired_when_its_token_runs_out() {
    let app = spawn_app_with(with_tokens).await;

    // The script mints alice's short-lived token itself, right before it
    // opens the console.
    run_ok(
        node("console_expired.mjs")
            .env("HERALD_URL", &app.base)
            .env("JWT_SECRET", SECRET),
    )
    .await;

    app.stop().await;
}
