//! Every route herald answers, in one table: the router is built from it,
//! the request count's `route` label comes from it (the template, as
//! axum's `MatchedPath` would give it, without routing first), and the
//! two socket paths of `server/` ask it whether a request is a stream or
//! a publish, rather than each comparing paths of its own.
//!
//! A template's `{name}` segment matches any one non-empty segment, so a
//! route with a parameter (`/v1/streams/{handle}`) is counted under its
//! template, never as `unmatched`.

/// A route of the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The console page.
    Console,
    ConsoleScript,
    ConsoleStyle,
    Icon,
    /// The browser client, `clients/js/herald.js`.
    HeraldScript,
    /// `POST`: publish (answered by the edge itself); `GET`: history.
    Events,
    /// `GET`: whether a subject got an event, and why not (admin).
    EventDeliveries,
    /// `GET`: a stream (mostly written by the socket writer).
    Stream,
    /// `GET`: the streams of the registry (admin).
    Streams,
    /// `PUT`: a named stream's topics; `DELETE`: end it (admin).
    StreamHandle,
    /// `DELETE`: end a subject's streams and revoke its tokens (admin).
    SubjectStreams,
    /// `POST`: other instances' groups, to the cluster's committer.
    ClusterAppend,
    Healthz,
    Readyz,
    Metrics,
}

/// The `route` label of a path no route matches.
pub const UNMATCHED: &str = "unmatched";

impl Route {
    /// Every route, in the order the router lists them.
    pub const ALL: [Self; 15] = [
        Self::Console,
        Self::ConsoleScript,
        Self::ConsoleStyle,
        Self::Icon,
        Self::HeraldScript,
        Self::Events,
        Self::EventDeliveries,
        Self::Stream,
        Self::Streams,
        Self::StreamHandle,
        Self::SubjectStreams,
        Self::ClusterAppend,
        Self::Healthz,
        Self::Readyz,
        Self::Metrics,
    ];

    /// The path template, which is also the route's `route` label.
    pub const fn template(self) -> &'static str {
        match self {
            Self::Console => "/",
            Self::ConsoleScript => "/console.js",
            Self::ConsoleStyle => "/console.css",
            Self::Icon => "/favicon.svg",
            Self::HeraldScript => "/herald.js",
            Self::Events => "/v1/events",
            Self::EventDeliveries => "/v1/events/{id}/deliveries",
            Self::Stream => crate::stream::PATH,
            Self::Streams => "/v1/streams",
            Self::StreamHandle => "/v1/streams/{handle}",
            Self::SubjectStreams => "/v1/subjects/{sub}/streams",
            Self::ClusterAppend => crate::log::APPEND_PATH,
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Metrics => "/metrics",
        }
    }

    /// A health check or a scrape: still answered beyond
    /// `--max-connections`, so a full instance is not taken for a dead one.
    pub fn is_ops(self) -> bool {
        matches!(self, Self::Healthz | Self::Readyz | Self::Metrics)
    }

    /// The route `path` reaches, if any.
    pub fn of(path: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|route| matches_template(route.template(), path))
    }

    /// The `route` label of a request for `path`: its route's template,
    /// or [`UNMATCHED`].
    pub fn label_of(route: Option<Self>) -> &'static str {
        route.map_or(UNMATCHED, Self::template)
    }
}

/// Whether `path` matches `template`: the same segments, where a
/// `{name}` segment of the template stands for any non-empty one.
fn matches_template(template: &str, path: &str) -> bool {
    // Most templates have no parameter: one comparison.
    if !template.contains('{') {
        return template == path;
    }
    let mut wanted = template.split('/');
    let mut given = path.split('/');
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(path: &str) -> &'static str {
        Route::label_of(Route::of(path))
    }

    #[test]
    fn routes_are_their_own_labels_and_the_rest_unmatched() {
        assert_eq!(label("/v1/events"), "/v1/events");
        assert_eq!(label("/v1/stream"), "/v1/stream");
        assert_eq!(label("/"), "/");
        assert_eq!(label("/v1/events/"), UNMATCHED);
        assert_eq!(label("/v1/Events"), UNMATCHED);
        assert_eq!(label("/nope"), UNMATCHED);
        assert_eq!(Route::of("/v1/stream"), Some(Route::Stream));
        assert_eq!(
            label("/v1/streams/abcdefghijklmnop"),
            "/v1/streams/{handle}"
        );
        assert_eq!(
            label("/v1/subjects/alice/streams"),
            "/v1/subjects/{sub}/streams"
        );
    }

    #[test]
    fn every_route_reaches_itself() {
        for route in Route::ALL {
            assert_eq!(Route::of(route.template()), Some(route));
        }
    }

    #[test]
    fn a_parameter_matches_one_non_empty_segment() {
        let t = "/v1/streams/{handle}";
        assert!(matches_template(t, "/v1/streams/abc-123"));
        assert!(!matches_template(t, "/v1/streams/"));
        assert!(!matches_template(t, "/v1/streams"));
        assert!(!matches_template(t, "/v1/streams/a/b"));
        assert!(!matches_template(t, "/v1/stream/abc"));
        let two = "/v1/subjects/{sub}/streams";
        assert!(matches_template(two, "/v1/subjects/alice/streams"));
        assert!(!matches_template(two, "/v1/subjects/alice/stream"));
        assert!(!matches_template(two, "/v1/subjects//streams"));
    }
}
