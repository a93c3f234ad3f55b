//! Commands to the composition root (`app`), sent by the admin API and the
//! signal handler. Only `app` acts on them.

use tokio::sync::oneshot;

/// The answer to a reload: the applied diff, or every error found.
pub type ReloadReply = Result<String, String>;

/// A request to `app`.
#[derive(Debug)]
pub enum Command {
    /// Re-read the config file and apply it by diff.
    Reload(Option<oneshot::Sender<ReloadReply>>),
    /// Stop accepting, drain, exit.
    Shutdown,
}
