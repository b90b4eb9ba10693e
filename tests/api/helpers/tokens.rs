//! Tokens for the tests: HS256 with the tests' secret, the claim shape
//! herald reads (`sub`, `exp`, `herald: {subscribe, publish}`).

use std::time::Duration;

use serde_json::json;

use super::{TestApp, Writer, spawn_app_with};
use herald::Config;

/// The HS256 secret of a herald started by [`spawn_app_with_tokens`].
pub const SECRET: &str = "the-tests-own-hs256-secret";

/// A token for `subject` that may subscribe to and publish to the given
/// filters, valid for `ttl`.
pub fn token(subject: &str, subscribe: &[&str], publish: &[&str], ttl: Duration) -> String {
    let exp = time::OffsetDateTime::now_utc() + ttl;
    sign(&json!({
        "sub": subject,
        "exp": exp.unix_timestamp(),
        "herald": {"subscribe": subscribe, "publish": publish},
    }))
}

/// Any claims, signed with [`SECRET`].
pub fn sign(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A backend's token: publish anywhere, read everything.
pub fn backend_token() -> String {
    token("backend", &["*"], &["*"], Duration::from_secs(3600))
}

/// herald on a fresh database with tokens required (HS256, [`SECRET`]).
pub async fn spawn_app_with_tokens(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(|c| {
        c.auth.secret.jwt_secret = Some(SECRET.parse().unwrap());
        adjust(c);
    })
    .await
}

impl Writer {
    /// A client of this writer that sends `token` as a bearer token.
    pub fn client_with_token(self, token: &str) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let builder = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .default_headers(headers);
        match self {
            Self::Http1 => builder.http1_only(),
            Self::Http2 => builder.http2_prior_knowledge(),
        }
        .build()
        .unwrap()
    }
}

impl TestApp {
    /// This app with a client (HTTP/1.1) that sends `token`.
    #[must_use]
    pub fn with_bearer(mut self, token: &str) -> Self {
        self.client = Writer::Http1.client_with_token(token);
        self
    }
}
