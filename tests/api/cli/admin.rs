//! `herald streams` and `herald revoke`: the admin API from a terminal,
//! with a token `herald token --admin` minted.

use crate::helpers::*;

use super::*;

async fn mint(args: &[&str]) -> String {
    let mut all = vec!["token", "--jwt-secret", SECRET];
    all.extend_from_slice(args);
    let minted = run(&all, None).await;
    assert!(minted.status.success(), "{}", stderr(&minted));
    stdout(&minted).trim().to_owned()
}

#[tokio::test]
async fn herald_streams_lists_a_subjects_streams_and_herald_revoke_ends_them() {
    let app = spawn_app_with_tokens(|_| {}).await;
    let admin = mint(&["--subject", "ops", "--admin"]).await;
    let alice = mint(&["--subject", "alice", "--subscribe", "user:{sub}:*"]).await;
    let res = app
        .client
        .get(app.url("/v1/stream?topic=user:alice:inbox&stream=cli-listed-stream-0001"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = SseClient::new(res);
    sse.next_frame().await.unwrap();

    let list = || async {
        run(
            &[
                "streams",
                "--url",
                &app.base,
                "--token",
                &admin,
                "--subject",
                "alice",
            ],
            None,
        )
        .await
    };
    wait_for("herald streams to list alice's stream", || async {
        stdout(&list().await).contains("cli-listed-stream-0001")
    })
    .await;
    let out = list().await;
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out);
    assert!(
        line.contains(" alice ") && line.contains("127.0.0.1") && line.contains("user:alice:inbox"),
        "{line}"
    );

    let refused = run(&["streams", "--url", &app.base, "--token", &alice], None).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("admin"), "{}", stderr(&refused));

    let out = run(
        &["revoke", "--url", &app.base, "--token", &admin, "alice"],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("revoked alice"),
        "{}",
        stdout(&out)
    );
    let last = sse.next_data_frame().await.unwrap();
    assert_eq!(last.event.as_deref(), Some("revoked"));
    assert!(sse.next_frame().await.is_none());
    app.stop().await;
}
