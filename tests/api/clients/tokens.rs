//! Browsers and tokens (issue #10): a stream ends at its token's `exp`
//! after an `auth-expiring` warning; a page that refreshes its cookie when
//! warned keeps one logical stream across expiries (the README's snippet,
//! in Chromium); a reconnect without a valid token is refused `401`.
//!
//! Tokens are minted here with `jsonwebtoken` (HS256, herald's claim
//! shape), since the crate's own `auth` module is private.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use herald::Config;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::readme::fenced_blocks;
use super::repo;
use super::run::{Running, node};
use crate::helpers::*;

/// The HS256 secret of every herald in these tests.
pub(super) const SECRET: &str = "browser-and-tokens-test-secret";
/// How long before `exp` a stream is warned.
const WARNING: Duration = Duration::from_secs(1);
/// The life of a browser's token in the refresh test: short, so three
/// expiries take seconds. `exp` is in whole seconds, so a token lives
/// between 2 and 3 s, always longer than the warning.
const BROWSER_TOKEN_LIFE: Duration = Duration::from_secs(3);
/// The topic alice reads, and the grant that lets her.
const INBOX: &str = "user:alice:inbox";
pub(super) const ALICE_READS: &[&str] = &["user:{sub}:*"];
/// What the README's snippet names herald; the test page puts the test
/// herald's address in its place.
const README_HERALD: &str = "https://herald.example.com";

/// herald with tokens required: HS256 with [`SECRET`], warned [`WARNING`]
/// before `exp`, no leeway (a token is expired the second after its `exp`).
pub(super) fn with_tokens(c: &mut Config) {
    c.auth.secret.jwt_secret = Some(SECRET.parse().unwrap());
    c.auth.token_expiry_warning = WARNING;
    c.auth.jwt_leeway = Duration::ZERO;
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub`, valid for `life`, with herald's grants claim.
pub(super) fn mint(
    sub: &str,
    life: Duration,
    subscribe: &[&str],
    publish: &[&str],
) -> (String, u64) {
    let exp = unix_now() + life.as_secs();
    let claims = json!({
        "sub": sub,
        "exp": exp,
        "herald": {"subscribe": subscribe, "publish": publish},
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .expect("sign a token");
    (token, exp)
}

/// A backend's token: publishes anywhere, for an hour.
pub(super) fn backend_token() -> String {
    mint("backend", Duration::from_secs(3600), &[], &["*"]).0
}

/// `Set-Cookie` for a browser token, as the README says to set it (less
/// `Secure` and `Domain`: the test runs over plain HTTP on one host).
fn token_cookie(token: &str) -> String {
    format!("herald_token={token}; Path=/; HttpOnly; SameSite=Lax")
}

/// Publishes `data` to [`INBOX`] as the backend; returns the stored id.
async fn publish(client: &reqwest::Client, base: &str, token: &str, data: Value) -> String {
    let res = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(token)
        .json(&json!({"topic": INBOX, "data": data}))
        .send()
        .await
        .expect("publish request");
    assert_eq!(res.status(), 201, "publish");
    let stored: Value = res.json().await.unwrap();
    stored["id"].as_str().expect("an id").to_owned()
}

// ---------------------------------------------------------------------------
// A page that refreshes its cookie when warned
// ---------------------------------------------------------------------------

#[tokio::test]
async fn page_refreshing_its_cookie_keeps_one_stream_across_three_expiries() {
    let site = RefreshSite::bind().await;
    let app = spawn_app_with(|c| {
        with_tokens(c);
        c.cors_origins = vec![site.origin()];
    })
    .await;
    let site = site.serve(&app.base, &readme_snippet());
    let mut page = Running::spawn(node("token_refresh.mjs").env("PAGE_URL", site.page_url()));
    page.wait_stdout("the page's stream to open", |out| {
        out.contains("subscribed\n")
    })
    .await;

    // Publish all along, until the page's stream has ended and come back
    // three times.
    let backend = backend_token();
    let stop = CancellationToken::new();
    let publisher = tokio::spawn({
        let (client, base, backend, stop) = (
            app.client.clone(),
            app.base.clone(),
            backend.clone(),
            stop.clone(),
        );
        async move {
            let mut ids = Vec::new();
            while !stop.is_cancelled() {
                ids.push(publish(&client, &base, &backend, json!({"n": ids.len()})).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        }
    });
    page.wait_stdout("three expiries and reconnects", |out| {
        out.contains("reconnected 3 times\n")
    })
    .await;
    stop.cancel();
    let mut published = publisher.await.unwrap();
    published.push(publish(&app.client, &app.base, &backend, json!({"done": true})).await);
    let (status, out, err) = page.finish(Duration::from_secs(60)).await;
    assert!(status.success(), "token_refresh.mjs failed\n{out}\n{err}");

    let result: Value = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
    let received: Vec<&str> = result["shown"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(
        received, published,
        "the page received every event published, once, in order"
    );
    assert!(
        site.refreshes() >= 3,
        "the page refreshed its cookie {} times",
        site.refreshes()
    );
    println!(
        "{} events over {} opens, {} warnings, {} refreshes",
        published.len(),
        result["opens"],
        result["expiring"].as_array().unwrap().len(),
        site.refreshes()
    );
    app.stop().await;
}

/// The JavaScript of the README's "Browsers and tokens", unchanged.
fn readme_snippet() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("read README.md");
    let start = readme
        .find("\n### Browsers and tokens\n")
        .expect("README has a \"Browsers and tokens\" section");
    let rest = &readme[start + 1..];
    let section = &rest[..rest[4..].find("\n#").map_or(rest.len(), |i| i + 4)];
    let scripts: Vec<String> = fenced_blocks(section)
        .into_iter()
        .filter(|(lang, _)| lang == "js")
        .map(|(_, text)| text)
        .collect();
    let [snippet] = <[String; 1]>::try_from(scripts)
        .unwrap_or_else(|s| panic!("expected one js block in \"Browsers and tokens\": {s:#?}"));
    assert_eq!(
        snippet.matches(README_HERALD).count(),
        1,
        "the snippet names herald once, as {README_HERALD}:\n{snippet}"
    );
    assert!(snippet.contains("\"/refresh\""), "{snippet}");
    snippet
}

/// The app a page comes from: `/` is the page (and signs alice in: its
/// answer sets her first cookie), `POST /refresh` sets a new one. It runs
/// on another port of herald's host: another origin, the same site, and
/// the cookies it sets go to herald too (cookies are per host).
struct RefreshSite {
    listener: TcpListener,
}

struct RunningSite {
    origin: String,
    refreshes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct SiteState {
    page: Arc<str>,
    refreshes: Arc<AtomicUsize>,
}

impl RefreshSite {
    /// Binds first, so herald can list the origin before the page exists.
    async fn bind() -> Self {
        Self {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }

    /// Serves the README's `snippet` against herald at `herald`.
    fn serve(self, herald: &str, snippet: &str) -> RunningSite {
        let origin = self.origin();
        let state = SiteState {
            page: test_page(&snippet.replace(README_HERALD, herald)).into(),
            refreshes: Arc::default(),
        };
        let refreshes = state.refreshes.clone();
        let site = axum::Router::new()
            .route("/", axum::routing::get(page))
            .route("/refresh", axum::routing::post(refresh))
            .with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(self.listener, site).await;
        });
        RunningSite {
            origin,
            refreshes,
            task,
        }
    }
}

impl RunningSite {
    fn page_url(&self) -> String {
        format!("{}/", self.origin)
    }

    fn refreshes(&self) -> usize {
        self.refreshes.load(Ordering::SeqCst)
    }
}

impl Drop for RunningSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn alice_cookie() -> String {
    token_cookie(&mint("alice", BROWSER_TOKEN_LIFE, ALICE_READS, &[]).0)
}

async fn page(State(state): State<SiteState>) -> impl IntoResponse {
    (
        [
            (header::SET_COOKIE, alice_cookie()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        Html(state.page.to_string()),
    )
}

async fn refresh(State(state): State<SiteState>) -> impl IntoResponse {
    state.refreshes.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, alice_cookie())],
    )
}

/// The page: a recorder of what the snippet's `EventSource` does (for the
/// script to read as `window.seen`), the `show` and `signIn` the snippet
/// calls, then the snippet.
fn test_page(snippet: &str) -> String {
    format!(
        r#"<!doctype html>
<meta charset="utf-8">
<title>token refresh</title>
<script>
window.seen = {{ opens: 0, errors: [], expiring: [], shown: [], done: false, signIns: 0 }};
window.EventSource = class extends EventSource {{
  constructor(url, init) {{
    super(url, init);
    window.source = this;
    this.addEventListener("open", () => seen.opens++);
    this.addEventListener("error", () => seen.errors.push(this.readyState));
    this.addEventListener("auth-expiring", (e) => seen.expiring.push(JSON.parse(e.data)));
  }}
}};
function show(envelope) {{
  seen.shown.push(envelope.id);
  if (envelope.data.done) seen.done = true;
}}
function signIn() {{
  seen.signIns++;
}}
</script>
<script>
{snippet}</script>
"#
    )
}

// ---------------------------------------------------------------------------
// A reconnect without a valid token
// ---------------------------------------------------------------------------

/// The stream warns, then ends at `exp`; the reconnect an `EventSource`
/// would make next, with the expired cookie or none, is refused `401`
/// problem+json (and a browser then stops for good).
async fn stream_ends_at_exp_and_reconnect_without_valid_token_is_refused(writer: Writer) {
    let app = spawn_app_with(with_tokens).await.over(writer);
    let (token, exp) = mint("alice", Duration::from_secs(3), ALICE_READS, &[]);
    let stream = |cookie: Option<String>, last_event_id: Option<String>| {
        let mut req = app
            .client
            .get(app.url(&format!("/v1/stream?topic={INBOX}")));
        if let Some(cookie) = cookie {
            req = req.header("cookie", cookie);
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send()
    };

    let res = stream(Some(format!("herald_token={token}")), None)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    sse.next_frame().await.expect("the opening frame");
    let backend = backend_token();
    let id = publish(&app.client, &app.base, &backend, json!("before exp")).await;
    let frames = sse.until_end().await;
    let ended = unix_now();

    // One event, then the warning (no id), then the end.
    let [event, warning] = <[SseFrame; 2]>::try_from(
        frames
            .into_iter()
            .filter(SseFrame::is_event)
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|f| panic!("expected the event and the warning: {f:#?}"));
    assert_eq!(event.id.as_deref(), Some(&*id));
    assert_eq!(warning.event.as_deref(), Some("auth-expiring"));
    assert_eq!(warning.id, None, "the warning leaves Last-Event-ID alone");
    assert_eq!(warning.json()["reason"], "token_expiring");
    assert!(
        (exp..=exp + 1).contains(&ended),
        "the stream ended at exp {exp}, not {ended}"
    );

    // At once, as an `EventSource` with a short `retry:` would (no
    // leeway): the reconnect with the same cookie, and one with none.
    let expired = stream(Some(format!("herald_token={token}")), Some(id.clone()))
        .await
        .unwrap();
    assert_problem(expired, 401, "unauthorized", "the token has expired").await;
    let none = stream(None, Some(id)).await.unwrap();
    assert_problem(none, 401, "unauthorized", "a token is required").await;
    app.stop().await;
}

over_both_writers!(stream_ends_at_exp_and_reconnect_without_valid_token_is_refused);
