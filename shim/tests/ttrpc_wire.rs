//! The task service behind a real ttrpc server on a Unix socket, called with containerd's client
//! types: the service is registered under containerd's names and errors arrive with their codes.

use std::sync::Arc;

use containerd_shim::api::{CreateTaskRequest, StartRequest, StateRequest, Status, WaitRequest};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::CheckpointTaskRequest;
use containerd_shim::protos::shim_async::{create_task, TaskClient};
use containerd_shim::protos::ttrpc::context::Context;
use containerd_shim::protos::ttrpc::r#async::{Client, Server};
use containerd_shim::protos::ttrpc::{Code, Error};
use msb_shim::config::ShimConfig;
use msb_shim::events::RecordingSink;
use msb_shim::pod_vm::fake::FakeFactory;
use msb_shim::pod_vm::ProcessKey;
use msb_shim::task::TaskService;

fn code_of(e: Error) -> (Code, String) {
    match e {
        Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("not a status: {other:?}"),
    }
}

#[tokio::test]
async fn task_service_over_ttrpc() {
    let tmp = tempfile::tempdir().unwrap();
    let factory = FakeFactory::new();
    let svc = TaskService::new(
        "default",
        factory.clone(),
        Arc::new(RecordingSink::default()),
        Arc::new(ExitSignal::default()),
        Some(ShimConfig {
            state_dir: tmp.path().join("state"),
            ..ShimConfig::default()
        }),
    );
    let addr = format!("unix://{}", tmp.path().join("shim.sock").display());
    let mut server = Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_task(Arc::new(svc)));
    server.start().await.unwrap();
    let client = TaskClient::new(Client::connect(&addr).await.unwrap());
    let ctx = || Context::default();

    let err = client
        .state(
            ctx(),
            &StateRequest {
                id: "nope".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        code_of(err),
        (Code::NOT_FOUND, "container nope not found".into())
    );
    let err = client
        .checkpoint(ctx(), &CheckpointTaskRequest::default())
        .await
        .unwrap_err();
    assert_eq!(code_of(err).0, Code::UNIMPLEMENTED);

    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../oci/tests/fixtures/ctr-run.json"
        ),
        bundle.join("config.json"),
    )
    .unwrap();
    let created = client
        .create(
            ctx(),
            &CreateTaskRequest {
                id: "c1".into(),
                bundle: bundle.to_string_lossy().into_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(created.pid, 0);
    let started = client
        .start(
            ctx(),
            &StartRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The host pid: the fake VM has no VMM, so the shim's own.
    assert_eq!(started.pid, std::process::id());
    let state = client
        .state(
            ctx(),
            &StateRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(state.status.enum_value(), Ok(Status::RUNNING));
    factory.sandboxes()[0].exit(
        &ProcessKey {
            container: "c1".into(),
            exec_id: None,
        },
        42,
    );
    let waited = client
        .wait(
            ctx(),
            &WaitRequest {
                id: "c1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(waited.exit_status, 42);
    server.shutdown().await.unwrap();
}
