//! `herald token`: mints an HS256 token from the server's secret, for
//! development and operations (a backend's long-lived token, a test user's
//! short one). Production user tokens come from your own login service,
//! signed with the same secret or a key herald verifies.

use std::process::ExitCode;

use time::OffsetDateTime;

use super::args::TokenArgs;
use super::{EXIT_USAGE, notice};
use crate::auth::{Claims, HeraldClaim, mint};

pub fn run(args: &TokenArgs) -> ExitCode {
    match token(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            notice(format_args!("{e:#}"));
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn token(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = args.secret.read()?.ok_or_else(|| {
        anyhow::anyhow!(
            "no secret to sign with: set --jwt-secret-file (HERALD_JWT_SECRET_FILE) or \
                 --jwt-secret"
        )
    })?;
    let now = OffsetDateTime::now_utc();
    let exp = now + args.ttl;
    let claims = Claims {
        sub: Some(args.subject.clone()),
        exp: exp.unix_timestamp(),
        iat: Some(now.unix_timestamp()),
        nbf: None,
        aud: args.audience.clone(),
        herald: Some(HeraldClaim {
            subscribe: args.subscribe.clone(),
            publish: args.publish.clone(),
            admin: args.admin,
        }),
    };
    mint(secret.as_bytes(), &claims)
}
