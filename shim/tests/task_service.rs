//! The whole task service driven through the fake sandbox: the RPCs containerd sends for
//! `ctr run`, `ctr task exec`, `kill`, pods, failures; exact exit codes and event order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::api::*;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::cgroups_v2::metrics::Metrics;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::mount::Mount;
use msb_shim::config::ShimConfig;
use msb_shim::error::ShimError;
use msb_shim::events::{RecordingSink, TaskEvent};
use msb_shim::pod_vm::fake::{FakeFactory, FakePodVm};
use msb_shim::pod_vm::{Output, PodVmEvent, ProcessKey};
use msb_shim::task::TaskService;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

const SNAP: &str = "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots";

struct Harness {
    svc: TaskService,
    factory: Arc<FakeFactory>,
    events: Arc<RecordingSink>,
    exit: Arc<ExitSignal>,
    tmp: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let factory = FakeFactory::new();
        let events = Arc::new(RecordingSink::default());
        let exit = Arc::new(ExitSignal::default());
        let config = ShimConfig {
            state_dir: tmp.path().join("state"),
            ..ShimConfig::default()
        };
        let svc = TaskService::new(
            "default",
            factory.clone(),
            events.clone(),
            exit.clone(),
            Some(config),
        );
        Self {
            svc,
            factory,
            events,
            exit,
            tmp,
        }
    }

    /// A bundle with the given fixture (from the oci crate) and extra annotations.
    fn bundle(&self, id: &str, fixture: &str, annotations: &[(&str, &str)]) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../oci/tests/fixtures")
            .join(fixture);
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src).unwrap()).unwrap();
        for (k, v) in annotations {
            spec["annotations"][*k] = serde_json::Value::String(v.to_string());
        }
        let dir = self.tmp.path().join("bundles").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        dir
    }

    fn fifo(&self, name: &str) -> String {
        let p = self.tmp.path().join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn create_req(&self, id: &str, bundle: &Path, stdout: &str) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.into(),
            bundle: bundle.to_string_lossy().into_owned(),
            rootfs: vec![Mount {
                type_: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "index=off".into(),
                    format!("workdir={SNAP}/9/work"),
                    format!("upperdir={SNAP}/9/fs"),
                    format!("lowerdir={SNAP}/2/fs:{SNAP}/1/fs"),
                ],
                ..Default::default()
            }],
            stdout: stdout.into(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str, fixture: &str) -> Result<CreateTaskResponse, ShimError> {
        let bundle = self.bundle(id, fixture, &[]);
        self.svc.create(self.create_req(id, &bundle, "")).await
    }

    fn vm(&self, i: usize) -> Arc<FakePodVm> {
        self.factory.sandboxes()[i].clone()
    }

    async fn start(&self, id: &str, exec: &str) -> Result<u32, ShimError> {
        Ok(self
            .svc
            .start(StartRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            })
            .await?
            .pid)
    }

    async fn wait(&self, id: &str, exec: &str) -> u32 {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.svc.wait(WaitRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            }),
        )
        .await
        .expect("wait timed out")
        .unwrap()
        .exit_status
    }

    async fn status(&self, id: &str, exec: &str) -> Result<StateResponse, ShimError> {
        self.svc
            .state(StateRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            })
            .await
    }

    async fn kill(&self, id: &str, exec: &str, signal: u32, all: bool) -> Result<Empty, ShimError> {
        self.svc
            .kill(KillRequest {
                id: id.into(),
                exec_id: exec.into(),
                signal,
                all,
                ..Default::default()
            })
            .await
    }

    async fn delete(&self, id: &str, exec: &str) -> Result<DeleteResponse, ShimError> {
        self.svc
            .delete(DeleteRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            })
            .await
    }

    async fn exec(
        &self,
        id: &str,
        exec: &str,
        args: &[&str],
        terminal: bool,
    ) -> Result<Empty, ShimError> {
        let spec = serde_json::json!({
            "user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/", "env": ["PATH=/bin"],
            "terminal": terminal,
        });
        self.svc
            .exec(ExecProcessRequest {
                id: id.into(),
                exec_id: exec.into(),
                terminal,
                spec: MessageField::some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&spec).unwrap(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
    }

    /// Waits (with a deadline) until `n` events were published.
    async fn events(&self, n: usize) -> Vec<TaskEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ev = self.events.events();
            if ev.len() >= n || tokio::time::Instant::now() > deadline {
                return ev;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn init(id: &str) -> ProcessKey {
    ProcessKey {
        container: id.into(),
        exec_id: None,
    }
}

fn exec_key(id: &str, exec: &str) -> ProcessKey {
    ProcessKey {
        container: id.into(),
        exec_id: Some(exec.into()),
    }
}

fn code(e: ShimError) -> Code {
    match ttrpc::Error::from(e) {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

fn exit_of(ev: &TaskEvent) -> (String, String, u32, u32) {
    match ev {
        TaskEvent::Exit {
            container_id,
            id,
            pid,
            exit_status,
            ..
        } => (container_id.clone(), id.clone(), *pid, *exit_status),
        other => panic!("not an exit: {other:?}"),
    }
}

#[tokio::test]
async fn ctr_run_lifecycle_with_output_and_exact_events() {
    let h = Harness::new();
    let stdout = h.fifo("stdout");
    let mut reader = pipe::OpenOptions::new().open_receiver(&stdout).unwrap();
    let bundle = h.bundle("demo", "ctr-run.json", &[]);
    let resp = h
        .svc
        .create(h.create_req("demo", &bundle, &stdout))
        .await
        .unwrap();
    assert_eq!(resp.pid, 0);
    assert_eq!(
        h.status("demo", "").await.unwrap().status,
        Status::CREATED.into()
    );

    let vm = h.vm(0);
    assert_eq!(vm.id(), "demo");
    assert_eq!(
        vm.calls(),
        vec![
            "prepare_rootfs demo lowers=2 upper_size=4294967296",
            "create_container demo"
        ]
    );
    let create = &vm.creates()[0];
    assert_eq!(create.id, "demo");
    assert_eq!(create.mounts.len(), 7);
    let upper = h
        .tmp
        .path()
        .join("state/default/sandboxes/demo/upper-demo.ext4");
    assert!(upper.exists());
    assert!(bundle.join("microsandbox.json").exists());

    let pid = h.start("demo", "").await.unwrap();
    assert_eq!(pid, std::process::id());
    let st = h.status("demo", "").await.unwrap();
    assert_eq!(
        (st.status, st.pid),
        (Status::RUNNING.into(), std::process::id())
    );
    let req = vm.request(&init("demo")).unwrap();
    assert_eq!(
        (req.cmd.as_str(), req.args.clone()),
        ("uname", vec!["-r".to_string()])
    );
    assert!(!req.stdin, "no stdin FIFO was given");

    vm.output(&init("demo"), Output::Stdout(b"6.1.0-msb\n".to_vec()))
        .await;
    vm.exit(&init("demo"), 0);
    assert_eq!(h.wait("demo", "").await, 0);
    let mut buf = [0u8; 10];
    reader.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"6.1.0-msb\n");
    let st = h.status("demo", "").await.unwrap();
    assert_eq!((st.status, st.exit_status), (Status::STOPPED.into(), 0));

    let del = h.delete("demo", "").await.unwrap();
    assert_eq!((del.pid, del.exit_status), (std::process::id(), 0));
    assert!(!upper.exists());
    assert!(!h.tmp.path().join("state/default/sandboxes/demo").exists());
    assert!(!bundle.join("microsandbox.json").exists());
    assert_eq!(
        vm.calls()[2..],
        ["exec demo/- uname", "delete_container demo", "shutdown"]
    );
    assert_eq!(
        h.events.topics(),
        vec![
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    let ev = h.events.events();
    assert_eq!(
        exit_of(&ev[2]),
        ("demo".into(), "demo".into(), std::process::id(), 0)
    );
    match &ev[3] {
        TaskEvent::Delete {
            container_id,
            pid,
            exit_status,
            exited_at,
        } => {
            assert_eq!(
                (container_id.as_str(), *pid, *exit_status),
                ("demo", std::process::id(), 0)
            );
            assert!(exited_at.is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(h.status("demo", "").await.unwrap_err()),
        Code::NOT_FOUND
    );

    // The shim exits on Shutdown once nothing is left.
    h.svc.shutdown(ShutdownRequest::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), h.exit.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn signals_give_128_plus_signal_and_kill_after_exit_is_not_found() {
    let h = Harness::new();
    h.create("t", "ctr-run.json").await.unwrap();
    h.start("t", "").await.unwrap();
    h.kill("t", "", 15, false).await.unwrap();
    assert_eq!(h.wait("t", "").await, 143);
    let err = h.kill("t", "", 9, false).await.unwrap_err();
    assert_eq!(code(err), Code::NOT_FOUND);
    assert_eq!(h.vm(0).calls()[3], "signal t/- 15 all=false");

    h.create("k", "ctr-run.json").await.unwrap();
    h.start("k", "").await.unwrap();
    h.kill("k", "", 9, true).await.unwrap();
    assert_eq!(h.wait("k", "").await, 137);
    assert_eq!(h.vm(1).calls()[3], "signal k/- 9 all=true");
}

#[tokio::test]
async fn kill_before_start_stops_the_task() {
    let h = Harness::new();
    h.create("c", "ctr-run.json").await.unwrap();
    h.kill("c", "", 9, false).await.unwrap();
    assert_eq!(h.wait("c", "").await, 137);
    assert_eq!(
        code(h.start("c", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(h.delete("c", "").await.unwrap().exit_status, 137);
    assert_eq!(
        h.events.topics(),
        vec!["/tasks/create", "/tasks/exit", "/tasks/delete"]
    );
}

#[tokio::test]
async fn oom_kill_publishes_oom_then_exit_137() {
    let h = Harness::new();
    h.create("m", "ctr-run-memory.json").await.unwrap();
    assert_eq!(h.vm(0).creates()[0].resources.memory_limit, Some(64 << 20));
    h.start("m", "").await.unwrap();
    h.vm(0).oom("m");
    assert_eq!(h.wait("m", "").await, 137);
    let ev = h.events(4).await;
    let topics: Vec<_> = ev.iter().map(TaskEvent::topic).collect();
    assert_eq!(
        topics,
        vec!["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]
    );
    assert_eq!(
        ev[2],
        TaskEvent::Oom {
            container_id: "m".into()
        }
    );
    assert_eq!(exit_of(&ev[3]).3, 137);
}

/// The guest is untrusted: an OOM event of one pod's VM naming another pod's container, or
/// none, is dropped; the other pod's own OOM still comes through once.
#[tokio::test]
async fn an_oom_event_naming_another_pods_container_is_dropped() {
    let h = Harness::new();
    for id in ["a", "b"] {
        h.create(id, "ctr-run.json").await.unwrap();
        h.start(id, "").await.unwrap();
    }
    for forged in ["b", "nope"] {
        h.vm(0).send_event(PodVmEvent::Oom {
            container: forged.into(),
        });
    }
    // a's exit goes through the same watcher after the forged events: once it is published,
    // they were handled.
    h.vm(0).exit(
        &ProcessKey {
            container: "a".into(),
            exec_id: None,
        },
        0,
    );
    assert_eq!(h.wait("a", "").await, 0);
    h.vm(1).oom("b");
    assert_eq!(h.wait("b", "").await, 137);
    let ooms: Vec<TaskEvent> = h
        .events
        .events()
        .into_iter()
        .filter(|e| matches!(e, TaskEvent::Oom { .. }))
        .collect();
    assert_eq!(
        ooms,
        [TaskEvent::Oom {
            container_id: "b".into()
        }]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_always_precedes_the_exit_it_caused() {
    let h = Harness::new();
    for i in 0..30 {
        let id = format!("m{i}");
        h.create(&id, "ctr-run.json").await.unwrap();
        h.start(&id, "").await.unwrap();
        h.vm(i).oom(&id);
        assert_eq!(h.wait(&id, "").await, 137);
        let ev = h.events.events();
        let n = ev.len();
        assert_eq!(
            ev[n - 2],
            TaskEvent::Oom {
                container_id: id.clone()
            },
            "round {i}"
        );
        assert_eq!(exit_of(&ev[n - 1]).0, id, "round {i}");
    }
}

#[tokio::test]
async fn vm_death_stops_every_process_with_137() {
    let h = Harness::new();
    h.create("d", "ctr-run.json").await.unwrap();
    h.start("d", "").await.unwrap();
    h.vm(0).die();
    assert_eq!(h.wait("d", "").await, 137);
}

#[tokio::test]
async fn exec_lifecycle_and_its_errors() {
    let h = Harness::new();
    h.create("c", "ctr-run-tty.json").await.unwrap();
    assert_eq!(
        code(h.exec("c", "e1", &["ls"], false).await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    h.start("c", "").await.unwrap();

    h.exec("c", "e1", &["sh", "-c", "exit 3"], true)
        .await
        .unwrap();
    assert_eq!(
        code(h.exec("c", "e1", &["ls"], false).await.unwrap_err()),
        Code::ALREADY_EXISTS
    );
    assert_eq!(
        h.status("c", "e1").await.unwrap().status,
        Status::CREATED.into()
    );
    let pid = h.start("c", "e1").await.unwrap();
    assert_eq!(pid, std::process::id());
    let req = h.vm(0).request(&exec_key("c", "e1")).unwrap();
    assert_eq!(req.container.as_deref(), Some("c"));
    assert!(req.tty);
    h.svc
        .resize_pty(ResizePtyRequest {
            id: "c".into(),
            exec_id: "e1".into(),
            width: 120,
            height: 40,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(h.vm(0).calls().contains(&"resize c/e1 40x120".to_string()));
    h.vm(0).exit(&exec_key("c", "e1"), 3);
    assert_eq!(h.wait("c", "e1").await, 3);
    // Resizing a process that just ended is a no-op (ctr resizes right after Start).
    h.svc
        .resize_pty(ResizePtyRequest {
            id: "c".into(),
            exec_id: "e1".into(),
            width: 80,
            height: 24,
            ..Default::default()
        })
        .await
        .unwrap();
    let ev = h.events(5).await;
    assert_eq!(
        ev[2],
        TaskEvent::ExecAdded {
            container_id: "c".into(),
            exec_id: "e1".into()
        }
    );
    assert_eq!(
        ev[3],
        TaskEvent::ExecStarted {
            container_id: "c".into(),
            exec_id: "e1".into(),
            pid: std::process::id()
        }
    );
    assert_eq!(
        exit_of(&ev[4]),
        ("c".into(), "e1".into(), std::process::id(), 3)
    );
    let del = h.delete("c", "e1").await.unwrap();
    assert_eq!((del.pid, del.exit_status), (std::process::id(), 3));
    assert_eq!(
        code(h.status("c", "e1").await.unwrap_err()),
        Code::NOT_FOUND
    );
    // No TaskDelete for an exec.
    assert_eq!(h.events.events().len(), 5);

    // An exec whose program is missing fails to start and is stopped with 127.
    h.exec("c", "e2", &["missing"], false).await.unwrap();
    let err = h.start("c", "e2").await.unwrap_err();
    assert_eq!(code(err), Code::INTERNAL);
    let st = h.status("c", "e2").await.unwrap();
    assert_eq!((st.status, st.exit_status), (Status::STOPPED.into(), 127));
}

#[tokio::test]
async fn bad_transitions_are_failed_precondition() {
    let h = Harness::new();
    assert_eq!(
        code(h.start("nope", "").await.unwrap_err()),
        Code::NOT_FOUND
    );
    h.create("c", "ctr-run.json").await.unwrap();
    assert_eq!(
        code(h.create("c", "ctr-run.json").await.unwrap_err()),
        Code::ALREADY_EXISTS
    );
    let pause = |id: &str| PauseRequest {
        id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        code(h.svc.pause(pause("c")).await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    h.start("c", "").await.unwrap();
    assert_eq!(
        code(h.start("c", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(h.delete("c", "").await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );

    h.svc.pause(pause("c")).await.unwrap();
    assert_eq!(
        h.status("c", "").await.unwrap().status,
        Status::PAUSED.into()
    );
    assert_eq!(
        code(h.svc.pause(pause("c")).await.unwrap_err()),
        Code::FAILED_PRECONDITION
    );
    h.svc
        .resume(ResumeRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        h.events.topics(),
        vec![
            "/tasks/create",
            "/tasks/start",
            "/tasks/paused",
            "/tasks/resumed"
        ]
    );

    let ctx = ttrpc::r#async::TtrpcContext {
        mh: Default::default(),
        metadata: HashMap::new(),
        timeout_nano: 0,
    };
    let err = Task::checkpoint(&h.svc, &ctx, CheckpointTaskRequest::default())
        .await
        .unwrap_err();
    match err {
        ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), Code::UNIMPLEMENTED);
            assert_eq!(
                s.message(),
                "checkpoint is not supported by the microsandbox shim"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn stats_pids_update() {
    let h = Harness::new();
    h.create("c", "ctr-run.json").await.unwrap();
    h.start("c", "").await.unwrap();
    let stats = h
        .svc
        .stats(StatsRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(stats.stats.type_url, "io.containerd.cgroups.v2.Metrics");
    let m = Metrics::parse_from_bytes(&stats.stats.value).unwrap();
    assert_eq!((m.memory.usage, m.pids.current), (4096, 1));
    let pids = h
        .svc
        .pids(PidsRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pids.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![101]
    );
    assert!(
        pids.processes[0].info.is_none(),
        "the init carries no exec id"
    );
    h.exec("c", "e1", &["top"], false).await.unwrap();
    h.start("c", "e1").await.unwrap();
    let pids = h
        .svc
        .pids(PidsRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        pids.processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
        vec![101, 102]
    );
    let info = &pids.processes[1].info;
    assert_eq!(info.type_url, "containerd.runc.v1.ProcessDetails");
    let details =
        containerd_shim::protos::shim::oci::ProcessDetails::parse_from_bytes(&info.value).unwrap();
    assert_eq!(details.exec_id, "e1");
    h.svc
        .update(UpdateTaskRequest {
            id: "c".into(),
            resources: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: br#"{"memory": {"limit": 134217728}, "pids": {"limit": 10}}"#.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(h
        .vm(0)
        .calls()
        .contains(&"update c memory=Some(134217728) pids=Some(10)".to_string()));
    let conn = h
        .svc
        .connect(ConnectRequest {
            id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        (conn.shim_pid, conn.task_pid),
        (std::process::id(), std::process::id())
    );
}

/// Creates container `id` with a stdin FIFO whose writer (containerd's side, returned) stays
/// open, so only CloseIO can end its stdin.
async fn create_with_stdin(h: &Harness, id: &str) -> std::fs::File {
    let stdin = h.fifo("stdin");
    let writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&stdin)
        .unwrap();
    let bundle = h.bundle(id, "ctr-run.json", &[]);
    let mut req = h.create_req(id, &bundle, "");
    req.stdin = stdin;
    h.svc.create(req).await.unwrap();
    writer
}

async fn close_stdin(h: &Harness, id: &str) {
    h.svc
        .close_io(CloseIORequest {
            id: id.into(),
            stdin: true,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The chunks `id`'s init receives on stdin until `done` holds for them (10 s at most).
async fn stdin_until(vm: &FakePodVm, id: &str, done: impl Fn(&[Vec<u8>]) -> bool) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while !done(&got) && tokio::time::Instant::now() < deadline {
        got.extend(vm.stdin(&init(id)));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    got
}

fn ends_with_eof(got: &[Vec<u8>]) -> bool {
    got.last().is_some_and(|c| c.is_empty())
}

#[tokio::test]
async fn stdin_fifo_reaches_the_process_and_close_io_ends_it() {
    let h = Harness::new();
    let writer = create_with_stdin(&h, "c").await;
    h.start("c", "").await.unwrap();
    let vm = h.vm(0);
    assert!(vm.request(&init("c")).unwrap().stdin);
    std::io::Write::write_all(&mut &writer, b"input").unwrap();
    let got = stdin_until(&vm, "c", |got| !got.is_empty()).await;
    assert_eq!(got, vec![b"input".to_vec()]);
    close_stdin(&h, "c").await;
    // EOF follows what the FIFO held (nothing more here), sent by the copy itself.
    let got = stdin_until(&vm, "c", ends_with_eof).await;
    assert_eq!(got, vec![Vec::<u8>::new()]);
}

#[tokio::test]
async fn close_io_before_start_ends_stdin_once_it_runs() {
    let h = Harness::new();
    let writer = create_with_stdin(&h, "c").await;
    std::io::Write::write_all(&mut &writer, b"early").unwrap();
    close_stdin(&h, "c").await;
    h.start("c", "").await.unwrap();
    // What was written before CloseIO, then EOF, though containerd's writer stays open.
    let got = stdin_until(&h.vm(0), "c", ends_with_eof).await;
    assert_eq!(got, vec![b"early".to_vec(), Vec::new()]);
}

#[tokio::test]
async fn containers_of_one_pod_share_one_vm() {
    let h = Harness::new();
    let pod = [("io.kubernetes.cri.sandbox-id", "pod1")];
    let sb = h.bundle("pod1", "ctr-run.json", &pod);
    h.svc.create(h.create_req("pod1", &sb, "")).await.unwrap();
    let app = h.bundle("app", "cri-container.json", &[]);
    // The fixture names sandbox 5f0c; point it at our pod.
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(app.join("config.json")).unwrap()).unwrap();
    spec["annotations"]["io.kubernetes.cri.sandbox-id"] = "pod1".into();
    std::fs::write(app.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    // The CRI's host binds go through the VM's volume share, in the spec's order; its
    // /dev/shm bind is left to the guest.
    let hosts = h.tmp.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    spec["mounts"][7]["source"] = hosts.to_string_lossy().into_owned().into();
    std::fs::write(app.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    h.svc.create(h.create_req("app", &app, "")).await.unwrap();

    assert_eq!(h.factory.sandboxes().len(), 1);
    let vm = h.vm(0);
    assert_eq!(vm.id(), "pod1");
    let sandboxes = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/5f0c";
    let volumes: Vec<String> = vm
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("add_volume"))
        .collect();
    assert_eq!(
        volumes,
        [
            format!("add_volume app 2 {sandboxes}/resolv.conf rec=true ro=false"),
            format!("add_volume app 1 {sandboxes}/hostname rec=true ro=false"),
            format!("add_volume app 0 {} rec=true ro=false", hosts.display()),
        ]
    );
    let app_create = &vm.creates()[1];
    let binds: Vec<(&str, &str)> = app_create
        .mounts
        .iter()
        .filter(|m| m.kind == "bind")
        .map(|m| (m.destination.as_str(), m.source.as_str()))
        .collect();
    assert_eq!(
        binds,
        [
            ("/etc/hosts", "/run/msb/volumes/app/0"),
            ("/etc/hostname", "/run/msb/volumes/app/1"),
            ("/etc/resolv.conf", "/run/msb/volumes/app/2"),
        ]
    );
    assert_eq!(app_create.mounts[7].destination, "/etc/hosts");
    assert_eq!(
        app_create.namespaces.pid,
        msb_protocol::types::NamespaceSource::Container("pod1".into())
    );
    assert_eq!(
        msb_shim::shim::grouping(&app, "app"),
        "pod1",
        "start groups the pod's containers on one shim"
    );

    h.delete("app", "").await.unwrap();
    assert!(!vm.calls().contains(&"shutdown".to_string()));
    h.delete("pod1", "").await.unwrap();
    assert_eq!(vm.calls().last().unwrap(), "shutdown");
}

#[tokio::test]
async fn annotations_choose_the_vm_size() {
    let h = Harness::new();
    let b = h.bundle(
        "c",
        "ctr-run.json",
        &[
            ("io.microsandbox.vcpus", "2"),
            ("io.microsandbox.memory_mib", "1024"),
            ("io.microsandbox.upper_size", "1G"),
        ],
    );
    h.svc.create(h.create_req("c", &b, "")).await.unwrap();
    let (_, cfg) = &h.factory.configs()[0];
    assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 1024));
    assert_eq!(
        h.vm(0).calls()[0],
        "prepare_rootfs c lowers=2 upper_size=1073741824"
    );

    let bad = h.bundle("bad", "ctr-run.json", &[("io.microsandbox.vcpus", "0")]);
    let err = h
        .svc
        .create(h.create_req("bad", &bad, ""))
        .await
        .unwrap_err();
    assert_eq!(code(err), Code::INVALID_ARGUMENT);
}

#[tokio::test]
async fn failed_create_leaves_nothing_behind() {
    let h = Harness::new();
    h.factory.fail_next_boot("no kernel at /x/vmlinux");
    let err = h.create("c", "ctr-run.json").await.unwrap_err();
    assert_eq!(code(err), Code::INTERNAL);
    assert!(!h.tmp.path().join("state/default/sandboxes/c").exists());

    // A guest-side failure shuts down the VM this create booted.
    h.factory
        .fail_create_in_next_vm("mount upper: bad superblock");
    let err = h.create("c", "ctr-run.json").await.unwrap_err();
    assert_eq!(code(err), Code::INTERNAL);
    assert_eq!(
        h.vm(0).calls(),
        vec![
            "prepare_rootfs c lowers=2 upper_size=4294967296",
            "create_container c",
            "delete_container c",
            "shutdown"
        ]
    );
    assert!(!h.tmp.path().join("state/default/sandboxes/c").exists());
    // The id is free again, in a new VM.
    h.create("c", "ctr-run.json").await.unwrap();
    assert_eq!(h.factory.sandboxes().len(), 2);
}

#[tokio::test]
async fn guest_create_failure_shuts_the_vm_and_frees_the_id() {
    let h = Harness::new();
    let b = h.bundle("c", "ctr-run.json", &[]);
    // Boot a VM and arm its failure before the container is created: use a pod so the
    // second create reuses the first VM.
    let pod = [("io.kubernetes.cri.sandbox-id", "p")];
    let sb = h.bundle("p", "ctr-run.json", &pod);
    h.svc.create(h.create_req("p", &sb, "")).await.unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["annotations"]["io.kubernetes.cri.sandbox-id"] = "p".into();
    std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    h.vm(0).fail_next_create("mount upper: bad superblock");
    let err = h.svc.create(h.create_req("c", &b, "")).await.unwrap_err();
    assert_eq!(code(err), Code::INTERNAL);
    assert!(
        !h.tmp
            .path()
            .join("state/default/sandboxes/p/upper-c.ext4")
            .exists(),
        "the failed container's upper is left"
    );
    // The pod's VM stays for its other container; the id is free again.
    assert!(!h.vm(0).calls().contains(&"shutdown".to_string()));
    h.svc.create(h.create_req("c", &b, "")).await.unwrap();
}

#[tokio::test]
async fn ids_that_could_name_another_path_are_refused() {
    let h = Harness::new();
    let b = h.bundle(
        "c",
        "ctr-run.json",
        &[("io.kubernetes.cri.sandbox-id", "../../etc")],
    );
    let err = h.svc.create(h.create_req("c", &b, "")).await.unwrap_err();
    let message = err.to_string();
    assert_eq!(
        (code(err), message),
        (
            Code::INVALID_ARGUMENT,
            "invalid argument: annotation io.kubernetes.cri.sandbox-id \"../../etc\" is not a \
             valid identifier (1 to 76 letters and digits, joined by single '.', '_' or '-')"
                .into()
        )
    );
    let b = h.bundle("x", "ctr-run.json", &[]);
    let err = h.svc.create(h.create_req("a/b", &b, "")).await.unwrap_err();
    assert_eq!(code(err), Code::INVALID_ARGUMENT);
    assert!(h.factory.sandboxes().is_empty(), "no VM for a bad id");
}

#[tokio::test]
async fn bundle_errors_are_invalid_argument() {
    let h = Harness::new();
    let b = h.bundle("c", "unsupported-mount.json", &[]);
    let err = h.svc.create(h.create_req("c", &b, "")).await.unwrap_err();
    assert_eq!(code(err), Code::INVALID_ARGUMENT);
    let mut req = h.create_req("c", &h.bundle("c", "ctr-run.json", &[]), "");
    req.rootfs[0].type_ = "zfs".into();
    let err = h.svc.create(req).await.unwrap_err();
    assert_eq!(code(err), Code::INVALID_ARGUMENT);
    assert!(h.factory.sandboxes().is_empty(), "no VM for a bad bundle");
}

#[tokio::test]
async fn a_bad_fifo_fails_start_before_anything_runs() {
    let h = Harness::new();
    let b = h.bundle("c", "ctr-run.json", &[]);
    h.svc
        .create(h.create_req("c", &b, "/nonexistent/stdout"))
        .await
        .unwrap();
    let err = h.start("c", "").await.unwrap_err();
    assert_eq!(err.to_string(), "open stdout FIFO /nonexistent/stdout");
    assert_eq!(code(err), Code::INTERNAL);
    assert!(!h.vm(0).calls().iter().any(|c| c.starts_with("exec ")));
    let st = h.status("c", "").await.unwrap();
    assert_eq!(st.status, Status::STOPPED.into());
}

/// A container whose init runs `args` (the `ctr-run.json` fixture otherwise), with `annotations`.
fn bundle_running(h: &Harness, id: &str, args: &[&str], annotations: &[(&str, &str)]) -> PathBuf {
    let dir = h.bundle(id, "ctr-run.json", annotations);
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    spec["process"]["args"] = serde_json::json!(args);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    dir
}

/// Runs `f`, which must finish well before `limit` (a hung guest must not hold it).
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = tokio::time::Instant::now();
    let r = tokio::time::timeout(limit, f)
        .await
        .expect("the shim waited on a hung guest without a deadline");
    (r, start.elapsed())
}

/// StopPodSandbox, `ctr task kill -s SIGKILL`, `docker kill`: SIGKILL of a sandbox's init whose
/// guest no longer answers (nor reads its port) kills the VMM within the kill grace (the fake's
/// is 1 s); the init's exit is 137 and Delete finishes.
#[tokio::test]
async fn sigkill_of_a_hung_sandbox_init_kills_the_vmm() {
    let h = Harness::new();
    h.create("k", "ctr-run.json").await.unwrap();
    h.start("k", "").await.unwrap();
    let vm = h.vm(0);
    vm.hang();
    let (r, took) = within(Duration::from_secs(5), h.kill("k", "", 9, false)).await;
    r.unwrap();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(vm.vmm_killed());
    assert_eq!(h.wait("k", "").await, 137);
    let (r, _) = within(Duration::from_secs(5), h.delete("k", "")).await;
    assert_eq!(r.unwrap().exit_status, 137);
    let calls = vm.calls();
    let tail: Vec<&str> = calls[calls.len() - 4..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "signal k/- 9 all=false",
            "kill_vmm",
            "delete_container k",
            "shutdown"
        ]
    );
}

/// The guest takes the SIGKILL but never reports the init's exit: the VMM is killed once the
/// grace has passed, and containerd gets 137.
#[tokio::test]
async fn a_sigkilled_sandbox_init_whose_exit_never_comes_is_ended_by_killing_the_vmm() {
    let h = Harness::new();
    let b = bundle_running(&h, "u", &["unkillable"], &[]);
    h.svc.create(h.create_req("u", &b, "")).await.unwrap();
    h.start("u", "").await.unwrap();
    let vm = h.vm(0);
    let start = tokio::time::Instant::now();
    let (r, took) = within(Duration::from_secs(5), h.kill("u", "", 9, true)).await;
    r.unwrap();
    assert!(
        took < Duration::from_millis(500),
        "Kill waits for no exit: {took:?}"
    );
    assert!(!vm.vmm_killed());
    assert_eq!(h.wait("u", "").await, 137);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(vm.vmm_killed());
    assert_eq!(
        vm.calls().last().map(String::as_str),
        Some("kill_vmm"),
        "{:?}",
        vm.calls()
    );
}

/// Other signals, and SIGKILL to a pod's other containers, never kill the VM: a process that
/// survives them is the container's business, and the pod's other containers live on.
#[tokio::test]
async fn only_sigkill_of_the_sandbox_init_may_kill_the_vmm() {
    let h = Harness::new();
    let pod = [("io.kubernetes.cri.sandbox-id", "p")];
    let sb = bundle_running(&h, "p", &["unkillable"], &pod);
    h.svc.create(h.create_req("p", &sb, "")).await.unwrap();
    let app = bundle_running(&h, "app", &["unkillable"], &pod);
    h.svc.create(h.create_req("app", &app, "")).await.unwrap();
    h.start("p", "").await.unwrap();
    h.start("app", "").await.unwrap();
    h.kill("p", "", 15, true).await.unwrap();
    h.kill("app", "", 9, true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let vm = h.vm(0);
    assert!(!vm.vmm_killed(), "{:?}", vm.calls());
    assert_eq!(
        h.status("app", "").await.unwrap().status,
        Status::RUNNING.into()
    );
}

/// Delete of the VM's last container on a hung guest: the delete in the guest gets the kill
/// grace, then the VMM is killed and the VM's end runs as usual.
#[tokio::test]
async fn delete_of_a_hung_vms_last_container_kills_the_vmm() {
    let h = Harness::new();
    h.create("d", "ctr-run.json").await.unwrap();
    h.start("d", "").await.unwrap();
    let vm = h.vm(0);
    vm.exit(&init("d"), 0);
    assert_eq!(h.wait("d", "").await, 0);
    vm.hang();
    let (r, took) = within(Duration::from_secs(5), h.delete("d", "")).await;
    assert_eq!(r.unwrap().exit_status, 0);
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let calls = vm.calls();
    let tail: Vec<&str> = calls[calls.len() - 3..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["delete_container d", "kill_vmm", "shutdown"]);
    assert!(vm.vmm_killed());
    assert!(matches!(
        h.status("d", "").await.unwrap_err(),
        ShimError::NotFound(_)
    ));
}
