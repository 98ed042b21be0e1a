//! SIGINT and SIGTERM as a cancellation token.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM, and the task that listens for
/// them.
///
/// Both handlers are installed before this returns, so a signal that arrives at any later
/// moment cancels the token instead of ending the process. Logs `shutdown signal received`
/// at info level when one arrives. The caller stops its work when the token is cancelled,
/// and aborts the returned task once that work has ended. Should a handler fail to install
/// (the OS refused it), the other signal still cancels.
///
/// # Panics
///
/// When called outside a Tokio runtime (it spawns the listener), or one built without
/// `enable_io`/`enable_all`.
pub fn shutdown_on_signals() -> (CancellationToken, JoinHandle<()>) {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut term = signal(SignalKind::terminate()).ok();
    let listener = tokio::spawn(async move {
        tokio::select! {
            () = next(int.as_mut()) => {}
            () = next(term.as_mut()) => {}
        }
        tracing::info!("shutdown signal received");
        cancel.cancel();
    });
    (token, listener)
}

/// The next delivery of `signal`; never, for a handler that could not be installed.
async fn next(signal: Option<&mut Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}
