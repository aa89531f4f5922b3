//! nicebill: recurring card billing on NICEPAY billkeys.
//!
//! See `ARCHITECTURE.md` for the map of modules and the rules between them.
#![forbid(unsafe_code)]

pub mod billing;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod gateway;
pub mod health;
pub mod retry;
pub mod schedule;
pub mod sim;
pub mod storage;
pub mod webhook;

/// Resolves on SIGINT or SIGTERM: the shutdown signal every long-running command waits for.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
