//! A scripted in-memory sandbox for unit tests of the task service (feature `test-utils`).
//! Never a product backend: it runs nothing.
//!
//! Every call is recorded as a line (`create_container c1`, `signal c1/- 15 all=false`). A process
//! stays running until the test ends it ([`FakePodVm::exit`]) or a signal with a default fatal
//! action arrives (SIGKILL, SIGTERM, SIGINT, SIGHUP: it exits with 128+signal, as agentd would
//! report). `cmd = "missing"` fails to start with `NotFound` (exit 127); `cmd = "unkillable"`
//! takes signals and never exits from one (a process stuck in the guest's kernel, or an exit
//! the guest never reports).
//!
//! A guest that stops answering ([`FakePodVm::hang`]; the scripted command `hang`): every later
//! call that goes to the guest waits, with no deadline of its own (the worst a guest can do),
//! until the VMM is killed ([`PodVm::kill_vmm`], or [`PodVm::shutdown`], which the runtime bounds
//! by killing it), then fails with `Gone`. The fake's [`PodVm::kill_grace`] is 1 s (it answers at
//! once when it answers at all), so tests of a hung guest take a second, not ten.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use msb_protocol::types::{
    ContainerCreate, ContainerStatsReply, ExecFailureKind, ExecRequest, Resources, RootfsSpec,
    StorageRef,
};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{
    ContainerRoot, GuestProcess, HostVolume, Output, PodVm, PodVmError, PodVmEvent, PodVmFactory,
    PreparedRootfs, ProcessKey, SharedVolume,
};
use crate::config::VmSettings;

/// The guest side of one fake process.
#[derive(Debug)]
struct FakeProcess {
    pid: u32,
    output: Option<mpsc::Sender<Output>>,
    exit: Option<oneshot::Sender<i32>>,
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    request: ExecRequest,
}

#[derive(Debug, Default)]
struct FakeState {
    calls: Vec<String>,
    creates: Vec<ContainerCreate>,
    processes: HashMap<ProcessKey, FakeProcess>,
    next_pid: u32,
    fail_create: Option<String>,
}

/// Whether the fake guest answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guest {
    Answering,
    Hung,
    /// The VMM was killed: calls fail.
    Killed,
}

/// A fake VM.
#[derive(Debug)]
pub struct FakePodVm {
    id: String,
    /// Its directory, where the fake "upper images" go (so Delete's cleanup is exercised).
    dir: PathBuf,
    /// Run the tiny script language of [`FakePodVm::scripted`].
    scripted: bool,
    me: std::sync::Weak<FakePodVm>,
    state: Mutex<FakeState>,
    events: broadcast::Sender<PodVmEvent>,
    guest: watch::Sender<Guest>,
    kill_grace: Mutex<std::time::Duration>,
}

fn key_str(key: &ProcessKey) -> String {
    format!(
        "{}/{}",
        key.container,
        key.exec_id.as_deref().unwrap_or("-")
    )
}

impl FakePodVm {
    /// A fake VM named `id`, its files in `dir`.
    pub fn new(id: &str, dir: &Path) -> Arc<Self> {
        Self::build(id, dir, false)
    }

    /// A fake VM whose processes act by themselves, for contract checks with a real containerd
    /// (`examples/fake_shim.rs`): `echo ARGS` prints them and exits 0, `exit N` exits N, `cat`
    /// copies stdin to stdout until EOF, `hang` makes the guest stop answering
    /// ([`FakePodVm::hang`]), anything else runs until a fatal signal.
    pub fn scripted(id: &str, dir: &Path) -> Arc<Self> {
        Self::build(id, dir, true)
    }

    fn build(id: &str, dir: &Path, scripted: bool) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            scripted,
            me: me.clone(),
            state: Mutex::new(FakeState {
                next_pid: 100,
                ..FakeState::default()
            }),
            events: broadcast::channel(16).0,
            guest: watch::channel(Guest::Answering).0,
            kill_grace: Mutex::new(std::time::Duration::from_secs(1)),
        })
    }

    /// The guest stops answering (and reading its port): calls to it wait until the VMM is
    /// killed.
    pub fn hang(&self) {
        self.guest.send_if_modified(|g| {
            let hung = *g == Guest::Answering;
            if hung {
                *g = Guest::Hung;
            }
            hung
        });
    }

    /// Whether the VMM was killed.
    pub fn vmm_killed(&self) -> bool {
        *self.guest.borrow() == Guest::Killed
    }

    /// Sets [`PodVm::kill_grace`].
    pub fn set_kill_grace(&self, grace: std::time::Duration) {
        *self.kill_grace.lock().unwrap_or_else(|p| p.into_inner()) = grace;
    }

    /// Waits until the guest answers: at once, or (hung) never, failing once the VMM is killed.
    async fn answer(&self) -> Result<(), PodVmError> {
        let mut guest = self.guest.subscribe();
        let state = *guest
            .wait_for(|g| *g != Guest::Hung)
            .await
            .expect("the sender lives in self");
        match state {
            Guest::Killed => Err(PodVmError::Gone("fake VMM killed".into())),
            _ => Ok(()),
        }
    }

    /// The VMM dies: processes vanish, calls fail, waiting calls end.
    fn kill(&self) {
        self.guest.send_replace(Guest::Killed);
        self.die();
    }

    fn st(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Every call so far, one line each.
    pub fn calls(&self) -> Vec<String> {
        self.st().calls.clone()
    }

    /// Every `create_container` payload so far.
    pub fn creates(&self) -> Vec<ContainerCreate> {
        self.st().creates.clone()
    }

    /// The request a process was started with.
    pub fn request(&self, key: &ProcessKey) -> Option<ExecRequest> {
        self.st().processes.get(key).map(|p| p.request.clone())
    }

    /// Makes the next `create_container` fail with `message`.
    pub fn fail_next_create(&self, message: &str) {
        self.st().fail_create = Some(message.to_owned());
    }

    /// Emits output from a process.
    pub async fn output(&self, key: &ProcessKey, chunk: Output) {
        let tx = self.st().processes.get(key).and_then(|p| p.output.clone());
        if let Some(tx) = tx {
            let _ = tx.send(chunk).await;
        }
    }

    /// Ends a process with `code`.
    pub fn exit(&self, key: &ProcessKey, code: i32) {
        let mut st = self.st();
        if let Some(p) = st.processes.get_mut(key) {
            p.output = None;
            if let Some(tx) = p.exit.take() {
                let _ = tx.send(code);
            }
        }
    }

    /// Sends `event` as the guest would, and nothing else (a forged one, say).
    pub fn send_event(&self, event: PodVmEvent) {
        let _ = self.events.send(event);
    }

    /// Reports an OOM kill of `container`: the event, then its init exits with 137.
    pub fn oom(&self, container: &str) {
        let _ = self.events.send(PodVmEvent::Oom {
            container: container.to_owned(),
        });
        self.exit(
            &ProcessKey {
                container: container.to_owned(),
                exec_id: None,
            },
            137,
        );
    }

    /// Kills the VM: every process vanishes without a status.
    pub fn die(&self) {
        let mut st = self.st();
        for p in st.processes.values_mut() {
            p.output = None;
            p.exit = None;
        }
        let _ = self.events.send(PodVmEvent::Died {
            reason: "fake VMM killed".into(),
        });
    }

    /// What a process received on stdin so far (chunks; an empty chunk is EOF).
    pub fn stdin(&self, key: &ProcessKey) -> Vec<Vec<u8>> {
        let mut st = self.st();
        let mut out = Vec::new();
        if let Some(stdin) = st.processes.get_mut(key).and_then(|p| p.stdin.as_mut()) {
            while let Ok(chunk) = stdin.try_recv() {
                out.push(chunk);
            }
        }
        out
    }

    fn run_script(&self, key: ProcessKey, req: &ExecRequest) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let (cmd, args) = (req.cmd.clone(), req.args.clone());
        let stdin = self
            .st()
            .processes
            .get_mut(&key)
            .and_then(|p| p.stdin.take());
        tokio::spawn(async move {
            match cmd.as_str() {
                "echo" => {
                    let line = format!("{}\n", args.join(" "));
                    me.output(&key, Output::Stdout(line.into_bytes())).await;
                    me.exit(&key, 0);
                }
                "exit" => {
                    let code = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                    me.exit(&key, code);
                }
                "hang" => me.hang(),
                "cat" => {
                    if let Some(mut stdin) = stdin {
                        while let Some(chunk) = stdin.recv().await {
                            if chunk.is_empty() {
                                break;
                            }
                            me.output(&key, Output::Stdout(chunk)).await;
                        }
                    }
                    me.exit(&key, 0);
                }
                _ => {}
            }
        });
    }

    fn record(&self, line: String) {
        self.st().calls.push(line);
    }
}

#[async_trait]
impl PodVm for FakePodVm {
    async fn add_rootfs(&self, root: &ContainerRoot<'_>) -> Result<PreparedRootfs, PodVmError> {
        let (container, upper_size) = (root.container, root.upper_size);
        self.record(format!(
            "prepare_rootfs {container} lowers={} upper_size={upper_size}",
            root.source.lowers.len()
        ));
        let upper = self.dir.join(format!("upper-{container}.ext4"));
        std::fs::write(&upper, b"").map_err(|e| PodVmError::Rootfs(e.into()))?;
        Ok(PreparedRootfs {
            spec: RootfsSpec {
                lower: vec![StorageRef::Serial(format!(
                    "lower-{}",
                    root.source.lowers.len()
                ))],
                upper: StorageRef::Serial(format!("upper-{container}")),
                fstype: "ext4".into(),
                readonly: false,
            },
            owned_files: vec![upper],
        })
    }

    async fn create_container(&self, create: ContainerCreate) -> Result<(), PodVmError> {
        self.record(format!("create_container {}", create.id));
        self.answer().await?;
        let mut st = self.st();
        if let Some(message) = st.fail_create.take() {
            return Err(PodVmError::Container {
                id: create.id,
                message,
            });
        }
        st.creates.push(create);
        Ok(())
    }

    async fn add_volume(
        &self,
        container: &str,
        index: usize,
        volume: &HostVolume,
    ) -> Result<SharedVolume, PodVmError> {
        self.record(format!(
            "add_volume {container} {index} {} rec={} ro={}",
            volume.source.display(),
            volume.recursive,
            volume.read_only
        ));
        Ok(SharedVolume {
            guest_path: format!(
                "{}/{container}/{index}",
                msb_protocol::consts::VOLUMES_MOUNT_POINT
            ),
            is_dir: volume.source.is_dir(),
        })
    }

    async fn exec(&self, key: &ProcessKey, req: ExecRequest) -> Result<GuestProcess, PodVmError> {
        self.record(format!("exec {} {}", key_str(key), req.cmd));
        self.answer().await?;
        if req.cmd == "missing" {
            return Err(PodVmError::ExecFailed {
                kind: ExecFailureKind::NotFound,
                message: "missing: no such file or directory".into(),
            });
        }
        let (out_tx, out_rx) = mpsc::channel(16);
        let (exit_tx, exit_rx) = oneshot::channel();
        let (in_tx, in_rx) = mpsc::channel(16);
        let mut st = self.st();
        st.next_pid += 1;
        let pid = st.next_pid;
        st.processes.insert(
            key.clone(),
            FakeProcess {
                pid,
                output: Some(out_tx),
                exit: Some(exit_tx),
                stdin: Some(in_rx),
                request: req.clone(),
            },
        );
        drop(st);
        if self.scripted {
            self.run_script(key.clone(), &req);
        }
        Ok(GuestProcess {
            pid,
            stdin: req.stdin.then_some(in_tx),
            output: out_rx,
            exit: exit_rx,
        })
    }

    async fn signal(&self, key: &ProcessKey, signal: i32, all: bool) -> Result<(), PodVmError> {
        self.record(format!("signal {} {signal} all={all}", key_str(key)));
        self.answer().await?;
        if !self.st().processes.contains_key(key) {
            return Err(PodVmError::NotFound(key_str(key)));
        }
        if matches!(signal, 1 | 2 | 9 | 15) {
            let keys: Vec<ProcessKey> = if all {
                self.st()
                    .processes
                    .iter()
                    .filter(|(k, p)| k.container == key.container && p.request.cmd != "unkillable")
                    .map(|(k, _)| k.clone())
                    .collect()
            } else if self.request(key).is_some_and(|r| r.cmd == "unkillable") {
                Vec::new()
            } else {
                vec![key.clone()]
            };
            for k in keys {
                self.exit(&k, 128 + signal);
            }
        }
        Ok(())
    }

    async fn resize(&self, key: &ProcessKey, rows: u16, cols: u16) -> Result<(), PodVmError> {
        self.record(format!("resize {} {rows}x{cols}", key_str(key)));
        self.answer().await?;
        Ok(())
    }

    async fn pause(&self, container: &str) -> Result<(), PodVmError> {
        self.record(format!("pause {container}"));
        self.answer().await?;
        Ok(())
    }

    async fn resume(&self, container: &str) -> Result<(), PodVmError> {
        self.record(format!("resume {container}"));
        self.answer().await?;
        Ok(())
    }

    async fn update(&self, container: &str, resources: Resources) -> Result<(), PodVmError> {
        self.record(format!(
            "update {container} memory={:?} pids={:?}",
            resources.memory_limit, resources.pids_limit
        ));
        self.answer().await?;
        Ok(())
    }

    async fn stats(&self, container: &str) -> Result<ContainerStatsReply, PodVmError> {
        self.record(format!("stats {container}"));
        self.answer().await?;
        let mut reply = ContainerStatsReply::default();
        reply.memory.usage = 4096;
        reply.pids.current = 1;
        Ok(reply)
    }

    async fn pids(&self, container: &str) -> Result<Vec<u32>, PodVmError> {
        self.record(format!("pids {container}"));
        self.answer().await?;
        let st = self.st();
        let mut pids: Vec<u32> = st
            .processes
            .iter()
            .filter(|(k, p)| k.container == container && p.exit.is_some())
            .map(|(_, p)| p.pid)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    async fn delete_container(&self, container: &str) -> Result<(), PodVmError> {
        self.record(format!("delete_container {container}"));
        self.answer().await?;
        self.st().processes.retain(|k, _| k.container != container);
        Ok(())
    }

    async fn shutdown(&self) -> Result<(), PodVmError> {
        self.record("shutdown".into());
        // The runtime kills the VMM of a guest that does not power off in time.
        if *self.guest.borrow() == Guest::Hung {
            self.kill();
        }
        Ok(())
    }

    async fn kill_vmm(&self) {
        self.record("kill_vmm".into());
        self.kill();
    }

    fn kill_grace(&self) -> std::time::Duration {
        *self.kill_grace.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn vmm_pid(&self) -> Option<u32> {
        None
    }

    fn subscribe(&self) -> broadcast::Receiver<PodVmEvent> {
        self.events.subscribe()
    }
}

/// One VM a [`FakeFactory`] booted: id, settings, directory, the VM.
type Booted = (String, VmSettings, PathBuf, Arc<FakePodVm>);

/// Boots [`FakePodVm`]es and keeps them for the test to drive.
#[derive(Debug, Default)]
pub struct FakeFactory {
    scripted: bool,
    booted: Mutex<Vec<Booted>>,
    fail: Mutex<Option<String>>,
    fail_create: Mutex<Option<String>>,
}

impl FakeFactory {
    /// A factory.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A factory of [`FakePodVm::scripted`] VMs.
    pub fn scripted() -> Arc<Self> {
        Arc::new(Self {
            scripted: true,
            ..Self::default()
        })
    }

    /// The VMs booted so far, in order.
    pub fn sandboxes(&self) -> Vec<Arc<FakePodVm>> {
        self.lock().iter().map(|(_, _, _, s)| s.clone()).collect()
    }

    /// The configs VMs were booted with, in order.
    pub fn configs(&self) -> Vec<(String, VmSettings)> {
        self.lock()
            .iter()
            .map(|(id, c, _, _)| (id.clone(), c.clone()))
            .collect()
    }

    /// Makes the first `create_container` of the next VM fail with `message`.
    pub fn fail_create_in_next_vm(&self, message: &str) {
        *self.fail_create.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
    }

    /// Makes the next boot fail.
    pub fn fail_next_boot(&self, message: &str) {
        *self.fail.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Booted>> {
        self.booted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl PodVmFactory for FakeFactory {
    async fn boot(
        &self,
        id: &str,
        config: &VmSettings,
        dir: &Path,
        first: &ContainerRoot<'_>,
    ) -> Result<(Arc<dyn PodVm>, PreparedRootfs), PodVmError> {
        if let Some(m) = self.fail.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(PodVmError::Boot(m.into()));
        }
        let sb = FakePodVm::build(id, dir, self.scripted);
        if let Some(m) = self
            .fail_create
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            sb.fail_next_create(&m);
        }
        self.lock()
            .push((id.to_owned(), config.clone(), dir.to_path_buf(), sb.clone()));
        let prepared = sb.add_rootfs(first).await?;
        Ok((sb, prepared))
    }
}
