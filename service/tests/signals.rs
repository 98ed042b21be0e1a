//! `shutdown_on_signals` against real signals sent to this test process (its own binary:
//! the handlers are process-wide).

use std::process::Command;

use reflex_service::shutdown_on_signals;

fn send(signal: &str) {
    let status = Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal}: {status}");
}

#[tokio::test]
async fn sigterm_and_sigint_each_cancel_the_token_instead_of_ending_the_process() {
    for signal in ["-TERM", "-INT"] {
        let (stop, listener) = shutdown_on_signals();
        assert!(!stop.is_cancelled());
        send(signal);
        stop.cancelled().await;
        listener.await.expect("the listener ends after cancelling");
    }
}
