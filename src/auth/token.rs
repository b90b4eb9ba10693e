//! Tokens: JWTs verified with the one algorithm and key(s) the
//! configuration names (never the algorithm a token claims), and minted for
//! development by `herald token`.

use anyhow::{Context, bail};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, JwtAlgorithm};

/// Longest token read. A JWT carrying a few grants is well under 2 KiB;
/// this only keeps a huge one from costing a signature check.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims herald reads (`exp`, `nbf` and `aud` are checked by
/// jsonwebtoken; the rest of a token is ignored).
///
/// jsonwebtoken reads these before it validates the token, so they must
/// take every form its validation does: anything they refused would be
/// refused as "claims herald cannot read" instead of for its real reason
/// (a missing `exp`), or refused when valid (an `aud` array).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Seconds since the epoch. Required, but jsonwebtoken says so when it
    /// is missing (hence the default, never seen in a verified token); a
    /// NumericDate may have a fraction (RFC 7519 §2).
    #[serde(default, deserialize_with = "numeric_date")]
    pub exp: i64,
    /// When the token was issued: a revocation of its subject refuses the
    /// tokens issued before it (and those that do not say).
    #[serde(
        default,
        deserialize_with = "optional_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
    pub iat: Option<i64>,
    /// Written by `herald token`; jsonwebtoken checks it, herald never
    /// reads it.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Written by `herald token`; jsonwebtoken checks it (a string or an
    /// array of strings, RFC 7519 §4.1.3), herald never reads it.
    #[serde(default, skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// What the bearer may do: `{"subscribe": [...], "publish": [...]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub herald: Option<HeraldClaim>,
}

/// The grants claim: topic filters as the stream takes them, `{sub}`
/// standing for the token's subject.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeraldClaim {
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    /// The admin API: list streams, end them, revoke subjects.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// Checks tokens against the configured key(s).
pub struct Verifier {
    /// The current key first; with HS256 the previous secret after it.
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// The verifier the configuration asks for; `None` when it names no
    /// key (anonymous).
    ///
    /// # Errors
    /// A key file that cannot be read or parsed, or a key that does not go
    /// with the algorithm.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Option<Self>> {
        let secret = config.secret.read()?;
        let previous = config.previous_secret()?;
        let public = config.jwt_public_key_file.as_deref();
        let algorithm = match (config.jwt_algorithm, secret.is_some(), public.is_some()) {
            (_, true, true) => bail!("give a JWT secret (HS256) or a public key file, not both"),
            (None, false, false) => {
                if previous.is_some() {
                    bail!("a previous JWT secret is given without a current one");
                }
                return Ok(None);
            }
            (None | Some(JwtAlgorithm::Hs256), true, false) => JwtAlgorithm::Hs256,
            (None, false, true) => {
                bail!("--jwt-public-key-file needs --jwt-algorithm (RS256, ES256 or EdDSA)")
            }
            (Some(JwtAlgorithm::Hs256), false, _) => {
                bail!("--jwt-algorithm HS256 needs --jwt-secret-file or --jwt-secret")
            }
            (Some(alg), false, true) => alg,
            (Some(_), _, false) => {
                bail!("--jwt-algorithm RS256, ES256 and EdDSA need --jwt-public-key-file")
            }
        };
        let mut keys = Vec::new();
        match (algorithm, secret, public) {
            (JwtAlgorithm::Hs256, Some(secret), _) => {
                keys.push(DecodingKey::from_secret(secret.as_bytes())?);
                if let Some(previous) = previous {
                    keys.push(DecodingKey::from_secret(previous.as_bytes())?);
                }
            }
            (alg, _, Some(path)) => {
                if previous.is_some() {
                    bail!("a previous JWT secret only goes with HS256");
                }
                let pem = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let key = match alg {
                    JwtAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem),
                    JwtAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
                    _ => DecodingKey::from_ed_pem(&pem),
                }
                .with_context(|| {
                    format!("{} is not a PEM public key for {alg:?}", path.display())
                })?;
                keys.push(key);
            }
            _ => unreachable!("decided above"),
        }
        let mut validation = Validation::new(algorithm_of(algorithm));
        validation.leeway = config.jwt_leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not ours to
            // judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Some(Self { keys, validation }))
    }

    /// The token's claims if it verifies.
    ///
    /// # Errors
    /// Why not, in words fit for a client (never the token itself).
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("the token is too long");
        }
        // The header first: jsonwebtoken reports a header it cannot read
        // (`"alg": "none"`, an algorithm it does not know, not JSON) as the
        // same JSON error as claims herald cannot read.
        if let Err(e) = jsonwebtoken::decode_header(token) {
            return Err(match e.kind() {
                ErrorKind::Json(_) => {
                    "the token's header is malformed or names an algorithm herald does not accept"
                }
                _ => "the token is malformed",
            });
        }
        // jsonwebtoken checks the signature before the claims: an error
        // other than the signature's comes from the key that signed it.
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Err(describe(e.kind())),
            }
        }
        Err(describe(&ErrorKind::InvalidSignature))
    }
}

/// A NumericDate as whole seconds. Anything but a number reads as 0:
/// jsonwebtoken refuses it, saying why.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let seconds = serde_json::Value::deserialize(d)?.as_f64().unwrap_or(0.0);
    // `as` saturates; jsonwebtoken refuses dates out of its range.
    Ok(seconds.floor() as i64)
}

/// An optional NumericDate as whole seconds; anything but a number is as
/// if it were missing.
fn optional_numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(serde_json::Value::deserialize(d)?
        .as_f64()
        .map(|seconds| seconds.floor() as i64))
}

fn algorithm_of(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token is meant for another audience",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token is not signed with the algorithm herald accepts"
        }
        ErrorKind::MissingRequiredClaim(claim) if claim == "exp" => "the token has no exp claim",
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => "the token has no aud claim",
        ErrorKind::Json(_) => "the token's claims are not what herald reads",
        _ => "the token is malformed",
    }
}

/// Signs `claims` with an HS256 secret (for `herald token` and tests).
///
/// # Errors
/// If the claims cannot be encoded.
pub fn mint(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).context("cannot use the secret")?,
    )
    .context("cannot sign the token")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};
    use time::OffsetDateTime;

    use super::*;
    use crate::config::JwtSecret;

    const SECRET: &[u8] = b"s3cret";

    fn verifier() -> Verifier {
        let config = AuthConfig {
            secret: JwtSecret {
                jwt_secret_file: None,
                jwt_secret: Some("s3cret".parse().unwrap()),
            },
            jwt_previous_secret_file: None,
            jwt_previous_secret: None,
            jwt_public_key_file: None,
            jwt_algorithm: None,
            jwt_audience: Some("herald".to_owned()),
            jwt_leeway: Duration::from_secs(5),
            token_expiry_warning: Duration::from_secs(60),
            auth_cookie: "herald_token".to_owned(),
            allow_anonymous: false,
        };
        Verifier::from_config(&config).unwrap().expect("a key")
    }

    fn in_ten_minutes() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp() + 600
    }

    fn sign(claims: &Value) -> String {
        let key = EncodingKey::from_secret(SECRET).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
    }

    /// Base64url without padding, as JWT parts are written.
    fn base64url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_header_herald_cannot_read_is_refused_for_its_header() {
        let valid = sign(&json!({"aud": "herald", "exp": in_ten_minutes()}));
        let payload = valid.split('.').nth(1).unwrap();
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"HS1024"}"#,
            "not json",
        ] {
            let token = format!("{}.{payload}.", base64url(header.as_bytes()));
            let why = verifier().verify(&token).unwrap_err();
            assert!(why.contains("header"), "{header}: {why}");
        }
        assert_eq!(
            verifier().verify("a.b.c").unwrap_err(),
            "the token is malformed"
        );
    }

    #[test]
    fn a_token_without_exp_is_refused_saying_so() {
        let why = verifier().verify(&sign(&json!({"aud": "herald"})));
        assert_eq!(why.unwrap_err(), "the token has no exp claim");
    }

    /// RFC 7519: `aud` may be an array naming several audiences, and a
    /// NumericDate may have a fraction.
    #[test]
    fn an_audience_array_and_a_fractional_exp_are_read() {
        let exp = in_ten_minutes();
        let token = sign(&json!({"aud": ["other", "herald"], "exp": exp as f64 + 0.5}));
        let claims = verifier().verify(&token).expect("a valid token");
        assert_eq!(claims.exp, exp);
        let elsewhere = sign(&json!({"aud": ["other", "a-third"], "exp": exp}));
        assert_eq!(
            verifier().verify(&elsewhere).unwrap_err(),
            "the token is meant for another audience"
        );
    }
}
