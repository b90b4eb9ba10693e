//! CORS for listed origins only, with credentials, so a page on another
//! origin can subscribe (`EventSource(url, {withCredentials: true})`).

use crate::helpers::*;

const ALLOWED: &str = "http://app.example.test:3000";

#[tokio::test]
async fn listed_origin_may_subscribe_with_credentials() {
    let app = spawn_app_with(|c| c.cors_origins = vec![ALLOWED.to_owned()]).await;

    let res = app
        .client
        .get(app.url("/v1/stream"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], ALLOWED);
    assert_eq!(res.headers()["access-control-allow-credentials"], "true");
    drop(res);
    app.stop().await;
}

#[tokio::test]
async fn preflight_for_publish_allows_listed_origin_and_headers() {
    let app = spawn_app_with(|c| c.cors_origins = vec![ALLOWED.to_owned()]).await;

    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/events"))
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,idempotency-key",
        )
        .send()
        .await
        .unwrap();

    assert!(res.status().is_success(), "{}", res.status());
    assert_eq!(res.headers()["access-control-allow-origin"], ALLOWED);
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("idempotency-key"), "{allowed}");
    app.stop().await;
}

#[tokio::test]
async fn other_origins_get_no_cors_headers() {
    let app = spawn_app_with(|c| c.cors_origins = vec![ALLOWED.to_owned()]).await;

    let res = app
        .client
        .get(app.url("/v1/events"))
        .header("origin", "http://evil.example.test")
        .send()
        .await
        .unwrap();

    assert!(!res.headers().contains_key("access-control-allow-origin"));
    app.stop().await;
}

#[tokio::test]
async fn without_listed_origins_there_is_no_cors() {
    let app = spawn_app().await;

    let res = app
        .client
        .get(app.url("/v1/events"))
        .header("origin", ALLOWED)
        .send()
        .await
        .unwrap();

    assert!(!res.headers().contains_key("access-control-allow-origin"));
    app.stop().await;
}

#[tokio::test]
async fn wildcard_origin_is_refused_at_start() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--cors-origins", "*"])
        .output()
        .await
        .unwrap();

    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an origin"));
}
