//! State shared by every handler and agent connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::CoordinatorConfig;
use crate::peers::PeerRegistry;
use crate::secrets::PendingSecrets;
use crate::storage::Storage;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<CoordinatorConfig>,
    pub storage: Arc<dyn Storage>,
    pub peers: Arc<PeerRegistry>,
    pub task_events: Arc<TaskEvents>,
    /// Secret environment values of jobs not yet accepted by their agent,
    /// in memory only.
    pub secrets: Arc<PendingSecrets>,
    /// Validate plugins run on every job before dispatch.
    pub sandbox: Arc<runwarden_sandbox::Sandbox>,
    /// Fires when the coordinator starts to shut down: new tasks are
    /// refused, and `/script/sync` callers get their task's state at once.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Rate limit buckets and audit throttles of authentication.
    pub auth: Arc<crate::auth::AuthState>,
}

/// Wakes `/script/sync` callers when a job of their task changes, so that
/// they wait on events instead of polling the store.
#[derive(Debug, Default)]
pub struct TaskEvents {
    senders: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl TaskEvents {
    /// Returns a receiver that sees a change after every later
    /// [`TaskEvents::notify`] for `task_id`.
    pub fn subscribe(&self, task_id: &str) -> watch::Receiver<()> {
        let mut senders = self.lock();
        senders
            .entry(task_id.to_owned())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    pub fn notify(&self, task_id: &str) {
        let senders = self.lock();
        if let Some(sender) = senders.get(task_id) {
            sender.send_replace(());
        }
    }

    /// Forgets `task_id` once no receiver is left. Call after dropping a
    /// receiver from [`TaskEvents::subscribe`].
    pub fn release(&self, task_id: &str) {
        let mut senders = self.lock();
        if senders
            .get(task_id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            senders.remove(task_id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        self.senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
