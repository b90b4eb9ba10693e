//! The README's worked example of tokens ("Security"), run exactly as
//! written: its lines typed, one by one, into one shell, with `herald` on
//! the PATH and a fresh database as the only difference from a user's
//! terminal.

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::readme::{PORT_8080, fenced_blocks, readme_section, shell_commands};
use super::run::Running;
use crate::helpers::*;

#[tokio::test]
async fn readme_token_example_works_exactly_as_written() {
    let _port = PORT_8080.lock().await;
    let section = readme_section("### Tokens and grants");
    let blocks = fenced_blocks(&section);
    let commands: Vec<String> = blocks
        .iter()
        .filter(|(lang, _)| lang == "sh")
        .flat_map(|(_, text)| shell_commands(text))
        .collect();
    assert_eq!(
        commands.len(),
        8,
        "the example changed shape: {commands:#?}"
    );
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8080").is_ok(),
        "127.0.0.1:8080 is free"
    );

    let db = TestDb::create().await;
    let dir = std::env::temp_dir().join(format!("herald-readme-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_herald"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut sh = Command::new("sh");
    sh.current_dir(&dir)
        .env("PATH", path)
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info")
        .env("HERALD_LOG_FORMAT", "json");
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") && name != "HERALD_LOG_FORMAT" {
            sh.env_remove(name);
        }
    }
    let (mut shell, mut stdin) = Running::spawn_with_stdin(&mut sh);
    let mut type_line = async |line: &str| {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    };

    // The secret, then herald in the background.
    for line in &commands[..3] {
        type_line(line).await;
    }
    shell
        .wait_stderr("herald to serve", |err| err.contains("herald is serving"))
        .await;
    // The two tokens, then Alice's stream in the background.
    for line in &commands[3..6] {
        type_line(line).await;
    }
    shell
        .wait_stdout("Alice's stream to open", |out| {
            out.contains("retry: 3000\n")
        })
        .await;
    // The billing service publishes to Alice's inbox: stored, and on her
    // stream.
    type_line(&commands[6]).await;
    let out = shell
        .wait_stdout("the event on Alice's stream", |out| {
            out.contains("event: message\ndata: {\"id\":\"1\",\"topic\":\"user:alice:inbox\"")
        })
        .await;
    assert!(
        out.contains("{\"id\":\"1\",\"topic\":\"user:alice:inbox\",\"type\":\"message\""),
        "{out}"
    );
    // Her request for Bob's inbox: the README's 403, as written.
    type_line(&commands[7]).await;
    let shown = section
        .lines()
        .find(|l| l.starts_with("`{\"type\":\"about:blank\",\"title\":\"Forbidden\""))
        .expect("the README shows the 403")
        .trim_end_matches('.')
        .trim_matches('`')
        .to_owned();
    shell
        .wait_stdout("the 403 for Bob's inbox", |out| out.contains(&shown))
        .await;

    shell.signal("-TERM");
    let _ = shell.finish(WAIT).await;
    let _ = std::fs::remove_dir_all(&dir);
}
