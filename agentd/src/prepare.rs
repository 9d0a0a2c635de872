//! Exec preparation: from a `core.exec.request` to a [`SpawnPlan`], and back from a failed spawn
//! to `core.exec.failed`.
//!
//! Everything that can be decided before the process exists is decided here, in agentd, because
//! the child may not allocate (see [`crate::spawn`]): the namespaces (a container's first process
//! becomes its init, later ones join it), the image's init for handoff-init, the identity from
//! the container's own `/etc/passwd` and `/etc/group`, the environment with runc's defaults, the
//! program looked up in the container's `PATH`, the streams, the rlimits. Each refusal becomes
//! an [`ExecFailed`] whose kind the host turns into a shell status (127, 126, 128).
//!
//! [`crate::spawn`] then starts the plan, and [`crate::exec`] runs the session.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use msb_protocol::boot::{RlimitResource, UserSpec};
use msb_protocol::types::{ExecFailed, ExecFailureKind, ExecRequest};

use crate::container::Containers;
use crate::exec::ParentStdio;
use crate::spawn::{ChildStdio, NsMode, SpawnPlan, Step};
use crate::{exec, lock, sys, users};

/// Default `PATH` when a request sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where `handoff_init=auto` looks for an image's init system, in order.
pub const AUTO_INITS: [&str; 4] = [
    "/sbin/init",
    "/usr/sbin/init",
    "/lib/systemd/systemd",
    "/usr/lib/systemd/systemd",
];

/// A request made ready to spawn.
#[derive(Debug)]
pub struct Prepared {
    /// What the child does.
    pub plan: SpawnPlan,
    /// agentd's ends of the streams and the terminal master (for resizes). `None` when the child
    /// allocates the container's terminal ([`ChildStdio::Terminal`]): they come from the master
    /// the spawn brings back, through [`terminal_stdio`].
    pub parent: Option<(ParentStdio, Option<Arc<OwnedFd>>)>,
    /// Whether the process becomes its container's init.
    pub is_init: bool,
}

/// An [`ExecFailureKind::Other`] failure.
pub fn other(message: String) -> ExecFailed {
    ExecFailed {
        kind: ExecFailureKind::Other,
        errno: None,
        message,
    }
}

/// Prepares `req` against the known `containers`. With handoff-init, `req.cmd` and `req.args`
/// become the image's init (so failures name what was really started).
pub fn prepare(containers: &Containers, req: &mut ExecRequest) -> Result<Prepared, ExecFailed> {
    // Namespaces and the root the process sees, as a VM path prefix.
    let mut handoff = None;
    let mut profile = None;
    let (ns, root, cgroup_procs, is_init) = match &req.container {
        None => (NsMode::Vm, PathBuf::from("/"), None, false),
        Some(cid) => {
            let containers = lock(containers);
            let c = containers
                .get(cid)
                .ok_or_else(|| other(format!("no container {cid}")))?;
            if c.init_exited {
                return Err(other(format!(
                    "container {cid} is not running (its init exited)"
                )));
            }
            // Its init and every exec get the container's profile, as under runc.
            profile = c.spec.seccomp.clone();
            let procs = sys::open_wo(&c.cgroup.procs_path())
                .map_err(|e| other(format!("open cgroup of {cid}: {e}")))?;
            match c.init_pid {
                None => {
                    handoff = c.spec.handoff_init.clone();
                    (
                        NsMode::NewContainer(
                            c.root_setup(&containers)
                                .map_err(|e| other(e.to_string()))?,
                        ),
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
    // Compiled here, outside the lock: the child may not allocate.
    let seccomp = profile
        .as_ref()
        .map(crate::seccomp::compile)
        .transpose()
        .map_err(|e| other(format!("seccomp profile: {e}")))?;
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
    let user_failed = |e: users::UserError| ExecFailed {
        kind: ExecFailureKind::UserSetupFailed,
        errno: None,
        message: e.to_string(),
    };
    let passwd = users::read_db(&root, "/etc/passwd").map_err(user_failed)?;
    let group = users::read_db(&root, "/etc/group").map_err(user_failed)?;
    let ident = users::resolve(user.as_ref(), &passwd, &group, &req.additional_gids)
        .map_err(user_failed)?;
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
    // Streams. A container's terminal is allocated by the child in the container's own devpts
    // instance (see `ChildStdio::Terminal`); its master arrives after the spawn.
    let cs = |s: &str| CString::new(s).map_err(|_| other(format!("{s:?} contains a NUL byte")));
    let io = |e: std::io::Error| other(format!("set up stdio: {e}"));
    let (child_stdio, parent) = if req.tty && req.container.is_some() {
        (
            ChildStdio::Terminal {
                rows: req.rows,
                cols: req.cols,
            },
            None,
        )
    } else if req.tty {
        let (master, slave) = sys::openpty(req.rows, req.cols).map_err(|e| ExecFailed {
            kind: ExecFailureKind::PtySetupFailed,
            errno: e.raw_os_error(),
            message: format!("openpty: {e}"),
        })?;
        let dup = |f: &OwnedFd| f.try_clone().map_err(io);
        let child = ChildStdio::Fds {
            stdin: dup(&slave)?,
            stdout: dup(&slave)?,
            stderr: slave,
            tty: true,
        };
        (child, Some(terminal_stdio(master, req.stdin).map_err(io)?))
    } else {
        let (out_r, out_w) = sys::pipe_sized(exec::OUTPUT_PIPE_SIZE).map_err(io)?;
        let (err_r, err_w) = sys::pipe_sized(exec::OUTPUT_PIPE_SIZE).map_err(io)?;
        let (in_child, in_parent) = if req.stdin {
            let (r, w) = sys::pipe_sized(exec::STDIN_PIPE_SIZE).map_err(io)?;
            (r, Some(File::from(w)))
        } else {
            (sys::open_ro(Path::new("/dev/null")).map_err(io)?, None)
        };
        let child = ChildStdio::Fds {
            stdin: in_child,
            stdout: out_w,
            stderr: err_w,
            tty: false,
        };
        let parent = ParentStdio {
            stdin: in_parent,
            stdout: File::from(out_r),
            stderr: Some(File::from(err_r)),
        };
        (child, Some((parent, None)))
    };
    let mut rlimits = Vec::new();
    for r in &req.rlimits {
        let res = RlimitResource::from_name(&r.resource)
            .ok_or_else(|| other(format!("unknown rlimit {:?}", r.resource)))?;
        rlimits.push((
            sys::rlimit_number(res),
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
        caps: req.capabilities.as_ref().map(crate::caps::CapMasks::new),
        no_new_privs: req.no_new_privileges,
        seccomp,
    };
    Ok(Prepared {
        plan,
        parent,
        is_init,
    })
}

/// agentd's side of a terminal: `master` for the output and the resizes, a copy for stdin
/// when the process has one.
pub fn terminal_stdio(
    master: OwnedFd,
    stdin: bool,
) -> std::io::Result<(ParentStdio, Option<Arc<OwnedFd>>)> {
    let parent = ParentStdio {
        stdin: stdin
            .then(|| master.try_clone().map(File::from))
            .transpose()?,
        stdout: File::from(master.try_clone()?),
        stderr: None,
    };
    Ok((parent, Some(Arc::new(master))))
}

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

/// The `core.exec.failed` of a child that failed at `step` with `errno`.
pub fn child_failure(step: Step, errno: i32, req: &ExecRequest) -> ExecFailed {
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
        Step::Terminal => (
            ExecFailureKind::PtySetupFailed,
            format!("allocate a terminal from the container's /dev/pts/ptmx: {err}"),
        ),
        Step::Seccomp => (
            ExecFailureKind::Other,
            format!("install the container's seccomp filter: {err}"),
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
