//! What stops the process: SIGINT (Ctrl-C) or SIGTERM. The server begins
//! its drain on it, and `herald tail` exits on it.

/// Resolves on SIGINT or SIGTERM (never, for a signal that cannot be
/// listened to).
pub async fn stop() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
