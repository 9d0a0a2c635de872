//! containerd's `Task` ttrpc trait, each method delegating to its verb and mapping the error once.

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::api::CheckpointTaskRequest;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::TtrpcResult;

use super::TaskService;
use crate::error::ShimError;

fn log_err<T>(verb: &'static str, id: &str, r: Result<T, ShimError>) -> TtrpcResult<T> {
    r.map_err(|e| {
        tracing::warn!(container = id, verb, error = %crate::error::chain(&e), "request failed");
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        log_err("create", &id, self.create(req).await)
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let id = req.id.clone();
        log_err("start", &id, self.start(req).await)
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let id = req.id.clone();
        log_err("state", &id, self.state(req).await)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let id = req.id.clone();
        log_err("pids", &id, self.pids(req).await)
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let id = req.id.clone();
        log_err("wait", &id, self.wait(req).await)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("kill", &id, self.kill(req).await)
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("exec", &id, self.exec(req).await)
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("resize_pty", &id, self.resize_pty(req).await)
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("close_io", &id, self.close_io(req).await)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("pause", &id, self.pause(req).await)
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("resume", &id, self.resume(req).await)
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        log_err(
            "checkpoint",
            &req.id,
            Err(ShimError::Unimplemented("checkpoint")),
        )
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let id = req.id.clone();
        log_err("stats", &id, self.stats(req).await)
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("update", &id, self.update(req).await)
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let id = req.id.clone();
        log_err("delete", &id, self.delete(req).await)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let id = req.id.clone();
        log_err("connect", &id, self.connect(req).await)
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        let id = req.id.clone();
        log_err("shutdown", &id, self.shutdown(req).await)
    }
}
