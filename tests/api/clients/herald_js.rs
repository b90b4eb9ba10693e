//! herald.js, the browser client (issue 24), as a package and as herald
//! serves it: its size minified and gzipped (esbuild), its TypeScript types
//! (`tsc`), the npm package `npm pack` makes of `clients/js`, and
//! `GET /herald.js`. The scripts are in `tests/browser/herald_js_*.mjs`.

use reqwest::header;

use super::run::{node, run_ok};
use crate::helpers::*;

/// The file herald embeds and the package holds.
const SCRIPT: &str = include_str!("../../../clients/js/herald.js");

#[tokio::test]
async fn herald_js_is_at_most_5_kb_minified_and_gzipped() {
    // Prints `herald.js: N bytes, M bytes minified, K bytes minified+gzip`.
    run_ok(&mut node("herald_js_size.mjs")).await;
}

#[tokio::test]
async fn herald_js_types_check_with_tsc() {
    run_ok(&mut node("herald_js_types.mjs")).await;
}

#[tokio::test]
async fn herald_js_packs_into_a_usable_npm_package() {
    run_ok(&mut node("herald_js_pack.mjs")).await;
}

#[tokio::test]
async fn herald_is_served_at_slash_herald_js_with_etag_and_no_cache() {
    let app = spawn_app().await;

    let res = app.get("/herald.js").await;

    assert_eq!(res.status(), 200);
    let headers = res.headers().clone();
    assert_eq!(
        headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let etag = headers
        .get(header::ETAG)
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(res.text().await.unwrap(), SCRIPT);

    // A browser revalidating the copy it holds (no-cache): 304, no body.
    let again = app
        .client
        .get(app.url("/herald.js"))
        .header(header::IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("request");

    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()[header::ETAG], etag.as_str());
    assert_eq!(again.headers()[header::CACHE_CONTROL], "no-cache");
    assert!(again.bytes().await.unwrap().is_empty(), "a 304 has no body");
    app.stop().await;
}
