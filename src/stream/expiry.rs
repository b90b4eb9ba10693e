//! A stream never outlives its token: at its `exp` the stream ends, and a
//! while before (`--token-expiry-warning`) it carries one `auth-expiring`
//! event, so a page can refresh its cookie and the browser's reconnect
//! (with `Last-Event-ID`) carries the new token and misses nothing.
//!
//! A token with less than twice the warning left when its stream opens is
//! warned halfway through what it has left instead: warned at once, a page
//! whose tokens live shorter than the warning would refresh at every
//! connect, and get a stream that is only ever about to expire.

use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::{Instant, Sleep, sleep_until};

/// What the watch woke up for.
pub enum Expiry {
    /// Warn the client: the token expires at this time.
    Warn(OffsetDateTime),
    /// The token has expired: end the stream.
    End,
}

/// The stages of one stream's token.
pub enum ExpiryWatch {
    /// An anonymous stream: nothing expires.
    Never,
    Warning {
        timer: Pin<Box<Sleep>>,
        expires_at: OffsetDateTime,
        end: Instant,
    },
    Ending(Pin<Box<Sleep>>),
    Ended,
}

impl ExpiryWatch {
    pub fn new(expires_at: Option<OffsetDateTime>, warning: Duration) -> Self {
        let Some(expires_at) = expires_at else {
            return Self::Never;
        };
        let left = expires_at - OffsetDateTime::now_utc();
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        let now = Instant::now();
        let end = now + left;
        let lead = warning.min(left / 2);
        Self::Warning {
            timer: Box::pin(sleep_until(end - lead)),
            expires_at,
            end,
        }
    }

    /// Resolves at the next stage; pending for ever once ended (or never
    /// expiring). Cancel-safe: the timers live here.
    pub async fn wait(&mut self) -> Expiry {
        match self {
            Self::Never | Self::Ended => std::future::pending().await,
            Self::Warning {
                timer,
                expires_at,
                end,
            } => {
                timer.as_mut().await;
                let expires_at = *expires_at;
                *self = Self::Ending(Box::pin(sleep_until(*end)));
                Expiry::Warn(expires_at)
            }
            Self::Ending(timer) => {
                timer.as_mut().await;
                *self = Self::Ended;
                Expiry::End
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warns_then_ends_at_the_expiry() {
        let started = Instant::now();
        let expires_at = OffsetDateTime::now_utc() + Duration::from_secs(100);
        let mut watch = ExpiryWatch::new(Some(expires_at), Duration::from_secs(30));

        assert!(matches!(watch.wait().await, Expiry::Warn(at) if at == expires_at));
        let warned = started.elapsed();
        assert!((69..=70).contains(&warned.as_secs()), "{warned:?}");
        assert!(matches!(watch.wait().await, Expiry::End));
        let ended = started.elapsed();
        assert!((99..=100).contains(&ended.as_secs()), "{ended:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_with_less_than_twice_the_warning_left_is_warned_halfway() {
        let started = Instant::now();
        let expires_at = OffsetDateTime::now_utc() + Duration::from_secs(10);
        let mut watch = ExpiryWatch::new(Some(expires_at), Duration::from_secs(60));
        assert!(matches!(watch.wait().await, Expiry::Warn(_)));
        let warned = started.elapsed();
        assert!((4..=5).contains(&warned.as_secs()), "{warned:?}");
        assert!(matches!(watch.wait().await, Expiry::End));
        let ended = started.elapsed();
        assert!((9..=10).contains(&ended.as_secs()), "{ended:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_already_expired_is_warned_and_ended_at_once() {
        let started = Instant::now();
        let expires_at = OffsetDateTime::now_utc() - Duration::from_secs(1);
        let mut watch = ExpiryWatch::new(Some(expires_at), Duration::from_secs(60));
        assert!(matches!(watch.wait().await, Expiry::Warn(_)));
        assert!(matches!(watch.wait().await, Expiry::End));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
