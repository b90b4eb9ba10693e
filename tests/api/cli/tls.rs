//! `herald publish` and `herald tail` over TLS (issue #8): a private CA of
//! the test's own signs the certificate of a TLS-terminating proxy in front
//! of a test herald, as nginx or a load balancer would stand in front of a
//! deployment, and the client trusts that CA through `--ca-cert` or
//! `HERALD_CA_CERT`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::*;

/// A CA made for one test, its certificate in a PEM file, and a server
/// certificate it signed for `localhost` and `127.0.0.1`.
struct PrivateCa {
    /// The CA's certificate: what `--ca-cert` is given.
    pem_file: PathBuf,
    server: Arc<ServerConfig>,
}

impl PrivateCa {
    fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "herald test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let server = ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        // The chain as a server sends it: its own certificate, then the CA's.
        .with_single_cert(vec![server_cert.der().clone(), ca.der().clone()], key)
        .unwrap();

        let pem_file = temp_path("ca.pem");
        std::fs::write(&pem_file, ca.pem()).unwrap();
        Self {
            pem_file,
            server: Arc::new(server),
        }
    }

    fn pem_file(&self) -> &str {
        self.pem_file.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for PrivateCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.pem_file);
    }
}

/// A path of the test's own in the temporary directory.
fn temp_path(name: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "herald-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// TLS in front, plain TCP to `upstream` behind.
struct TlsProxy {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl TlsProxy {
    async fn start(upstream: SocketAddr, config: Arc<ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(config);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Self { addr, accept }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// `herald ARGS` with `HERALD_CA_CERT` set, to its end.
async fn run_with_ca_env(ca_file: &Path, args: &[&str]) -> Output {
    let child = herald()
        .env("HERALD_CA_CERT", ca_file)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herald");
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("herald ends in time")
        .expect("herald runs")
}

#[tokio::test]
async fn publish_and_tail_speak_tls_to_a_server_whose_private_ca_is_given() {
    let app = spawn_app().await;
    let ca = PrivateCa::new();
    let proxy = TlsProxy::start(app.addr, ca.server.clone()).await;
    let topic = unique_topic("cli");
    let by_ip = format!("https://127.0.0.1:{}", proxy.addr.port());
    let by_name = format!("https://localhost:{}", proxy.addr.port());

    let mut tail = Tail::connected(&by_ip, &["--json", "--ca-cert", ca.pem_file(), &topic]).await;
    let flag = run(
        &[
            "publish",
            "--url",
            &by_name,
            "--ca-cert",
            ca.pem_file(),
            &topic,
            "1",
        ],
        None,
    )
    .await;
    let env = run_with_ca_env(&ca.pem_file, &["publish", "--url", &by_name, &topic, "2"]).await;

    let published = [stored(&flag), stored(&env)];
    let tailed: Vec<Value> = tail
        .lines(2)
        .await
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(tailed, published);
    assert_eq!(published[1]["data"], json!(2));
    assert!(
        tail.stderr()
            .contains(&format!("herald: connected to {by_ip}/v1/stream?topic=")),
        "{}",
        tail.stderr()
    );
}

#[tokio::test]
async fn a_certificate_no_root_vouches_for_is_refused_in_one_line_with_status_1() {
    let app = spawn_app().await;
    let ca = PrivateCa::new();
    let proxy = TlsProxy::start(app.addr, ca.server.clone()).await;
    let url = format!("https://127.0.0.1:{}", proxy.addr.port());
    let expected = format!(
        "herald: TLS handshake with 127.0.0.1:{} failed: invalid peer certificate: UnknownIssuer \
         (if a private CA signed its certificate, pass that CA with --ca-cert or HERALD_CA_CERT)",
        proxy.addr.port()
    );

    let publish = run(&["publish", "--url", &url, "alerts", "x"], None).await;
    let tail = run(&["tail", "--url", &url], None).await;

    assert_eq!(publish.status.code(), Some(1));
    assert_eq!(
        stderr(&publish),
        format!("{expected}; nothing was stored\n")
    );
    assert_eq!(stdout(&publish), "");
    assert_nothing_stored(&app).await;
    // Retrying would meet the same certificate: tail gives up at once.
    assert_eq!(tail.status.code(), Some(1));
    assert_eq!(stderr(&tail), format!("{expected}\n"));
}

#[tokio::test]
async fn https_to_a_plain_http_port_is_refused_in_one_line_with_status_1() {
    let app = spawn_app().await;
    let url = format!("https://{}", app.addr);

    let publish = run(&["publish", "--url", &url, "alerts", "x"], None).await;
    let tail = run(&["tail", "--url", &url], None).await;

    let expected = format!(
        "herald: TLS handshake with {} failed: received corrupt message of type \
         InvalidContentType (does it speak TLS on that port?)",
        app.addr
    );
    assert_eq!(publish.status.code(), Some(1));
    assert_eq!(
        stderr(&publish),
        format!("{expected}; nothing was stored\n")
    );
    assert_eq!(tail.status.code(), Some(1));
    assert_eq!(stderr(&tail), format!("{expected}\n"));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_used_is_a_usage_error_in_one_line() {
    let app = spawn_app().await;
    let missing = temp_path("missing.pem");
    let not_pem = temp_path("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let url = format!("https://127.0.0.1:{}", app.addr.port());

    for (file, says) in [
        (&missing, "cannot read the CA certificate file"),
        (&not_pem, "holds no PEM certificate"),
    ] {
        let file = file.to_str().unwrap();
        for command in [
            &["publish", "--url", &url, "--ca-cert", file, "alerts", "x"][..],
            &["tail", "--url", &url, "--ca-cert", file],
        ] {
            let out = run(command, None).await;

            assert_eq!(out.status.code(), Some(2), "{command:?}");
            let err = stderr(&out);
            assert!(err.starts_with("herald: ") && err.contains(says), "{err}");
            assert!(err.contains(file), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    let env = run_with_ca_env(&missing, &["tail", "--url", &url]).await;
    assert_eq!(env.status.code(), Some(2));
    assert_nothing_stored(&app).await;
    let _ = std::fs::remove_file(not_pem);
}
