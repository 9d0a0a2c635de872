//! The containerd task service: one [`TaskService`] per shim process, owning a map of VMs keyed
//! by sandbox id (the pod, or the container itself outside Kubernetes) and a map of containers
//! keyed by container id.
//!
//! Each RPC verb lives in its own file; this module holds the shared tables, the per-process
//! record and the exit watcher. Locking: one async mutex over the tables, never held across a
//! call into the VM; a verb reads what it needs, releases the lock, talks to the VM, then takes
//! the lock again to record the outcome (re-checking the state it relied on).

mod close_io;
mod connect;
mod create;
mod delete;
mod exec;
mod kill;
mod pause;
mod pids;
mod resize;
mod service;
mod shutdown;
mod start;
pub mod state;
mod stats;
mod status;
mod update;
mod wait;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim::asynchronous::ExitSignal;
use msb_protocol::types::ExecRequest;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::config::ShimConfig;
use crate::error::ShimError;
use crate::events::{EventSink, TaskEvent, TaskIo};
use crate::pod_vm::{GuestProcess, PodVm, PodVmEvent, PodVmFactory, ProcessKey};
use crate::stdio;
use state::{Status, Transition};

pub use stats::metrics_from_stats;

/// Exit status reported when the VM died under a process (as if SIGKILLed).
pub const EXIT_VM_DIED: u32 = 137;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit status.
    pub status: u32,
    /// When.
    pub at: SystemTime,
}

/// One process: a container's init or an exec.
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) key: ProcessKey,
    pub(crate) status: Status,
    /// The pid containerd sees: a host process, the VM's VMM ([`host_pid`]); 0 until started.
    pub(crate) pid: u32,
    /// Its pid in the VM, which only `Pids` shows (a guest pid would name an unrelated host
    /// process to anything that took it for one).
    pub(crate) guest_pid: u32,
    pub(crate) exit: Option<ExitInfo>,
    pub(crate) exited: watch::Sender<Option<ExitInfo>>,
    pub(crate) io: TaskIo,
    pub(crate) request: ExecRequest,
    /// The copy of its stdin FIFO, once started.
    pub(crate) stdin: Option<stdio::StdinCopy>,
    /// CloseIO came before the copy started (before Start): it finishes as soon as it runs.
    pub(crate) stdin_closed_early: bool,
}

impl Process {
    pub(crate) fn new(key: ProcessKey, io: TaskIo, request: ExecRequest) -> Self {
        Self {
            key,
            status: Status::Created,
            pid: 0,
            guest_pid: 0,
            exit: None,
            exited: watch::channel(None).0,
            io,
            request,
            stdin: None,
            stdin_closed_early: false,
        }
    }

    /// The id containerd uses in events: the exec id, or the container id for the init.
    pub(crate) fn event_id(&self) -> String {
        self.key
            .exec_id
            .clone()
            .unwrap_or_else(|| self.key.container.clone())
    }

    pub(crate) fn transition(&mut self, t: Transition) -> Result<(), ShimError> {
        self.status = self.status.apply(t)?;
        Ok(())
    }

    /// `CloseIO`: stdin ends after what its FIFO holds now (or, before Start, holds then).
    pub(crate) fn finish_stdin(&mut self) {
        match self.stdin.as_mut() {
            Some(copy) => copy.finish(),
            None => self.stdin_closed_early = true,
        }
    }

    /// Takes the started copy of its stdin FIFO, finishing it at once after an early CloseIO.
    pub(crate) fn set_stdin(&mut self, mut copy: stdio::StdinCopy) {
        if self.stdin_closed_early {
            copy.finish();
        }
        self.stdin = Some(copy);
    }

    /// The process is gone: its stdin copy stops at once.
    pub(crate) fn drop_stdin(&mut self) {
        self.stdin = None;
    }
}

/// One container.
#[derive(Debug)]
pub(crate) struct Container {
    pub(crate) id: String,
    pub(crate) bundle: String,
    pub(crate) sandbox_id: String,
    pub(crate) init: Process,
    pub(crate) execs: HashMap<String, Process>,
    pub(crate) owned_files: Vec<PathBuf>,
}

impl Container {
    pub(crate) fn process(&self, exec_id: &str) -> Result<&Process, ShimError> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} in container {}", self.id)))
    }

    pub(crate) fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process, ShimError> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::NotFound(format!("exec {exec_id} in container {id}")))
    }
}

/// A process's exit, on its way to be recorded by its pod's watcher.
#[derive(Debug)]
pub(crate) struct ExitNote {
    key: ProcessKey,
    pid: u32,
    status: u32,
}

/// One VM and the containers in it.
#[derive(Debug)]
pub(crate) struct Pod {
    pub(crate) vm: Arc<dyn PodVm>,
    /// The VM's state directory, removed with the VM.
    pub(crate) dir: PathBuf,
    pub(crate) containers: HashSet<String>,
    pub(crate) watcher: JoinHandle<()>,
    pub(crate) exits: mpsc::UnboundedSender<ExitNote>,
}

#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub(crate) pods: HashMap<String, Pod>,
    pub(crate) containers: HashMap<String, Container>,
}

impl Tables {
    pub(crate) fn container(&self, id: &str) -> Result<&Container, ShimError> {
        self.containers
            .get(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    pub(crate) fn container_mut(&mut self, id: &str) -> Result<&mut Container, ShimError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    pub(crate) fn exits_of(&self, id: &str) -> Result<mpsc::UnboundedSender<ExitNote>, ShimError> {
        let c = self.container(id)?;
        self.pods
            .get(&c.sandbox_id)
            .map(|p| p.exits.clone())
            .ok_or_else(|| ShimError::NotFound(format!("sandbox {}", c.sandbox_id)))
    }

    pub(crate) fn vm_of(&self, id: &str) -> Result<Arc<dyn PodVm>, ShimError> {
        let c = self.container(id)?;
        self.pods
            .get(&c.sandbox_id)
            .map(|p| p.vm.clone())
            .ok_or_else(|| ShimError::NotFound(format!("sandbox {}", c.sandbox_id)))
    }
}

pub(crate) struct Inner {
    pub(crate) namespace: String,
    pub(crate) config_override: Option<ShimConfig>,
    pub(crate) factory: Arc<dyn PodVmFactory>,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) tables: Mutex<Tables>,
    pub(crate) boot_lock: Mutex<()>,
    pub(crate) exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("namespace", &self.namespace)
            .field("factory", &self.factory)
            .finish_non_exhaustive()
    }
}

/// The task service containerd talks to.
#[derive(Debug, Clone)]
pub struct TaskService {
    pub(crate) inner: Arc<Inner>,
}

impl TaskService {
    /// A service for containerd namespace `namespace`, booting VMs with `factory` and publishing
    /// to `events`; `exit` is signalled when the last container is gone and containerd asks for
    /// shutdown. `config` replaces the discovered configuration file (tests, embedding).
    pub fn new(
        namespace: impl Into<String>,
        factory: Arc<dyn PodVmFactory>,
        events: Arc<dyn EventSink>,
        exit: Arc<ExitSignal>,
        config: Option<ShimConfig>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.into(),
                config_override: config,
                factory,
                events,
                tables: Mutex::new(Tables::default()),
                boot_lock: Mutex::new(()),
                exit,
            }),
        }
    }

    pub(crate) async fn publish(&self, ev: TaskEvent) {
        self.inner.events.publish(ev).await;
    }

    /// Wires a started process: one task copies its output into the opened FIFOs and, once the
    /// process exited and its output drained (or [`stdio::OUTPUT_DRAIN_TIMEOUT`] passed: a FIFO
    /// nobody reads must not hold the exit back), hands the exit to the pod's watcher.
    pub(crate) fn watch_process(
        &self,
        key: ProcessKey,
        pid: u32,
        session: GuestProcess,
        fifos: OutputFifos,
        exits: mpsc::UnboundedSender<ExitNote>,
    ) {
        let GuestProcess { output, exit, .. } = session;
        let OutputFifos { stdout, stderr } = fifos;
        tokio::spawn(async move {
            let copy = stdio::copy_output(output, stdout, stderr);
            tokio::pin!(copy);
            tokio::pin!(exit);
            // The copy runs while the process does; the exit waits for what is left of it.
            let mut copied = false;
            let code = loop {
                tokio::select! {
                    () = &mut copy, if !copied => copied = true,
                    code = &mut exit => break code,
                }
            };
            let status = match code {
                Ok(code) => u32::try_from(code).unwrap_or(EXIT_VM_DIED),
                Err(_) => EXIT_VM_DIED,
            };
            if !copied
                && tokio::time::timeout(stdio::OUTPUT_DRAIN_TIMEOUT, copy)
                    .await
                    .is_err()
            {
                tracing::warn!(container = %key.container, "output still open after exit; not waiting");
            }
            let _ = exits.send(ExitNote { key, pid, status });
        });
    }

    /// Marks a process stopped, publishes `TaskExit`, then wakes its waiters.
    pub(crate) async fn record_exit(&self, key: &ProcessKey, pid: u32, status: u32) {
        let info = ExitInfo {
            status,
            at: SystemTime::now(),
        };
        let (event_id, notify) = {
            let mut tables = self.inner.tables.lock().await;
            let Ok(c) = tables.container_mut(&key.container) else {
                return;
            };
            let Ok(p) = c.process_mut(key.exec_id.as_deref().unwrap_or("")) else {
                return;
            };
            if p.transition(Transition::Exit).is_err() {
                return;
            }
            p.exit = Some(info);
            p.drop_stdin();
            (p.event_id(), p.exited.clone())
        };
        tracing::info!(container = %key.container, exec = ?key.exec_id, pid, status, "process exited");
        self.publish(TaskEvent::Exit {
            container_id: key.container.clone(),
            id: event_id,
            pid,
            exit_status: status,
            exited_at: info.at,
        })
        .await;
        notify.send_replace(Some(info));
    }

    /// The pod's watcher: publishes the VM's own events (OOM) and records exits, in the order
    /// the guest reported them. The guest sends `core.container.oom` before the killed process's
    /// exit and the adapter forwards both in that order; preferring the event stream (`biased`)
    /// therefore publishes `TaskOOM` before that `TaskExit`, which is what the CRI expects.
    pub(crate) fn watch_vm(
        &self,
        sandbox_id: &str,
        sandbox: &Arc<dyn PodVm>,
    ) -> (JoinHandle<()>, mpsc::UnboundedSender<ExitNote>) {
        let mut events = sandbox.subscribe();
        let (exits_tx, mut exits) = mpsc::unbounded_channel::<ExitNote>();
        let svc = self.clone();
        let sandbox_id = sandbox_id.to_owned();
        let task = tokio::spawn(async move {
            let mut events_open = true;
            loop {
                tokio::select! {
                    biased;
                    ev = events.recv(), if events_open => match ev {
                        Ok(PodVmEvent::Oom { container }) => {
                            // The guest is untrusted: it may name only its own pod's containers.
                            let ours = svc.inner.tables.lock().await.containers
                                .get(&container)
                                .is_some_and(|c| c.sandbox_id == sandbox_id);
                            if !ours {
                                tracing::warn!(sandbox = %sandbox_id, container = %container,
                                    "OOM event for a container not of this pod: dropped");
                                continue;
                            }
                            tracing::warn!(container = %container, "OOM kill");
                            svc.publish(TaskEvent::Oom {
                                container_id: container,
                            })
                            .await;
                        }
                        Ok(PodVmEvent::Died { reason }) => {
                            tracing::error!(reason = %reason, "sandbox died");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "sandbox events lagged");
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => events_open = false,
                    },
                    note = exits.recv() => match note {
                        Some(n) => svc.record_exit(&n.key, n.pid, n.status).await,
                        None => break,
                    },
                }
            }
        });
        (task, exits_tx)
    }

    /// Opens the process's FIFOs (so a bad path fails before anything runs), starts it in the
    /// VM and connects its stdin; returns its pid, the session and the output FIFOs.
    pub(crate) async fn launch(
        &self,
        sandbox: &Arc<dyn PodVm>,
        key: &ProcessKey,
        request: ExecRequest,
        io: &TaskIo,
    ) -> Result<(u32, GuestProcess, OutputFifos), ShimError> {
        let stdin_fifo = stdio::open_input(&io.stdin)?;
        let fifos = OutputFifos {
            stdout: stdio::open_output("stdout", &io.stdout)?,
            // In terminal mode the guest sends one stream, on stdout.
            stderr: if io.terminal {
                None
            } else {
                stdio::open_output("stderr", &io.stderr)?
            },
        };
        let mut session = sandbox.exec(key, request).await?;
        let pid = session.pid;
        // The copy holds the only sender: when it ends, so does the process's stdin.
        if let (Some(fifo), Some(tx)) = (stdin_fifo, session.stdin.take()) {
            let copy = stdio::spawn_stdin(fifo, tx);
            let mut tables = self.inner.tables.lock().await;
            if let Ok(p) = tables
                .container_mut(&key.container)
                .and_then(|c| c.process_mut(key.exec_id.as_deref().unwrap_or("")))
            {
                p.set_stdin(copy);
            }
        }
        Ok((pid, session, fifos))
    }
}

/// The host pid reported for every process of `sandbox`: its VMM's, as Kata reports the
/// hypervisor's (the processes themselves live in the VM, and a guest pid would name some
/// unrelated host process); the shim's own while no VMM is known (a test double).
pub(crate) fn host_pid(sandbox: &Arc<dyn PodVm>) -> u32 {
    sandbox.vmm_pid().unwrap_or_else(std::process::id)
}

/// The output FIFOs of a process, opened.
#[derive(Debug)]
pub(crate) struct OutputFifos {
    stdout: Option<tokio::net::unix::pipe::Sender>,
    stderr: Option<tokio::net::unix::pipe::Sender>,
}
