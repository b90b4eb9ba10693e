//! The README's client snippets are the code the tests run: each harness
//! holds its client's snippet between marker comments, and the README's
//! "Clients" section must hold each one, byte for byte, as a fenced block.

use super::super::readme::{fenced_blocks, readme_section};
use super::super::repo;

/// Each harness, and the language of its README block.
const HARNESSES: [(&str, &str); 5] = [
    ("tests/browser/readme_eventsource.mjs", "js"),
    ("tests/browser/readme_fetch_event_source.mjs", "js"),
    ("tests/python/readme_sseclient.py", "python"),
    ("tests/python/readme_httpx_sse.py", "python"),
    ("tests/api/clients/third_party/rust_client.rs", "rust"),
];

/// The lines between `README snippet: begin` and `README snippet: end`.
fn snippet(path: &str) -> String {
    let text = std::fs::read_to_string(repo().join(path)).expect("read a harness");
    let after = text
        .split_once("README snippet: begin\n")
        .unwrap_or_else(|| panic!("{path} has no `README snippet: begin` line"))
        .1;
    let (inside, _) = after
        .rsplit_once("README snippet: end")
        .unwrap_or_else(|| panic!("{path} has no `README snippet: end` line"));
    // Up to the end marker's own line, which starts with a comment sign.
    let end = inside.rfind('\n').map_or(0, |i| i + 1);
    inside[..end].to_owned()
}

#[test]
fn readme_snippets_are_the_code_the_tests_run() {
    let blocks = fenced_blocks(&readme_section("## Clients"));
    for (path, lang) in HARNESSES {
        let code = snippet(path);
        assert!(
            code.lines().count() > 5,
            "{path}: an empty snippet?\n{code}"
        );
        assert!(
            blocks.iter().any(|(l, text)| l == lang && *text == code),
            "README.md's \"Clients\" has no ```{lang} block equal to the snippet in {path}; \
             copy it from there:\n{code}"
        );
    }
}
