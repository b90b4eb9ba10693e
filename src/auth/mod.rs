//! Who asks, and may they (docs/ARCHITECTURE.md, "Configuration": tokens, grants,
//! caps). One check for every request, whichever writer answers it:
//! [`Auth::identify`] reads the token from wherever it travels and returns
//! the caller's [`Identity`]; its [`Grants`] say what it may read and
//! publish, and [`Limits`] cap its streams and its publishing.
//!
//! A token travels, in this order of precedence, in
//! - `Authorization: Bearer …` (services, curl, `herald tail --token`),
//! - the cookie named by `--auth-cookie` (a browser's `EventSource`,
//!   same-site, or cross-site with `withCredentials`),
//! - the `access_token` query parameter, the last resort of a cross-site
//!   `EventSource` that can send neither. A token in a URL never reaches a
//!   log line, a trace, a metric label or an error detail: spans name the
//!   route only, and refusals say why, never what.
//!
//! With no key configured herald is anonymous: everyone may do everything,
//! and `app` refuses that on a non-loopback address unless
//! `--allow-anonymous` says so on purpose.

mod grants;
mod limits;
mod revoked;
mod token;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use crate::config::AuthConfig;
use crate::cors::Cors;
use crate::error::ApiError;
use crate::request::RequestHead;

pub use grants::Grants;
pub use limits::Limits;
pub use revoked::{Revocation, Revoked};
pub use token::{Claims, HeraldClaim, mint};

/// The gate every request passes: who asks ([`Auth`]), under which caps
/// and rates ([`Limits`]), and from which origin ([`Cors`]). The router's
/// state and the streams each hold it, so no route reaches through
/// another's context for it. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    pub auth: Arc<Auth>,
    pub limits: Arc<Limits>,
    pub cors: Cors,
}

/// The query parameter a token may travel in.
pub const QUERY_PARAMETER: &str = "access_token";

/// How requests are authenticated; shared by every handler.
pub struct Auth {
    verifier: Option<token::Verifier>,
    cookie: String,
    /// How long before its token expires a stream is warned.
    pub expiry_warning: Duration,
    /// Subjects whose older tokens are refused.
    pub revoked: Revoked,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token's `sub`; `None` for anonymous callers (and tokens without
    /// one).
    pub subject: Option<String>,
    pub grants: Grants,
    /// When the token stops being valid; a stream ends then.
    pub expires_at: Option<OffsetDateTime>,
}

impl Auth {
    /// # Errors
    /// A key that cannot be read or does not fit the algorithm.
    pub fn new(config: &AuthConfig) -> anyhow::Result<Self> {
        Ok(Self {
            verifier: token::Verifier::from_config(config)?,
            cookie: config.auth_cookie.clone(),
            expiry_warning: config.token_expiry_warning,
            revoked: Revoked::default(),
        })
    }

    pub fn is_anonymous(&self) -> bool {
        self.verifier.is_none()
    }

    /// The caller of a request.
    ///
    /// # Errors
    /// 401 when tokens are required and the request carries none, or one
    /// that does not verify (expired, not yet valid, another audience, a
    /// bad signature, malformed): the detail says which, never the token.
    pub fn identify(&self, head: &impl RequestHead) -> Result<Identity, ApiError> {
        let Some(verifier) = &self.verifier else {
            return Ok(Identity {
                subject: None,
                grants: Grants::everything(),
                expires_at: None,
            });
        };
        let Some(token) = self.token_of(head) else {
            return Err(ApiError::Unauthorized(format!(
                "a token is required: send it as Authorization: Bearer, in the {} cookie, or \
                 as the {QUERY_PARAMETER} query parameter",
                self.cookie
            )));
        };
        let claims = verifier
            .verify(&token)
            .map_err(|why| ApiError::Unauthorized(why.to_owned()))?;
        if let Some(subject) = &claims.sub
            && self.revoked.refuses(subject, claims.iat)
        {
            return Err(ApiError::Unauthorized(
                "the token's subject was revoked after the token was issued".into(),
            ));
        }
        Ok(Identity {
            grants: Grants::from_claim(claims.herald.as_ref(), claims.sub.as_deref()),
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).ok(),
            subject: claims.sub,
        })
    }

    /// The token a request carries, by the precedence in the module's
    /// comment.
    fn token_of<'h>(&self, head: &'h impl RequestHead) -> Option<Cow<'h, str>> {
        let bearer = head
            .header_values("authorization")
            .into_iter()
            .find_map(|v| {
                let v = std::str::from_utf8(v).ok()?;
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| Cow::Borrowed(token.trim()))
            });
        if bearer.is_some() {
            return bearer;
        }
        let cookie = head.header_values("cookie").into_iter().find_map(|v| {
            std::str::from_utf8(v).ok()?.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == self.cookie).then(|| Cow::Borrowed(value.trim_matches('"')))
            })
        });
        if cookie.is_some() {
            return cookie;
        }
        form_urlencoded::parse(head.query().as_bytes())
            .find(|(name, _)| name == QUERY_PARAMETER)
            .map(|(_, value)| Cow::Owned(value.into_owned()))
    }
}
