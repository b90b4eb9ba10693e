//! A token-bucket rate on publishing (per subject, governor; over it:
//! `429` problem+json with `Retry-After`, counted in `herald_limited_total`),
//! and who the client of a request is. The rate is per instance: N
//! instances behind a balancer allow up to N times it. The caps on open
//! streams hold across instances, and live in the registry
//! (`registry/writer.rs`).
//!
//! The client address is the connection's peer, or, when the peer is a
//! proxy listed in `--trusted-proxies`, the nearest address in
//! `X-Forwarded-For` that is not one: a header anyone can send is believed
//! only from a proxy that sets it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::config::LimitConfig;
use crate::error::ApiError;
use crate::telemetry;

pub struct Limits {
    publish: Option<DefaultKeyedRateLimiter<String>>,
    trusted: Vec<IpNet>,
}

impl Limits {
    pub fn new(config: &LimitConfig) -> Self {
        let publish = NonZeroU32::new(config.publish_rate_per_subject)
            .map(|rate| RateLimiter::keyed(Quota::per_second(rate)));
        Self {
            publish,
            trusted: config.trusted_proxies.clone(),
        }
    }

    /// The client's address (see the module's comment).
    pub fn client_address(&self, peer: IpAddr, forwarded_for: &[&[u8]]) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        // Each proxy appends the address it got the request from: walk from
        // the nearest, past our own proxies.
        let hops: Vec<IpAddr> = forwarded_for
            .iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        hops.iter()
            .rev()
            .find(|a| !self.is_trusted(**a))
            .or(hops.first())
            .copied()
            .unwrap_or(peer)
    }

    fn is_trusted(&self, addr: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(&addr))
    }

    /// Takes `events` from `subject`'s bucket.
    ///
    /// # Errors
    /// 429 when the bucket does not hold them now, or could never (a batch
    /// larger than the burst).
    pub fn publish(&self, subject: Option<&str>, events: usize) -> Result<(), ApiError> {
        let (Some(limiter), Some(subject)) = (&self.publish, subject) else {
            return Ok(());
        };
        let n = NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX).max(1))
            .expect("at least one");
        match limiter.check_key_n(&subject.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(limited(
                "publish_rate",
                format!(
                    "this token's subject is publishing faster than allowed ({events} events now)"
                ),
                not_until.wait_time_from(DefaultClock::default().now()),
            )),
            Err(too_many) => Err(limited(
                "publish_rate",
                format!(
                    "a batch of {events} events is more than this subject's burst of {}; send smaller batches",
                    too_many.0
                ),
                Duration::from_secs(1),
            )),
        }
    }

    /// Forgets rate-limit state of subjects that have been quiet long
    /// enough to be full again, so memory does not grow with every subject
    /// ever seen.
    pub fn upkeep(&self) {
        if let Some(limiter) = &self.publish {
            limiter.retain_recent();
        }
    }
}

fn limited(reason: &'static str, detail: String, retry_after: Duration) -> ApiError {
    metrics::counter!(telemetry::LIMITED, "reason" => reason).increment(1);
    ApiError::Limited {
        detail,
        reason,
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_subject: usize, per_ip: usize, rate: u32, trusted: &[&str]) -> Limits {
        Limits::new(&LimitConfig {
            max_streams_per_subject: per_subject,
            max_streams_per_ip: per_ip,
            publish_rate_per_subject: rate,
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn publish_rate_is_a_bucket_per_subject() {
        let l = limits(0, 0, 5, &[]);
        assert!(l.publish(Some("a"), 5).is_ok());
        let refused = l.publish(Some("a"), 1).unwrap_err();
        assert!(matches!(
            refused,
            ApiError::Limited {
                reason: "publish_rate",
                ..
            }
        ));
        assert!(l.publish(Some("b"), 5).is_ok());
        assert!(l.publish(Some("c"), 6).is_err(), "beyond the burst");
        assert!(l.publish(None, 100).is_ok(), "anonymous has no subject");
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(0, 0, 0, &["10.0.0.0/8"]);
        let xff: &[&[u8]] = &[b"203.0.113.7, 10.1.1.1"];
        assert_eq!(l.client_address(ip("10.0.0.5"), xff), ip("203.0.113.7"));
        assert_eq!(
            l.client_address(ip("198.51.100.1"), xff),
            ip("198.51.100.1")
        );
        // A client cannot pass itself off as someone else behind a proxy
        // that appends: the nearest untrusted hop is taken.
        let spoofed: &[&[u8]] = &[b"1.2.3.4, 203.0.113.7"];
        assert_eq!(l.client_address(ip("10.0.0.5"), spoofed), ip("203.0.113.7"));
        assert_eq!(l.client_address(ip("10.0.0.5"), &[]), ip("10.0.0.5"));
    }
}
