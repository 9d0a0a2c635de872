//! `Wait`: block until a process exits, then report its status and time.

use containerd_shim::api::{WaitRequest, WaitResponse};
use containerd_shim::protos::protobuf::MessageField;

use super::TaskService;
use crate::error::ShimError;
use crate::events::timestamp;

impl TaskService {
    /// Handles `Wait`.
    pub async fn wait(&self, req: WaitRequest) -> Result<WaitResponse, ShimError> {
        let mut rx = {
            let tables = self.inner.tables.lock().await;
            tables
                .container(&req.id)?
                .process(&req.exec_id)?
                .exited
                .subscribe()
        };
        let info = loop {
            if let Some(info) = *rx.borrow_and_update() {
                break info;
            }
            if rx.changed().await.is_err() {
                return Err(ShimError::NotFound(format!(
                    "process {} of container {} (deleted while waiting)",
                    req.exec_id, req.id
                )));
            }
        };
        Ok(WaitResponse {
            exit_status: info.status,
            exited_at: MessageField::some(timestamp(info.at)),
            ..Default::default()
        })
    }
}
