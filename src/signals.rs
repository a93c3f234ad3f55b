//! Unix signals → [`Command`]s: SIGHUP reloads, SIGTERM and SIGINT shut
//! down. Acting on them is `app`'s job.

use crate::control::Command;
use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Forwards signals to `commands` until `stop` fires.
///
/// # Errors
/// When the signal handlers cannot be installed.
pub fn spawn(
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut signals = signal_hook_tokio::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    Ok(tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                () = stop.cancelled() => return,
                s = signals.next() => s,
            };
            let command = match signal {
                Some(SIGHUP) => Command::Reload(None),
                Some(_) => Command::Shutdown,
                None => return,
            };
            if commands.send(command).await.is_err() {
                return;
            }
        }
    }))
}
