//! Tokens for the hostile-input tests: the heralds they run against (one
//! per algorithm herald verifies), valid tokens signed with the test-only
//! keys under `tests/fixtures/keys/`, every kind of bad token a client
//! could send, and the three places a token travels.

use std::path::PathBuf;

use herald::Config;
use herald::config::JwtAlgorithm;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The audience every test herald is configured with.
pub const AUDIENCE: &str = "herald-hostile";
/// The HS256 secret, and the previous one still accepted (rotation).
pub const SECRET: &str = "the-current-secret-of-the-tests";
pub const PREVIOUS_SECRET: &str = "the-previous-secret-of-the-tests";
/// What the valid tokens may read and publish.
pub const GRANTED: &str = "hostile:*";

/// How a test herald verifies tokens: an HS256 secret (with a previous
/// one) or a public key of one of the fixture pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Hs256,
    Rsa,
    Ec,
    Ed,
}

impl Key {
    /// The herald's configuration for this key, `aud` required.
    pub fn configure(self, c: &mut Config) {
        c.auth.jwt_audience = Some(AUDIENCE.to_owned());
        let algorithm = match self {
            Self::Hs256 => {
                c.auth.secret.jwt_secret = Some(SECRET.parse().unwrap());
                c.auth.jwt_previous_secret = Some(PREVIOUS_SECRET.parse().unwrap());
                return;
            }
            Self::Rsa => JwtAlgorithm::Rs256,
            Self::Ec => JwtAlgorithm::Es256,
            Self::Ed => JwtAlgorithm::EdDsa,
        };
        c.auth.jwt_algorithm = Some(algorithm);
        c.auth.jwt_public_key_file = Some(self.pem_path("public"));
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rsa => Algorithm::RS256,
            Self::Ec => Algorithm::ES256,
            Self::Ed => Algorithm::EdDSA,
        }
    }

    /// `tests/fixtures/keys/NAME-{half}.pem` (not for HS256).
    fn pem_path(self, half: &str) -> PathBuf {
        let name = match self {
            Self::Hs256 => unreachable!("HS256 has a secret, not a key pair"),
            Self::Rsa => "rsa",
            Self::Ec => "ec",
            Self::Ed => "ed25519",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/keys")
            .join(format!("{name}-{half}.pem"))
    }

    pub fn public_pem(self) -> Vec<u8> {
        std::fs::read(self.pem_path("public")).expect("fixture public key")
    }

    fn encoding_key(self, half: &str) -> EncodingKey {
        if self == Self::Hs256 {
            let secret = if half == "private" {
                SECRET
            } else {
                "another-secret"
            };
            return EncodingKey::from_secret(secret.as_bytes()).unwrap();
        }
        let pem = std::fs::read(self.pem_path(half)).expect("fixture private key");
        match self {
            Self::Rsa => EncodingKey::from_rsa_pem(&pem),
            Self::Ec => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .expect("fixture private key parses")
    }

    /// `claims` signed as a herald configured with this key accepts.
    pub fn sign(self, claims: &Value) -> String {
        sign(self.algorithm(), &self.encoding_key("private"), claims)
    }

    /// `claims` signed with the same algorithm but another key (another
    /// secret, the `other` fixture pair).
    pub fn sign_with_another_key(self, claims: &Value) -> String {
        sign(
            self.algorithm(),
            &self.encoding_key("other-private"),
            claims,
        )
    }

    /// `claims` signed with this key, but naming `algorithm` (of the same
    /// family) in the header.
    pub fn sign_as(self, algorithm: Algorithm, claims: &Value) -> String {
        sign(algorithm, &self.encoding_key("private"), claims)
    }
}

pub fn sign(algorithm: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).expect("sign the token")
}

/// HS256 with any secret (a wrong one, or a public key's PEM bytes).
pub fn hs256_with(secret: &[u8], claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret).expect("a secret"),
        claims,
    )
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The claims of a valid token: subject `side`, the test audience, an hour
/// to live, reading and publishing [`GRANTED`].
pub fn claims() -> Value {
    json!({
        "sub": "side",
        "aud": AUDIENCE,
        "exp": now() + 3600,
        "herald": {"subscribe": [GRANTED], "publish": [GRANTED]},
    })
}

/// [`claims`] with `changes` applied: a `null` removes the claim.
pub fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (name, value) in changes.as_object().expect("an object of changes") {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

/// The three dot-separated parts of a JWT.
fn parts(token: &str) -> [&str; 3] {
    let parts: Vec<&str> = token.split('.').collect();
    parts.try_into().expect("a JWT has three parts")
}

/// `token`'s claims under `{"alg":"none"}`, with no signature.
pub fn alg_none(token: &str) -> String {
    let [_, payload, _] = parts(token);
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{payload}.")
}

/// A header naming `algorithm`, then parts that are not base64url.
pub fn junk_after_header(algorithm: Algorithm) -> String {
    let alg = serde_json::to_string(&algorithm).unwrap();
    let header = base64url(format!(r#"{{"alg":{alg},"typ":"JWT"}}"#).as_bytes());
    format!("{header}.!!!.???")
}

/// Base64url without padding (RFC 7515 §2), as JWT parts are written.
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `token` with its signature removed.
pub fn unsigned(token: &str) -> String {
    let [header, payload, _] = parts(token);
    format!("{header}.{payload}.")
}

/// `token`'s header and signature around `other`'s claims.
pub fn tampered(token: &str, other: &str) -> String {
    let [header, _, signature] = parts(token);
    let [_, payload, _] = parts(other);
    format!("{header}.{payload}.{signature}")
}

/// A well-formed, validly signed token padded with a claim to `len` bytes.
pub fn padded(key: Key, len: usize) -> String {
    let mut claims = claims();
    claims["pad"] = json!("x".repeat(len * 3 / 4));
    let token = key.sign(&claims);
    assert!(token.len() >= len, "{} < {len}", token.len());
    token
}

/// Where a token travels (docs/ARCHITECTURE.md, "Token carriers").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Bearer,
    Cookie,
    Query,
}

impl Carrier {
    pub const ALL: [Self; 3] = [Self::Bearer, Self::Cookie, Self::Query];

    /// A request for `url` carrying `token` here.
    pub fn request(
        self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
        token: &str,
    ) -> reqwest::RequestBuilder {
        let mut url = reqwest::Url::parse(url).expect("a URL");
        if self == Self::Query {
            url.query_pairs_mut().append_pair("access_token", token);
        }
        let req = client.request(method, url);
        match self {
            Self::Bearer => req.header("authorization", format!("Bearer {token}")),
            Self::Cookie => req.header("cookie", format!("theme=dark; herald_token={token}")),
            Self::Query => req,
        }
    }
}
