//! A CRI client for the conformance suite (`tests/cri.rs`, ported from Kubernetes' `critest`):
//! containerd's CRI plugin (`runtime.v1`, crate `k8s-cri`) on containerd's own socket, blocking
//! calls that each carry a deadline, builders of pod and container configs as kubelet fills
//! them (names and uids in metadata; containerd makes the 64-hex ids itself), polling helpers
//! with deadlines, and the CRI log format.
//!
//! [`CriTest`] is one test against the process-wide CRI containerd
//! ([`Containerd::shared_cri`]) with one runtime handler: it remembers every pod and container
//! it made, removes them when it ends (a failed test too), and checks that nothing of them is
//! left: no pod, no container, no process naming the pod (shim, VMM), no shim state file.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

pub use k8s_cri::v1 as api;

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
use api::{
    ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState, ContainerStatus,
    ExecSyncResponse, ImageSpec, LinuxContainerConfig, LinuxPodSandboxConfig, PodSandbox,
    PodSandboxConfig, PodSandboxFilter, PodSandboxMetadata, PodSandboxStatus,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::containerd::{fetched_or_skip, Containerd, Version, BUSYBOX, CRI_NAMESPACE};
use crate::ctr::{eventually, tail, STATE};
use crate::guest::GuestSlot;

/// The containerd whose CRI plugin the suite drives.
pub const CRI_VERSION: Version = Version::V1_7;

/// Deadline of a CRI call that waits for nothing in particular (a VM boot under TCG on a busy
/// host included); calls with a timeout of their own get it on top.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// critest's `DefaultAttempt`.
pub const ATTEMPT: u32 = 2;

/// A CRI runtime handler of the containerd config (`hack/lib/containerd.sh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// `io.containerd.runc.v2`, the reference.
    Runc,
    /// `io.containerd.microsandbox.v1`, our shim.
    Microsandbox,
}

impl Handler {
    /// The name in `RunPodSandboxRequest.runtime_handler`.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Runc => "runc",
            Handler::Microsandbox => "microsandbox",
        }
    }
}

/// A CRI call's outcome: the gRPC status on failure (boxed: it is large).
pub type CriResult<T> = Result<T, Box<Status>>;

/// A blocking CRI client: runtime and image services over one channel.
#[derive(Debug)]
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn deadline_exceeded(what: &str, after: Duration) -> Box<Status> {
    Box::new(Status::deadline_exceeded(format!(
        "{what}: no answer within {after:?}"
    )))
}

impl Cri {
    /// Connects to the CRI plugin on containerd's socket.
    pub fn connect(socket: &Path) -> anyhow::Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        let channel = rt.block_on(async move {
            // The URI is a placeholder: the connector dials the socket.
            Endpoint::try_from("http://[::]:0")?
                .connect_timeout(Duration::from_secs(10))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        })?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Runs one call to completion, failing it with DEADLINE_EXCEEDED after `within`.
    fn call<T, F>(&self, what: &str, within: Duration, fut: F) -> CriResult<T>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rt
            .block_on(async { tokio::time::timeout(within, fut).await })
            .map_err(|_| deadline_exceeded(what, within))?
            .map(tonic::Response::into_inner)
            .map_err(Box::new)
    }

    /// `Version`.
    pub fn version(&self) -> CriResult<api::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", CALL_TIMEOUT, async move {
            c.version(api::VersionRequest {
                version: "0.1.0".into(),
            })
            .await
        })
    }

    /// `Status`.
    pub fn status(&self) -> CriResult<api::StatusResponse> {
        let mut c = self.runtime.clone();
        self.call("Status", CALL_TIMEOUT, async move {
            c.status(api::StatusRequest { verbose: false }).await
        })
    }

    /// `RunPodSandbox` with `handler`; the pod's id.
    pub fn run_pod(&self, config: &PodSandboxConfig, handler: Handler) -> CriResult<String> {
        self.run_pod_named(config, handler.name())
    }

    /// `RunPodSandbox` with the runtime handler named `handler` (`runc-net`, ...).
    pub fn run_pod_named(&self, config: &PodSandboxConfig, handler: &str) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call("RunPodSandbox", CALL_TIMEOUT, async move {
            c.run_pod_sandbox(req).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("StopPodSandbox", CALL_TIMEOUT, async move {
            c.stop_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.call("RemovePodSandbox", CALL_TIMEOUT, async move {
            c.remove_pod_sandbox(req).await
        })
        .map(drop)
    }

    /// `PodSandboxStatus`.
    pub fn pod_status(&self, id: &str) -> CriResult<PodSandboxStatus> {
        let mut c = self.runtime.clone();
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.call("PodSandboxStatus", CALL_TIMEOUT, async move {
            c.pod_sandbox_status(req).await
        })?
        .status
        .ok_or_else(|| Box::new(Status::internal("PodSandboxStatus without a status")))
    }

    /// `ListPodSandbox`.
    pub fn list_pods(&self, filter: PodSandboxFilter) -> CriResult<Vec<PodSandbox>> {
        let mut c = self.runtime.clone();
        let req = api::ListPodSandboxRequest {
            filter: Some(filter),
        };
        self.call("ListPodSandbox", CALL_TIMEOUT, async move {
            c.list_pod_sandbox(req).await
        })
        .map(|r| r.items)
    }

    /// `CreateContainer` in pod `pod` (created with `pod_config`); the container's id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.call("CreateContainer", CALL_TIMEOUT, async move {
            c.create_container(req).await
        })
        .map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.call("StartContainer", CALL_TIMEOUT, async move {
            c.start_container(req).await
        })
        .map(drop)
    }

    /// `StopContainer` with `timeout` seconds between the stop signal and SIGKILL.
    pub fn stop_container(&self, id: &str, timeout: i64) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        let within = CALL_TIMEOUT + Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        self.call("StopContainer", within, async move {
            c.stop_container(req).await
        })
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.call("RemoveContainer", CALL_TIMEOUT, async move {
            c.remove_container(req).await
        })
        .map(drop)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> CriResult<ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.call("ContainerStatus", CALL_TIMEOUT, async move {
            c.container_status(req).await
        })?
        .status
        .ok_or_else(|| Box::new(Status::internal("ContainerStatus without a status")))
    }

    /// `ListContainers`.
    pub fn list_containers(&self, filter: ContainerFilter) -> CriResult<Vec<api::Container>> {
        let mut c = self.runtime.clone();
        let req = api::ListContainersRequest {
            filter: Some(filter),
        };
        self.call("ListContainers", CALL_TIMEOUT, async move {
            c.list_containers(req).await
        })
        .map(|r| r.containers)
    }

    /// `ExecSync` of `cmd` in container `id`, killed by the runtime after `timeout` seconds (0:
    /// never).
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: i64) -> CriResult<ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout,
        };
        let within = CALL_TIMEOUT + Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
        self.call("ExecSync", within, async move { c.exec_sync(req).await })
    }

    /// `Exec`: the streaming server's URL of the session ([`crate::cri_stream`]).
    pub fn exec(&self, req: api::ExecRequest) -> CriResult<String> {
        let mut c = self.runtime.clone();
        self.call("Exec", CALL_TIMEOUT, async move { c.exec(req).await })
            .map(|r| r.url)
    }

    /// `Attach`: the streaming server's URL of the session ([`crate::cri_stream`]).
    pub fn attach(&self, req: api::AttachRequest) -> CriResult<String> {
        let mut c = self.runtime.clone();
        self.call("Attach", CALL_TIMEOUT, async move { c.attach(req).await })
            .map(|r| r.url)
    }

    /// `PortForward` of `ports` of pod `pod`: the streaming server's URL of the session. Over
    /// WebSocket the ports come from this request only.
    pub fn port_forward(&self, pod: &str, ports: &[i32]) -> CriResult<String> {
        let mut c = self.runtime.clone();
        let req = api::PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: ports.to_vec(),
        };
        self.call("PortForward", CALL_TIMEOUT, async move {
            c.port_forward(req).await
        })
        .map(|r| r.url)
    }

    /// `ContainerStats` of container `id`.
    pub fn container_stats(&self, id: &str) -> CriResult<api::ContainerStats> {
        let mut c = self.runtime.clone();
        let req = api::ContainerStatsRequest {
            container_id: id.into(),
        };
        self.call("ContainerStats", CALL_TIMEOUT, async move {
            c.container_stats(req).await
        })?
        .stats
        .ok_or_else(|| Box::new(Status::internal("ContainerStats without stats")))
    }

    /// `ListContainerStats` (`None`: no filter at all, as critest sends it).
    pub fn list_container_stats(
        &self,
        filter: Option<api::ContainerStatsFilter>,
    ) -> CriResult<Vec<api::ContainerStats>> {
        let mut c = self.runtime.clone();
        let req = api::ListContainerStatsRequest { filter };
        self.call("ListContainerStats", CALL_TIMEOUT, async move {
            c.list_container_stats(req).await
        })
        .map(|r| r.stats)
    }

    /// `ReopenContainerLog`.
    pub fn reopen_container_log(&self, id: &str) -> CriResult<()> {
        let mut c = self.runtime.clone();
        let req = api::ReopenContainerLogRequest {
            container_id: id.into(),
        };
        self.call("ReopenContainerLog", CALL_TIMEOUT, async move {
            c.reopen_container_log(req).await
        })
        .map(drop)
    }

    /// `RemoveImage` of `image`.
    pub fn remove_image(&self, image: &str) -> CriResult<()> {
        let mut c = self.images.clone();
        let req = api::RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        };
        self.call("RemoveImage", CALL_TIMEOUT, async move {
            c.remove_image(req).await
        })
        .map(drop)
    }

    /// Polls the container's status every 100 ms until it is in `state`, for at most `within`;
    /// that status, or the last one seen.
    pub fn wait_container_state(
        &self,
        id: &str,
        state: ContainerState,
        within: Duration,
    ) -> Result<ContainerStatus, String> {
        let deadline = Instant::now() + within;
        loop {
            let status = self
                .container_status(id)
                .map_err(|e| format!("ContainerStatus {id}: {e}"))?;
            if status.state() == state {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "container {id} not {state:?} within {within:?}: {status:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A name unique to this process and call: `<prefix>-<pid>-<n>` (kubelet names pods and
/// containers; the CRI refuses a name in use).
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A pod config as critest's `RunDefaultPodSandbox` makes it: metadata (name, a fresh uid, a
/// namespace, attempt [`ATTEMPT`]), Linux settings left to the runtime.
pub fn pod_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: unique_name("cri-test-uid"),
            namespace: unique_name("cri-test-namespace"),
            attempt: ATTEMPT,
        }),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A container config: [`BUSYBOX`] running `cmd` (as the command, no args), metadata name and
/// attempt [`ATTEMPT`].
pub fn container_config(name: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: ATTEMPT,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| (*s).to_owned()).collect(),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The pod's Linux security context (namespace options, `privileged`, ...), made empty first
/// when the config has none.
pub fn pod_security(config: &mut PodSandboxConfig) -> &mut api::LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux security context (user, groups, capabilities, masked paths, ...),
/// made empty first when the config has none.
pub fn container_security(config: &mut ContainerConfig) -> &mut api::LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The stdout and stderr of an `ExecSync` as text, and its exit code: what a case compares.
pub fn output(r: &ExecSyncResponse) -> (String, String, i32) {
    (
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
        r.exit_code,
    )
}

/// A filter on pods by id.
pub fn pod_id_filter(id: &str) -> PodSandboxFilter {
    PodSandboxFilter {
        id: id.into(),
        ..Default::default()
    }
}

/// A filter on containers by id.
pub fn container_id_filter(id: &str) -> ContainerFilter {
    ContainerFilter {
        id: id.into(),
        ..Default::default()
    }
}

/// The stream of a CRI log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    /// `stdout`.
    Stdout,
    /// `stderr`.
    Stderr,
}

/// One line of a CRI log file: `<RFC 3339 time with nanoseconds> <stream> <P|F> <text>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp as written.
    pub time: String,
    /// Its stream.
    pub stream: LogStream,
    /// `F`: the line is complete; `P`: partial, continued by the next.
    pub full: bool,
    /// The text, without the newline.
    pub text: String,
}

/// Parses one line of a CRI log file, checking every field.
pub fn parse_log_line(line: &str) -> Result<LogLine, String> {
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("not a CRI log line: {line:?}"));
    };
    let text = parts.next().unwrap_or("");
    if !is_rfc3339_nano(time) {
        return Err(format!("bad timestamp {time:?} in {line:?}"));
    }
    let stream = match stream {
        "stdout" => LogStream::Stdout,
        "stderr" => LogStream::Stderr,
        _ => return Err(format!("bad stream {stream:?} in {line:?}")),
    };
    let full = match tag {
        "F" => true,
        "P" => false,
        _ => return Err(format!("bad tag {tag:?} in {line:?}")),
    };
    Ok(LogLine {
        time: time.into(),
        stream,
        full,
        text: text.into(),
    })
}

/// Parses a whole CRI log file; an unreadable file is an error.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    text.lines().map(parse_log_line).collect()
}

/// Go's `time.RFC3339Nano` as containerd writes it: `2006-01-02T15:04:05.999999999Z07:00`
/// (the fraction without trailing zeros, or absent; `Z` or a `+hh:mm` offset).
pub fn is_rfc3339_nano(s: &str) -> bool {
    fn digits(s: &str, n: usize) -> bool {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
    }
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let date_time_ok = digits(&s[0..4], 4)
        && b[4] == b'-'
        && digits(&s[5..7], 2)
        && b[7] == b'-'
        && digits(&s[8..10], 2)
        && b[10] == b'T'
        && digits(&s[11..13], 2)
        && b[13] == b':'
        && digits(&s[14..16], 2)
        && b[16] == b':'
        && digits(&s[17..19], 2);
    if !date_time_ok {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && digits(&rest[1..3], 2)
            && &rest[3..4] == ":"
            && digits(&rest[4..6], 2))
}

/// Nanoseconds since the epoch, as CRI timestamps count.
pub fn now_ns() -> i64 {
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_nanos()).expect("nanoseconds fit i64 until 2262")
}

/// Whether `status` is the gRPC NOT_FOUND the CRI answers for a pod or container it does not
/// know.
pub fn is_not_found(status: &Status) -> bool {
    status.code() == Code::NotFound
}

/// One conformance test: the shared CRI containerd, a client, a runtime handler, and what the
/// test made, removed when it ends (on failure too) and checked afterwards.
#[derive(Debug)]
pub struct CriTest {
    /// The client.
    pub cri: Cri,
    /// The handler pods run with.
    pub handler: Handler,
    ctrd: &'static Containerd,
    pods: Mutex<Vec<String>>,
    containers: Mutex<Vec<String>>,
    temp_dirs: Mutex<Vec<PathBuf>>,
    _slot: Option<GuestSlot>,
}

impl CriTest {
    /// Everything a test with `handler` needs, or `None` (with the reason printed, or a failure
    /// under `MSB_REQUIRE_GUESTS=1`) when a prerequisite is missing: containerd 1.7 unpacked;
    /// for `runc` runc installed; for `microsandbox` the guest assets and a guest slot (held
    /// until the test ends: at most [`crate::guest::SLOTS`] guests at once).
    pub fn setup(handler: Handler) -> Option<CriTest> {
        Self::setup_on(handler, CRI_VERSION)
    }

    /// [`CriTest::setup`] with containerd `version` (one version per test process: the process
    /// shares one containerd).
    pub fn setup_on(handler: Handler, version: Version) -> Option<CriTest> {
        fetched_or_skip(version.check())?;
        let slot = match handler {
            Handler::Runc => {
                if std::process::Command::new("runc")
                    .arg("--version")
                    .output()
                    .is_err()
                {
                    crate::require("runc is not installed (Debian package runc)");
                    return None;
                }
                None
            }
            Handler::Microsandbox => {
                crate::guest::assets()?;
                Some(GuestSlot::acquire())
            }
        };
        let ctrd =
            Containerd::shared_cri(version).unwrap_or_else(|e| panic!("containerd with CRI: {e}"));
        let cri = Cri::connect(ctrd.socket()).expect("CRI client connects");
        Some(CriTest {
            cri,
            handler,
            ctrd,
            pods: Mutex::new(Vec::new()),
            containers: Mutex::new(Vec::new()),
            temp_dirs: Mutex::new(Vec::new()),
            _slot: slot,
        })
    }

    /// Runs `session` on a port-forward session of `pod`'s `port`, again while the port is
    /// refused, for up to a minute (as critest's port-forward check polls its page): for
    /// microsandbox the shim's listener in the pod's namespace follows the VM's listener within
    /// agentd's 200 ms watch interval, so a forward made the moment a server starts may be
    /// refused, as with runc one made before it starts. What the last session brought.
    pub fn port_forward_session(
        &self,
        pod: &str,
        port: u16,
        mut session: impl FnMut(
            crate::cri_stream::PortForward,
        ) -> anyhow::Result<crate::cri_stream::Forwarded>,
    ) -> crate::cri_stream::Forwarded {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let url = self
                .cri
                .port_forward(pod, &[i32::from(port)])
                .unwrap_or_else(|e| panic!("PortForward {pod}: {e}\n{}", self.log()));
            let pf = crate::cri_stream::PortForward::connect(&url, port)
                .unwrap_or_else(|e| panic!("{url}: {e:#}\n{}", self.log()));
            let got = session(pf).unwrap_or_else(|e| panic!("{e:#}\n{}", self.log()));
            if got.error.contains("connection refused") && Instant::now() < deadline {
                eprintln!("port-forward to {port} of {pod}: refused, again in 1 s");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            return got;
        }
    }

    /// The end of containerd's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&self.ctrd.log(), 40)
    }

    /// A fresh directory on the host (a pod's log directory, a volume) in a parent of its own,
    /// both removed when the test ends.
    pub fn temp_dir(&self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(unique_name("msb-cri")).join(name);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        self.temp_dirs
            .lock()
            .expect("temporary dirs")
            .push(dir.parent().expect("a parent").to_path_buf());
        dir
    }

    /// Runs pod `config` with this test's handler; its id.
    pub fn run_pod(&self, config: &PodSandboxConfig) -> String {
        let id = self
            .cri
            .run_pod(config, self.handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.log()));
        self.pods.lock().expect("pods").push(id.clone());
        id
    }

    /// Runs pod `config` with this test's handler on the pod network (handler `<name>-net`, the
    /// `bridge` network of `hack/lib/containerd.sh`, 169.254.200.0/24, MTU 1400; containerd
    /// 1.7); its id.
    pub fn run_pod_on_network(&self, config: &PodSandboxConfig) -> String {
        self.run_pod_on(config, "net")
    }

    /// Runs pod `config` with this test's handler on the CNI network of its `<handler>-<net>`
    /// variant (`net`: the bridge; `hostdev`: a host interface moved in by `host-device`).
    pub fn run_pod_on(&self, config: &PodSandboxConfig, net: &str) -> String {
        let handler = format!("{}-{net}", self.handler.name());
        let id = self
            .cri
            .run_pod_named(config, &handler)
            .unwrap_or_else(|e| panic!("RunPodSandbox ({handler}): {e}\n{}", self.log()));
        self.pods.lock().expect("pods").push(id.clone());
        id
    }

    /// Runs critest's default pod (name `<prefix>-<pid>-<n>`); its id and config.
    pub fn run_default_pod(&self, prefix: &str) -> (String, PodSandboxConfig) {
        let config = pod_config(&unique_name(prefix));
        (self.run_pod(&config), config)
    }

    /// Creates container `config` in `pod`; its id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> String {
        let id = self
            .cri
            .create_container(pod, config, pod_config)
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.log()));
        self.containers.lock().expect("containers").push(id.clone());
        id
    }

    /// Starts container `id`.
    pub fn start_container(&self, id: &str) {
        self.cri
            .start_container(id)
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e}\n{}", self.log()));
    }

    /// Waits (at most 60 s, critest's minute) until container `id` is in `state`.
    pub fn wait_state(&self, id: &str, state: ContainerState) -> ContainerStatus {
        self.cri
            .wait_container_state(id, state, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// The status of container `id`.
    pub fn container_status(&self, id: &str) -> ContainerStatus {
        self.cri
            .container_status(id)
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}\n{}", self.log()))
    }

    /// The status of pod `id`.
    pub fn pod_status(&self, id: &str) -> PodSandboxStatus {
        self.cri
            .pod_status(id)
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}\n{}", self.log()))
    }

    /// `ExecSync` that must succeed as a call (any exit code).
    pub fn exec(&self, id: &str, cmd: &[&str]) -> ExecSyncResponse {
        self.cri
            .exec_sync(id, cmd, 30)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?} in {id}: {e}\n{}", self.log()))
    }

    /// Stops pod `id`.
    pub fn stop_pod(&self, id: &str) {
        self.cri
            .stop_pod(id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}\n{}", self.log()));
    }

    /// Removes pod `id`.
    pub fn remove_pod(&self, id: &str) {
        self.cri
            .remove_pod(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}\n{}", self.log()));
    }

    /// Stops and removes every pod the test made (their containers with them), then checks that
    /// nothing of them is left: no pod, no container, no process naming a pod (the shim, a
    /// VMM), no file of theirs in the shim's state (within 20 s).
    pub fn finish(self) {
        let pods = self.pods.lock().expect("pods").clone();
        for pod in &pods {
            // A test may have removed it already: NOT_FOUND is fine here.
            for (verb, result) in [
                ("StopPodSandbox", self.cri.stop_pod(pod)),
                ("RemovePodSandbox", self.cri.remove_pod(pod)),
            ] {
                if let Err(e) = result.or_else(|e| if is_not_found(&e) { Ok(()) } else { Err(e) }) {
                    panic!("{verb} {pod}: {e}\n{}", self.log());
                }
            }
        }
        let containers = self.containers.lock().expect("containers").clone();
        for pod in &pods {
            let left = self
                .cri
                .list_pods(pod_id_filter(pod))
                .expect("ListPodSandbox");
            assert!(left.is_empty(), "pod {pod} left: {left:?}");
            let left = self
                .cri
                .list_containers(ContainerFilter {
                    pod_sandbox_id: pod.clone(),
                    ..Default::default()
                })
                .expect("ListContainers");
            assert!(left.is_empty(), "containers of pod {pod} left: {left:?}");
        }
        let ids: Vec<&String> = pods.iter().chain(containers.iter()).collect();
        assert!(
            eventually(20, || processes_naming(&pods).is_empty()),
            "processes of the test's pods left: {:?}\n{}",
            processes_naming(&pods),
            self.log()
        );
        let state = Path::new(STATE).join(CRI_NAMESPACE);
        let files: Vec<String> = crate::ctr::state_files(CRI_NAMESPACE)
            .into_iter()
            .filter(|f| {
                ids.iter().any(|id| {
                    Path::new(f)
                        .strip_prefix(&state)
                        .is_ok_and(|rest| rest.to_string_lossy().contains(id.as_str()))
                })
            })
            .collect();
        assert!(files.is_empty(), "shim state files left: {files:?}");
        // Nor a mount: a microsandbox pod's volume binds, runc's and containerd's own.
        let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|point| ids.iter().any(|id| point.contains(id.as_str())))
            .map(str::to_owned)
            .collect();
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        // Drop has nothing left to do.
        self.pods.lock().expect("pods").clear();
    }
}

impl Drop for CriTest {
    /// A failed test still removes its pods (errors ignored: the failure says what went wrong)
    /// and its log directories.
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.lock().unwrap_or_else(|e| e.into_inner()));
        for pod in pods {
            let _ = self.cri.stop_pod(&pod);
            let _ = self.cri.remove_pod(&pod);
        }
        let dirs = std::mem::take(&mut *self.temp_dirs.lock().unwrap_or_else(|e| e.into_inner()));
        for dir in dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Processes whose command line names one of `ids` (a shim serves a pod under its sandbox's
/// id; a microsandbox VMM's paths hold it).
pub fn processes_naming(ids: &[String]) -> Vec<String> {
    let Ok(out) = std::process::Command::new("ps")
        .args(["-eo", "pid,args"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
        .map(str::to_owned)
        .collect()
}

/// `labels` holds every pair of `subset`.
pub fn has_subset(labels: &HashMap<String, String>, subset: &HashMap<String, String>) -> bool {
    subset.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nano_as_go_writes_it() {
        for ok in [
            "2016-10-06T00:17:09.669794202Z",
            "2016-10-06T00:17:09.6697942Z",
            "2016-10-06T00:17:09Z",
            "2016-10-06T00:17:09.669794202+02:00",
        ] {
            assert!(is_rfc3339_nano(ok), "{ok}");
        }
        for bad in [
            "2016-10-06 00:17:09Z",
            "2016-10-06T00:17:09.Z",
            "2016-10-06T00:17:09.6697942021Z",
            "2016-10-06T00:17:09",
            "2016-10-06T00:17:09+0200",
        ] {
            assert!(!is_rfc3339_nano(bad), "{bad}");
        }
    }

    #[test]
    fn log_lines_parse() {
        assert_eq!(
            parse_log_line("2016-10-06T00:17:09.669794202Z stdout F hello World").unwrap(),
            LogLine {
                time: "2016-10-06T00:17:09.669794202Z".into(),
                stream: LogStream::Stdout,
                full: true,
                text: "hello World".into(),
            }
        );
        let empty = parse_log_line("2016-10-06T00:17:09Z stderr P ").unwrap();
        assert_eq!(
            (empty.stream, empty.full, empty.text.as_str()),
            (LogStream::Stderr, false, "")
        );
        assert!(parse_log_line("hello World").is_err());
        assert!(parse_log_line("2016-10-06T00:17:09Z stdin F x").is_err());
        assert!(parse_log_line("2016-10-06T00:17:09Z stdout X x").is_err());
    }
}
