//! `/herald.js`: the browser client (`clients/js/herald.js`), the same file
//! the npm package holds, embedded in the binary so a page can import it
//! from the herald it talks to. `ETag` is a hash of the file, fixed at
//! build time, and `Cache-Control: no-cache` makes a browser revalidate it
//! (`304` when unchanged), so a deploy of a new herald reaches every page
//! on its next load. A module script from another origin is fetched in
//! CORS mode: the file is public and carries no credentials, so it answers
//! `Access-Control-Allow-Origin: *` whatever `--cors-origins` says.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

const SCRIPT: &str = include_str!("../../clients/js/herald.js");

/// FNV-1a over the file: a validator only has to change when the file does.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

const HASH: u64 = fnv1a(SCRIPT.as_bytes());

fn etag() -> HeaderValue {
    HeaderValue::from_str(&format!("\"{HASH:016x}\"")).expect("hex is a valid header value")
}

/// `GET /herald.js`, or `304` for a request that holds this version.
pub async fn script(headers: HeaderMap) -> Response {
    let etag = etag();
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        });
    let common = [
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    let content_type = (
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    (common, [content_type], SCRIPT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_etag_is_a_quoted_hash_of_the_file() {
        let tag = etag();
        let tag = tag.to_str().unwrap();
        assert_eq!(tag.len(), 18, "{tag}");
        assert!(tag.starts_with('"') && tag.ends_with('"'));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
