//! The README's herald.js snippet ("Clients", "Browsers: herald.js"), run
//! as written in Chromium against a real herald.

use super::readme::{fenced_blocks, readme_section};
use super::run::{node, run_ok};
use crate::helpers::*;

/// What the README's snippets name herald; the test puts the test herald's
/// address in its place.
const README_HERALD: &str = "https://herald.example.com";

/// The one js block of "Clients" that imports herald.js.
fn snippet() -> String {
    let blocks: Vec<String> = fenced_blocks(&readme_section("## Clients"))
        .into_iter()
        .filter(|(lang, text)| lang == "js" && text.contains("import { Herald }"))
        .map(|(_, text)| text)
        .collect();
    let [snippet] = <[String; 1]>::try_from(blocks).unwrap_or_else(|b| {
        panic!("expected one js block importing herald.js in \"Clients\": {b:#?}")
    });
    snippet
}

#[tokio::test]
async fn readme_herald_js_snippet_renders_its_topic_as_written() {
    let app = spawn_app().await;
    let code = snippet();
    assert!(
        code.contains(&format!("from \"{README_HERALD}/herald.js\"")),
        "the snippet imports herald.js from {README_HERALD}:\n{code}"
    );

    let out = run_ok(
        node("readme_herald_js.mjs")
            .env("HERALD_URL", &app.base)
            .env("SNIPPET", code.replace(README_HERALD, &app.base)),
    )
    .await;
    assert!(out.contains("render() got"), "{out}");

    app.stop().await;
}
