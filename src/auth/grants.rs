//! What a token lets its bearer read and publish: lists of the same topic
//! filters the stream takes (an exact topic, or a prefix ending in `*`),
//! with `{sub}` standing for the token's subject, so `user:{sub}:*` gives
//! every user their own topics and no one else's.
//!
//! A request asking for more than its grants is refused (403), never
//! silently narrowed: a client that asked for `incident:*` and got only
//! part of it could not tell.
//!
//! `{sub}` is a literal: it expands only to a subject that is one topic
//! segment (`[A-Za-z0-9._-]`). A subject with `*` would turn `user:{sub}`
//! into a prefix grant (the subject `*` reading every user's topics, `a*`
//! reading `user:alice:…`), and one with a separator would reach into
//! another subject's topics (`alice:inbox` in `user:{sub}` is alice's
//! inbox); such a subject, or an empty one, grants nothing through
//! `{sub}` (docs/ARCHITECTURE.md, "Configuration").

use crate::error::ApiError;
use crate::event::{Filters, Topic, TopicFilter, is_topic_segment};

use super::token::HeraldClaim;

/// What `{sub}` in a grant stands for.
pub const SUBJECT_PLACEHOLDER: &str = "{sub}";

#[derive(Debug, Clone)]
pub struct Grants {
    subscribe: Vec<TopicFilter>,
    publish: Vec<TopicFilter>,
    /// `"herald": {"admin": true}`: the admin API.
    admin: bool,
}

impl Grants {
    /// An anonymous herald's grants: every topic, both ways.
    pub fn everything() -> Self {
        let all = TopicFilter::parse("*").expect("`*` is a filter");
        Self {
            subscribe: vec![all.clone()],
            publish: vec![all],
            admin: true,
        }
    }

    /// The grants of a token's `herald` claim for `subject`. An entry with
    /// `{sub}` grants nothing unless the subject is one topic segment (see
    /// the module's comment), nor does an entry that is not a filter.
    pub fn from_claim(claim: Option<&HeraldClaim>, subject: Option<&str>) -> Self {
        let subject = subject.filter(|s| is_topic_segment(s));
        let expand = |entries: &[String]| -> Vec<TopicFilter> {
            entries
                .iter()
                .filter_map(|entry| {
                    let text = if entry.contains(SUBJECT_PLACEHOLDER) {
                        entry.replace(SUBJECT_PLACEHOLDER, subject?)
                    } else {
                        entry.clone()
                    };
                    TopicFilter::parse(&text).ok()
                })
                .collect()
        };
        match claim {
            Some(claim) => Self {
                subscribe: expand(&claim.subscribe),
                publish: expand(&claim.publish),
                admin: claim.admin,
            },
            None => Self {
                subscribe: Vec::new(),
                publish: Vec::new(),
                admin: false,
            },
        }
    }

    /// The filters a read (stream or history) uses: the ones asked for when
    /// the grants cover each, or, when none were asked for, everything the
    /// grants allow.
    ///
    /// # Errors
    /// 403 naming the first filter the grants do not cover, or saying the
    /// token grants no reading at all.
    pub fn readable(&self, asked: Filters) -> Result<Filters, ApiError> {
        if asked.iter().next().is_none() {
            if self.subscribe.is_empty() {
                return Err(ApiError::Forbidden(
                    "the token grants no topic to subscribe to".into(),
                ));
            }
            return Ok(Filters::new(self.subscribe.clone()));
        }
        match asked
            .iter()
            .find(|f| !self.subscribe.iter().any(|g| covers(g, f)))
        {
            Some(refused) => Err(ApiError::Forbidden(format!(
                "the token does not grant subscribing to {}",
                describe(refused)
            ))),
            None => Ok(asked),
        }
    }

    /// Whether the bearer may use the admin API.
    ///
    /// # Errors
    /// 403 saying which grant is missing.
    pub fn check_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "the token does not grant the admin API (\"herald\": {\"admin\": true})".into(),
            ))
        }
    }

    /// Whether the bearer may publish to every one of `topics`.
    ///
    /// # Errors
    /// 403 naming the first topic outside the grants.
    pub fn check_publish<'t>(
        &self,
        topics: impl IntoIterator<Item = &'t Topic>,
    ) -> Result<(), ApiError> {
        for topic in topics {
            if !self.publish.iter().any(|g| g.matches(topic.as_str())) {
                return Err(ApiError::Forbidden(format!(
                    "the token does not grant publishing to {topic:?}"
                )));
            }
        }
        Ok(())
    }
}

/// Whether grant `g` allows everything filter `f` asks for.
fn covers(g: &TopicFilter, f: &TopicFilter) -> bool {
    match (g, f) {
        (TopicFilter::Exact(g), TopicFilter::Exact(f)) => g == f,
        (TopicFilter::Exact(_), TopicFilter::Prefix(_)) => false,
        (TopicFilter::Prefix(p), TopicFilter::Exact(t)) => t.as_str().starts_with(&**p),
        (TopicFilter::Prefix(p), TopicFilter::Prefix(q)) => q.starts_with(&**p),
    }
}

fn describe(f: &TopicFilter) -> String {
    match f {
        TopicFilter::Exact(t) => format!("{:?}", t.as_str()),
        TopicFilter::Prefix(p) => format!("{:?}", format!("{p}*")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(subscribe: &[&str], publish: &[&str]) -> HeraldClaim {
        HeraldClaim {
            subscribe: subscribe.iter().map(|s| (*s).to_owned()).collect(),
            publish: publish.iter().map(|s| (*s).to_owned()).collect(),
            admin: false,
        }
    }

    #[test]
    fn sub_expands_to_the_subject_and_covers_only_its_topics() {
        let grants = Grants::from_claim(Some(&claim(&["user:{sub}:*"], &[])), Some("alice"));
        assert!(grants.readable(Filters::of(&["user:alice:inbox"])).is_ok());
        assert!(grants.readable(Filters::of(&["user:alice:*"])).is_ok());
        assert!(grants.readable(Filters::of(&["user:alice:a:*"])).is_ok());
        for refused in [
            &["user:bob:inbox"][..],
            &["user:*"],
            &["*"],
            &["user:alicex"],
        ] {
            assert!(
                matches!(
                    grants.readable(Filters::of(refused)),
                    Err(ApiError::Forbidden(_))
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn no_filter_means_everything_granted() {
        let grants =
            Grants::from_claim(Some(&claim(&["user:{sub}:*", "news"], &[])), Some("alice"));
        let readable = grants.readable(Filters::default()).unwrap();
        assert!(readable.matches("user:alice:x"));
        assert!(readable.matches("news"));
        assert!(!readable.matches("user:bob:x"));
        assert!(!readable.matches("newsroom"));
    }

    #[test]
    fn a_subject_topics_cannot_hold_grants_nothing_through_sub() {
        let grants = Grants::from_claim(
            Some(&claim(&["user:{sub}:*"], &["user:{sub}:*"])),
            Some("alice@example.com"),
        );
        assert!(grants.readable(Filters::default()).is_err());
        let no_subject = Grants::from_claim(Some(&claim(&["user:{sub}:*"], &[])), None);
        assert!(no_subject.readable(Filters::default()).is_err());
    }

    #[test]
    fn sub_is_a_literal_that_never_widens_a_grant() {
        // A subject that is not one topic segment grants nothing through
        // `{sub}`: not a prefix (`*`, `a*`), not another's topics
        // (`alice:*`, `alice:inbox`, `x/y`), not the bare prefix ("").
        for subject in ["*", "a*", "alice:*", "alice:inbox", "x/y", ""] {
            for grant in ["user:{sub}", "{sub}", "user:{sub}:*"] {
                let grants = Grants::from_claim(Some(&claim(&[grant], &[grant])), Some(subject));
                for asked in [&["user:alice:inbox"][..], &["user:alice:*"], &["user:*"]] {
                    assert!(
                        grants.readable(Filters::of(asked)).is_err(),
                        "subject {subject:?}, grant {grant:?}, asked {asked:?}"
                    );
                }
                assert!(
                    grants.readable(Filters::default()).is_err(),
                    "subject {subject:?}, grant {grant:?}: no filter reads nothing"
                );
                let inbox = Topic::parse("user:alice:inbox").unwrap();
                assert!(grants.check_publish([&inbox]).is_err());
            }
        }
        // A grant without `{sub}` is not affected by the subject.
        let plain = Grants::from_claim(Some(&claim(&["news"], &[])), Some("*"));
        assert!(plain.readable(Filters::of(&["news"])).is_ok());
    }

    #[test]
    fn no_claim_grants_nothing() {
        let grants = Grants::from_claim(None, Some("alice"));
        assert!(grants.readable(Filters::default()).is_err());
        let topic = Topic::parse("a").unwrap();
        assert!(grants.check_publish([&topic]).is_err());
    }

    #[test]
    fn publish_grants_match_topics() {
        let grants = Grants::from_claim(Some(&claim(&[], &["alerts:*", "ops"])), Some("svc"));
        let ok = [
            Topic::parse("alerts:disk").unwrap(),
            Topic::parse("ops").unwrap(),
        ];
        assert!(grants.check_publish(&ok).is_ok());
        let bad = Topic::parse("opsx").unwrap();
        assert!(grants.check_publish(ok.iter().chain([&bad])).is_err());
    }

    #[test]
    fn everything_covers_everything() {
        let grants = Grants::everything();
        assert!(grants.readable(Filters::of(&["a:*", "b"])).is_ok());
        assert!(grants.readable(Filters::default()).unwrap().is_all());
    }
}
