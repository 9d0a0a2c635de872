//! `Connect`: the shim's and the init's pids (containerd calls it when it reconnects).

use containerd_shim::api::{ConnectRequest, ConnectResponse};

use super::TaskService;
use crate::error::ShimError;

impl TaskService {
    /// Handles `Connect`.
    pub async fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse, ShimError> {
        let tables = self.inner.tables.lock().await;
        let task_pid = tables
            .containers
            .get(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }
}
