//! Subjects revoked by an admin (`DELETE /v1/subjects/{sub}/streams`),
//! held in memory so that identifying a caller stays synchronous. The
//! registry fills it from PostgreSQL at start and from the control channel
//! after (`registry/control.rs`), so every instance refuses the same tokens.
//!
//! A revocation refuses the subject's tokens issued before it, and tokens
//! that do not say when they were issued (`iat`), until it expires
//! (`--revocation-window`). `iat` is in whole seconds: a token issued in the
//! second of the revocation is accepted, so a token minted just after the
//! call works; one minted in that second but before the call is accepted
//! too, which is the price of a claim without fractions.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use time::OffsetDateTime;

use crate::telemetry;

/// Cheap to clone; every clone sees the same set.
#[derive(Clone, Default)]
pub struct Revoked {
    subjects: Arc<RwLock<HashMap<String, Revocation>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub revoked_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl Revoked {
    /// Adds (or moves on) the revocation of `subject`.
    pub fn insert(&self, subject: &str, revocation: Revocation) {
        let mut subjects = self.subjects.write().unwrap_or_else(|p| p.into_inner());
        subjects.insert(subject.to_owned(), revocation);
        let now = OffsetDateTime::now_utc();
        subjects.retain(|_, r| r.expires_at > now);
        metrics::gauge!(telemetry::REVOCATIONS_ACTIVE).set(subjects.len() as f64);
    }

    /// Drops the revocations that have expired.
    pub fn expire(&self) {
        let mut subjects = self.subjects.write().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        subjects.retain(|_, r| r.expires_at > now);
        metrics::gauge!(telemetry::REVOCATIONS_ACTIVE).set(subjects.len() as f64);
    }

    /// Whether a token of `subject` issued at `iat` (seconds) is refused.
    pub fn refuses(&self, subject: &str, iat: Option<i64>) -> bool {
        let subjects = self.subjects.read().unwrap_or_else(|p| p.into_inner());
        let Some(r) = subjects.get(subject) else {
            return false;
        };
        if r.expires_at <= OffsetDateTime::now_utc() {
            return false;
        }
        iat.is_none_or(|iat| iat < r.revoked_at.unix_timestamp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_tokens_issued_before_the_revocation_and_tokens_without_iat() {
        let revoked = Revoked::default();
        let now = OffsetDateTime::now_utc();
        revoked.insert(
            "alice",
            Revocation {
                revoked_at: now,
                expires_at: now + time::Duration::hours(1),
            },
        );
        let second = now.unix_timestamp();
        assert!(revoked.refuses("alice", Some(second - 1)));
        assert!(revoked.refuses("alice", None));
        assert!(!revoked.refuses("alice", Some(second)));
        assert!(!revoked.refuses("bob", None));
    }

    #[test]
    fn an_expired_revocation_refuses_nothing() {
        let revoked = Revoked::default();
        let now = OffsetDateTime::now_utc();
        revoked.insert(
            "alice",
            Revocation {
                revoked_at: now - time::Duration::hours(2),
                expires_at: now - time::Duration::hours(1),
            },
        );
        assert!(!revoked.refuses("alice", None));
    }
}
