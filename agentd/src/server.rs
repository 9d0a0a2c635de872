//! The dispatcher: reads frames from the agent port and handles each message.
//!
//! It runs on agentd's main thread, which is also the only thread that spawns processes (a
//! spawn into a running container switches this thread's PID namespace for children, see
//! [`crate::spawn`]). Handlers are quick; anything long-lived (process streams, exits) runs on
//! session threads.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msb_protocol::boot::{RlimitResource, UserSpec};
use msb_protocol::types::*;
use msb_protocol::{Flags, FrameError, Message, MessageError, Payload};

use crate::container::Container;
use crate::exec::{self, ParentStdio, Sessions};
use crate::port::{self, Out};
use crate::reaper::Reaper;
use crate::spawn::{self, ChildStdio, NsMode, SpawnError, SpawnPlan, Step};
use crate::{sys, users};

/// Default `PATH` when a request sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

type Containers = Arc<Mutex<HashMap<String, Container>>>;

/// agentd's state.
#[derive(Debug)]
pub struct Server {
    out: Out,
    reaper: Reaper,
    sessions: Sessions,
    containers: Containers,
    ready: Ready,
    /// Open `core.fs` write sessions: data frames append until an empty one.
    writes: HashMap<u32, File>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    /// A server writing through `out`; `ready` is announced on every host connection.
    pub fn new(out: Out, reaper: Reaper, ready: Ready) -> Server {
        let containers: Containers = Arc::default();
        let server = Server {
            out: out.clone(),
            reaper,
            sessions: Arc::default(),
            containers: containers.clone(),
            ready,
            writes: HashMap::new(),
        };
        let _ = std::thread::Builder::new()
            .name("oom".into())
            .stack_size(64 * 1024)
            .spawn(move || oom_watch(out, containers));
        server
    }

    /// Serves the port forever: waits for a host, announces `core.ready`, handles frames until
    /// the host disconnects, and starts over.
    pub fn serve(&mut self, mut port: File) -> ! {
        loop {
            port::wait_for_host(&port);
            let mut ready = self.ready.clone();
            ready.ready_time_ns = sys::boottime_ns();
            self.out.send(0, &ready);
            tracing::info!("host connected, core.ready sent");
            loop {
                match msb_protocol::read_frame(&mut port) {
                    Ok(Some(frame)) => match Message::from_frame(&frame) {
                        Ok(msg) => self.handle(msg),
                        Err(e) => self.reply_error(frame.id, &e, None),
                    },
                    Ok(None) => break,
                    Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Out of sync: nothing after this can be trusted until the host reconnects.
                        tracing::error!("agent channel: {e}; waiting for the host to reconnect");
                        break;
                    }
                }
            }
            tracing::info!("host disconnected");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn reply_error(&self, id: u32, e: &MessageError, kind_name: Option<&str>) {
        self.out.send(
            id,
            &ErrorReply {
                kind: e.error_kind(),
                message: e.to_string(),
                offending_type: kind_name.map(str::to_owned),
            },
        );
    }

    fn error(&self, id: u32, kind: ErrorKind, message: String, offending: &str) {
        self.out.send(
            id,
            &ErrorReply {
                kind,
                message,
                offending_type: Some(offending.to_owned()),
            },
        );
    }

    fn decode<P: Payload>(&self, msg: &Message) -> Option<P> {
        match msg.decode::<P>() {
            Ok(p) => Some(p),
            Err(e) => {
                self.reply_error(msg.id, &e, Some(&msg.kind));
                None
            }
        }
    }

    fn handle(&mut self, msg: Message) {
        let id = msg.id;
        match msg.kind.as_str() {
            Ping::TYPE => self.out.send(id, &Pong {}),
            InitAck::TYPE => {}
            ClockSync::TYPE => {
                if let Some(c) = self.decode::<ClockSync>(&msg) {
                    if let Err(e) = sys::set_realtime(c.unix_time_nanos) {
                        tracing::warn!("clock sync: {e}");
                    }
                }
            }
            // Connection-level control: only on id 0, which the relay never forwards from a
            // client, so one host client cannot end the VM or another client's sessions.
            Shutdown::TYPE | RelayClientDisconnected::TYPE if id != 0 => self.error(
                id,
                ErrorKind::InvalidSession,
                format!("{} is only accepted on id 0", msg.kind),
                &msg.kind,
            ),
            Shutdown::TYPE => crate::shutdown::run(&self.containers, &self.sessions),
            RelayClientDisconnected::TYPE => {
                if let Some(r) = self.decode::<RelayClientDisconnected>(&msg) {
                    let n = exec::forget(&self.sessions, r.id_start..r.id_end_exclusive);
                    tracing::debug!(
                        n,
                        "relay client left; its sessions are killed and forgotten"
                    );
                }
            }
            ExecRequest::TYPE => {
                if let Some(req) = self.decode::<ExecRequest>(&msg) {
                    self.exec(id, req);
                }
            }
            ExecStdin::TYPE => {
                if let Some(s) = self.decode::<ExecStdin>(&msg) {
                    let tx = {
                        let mut sessions = lock(&self.sessions);
                        match sessions.get_mut(&id) {
                            Some(sess) if s.data.is_empty() => sess.stdin.take(),
                            Some(sess) => sess.stdin.clone(),
                            None => {
                                return self.error(
                                    id,
                                    ErrorKind::InvalidSession,
                                    format!("no exec session {id}"),
                                    &msg.kind,
                                )
                            }
                        }
                    };
                    // Never blocks: the host's window bounds the queue (see `exec`).
                    if let Some(tx) = tx {
                        if let Err(why) = tx.push(s.data) {
                            tracing::error!(exec = id, "host ignored the stdin window: {why}");
                        }
                    }
                }
            }
            ExecResize::TYPE => {
                if let Some(r) = self.decode::<ExecResize>(&msg) {
                    match lock(&self.sessions).get(&id).map(|s| s.started.tty.clone()) {
                        Some(Some(tty)) => {
                            let _ = sys::set_winsize(tty.as_raw_fd(), r.rows, r.cols);
                        }
                        Some(None) => {}
                        None => self.error(
                            id,
                            ErrorKind::InvalidSession,
                            format!("no exec session {id}"),
                            &msg.kind,
                        ),
                    }
                }
            }
            ExecSignal::TYPE => {
                if let Some(s) = self.decode::<ExecSignal>(&msg) {
                    self.signal(id, s, &msg.kind);
                }
            }
            ContainerCreate::TYPE => {
                if let Some(c) = self.decode::<ContainerCreate>(&msg) {
                    let cid = c.id.clone();
                    if lock(&self.containers).contains_key(&cid) {
                        return self.out.send(
                            id,
                            &ContainerFailed {
                                id: cid.clone(),
                                message: format!("container {cid} already exists"),
                            },
                        );
                    }
                    match Container::create(c) {
                        Ok(container) => {
                            lock(&self.containers).insert(cid, container);
                            self.out.send(id, &ContainerCreated {});
                        }
                        Err(e) => self.out.send(
                            id,
                            &ContainerFailed {
                                id: cid,
                                message: e.to_string(),
                            },
                        ),
                    }
                }
            }
            ContainerPause::TYPE => self
                .container_op::<ContainerPause>(&msg, |c, _| c.cgroup.freeze(true).map(|_| None)),
            ContainerResume::TYPE => self
                .container_op::<ContainerResume>(&msg, |c, _| c.cgroup.freeze(false).map(|_| None)),
            ContainerUpdate::TYPE => {
                if let Some(u) = self.decode::<ContainerUpdate>(&msg) {
                    let res = lock(&self.containers)
                        .get(&u.id)
                        .map(|c| c.cgroup.apply(&u.resources));
                    self.container_reply(id, &u.id, res.map(|r| r.map(|_| None)));
                }
            }
            ContainerStats::TYPE => {
                if let Some(s) = self.decode::<ContainerStats>(&msg) {
                    match lock(&self.containers).get(&s.id).map(|c| c.cgroup.stats()) {
                        Some(Ok(stats)) => self.out.send(id, &stats),
                        Some(Err(e)) => self.out.send(
                            id,
                            &ContainerFailed {
                                id: s.id,
                                message: format!("stats: {e}"),
                            },
                        ),
                        None => self.out.send(
                            id,
                            &ContainerFailed {
                                message: format!("no container {}", s.id),
                                id: s.id,
                            },
                        ),
                    }
                }
            }
            ContainerPids::TYPE => {
                if let Some(p) = self.decode::<ContainerPids>(&msg) {
                    match lock(&self.containers).get(&p.id).map(|c| c.cgroup.pids()) {
                        Some(Ok(pids)) => self.out.send(id, &ContainerPidsReply { pids }),
                        Some(Err(e)) => self.out.send(
                            id,
                            &ContainerFailed {
                                id: p.id,
                                message: format!("pids: {e}"),
                            },
                        ),
                        None => self.out.send(
                            id,
                            &ContainerFailed {
                                message: format!("no container {}", p.id),
                                id: p.id,
                            },
                        ),
                    }
                }
            }
            FsRequest::TYPE => {
                if let Some(r) = self.decode::<FsRequest>(&msg) {
                    self.fs_request(id, r);
                }
            }
            FsData::TYPE => {
                if let Some(d) = self.decode::<FsData>(&msg) {
                    self.fs_data(id, d);
                }
            }
            ContainerDelete::TYPE => {
                if let Some(d) = self.decode::<ContainerDelete>(&msg) {
                    let taken = lock(&self.containers).remove(&d.id);
                    match taken {
                        Some(mut c) => {
                            c.teardown();
                            self.out.send(id, &ContainerDone {});
                        }
                        None => self.out.send(
                            id,
                            &ContainerFailed {
                                message: format!("no container {}", d.id),
                                id: d.id,
                            },
                        ),
                    }
                }
            }
            other => {
                let kind = if msg.flags == Flags::NONE || msg.flags.contains(Flags::SESSION_START) {
                    ErrorKind::UnsupportedMessageType
                } else {
                    ErrorKind::InvalidFlags
                };
                self.error(id, kind, format!("agentd does not handle {other}"), other);
            }
        }
    }

    fn fs_reply(&self, id: u32, result: Result<(), String>) {
        let reply = match result {
            Ok(()) => FsResponse {
                ok: true,
                ..FsResponse::default()
            },
            Err(e) => FsResponse {
                ok: false,
                error: Some(e),
                ..FsResponse::default()
            },
        };
        self.out.send(id, &reply);
    }

    /// Starts a write (the only `core.fs` operation agentd serves); others are refused.
    fn fs_request(&mut self, id: u32, r: FsRequest) {
        let FsOp::Write { path, mode } = r.op else {
            return self.fs_reply(id, Err(format!("{:?} is not supported by agentd", r.op)));
        };
        let root = match &r.container {
            Some(cid) => match lock(&self.containers).get(cid) {
                Some(c) => c.rootfs.clone(),
                None => return self.fs_reply(id, Err(format!("no container {cid}"))),
            },
            None => PathBuf::from("/"),
        };
        match crate::fs::create_in_root(&root, &path, mode.unwrap_or(0o644)) {
            Ok(file) => {
                self.writes.insert(id, file);
            }
            Err(e) => self.fs_reply(id, Err(format!("create {path}: {e}"))),
        }
    }

    /// A chunk of an open write; the empty chunk ends it. Chunks of a write that already
    /// failed (and was answered) are dropped.
    fn fs_data(&mut self, id: u32, d: FsData) {
        use std::io::Write;
        let Some(file) = self.writes.get_mut(&id) else {
            return;
        };
        if d.data.is_empty() {
            self.writes.remove(&id);
            return self.fs_reply(id, Ok(()));
        }
        if let Err(e) = file.write_all(&d.data) {
            self.writes.remove(&id);
            self.fs_reply(id, Err(format!("write: {e}")));
        }
    }

    fn container_op<P: Payload + HasId>(
        &self,
        msg: &Message,
        f: impl FnOnce(&Container, &P) -> std::io::Result<Option<()>>,
    ) {
        if let Some(p) = self.decode::<P>(msg) {
            let res = lock(&self.containers).get(p.id()).map(|c| f(c, &p));
            self.container_reply(msg.id, p.id(), res);
        }
    }

    fn container_reply(&self, id: u32, cid: &str, res: Option<std::io::Result<Option<()>>>) {
        match res {
            Some(Ok(_)) => self.out.send(id, &ContainerDone {}),
            Some(Err(e)) => self.out.send(
                id,
                &ContainerFailed {
                    id: cid.to_owned(),
                    message: e.to_string(),
                },
            ),
            None => self.out.send(
                id,
                &ContainerFailed {
                    id: cid.to_owned(),
                    message: format!("no container {cid}"),
                },
            ),
        }
    }

    fn signal(&self, id: u32, s: ExecSignal, kind: &str) {
        let (pid, container, is_init) = match lock(&self.sessions).get(&id) {
            Some(sess) => (
                sess.started.pid,
                sess.started.container.clone(),
                sess.started.is_init,
            ),
            None => {
                return self.error(
                    id,
                    ErrorKind::InvalidSession,
                    format!("no exec session {id}"),
                    kind,
                )
            }
        };
        let result = match (&container, s.all) {
            (Some(c), true) => match lock(&self.containers).get(c) {
                Some(c) => c.cgroup.signal_all(s.signal),
                None => Ok(()),
            },
            // A container init is signalled alone, as runc does; other processes with their
            // process group (they lead their own session).
            _ if is_init => sys::kill(pid, s.signal),
            _ => sys::kill(-pid, s.signal).or_else(|_| sys::kill(pid, s.signal)),
        };
        if let Err(e) = result {
            tracing::warn!(exec = id, "signal {}: {e}", s.signal);
        }
    }

    fn exec(&mut self, id: u32, req: ExecRequest) {
        if lock(&self.sessions).contains_key(&id) {
            return self.error(
                id,
                ErrorKind::InvalidSession,
                format!("exec session {id} already exists"),
                ExecRequest::TYPE,
            );
        }
        match self.prepare_and_spawn(id, req) {
            Ok(()) => {}
            Err(failed) => self.out.send(id, &failed),
        }
    }

    fn prepare_and_spawn(&mut self, id: u32, mut req: ExecRequest) -> Result<(), ExecFailed> {
        let other = |message: String| ExecFailed {
            kind: ExecFailureKind::Other,
            errno: None,
            message,
        };
        // Namespaces and the root the process sees, as a VM path prefix.
        let mut handoff = None;
        let (ns, root, cgroup_procs, is_init) = match &req.container {
            None => (NsMode::Vm, PathBuf::from("/"), None, false),
            Some(cid) => {
                let containers = lock(&self.containers);
                let c = containers
                    .get(cid)
                    .ok_or_else(|| other(format!("no container {cid}")))?;
                if c.init_exited {
                    return Err(other(format!(
                        "container {cid} is not running (its init exited)"
                    )));
                }
                let procs = sys::open_wo(&c.cgroup.procs_path())
                    .map_err(|e| other(format!("open cgroup of {cid}: {e}")))?;
                match c.init_pid {
                    None => {
                        handoff = c.spec.handoff_init.clone();
                        (
                            NsMode::NewContainer(c.root_setup().map_err(|e| other(e.to_string()))?),
                            c.rootfs.clone(),
                            Some(procs),
                            true,
                        )
                    }
                    Some(pid) => {
                        let ns = |n: &str| {
                            sys::open_ro(Path::new(&format!("/proc/{pid}/ns/{n}")))
                                .map_err(|e| other(format!("open {n} namespace of {cid}: {e}")))
                        };
                        (
                            NsMode::Join {
                                pid: ns("pid")?,
                                mnt: ns("mnt")?,
                                uts: ns("uts")?,
                                ipc: ns("ipc")?,
                            },
                            c.rootfs.clone(),
                            Some(procs),
                            false,
                        )
                    }
                }
            }
        };
        // Handoff-init: the image's init system becomes the container's PID 1 instead of the
        // process (which such images start as a service of their own).
        if let Some(h) = handoff {
            let init = handoff_init(&root, &h).ok_or_else(|| ExecFailed {
                kind: ExecFailureKind::NotFound,
                errno: Some(libc::ENOENT),
                message: format!(
                    "handoff_init={h}: no init in the image (looked for {})",
                    if h == "auto" {
                        AUTO_INITS.join(", ")
                    } else {
                        h.clone()
                    }
                ),
            })?;
            tracing::info!(container = ?req.container, "handoff to the image's init {init} (instead of {:?})", req.cmd);
            req.cmd = init;
            req.args = Vec::new();
        }
        // Identity from the container's own files.
        let user = req
            .user
            .as_deref()
            .map(|u| UserSpec::parse_for("user", u))
            .transpose()
            .map_err(|e| ExecFailed {
                kind: ExecFailureKind::UserSetupFailed,
                errno: None,
                message: e.to_string(),
            })?;
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        let ident = users::resolve(
            user.as_ref(),
            &read("etc/passwd"),
            &read("etc/group"),
            &req.additional_gids,
        )
        .map_err(|e| ExecFailed {
            kind: ExecFailureKind::UserSetupFailed,
            errno: None,
            message: e.to_string(),
        })?;
        // Environment: PATH and HOME defaults, as runc sets them.
        let mut env = req.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={}", ident.home));
        }
        let path_var = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_owned();
        let prog = resolve_program(&root, &req.cmd, &path_var).ok_or_else(|| ExecFailed {
            kind: ExecFailureKind::NotFound,
            errno: Some(libc::ENOENT),
            message: format!("exec: {:?}: executable file not found in $PATH", req.cmd),
        })?;
        // Streams.
        let cs = |s: &str| CString::new(s).map_err(|_| other(format!("{s:?} contains a NUL byte")));
        let io = |e: std::io::Error| other(format!("set up stdio: {e}"));
        let (child_stdio, parent_stdio, tty) = if req.tty {
            let (master, slave) = sys::openpty(req.rows, req.cols).map_err(|e| ExecFailed {
                kind: ExecFailureKind::PtySetupFailed,
                errno: e.raw_os_error(),
                message: format!("openpty: {e}"),
            })?;
            let dup = |f: &OwnedFd| f.try_clone().map_err(io);
            let child = ChildStdio {
                stdin: dup(&slave)?,
                stdout: dup(&slave)?,
                stderr: slave,
                tty: true,
            };
            let parent = ParentStdio {
                stdin: req
                    .stdin
                    .then(|| dup(&master).map(File::from))
                    .transpose()?,
                stdout: File::from(dup(&master)?),
                stderr: None,
            };
            (child, parent, Some(Arc::new(master)))
        } else {
            let (out_r, out_w) = sys::pipe().map_err(io)?;
            let (err_r, err_w) = sys::pipe().map_err(io)?;
            let (in_child, in_parent) = if req.stdin {
                let (r, w) = sys::pipe().map_err(io)?;
                (r, Some(File::from(w)))
            } else {
                (sys::open_ro(Path::new("/dev/null")).map_err(io)?, None)
            };
            let child = ChildStdio {
                stdin: in_child,
                stdout: out_w,
                stderr: err_w,
                tty: false,
            };
            (
                child,
                ParentStdio {
                    stdin: in_parent,
                    stdout: File::from(out_r),
                    stderr: Some(File::from(err_r)),
                },
                None,
            )
        };
        let mut rlimits = Vec::new();
        for r in &req.rlimits {
            let res = RlimitResource::from_name(&r.resource)
                .ok_or_else(|| other(format!("unknown rlimit {:?}", r.resource)))?;
            rlimits.push((
                rlimit_number(res),
                libc::rlimit {
                    rlim_cur: r.soft,
                    rlim_max: r.hard,
                },
            ));
        }
        let mut argv = vec![cs(&req.cmd)?];
        for a in &req.args {
            argv.push(cs(a)?);
        }
        let plan = SpawnPlan {
            ns,
            path: cs(&prog)?,
            argv,
            envp: env.iter().map(|e| cs(e)).collect::<Result<_, _>>()?,
            cwd: cs(req.cwd.as_deref().filter(|c| !c.is_empty()).unwrap_or("/"))?,
            uid: ident.uid,
            gid: ident.gid,
            groups: ident.groups.clone(),
            rlimits,
            cgroup_procs,
            stdio: child_stdio,
        };
        let mut exit_rx = None;
        let mut guard = Some(self.reaper.spawn_guard());
        let spawned = spawn::spawn(plan, |pid| {
            if let Some(mut g) = guard.take() {
                exit_rx = Some(g.register(pid));
            }
        });
        drop(guard);
        let pid = match spawned {
            Ok(pid) => pid,
            Err(SpawnError::Parent(e)) => return Err(other(format!("start {}: {e}", req.cmd))),
            Err(SpawnError::Child { step, errno }) => return Err(child_failure(step, errno, &req)),
        };
        let exit_rx = exit_rx.expect("register ran before spawn returned Ok");
        if is_init {
            if let Some(c) =
                lock(&self.containers).get_mut(req.container.as_deref().unwrap_or_default())
            {
                c.init_pid = Some(pid);
            }
        }
        self.out.send(id, &ExecStarted { pid: pid as u32 });
        let (containers, out, cid) = (
            self.containers.clone(),
            self.out.clone(),
            req.container.clone(),
        );
        let on_exit = move |_code: i32| {
            if let (true, Some(cid)) = (is_init, cid) {
                let mut all = lock(&containers);
                if let Some(c) = all.get_mut(&cid) {
                    c.init_exited = true;
                    report_oom(&out, c);
                }
            }
        };
        exec::run_session(
            id,
            self.out.clone(),
            parent_stdio,
            exit_rx,
            self.sessions.clone(),
            exec::Started {
                pid,
                container: req.container.clone(),
                is_init,
                tty,
            },
            on_exit,
        );
        Ok(())
    }
}

/// Container requests that name a container.
pub trait HasId {
    /// The container id.
    fn id(&self) -> &str;
}

impl HasId for ContainerPause {
    fn id(&self) -> &str {
        &self.id
    }
}

impl HasId for ContainerResume {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Sends `core.container.oom` if the container's OOM-kill counter rose since last reported.
fn report_oom(out: &Out, c: &mut Container) {
    let kills = c.cgroup.oom_kills();
    if kills > c.oom_reported {
        c.oom_reported = kills;
        out.send(0, &ContainerOom { id: c.id.clone() });
    }
}

/// Polls every container's OOM counter (a process other than the init may be the victim).
fn oom_watch(out: Out, containers: Containers) {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        for c in lock(&containers).values_mut() {
            report_oom(&out, c);
        }
    }
}

/// Where `handoff_init=auto` looks for an image's init system, in order.
pub const AUTO_INITS: [&str; 4] = [
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
];

/// The init `handoff` names in the container root `root`: `auto` picks the first of
/// [`AUTO_INITS`] present (a symlink counts: it resolves inside the container), a path must be
/// absolute and present.
pub fn handoff_init(root: &Path, handoff: &str) -> Option<String> {
    let exists = |p: &str| std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).is_ok();
    if handoff == "auto" {
        return AUTO_INITS.iter().find(|p| exists(p)).map(|p| p.to_string());
    }
    (handoff.starts_with('/') && exists(handoff)).then(|| handoff.to_owned())
}

/// The program's path inside `root`: `cmd` itself when it has a slash, else the first match
/// in `path`. Symbolic links are taken as found (their targets resolve inside the container).
pub fn resolve_program(root: &Path, cmd: &str, path: &str) -> Option<String> {
    let exists = |p: &str| std::fs::symlink_metadata(root.join(p.trim_start_matches('/'))).is_ok();
    if cmd.contains('/') {
        return Some(cmd.to_owned());
    }
    if cmd.is_empty() {
        return None;
    }
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
        .find(|p| exists(p))
}

fn child_failure(step: Step, errno: i32, req: &ExecRequest) -> ExecFailed {
    let err = std::io::Error::from_raw_os_error(errno);
    let (kind, message) = match step {
        Step::Exec => match errno {
            libc::ENOENT => (
                ExecFailureKind::NotFound,
                format!("exec {:?}: {err}", req.cmd),
            ),
            libc::EACCES | libc::EPERM => (
                ExecFailureKind::PermissionDenied,
                format!("exec {:?}: {err}", req.cmd),
            ),
            libc::ENOEXEC => (
                ExecFailureKind::NotExecutable,
                format!("exec {:?}: {err}", req.cmd),
            ),
            libc::ENOMEM => (
                ExecFailureKind::OutOfMemory,
                format!("exec {:?}: {err}", req.cmd),
            ),
            _ => (ExecFailureKind::Other, format!("exec {:?}: {err}", req.cmd)),
        },
        Step::Cwd => (
            ExecFailureKind::BadCwd,
            format!("chdir to {:?}: {err}", req.cwd.as_deref().unwrap_or("/")),
        ),
        Step::User => (
            ExecFailureKind::UserSetupFailed,
            format!("set user {:?}: {err}", req.user.as_deref().unwrap_or("0")),
        ),
        Step::Stdio if req.tty => (
            ExecFailureKind::PtySetupFailed,
            format!("terminal set-up: {err}"),
        ),
        other => (
            ExecFailureKind::Other,
            format!("container set-up ({other:?}): {err}"),
        ),
    };
    ExecFailed {
        kind,
        errno: Some(errno),
        message,
    }
}

/// The `RLIMIT_*` number of a resource.
pub fn rlimit_number(r: RlimitResource) -> libc::c_int {
    (match r {
        RlimitResource::Cpu => libc::RLIMIT_CPU,
        RlimitResource::Fsize => libc::RLIMIT_FSIZE,
        RlimitResource::Data => libc::RLIMIT_DATA,
        RlimitResource::Stack => libc::RLIMIT_STACK,
        RlimitResource::Core => libc::RLIMIT_CORE,
        RlimitResource::Rss => libc::RLIMIT_RSS,
        RlimitResource::Nproc => libc::RLIMIT_NPROC,
        RlimitResource::Nofile => libc::RLIMIT_NOFILE,
        RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
        RlimitResource::As => libc::RLIMIT_AS,
        RlimitResource::Locks => libc::RLIMIT_LOCKS,
        RlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
        RlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitResource::Nice => libc::RLIMIT_NICE,
        RlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
        RlimitResource::Rttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// Used by the shutdown path to wait for inits.
pub fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_init_finds_the_images_init() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(handoff_init(r, "auto"), None);
        std::fs::create_dir_all(r.join("lib/systemd")).unwrap();
        std::fs::write(r.join("lib/systemd/systemd"), b"").unwrap();
        assert_eq!(
            handoff_init(r, "auto").as_deref(),
            Some("/lib/systemd/systemd")
        );
        std::fs::create_dir_all(r.join("sbin")).unwrap();
        std::os::unix::fs::symlink("/lib/systemd/systemd", r.join("sbin/init")).unwrap();
        assert_eq!(handoff_init(r, "auto").as_deref(), Some("/sbin/init"));
        assert_eq!(
            handoff_init(r, "/lib/systemd/systemd").as_deref(),
            Some("/lib/systemd/systemd")
        );
        assert_eq!(handoff_init(r, "/missing"), None);
        assert_eq!(
            handoff_init(r, "sbin/init"),
            None,
            "relative paths are refused"
        );
    }

    #[test]
    fn program_resolution_searches_path_in_the_root() {
        let dir = std::env::temp_dir().join(format!("agentd-resolve-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::fs::write(dir.join("usr/bin/tool"), b"").unwrap();
        assert_eq!(
            resolve_program(&dir, "tool", "/bin:/usr/bin").as_deref(),
            Some("/usr/bin/tool")
        );
        assert_eq!(resolve_program(&dir, "nope", "/bin:/usr/bin"), None);
        assert_eq!(
            resolve_program(&dir, "/x/y", "/bin").as_deref(),
            Some("/x/y")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn exec_failures_map_to_kinds() {
        let req = ExecRequest {
            cmd: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            child_failure(Step::Exec, libc::ENOENT, &req).kind,
            ExecFailureKind::NotFound
        );
        assert_eq!(
            child_failure(Step::Exec, libc::EACCES, &req).kind,
            ExecFailureKind::PermissionDenied
        );
        assert_eq!(
            child_failure(Step::Exec, libc::ENOEXEC, &req).kind,
            ExecFailureKind::NotExecutable
        );
        assert_eq!(
            child_failure(Step::Cwd, libc::ENOENT, &req).kind,
            ExecFailureKind::BadCwd
        );
        assert_eq!(
            child_failure(Step::User, libc::EPERM, &req).kind,
            ExecFailureKind::UserSetupFailed
        );
    }
}
