//! herald.js in Chromium (issue #24): the tabs of one browser context
//! share one stream; another tab takes it over when the leader tab closes
//! or freezes, and a frozen tab misses nothing once resumed; subscriptions
//! steer that stream without reconnecting; `after:` backfills across a
//! topic change; tokens (from `getToken` or a cookie) are renewed through
//! their expiries; `replaced` and `revoked` stop every tab; restarts lose
//! nothing; `share: false` opts out.
//!
//! Each test runs a `tests/browser/heraldjs_*.mjs` script, which loads
//! `/herald.js` from herald into blank same-origin pages and checks what
//! every handler got against herald's log (`heraldjs_lib.mjs`). The scripts
//! run the herald binary themselves: they pass it flags, read its log,
//! restart it on the same port, and count its streams on `/metrics`, which
//! in process would be shared with every other test (one global recorder).

use crate::helpers::*;

use super::run::{node, run_ok};

/// Runs `script` with the herald binary and a fresh database, for the
/// script to start (and stop, and restart) herald itself.
async fn with_binary(script: &str) {
    let db = TestDb::create().await;

    run_ok(
        node(script)
            .env("HERALD_BIN", env!("CARGO_BIN_EXE_herald"))
            .env("DATABASE_URL", &db.url),
    )
    .await;
}

#[tokio::test]
async fn twenty_tabs_share_one_stream_and_each_handler_gets_its_filter_once_in_order() {
    with_binary("heraldjs_tabs.mjs").await;
}

#[tokio::test]
async fn closing_the_leader_tab_five_times_hands_the_stream_over_within_retry_missing_nothing() {
    with_binary("heraldjs_leader.mjs").await;
}

#[tokio::test]
async fn subscribing_to_star_follows_every_topic_the_token_may_read() {
    with_binary("heraldjs_every_topic.mjs").await;
}

#[tokio::test]
async fn ten_subscribe_unsubscribe_switches_keep_one_connection_and_exact_events() {
    with_binary("heraldjs_switch.mjs").await;
}

#[tokio::test]
async fn after_backfills_across_a_topic_change_without_gap_or_duplicate() {
    with_binary("heraldjs_after.mjs").await;
}

#[tokio::test]
async fn get_token_keeps_one_stream_through_three_expiries_with_no_token_in_urls_or_logs() {
    with_binary("heraldjs_get_token.mjs").await;
}

#[tokio::test]
async fn cookie_renewed_on_auth_expiring_keeps_one_stream_and_unrenewed_closes_once_unauthorized() {
    with_binary("heraldjs_cookie.mjs").await;
}

#[tokio::test]
async fn replaced_and_revoked_close_every_tab_of_the_browser_once() {
    with_binary("heraldjs_replaced.mjs").await;
}

#[tokio::test]
async fn two_restarts_under_load_lose_and_repeat_nothing_in_any_tab() {
    with_binary("heraldjs_restart.mjs").await;
}

#[tokio::test]
async fn share_false_opens_one_stream_per_tab() {
    with_binary("heraldjs_unshared.mjs").await;
}

#[tokio::test]
async fn a_frozen_leader_hands_the_stream_over_and_frozen_tabs_miss_nothing_once_resumed() {
    with_binary("heraldjs_freeze.mjs").await;
}
