//! TLS for the terminal client, so `--url https://…` works behind a
//! TLS-terminating proxy: rustls on the `ring` crypto provider, trusting
//! Mozilla's roots (webpki-roots) and any `--ca-cert`.
//!
//! reqwest gets the finished [`ClientConfig`] rather than building one: its
//! own would need a process-wide crypto provider, and it only knows how to
//! default to aws-lc, which this build leaves out (see Cargo.toml).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

/// The client's TLS configuration: Mozilla's roots, plus every certificate
/// in `ca_cert` (a PEM file) as an extra root.
///
/// # Errors
/// One line saying why `ca_cert` cannot be used: unreadable, no PEM
/// certificate in it, or a certificate rustls cannot take as a root.
pub fn client_config(ca_cert: Option<&Path>) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_cert {
        for cert in read_certificates(path)? {
            roots.add(cert).map_err(|e| {
                format!(
                    "the CA certificate file {} holds a certificate that cannot be trusted: {e}",
                    path.display()
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Every `CERTIFICATE` block of a PEM file (other blocks, such as a key that
/// came in the same file, are skipped).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let what = || format!("the CA certificate file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", what()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", what()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            what()
        ));
    }
    Ok(certs)
}

/// The TLS error inside a failed request, when the TLS handshake is what
/// failed (the server's certificate was not trusted, it does not speak
/// TLS…), as opposed to the network.
pub fn handshake_error(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps (which may be another
        // `io::Error`): step into it instead.
        cause = match error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => error.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("herald-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn without_a_ca_file_mozillas_roots_are_trusted() {
        assert!(client_config(None).is_ok());
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_says_why_in_one_line() {
        let missing = std::env::temp_dir().join("herald-tls-no-such-file.pem");
        let no_pem = temp_file("no-pem", b"not a certificate\n");
        let bad_der = temp_file(
            "bad-der",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );

        let errors = [&missing, &no_pem, &bad_der].map(|path| {
            client_config(Some(path))
                .expect_err("refused")
                .replace(&path.display().to_string(), "FILE")
        });

        assert!(
            errors[0].starts_with("cannot read the CA certificate file FILE: "),
            "{}",
            errors[0]
        );
        assert_eq!(
            errors[1],
            "the CA certificate file FILE holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        );
        assert!(
            errors[2].starts_with(
                "the CA certificate file FILE holds a certificate that cannot be trusted: "
            ),
            "{}",
            errors[2]
        );
        assert!(errors.iter().all(|e| !e.contains('\n')));
        for path in [no_pem, bad_der] {
            let _ = std::fs::remove_file(path);
        }
    }
}
