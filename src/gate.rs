//! A port's operator switches, set from the console: `PAUSE`/`RESUME`
//! (new work waits while paused) and `KILL` (every client of the port ends
//! now). Sessions and role-port flows read them; only the console sets
//! them. A leaf: it knows nothing of ports, sessions or relays.

use crate::beacon::Beacon;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One port's switches. Lives as long as the port, across reloads.
#[derive(Debug)]
pub struct Gate {
    paused: watch::Sender<bool>,
    /// What clients started now end on: a child token of the port's
    /// close, and the beacon sessions watch it by.
    kill: Mutex<Beacon>,
    close: CancellationToken,
}

/// The wait for a paused port ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StillPaused;

impl StillPaused {
    /// What a client refused at paused `port` is told (with SQLSTATE
    /// `57P03`, as while a leader is replaced).
    #[must_use]
    pub fn text(self, port: &dyn std::fmt::Display) -> String {
        format!("pgvane: port \"{port}\" is paused by an operator")
    }
}

impl Gate {
    /// Open switches for a port whose clients also end when `close` fires.
    #[must_use]
    pub fn new(close: &CancellationToken) -> Self {
        Self {
            paused: watch::Sender::new(false),
            kill: Mutex::new(Beacon::following(&close.child_token())),
            close: close.clone(),
        }
    }

    /// Pauses the port; false when it was paused already.
    pub fn pause(&self) -> bool {
        self.paused
            .send_if_modified(|p| !std::mem::replace(p, true))
    }

    /// Resumes the port (waiting work goes on); false when it was not paused.
    pub fn resume(&self) -> bool {
        self.paused
            .send_if_modified(|p| std::mem::replace(p, false))
    }

    /// Whether the port is paused now.
    #[must_use]
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Returns at once when the port is not paused; else waits for
    /// `RESUME` up to `patience`.
    ///
    /// # Errors
    /// [`StillPaused`] when `patience` ran out first.
    pub async fn wait_open(&self, patience: Duration) -> Result<(), StillPaused> {
        if !self.is_paused() {
            return Ok(());
        }
        let mut rx = self.paused.subscribe();
        match tokio::time::timeout(patience, rx.wait_for(|paused| !paused)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StillPaused),
        }
    }

    /// The token a client starting now ends on: fired by [`Gate::kill`]
    /// and by the port's close.
    #[must_use]
    pub fn kill_token(&self) -> CancellationToken {
        self.lock().token().clone()
    }

    /// [`Self::kill_token`] as a beacon, for sessions that read it on
    /// every request.
    #[must_use]
    pub fn kill_beacon(&self) -> Beacon {
        self.lock().clone()
    }

    /// Ends every client started so far; clients starting later get a
    /// fresh token.
    pub fn kill(&self) {
        let mut current = self.lock();
        let old = std::mem::replace(&mut *current, Beacon::following(&self.close.child_token()));
        drop(current);
        old.token().cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Beacon> {
        self.kill
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_paused_gate_holds_until_resumed_or_patience_runs_out() {
        let gate = std::sync::Arc::new(Gate::new(&CancellationToken::new()));
        assert_eq!(gate.wait_open(Duration::ZERO).await, Ok(()));
        assert!(gate.pause());
        assert!(!gate.pause(), "already paused");
        assert_eq!(
            gate.wait_open(Duration::from_millis(20)).await,
            Err(StillPaused)
        );
        let waiter = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move { gate.wait_open(Duration::from_secs(30)).await })
        };
        assert!(gate.resume());
        assert!(!gate.resume(), "already open");
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(waited.unwrap().unwrap(), Ok(()));
    }

    #[test]
    fn kill_ends_earlier_clients_only_and_close_ends_all() {
        let close = CancellationToken::new();
        let gate = Gate::new(&close);
        let before = gate.kill_token();
        gate.kill();
        let after = gate.kill_token();
        assert!(before.is_cancelled());
        assert!(!after.is_cancelled());
        close.cancel();
        assert!(after.is_cancelled());
        assert!(gate.kill_token().is_cancelled());
    }
}
