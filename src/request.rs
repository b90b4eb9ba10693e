//! The request head as each way in has it: hyper's parsed request, or the
//! head the accept loop read itself (`server/head.rs`). Who asks
//! (`auth`) and what a stream asks for (`stream`) read a request through
//! this, so that neither is written twice and neither depends on the
//! other for it.

/// The request line and headers of a request, as either writer has them:
/// hyper's parsed request, or the head the accept loop read itself.
pub trait RequestHead {
    /// The query string, without `?` (empty when there is none).
    fn query(&self) -> &str;
    /// Every value of header `name` (lowercase), in the order sent.
    fn header_values(&self, name: &str) -> Vec<&[u8]>;
}

impl RequestHead for axum::http::request::Parts {
    fn query(&self) -> &str {
        self.uri.query().unwrap_or("")
    }

    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.headers
            .get_all(name)
            .iter()
            .map(axum::http::HeaderValue::as_bytes)
            .collect()
    }
}
