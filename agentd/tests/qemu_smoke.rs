//! agentd booted for real under QEMU (TCG) and driven over the agent port with the protocol
//! crate's blocking API: ready, a container with its init as PID 1 of its own PID namespace,
//! exit codes, a missing program, shutdown. The host-side runtime has its own, larger suite in
//! test-e2e; this one keeps agentd testable on its own.
//!
//! Needs `hack/guest-assets` to have built the kernel and an initramfs of the current agentd
//! (`./hack/test` does); skipped with a printed reason otherwise.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msb_protocol::types::*;
use msb_protocol::{read_message, write_message, Message, Payload};

fn assets() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("MSB_ASSET_DIR").unwrap_or_else(|_| "/var/cache/microsandbox/assets".into()),
    );
    let ok = dir.join("vmlinux").is_file() && dir.join("initramfs.cpio").is_file();
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !ok || !qemu {
        msb_test_e2e::require(format!("needs qemu-system-x86_64 and {}/{{vmlinux,initramfs.cpio}} (run ./hack/test or hack/guest-assets)", dir.display()));
        return None;
    }
    Some(dir)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tsc_khz() -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}/../hack/lib/guest.sh; host_tsc_khz",
            env!("CARGO_MANIFEST_DIR")
        ))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Guest {
    qemu: Child,
    dir: PathBuf,
    sock: UnixStream,
    next_id: u32,
    /// Containers named by `core.container.oom` reports that arrived while [`Guest::exec`]
    /// waited for its own messages (the report may come before the victim's exit).
    ooms: Vec<String>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Guest {
    fn boot(assets: &Path, name: &str) -> Guest {
        Guest::boot_with(assets, name, |_| {})
    }

    /// Boots with `plant` adding to the image's root (a directory) before it is packed.
    fn boot_with(assets: &Path, name: &str, plant: impl FnOnce(&Path)) -> Guest {
        let dir = std::env::temp_dir().join(format!("agentd-smoke-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "uname", "sleep", "ls", "id", "hostname",
        ] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        plant(&root);
        run(Command::new("mkfs.erofs")
            .arg("--quiet")
            .arg(dir.join("lower.img"))
            .arg(&root));
        run(Command::new("truncate")
            .arg("-s")
            .arg("256M")
            .arg(dir.join("upper.img")));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(dir.join("upper.img")));
        let sock_path = dir.join("agent.sock");
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-M", "microvm", "-cpu", "qemu64,+arat"])
            .args(["-smp", "1", "-m", "256M"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
            .arg("-kernel")
            .arg(assets.join("vmlinux"))
            .arg("-initrd")
            .arg(assets.join("initramfs.cpio"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 tsc_early_khz={} tsc=reliable MSB_HOSTNAME=smoke",
                tsc_khz()
            ))
            .arg("-serial")
            .arg(format!("file:{}", dir.join("console.log").display()))
            .args(["-device", "virtio-serial-device"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=agent,path={},server=on,wait=off",
                sock_path.display()
            ))
            .args(["-device", "virtserialport,chardev=agent,name=agent"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=lower,format=raw,readonly=on",
                dir.join("lower.img").display()
            ))
            .args(["-device", "virtio-blk-device,drive=lower,serial=lower"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=upper,format=raw,cache=unsafe",
                dir.join("upper.img").display()
            ))
            .args(["-device", "virtio-blk-device,drive=upper,serial=upper"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = loop {
            match UnixStream::connect(&sock_path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("agent socket: {e}"),
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        Guest {
            qemu,
            dir,
            sock,
            next_id: 1,
            ooms: Vec::new(),
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    fn recv(&mut self) -> Message {
        match read_message(&mut self.sock) {
            Ok(Some(m)) => {
                if std::env::var_os("SMOKE_TRACE").is_some() {
                    eprintln!("<- {m:?}");
                }
                m
            }
            other => panic!("no message ({other:?}); console:\n{}", self.console()),
        }
    }

    fn send<P: Payload>(&mut self, id: u32, p: &P) {
        write_message(&mut self.sock, &Message::new(id, p).unwrap()).unwrap();
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    /// Runs a command to completion: (stdout, stderr, exit code or failure).
    fn exec(&mut self, req: ExecRequest) -> (String, String, Result<i32, ExecFailed>) {
        let id = self.id();
        self.send(id, &req);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        loop {
            let m = self.recv();
            if m.id == 0 && m.kind == ContainerOom::TYPE {
                self.ooms.push(m.decode::<ContainerOom>().unwrap().id);
            }
            if m.id != id {
                continue;
            }
            match m.kind.as_str() {
                ExecStarted::TYPE | ExecStdinAck::TYPE => {}
                ExecStdout::TYPE => out.extend(m.decode::<ExecStdout>().unwrap().data),
                ExecStderr::TYPE => err.extend(m.decode::<ExecStderr>().unwrap().data),
                ExecExited::TYPE => {
                    return (s(out), s(err), Ok(m.decode::<ExecExited>().unwrap().code))
                }
                ExecFailed::TYPE => {
                    return (s(out), s(err), Err(m.decode::<ExecFailed>().unwrap()))
                }
                other => panic!("unexpected {other}: {m:?}"),
            }
        }
    }
}

fn create(g: &mut Guest, id: &str, resources: Resources) {
    let scratch = ContainerMount {
        destination: "/scratch".into(),
        kind: "tmpfs".into(),
        source: String::new(),
        options: vec!["size=1m".into()],
    };
    create_with(g, id, resources, vec![scratch]);
}

fn create_with(g: &mut Guest, id: &str, resources: Resources, mounts: Vec<ContainerMount>) {
    let sid = g.id();
    g.send(
        sid,
        &ContainerCreate {
            id: id.into(),
            rootfs: RootfsSpec {
                lower: vec![StorageRef::Serial("lower".into())],
                upper: StorageRef::Serial("upper".into()),
                fstype: "ext4".into(),
                readonly: false,
            },
            mounts,
            hostname: None,
            namespaces: Default::default(),
            handoff_init: None,
            resources,
            sysctls: vec![],
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            seccomp: None,
        },
    );
    let m = g.recv();
    assert_eq!(
        m.kind,
        ContainerCreated::TYPE,
        "{:?}; console:\n{}",
        m.decode::<ContainerFailed>(),
        g.console()
    );
}

/// Sends a container request and returns the reply.
fn ask<P: Payload>(g: &mut Guest, p: &P) -> Message {
    let id = g.id();
    g.send(id, p);
    loop {
        let m = g.recv();
        if m.id == id {
            return m;
        }
    }
}

fn s(v: Vec<u8>) -> String {
    String::from_utf8_lossy(&v).into_owned()
}

fn sh(container: &str, script: &str) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        container: Some(container.into()),
        stdin: false,
        ..Default::default()
    }
}

#[test]
fn container_lifecycle_in_a_real_guest() {
    let Some(assets) = assets() else { return };
    let release = std::fs::read_to_string(assets.join("kernel.release"))
        .unwrap()
        .trim()
        .to_owned();
    let mut g = Guest::boot(&assets, "life");
    let ready = g.recv();
    let ready = ready
        .decode::<Ready>()
        .unwrap_or_else(|e| panic!("{e}; console:\n{}", g.console()));
    assert_eq!(ready.kernel_release, release);
    assert!(ready.boot_time_ns <= ready.init_time_ns && ready.init_time_ns <= ready.ready_time_ns);

    let id = g.id();
    g.send(
        id,
        &ContainerCreate {
            id: "c1".into(),
            rootfs: RootfsSpec {
                lower: vec![StorageRef::Serial("lower".into())],
                upper: StorageRef::Serial("upper".into()),
                fstype: "ext4".into(),
                readonly: false,
            },
            mounts: vec![],
            hostname: Some("c1-host".into()),
            namespaces: Default::default(),
            handoff_init: None,
            resources: Default::default(),
            sysctls: vec![],
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
            seccomp: None,
        },
    );
    let created = g.recv();
    assert_eq!(
        created.kind,
        ContainerCreated::TYPE,
        "{:?}; console:\n{}",
        created.decode::<ContainerFailed>(),
        g.console()
    );

    // The init: PID 1 of its own namespace, our hostname, the guest kernel; it waits for stdin EOF.
    let init_id = g.id();
    g.send(
        init_id,
        &ExecRequest {
            cmd: "sh".into(),
            args: vec![
                "-c".into(),
                "echo pid=$$ host=$(hostname) kernel=$(uname -r); cat; exit 7".into(),
            ],
            container: Some("c1".into()),
            ..Default::default()
        },
    );
    let started = g.recv();
    assert_eq!(
        started.kind,
        ExecStarted::TYPE,
        "{started:?} {:?}; console:\n{}",
        started.decode::<ExecFailed>(),
        g.console()
    );
    let line = g.recv();
    assert_eq!(
        s(line.decode::<ExecStdout>().unwrap().data),
        format!("pid=1 host=c1-host kernel={release}\n")
    );

    // Other processes join the container.
    let (out, _, code) = g.exec(sh("c1", "echo joined $(hostname); exit 3"));
    assert_eq!(
        (out.as_str(), code.unwrap()),
        ("joined c1-host\n", 3),
        "console:\n{}",
        g.console()
    );
    let (_, _, code) = g.exec(sh("c1", "kill -9 $$"));
    assert_eq!(code.unwrap(), 137);
    let (out, err, code) = g.exec(sh("c1", "echo out; echo err >&2"));
    assert_eq!(
        (out.as_str(), err.as_str(), code.unwrap()),
        ("out\n", "err\n", 0)
    );
    let (_, _, code) = g.exec(ExecRequest {
        cmd: "no-such-tool".into(),
        container: Some("c1".into()),
        stdin: false,
        ..Default::default()
    });
    let failed = code.unwrap_err();
    assert_eq!(failed.kind, ExecFailureKind::NotFound);
    assert!(
        failed.message.contains("no-such-tool"),
        "{}",
        failed.message
    );

    // stdin to the init, then EOF: it echoes and exits 7.
    g.send(
        init_id,
        &ExecStdin {
            data: b"through stdin\n".to_vec(),
        },
    );
    g.send(init_id, &ExecStdin { data: vec![] });
    let (mut out, mut acked) = (Vec::new(), 0);
    let code = loop {
        let m = g.recv();
        match m.kind.as_str() {
            ExecStdout::TYPE => out.extend(m.decode::<ExecStdout>().unwrap().data),
            ExecStdinAck::TYPE => acked += m.decode::<ExecStdinAck>().unwrap().bytes,
            ExecExited::TYPE => break m.decode::<ExecExited>().unwrap().code,
            _ => {}
        }
    };
    // The stdin bytes the process took are acknowledged (the host's flow-control window).
    assert_eq!((s(out).as_str(), code, acked), ("through stdin\n", 7, 14));

    // Shutdown powers the VM off.
    g.send(0, &Shutdown);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = g.qemu.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no power-off; console:\n{}",
            g.console()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut rest = Vec::new();
    let _ = g.sock.read_to_end(&mut rest);
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(g.dir.join("upper.img"))
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "upper not clean: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn terminals_limits_signals_and_stats() {
    let Some(assets) = assets() else { return };
    let mut g = Guest::boot(&assets, "more");
    assert_eq!(g.recv().kind, Ready::TYPE);
    create(
        &mut g,
        "c2",
        Resources {
            memory_limit: Some(32 << 20),
            ..Default::default()
        },
    );

    // The init sleeps; it is PID 1 so the container lives while we poke at it.
    let init = g.id();
    g.send(
        init,
        &ExecRequest {
            cmd: "sleep".into(),
            args: vec!["600".into()],
            container: Some("c2".into()),
            stdin: false,
            ..Default::default()
        },
    );
    assert_eq!(g.recv().kind, ExecStarted::TYPE);

    // A terminal reports the size it was given, then the size set by a resize.
    let (out, _, code) = g.exec(ExecRequest {
        tty: true,
        rows: 33,
        cols: 101,
        ..sh("c2", "stty size")
    });
    assert_eq!((out.as_str(), code.unwrap()), ("33 101\r\n", 0));
    // The terminal of a process joining the container is the container's own (named in its
    // /dev/pts, as under runc) and its controlling terminal.
    let (out, _, code) = g.exec(ExecRequest {
        tty: true,
        ..sh("c2", "tty && echo ctty >/dev/tty")
    });
    let name = out.strip_suffix("\r\nctty\r\n").unwrap_or_default();
    let n = name.strip_prefix("/dev/pts/").unwrap_or_default();
    assert!(
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && code == Ok(0),
        "{out:?} {code:?}"
    );
    let tty = g.id();
    g.send(
        tty,
        &ExecRequest {
            tty: true,
            rows: 10,
            cols: 20,
            stdin: true,
            ..sh("c2", "read line; stty size")
        },
    );
    assert_eq!(g.recv().kind, ExecStarted::TYPE);
    g.send(
        tty,
        &ExecResize {
            rows: 47,
            cols: 132,
        },
    );
    g.send(
        tty,
        &ExecStdin {
            data: b"go\n".to_vec(),
        },
    );
    let mut out = Vec::new();
    loop {
        let m = g.recv();
        match m.kind.as_str() {
            ExecStdout::TYPE => out.extend(m.decode::<ExecStdout>().unwrap().data),
            ExecExited::TYPE => break,
            _ => {}
        }
    }
    assert!(s(out).ends_with("47 132\r\n"), "terminal output");

    // Spec tmpfs mounts exist.
    let (out, _, _) = g.exec(sh("c2", "grep -c ' /scratch tmpfs' /proc/mounts || true"));
    assert_eq!(out, "1\n");

    // Three concurrent execs; killing one leaves the others running.
    let ids: Vec<u32> = (0..3).map(|_| g.id()).collect();
    for (i, id) in ids.iter().enumerate() {
        g.send(*id, &sh("c2", &format!("sleep 2; echo done{i}")));
    }
    let mut started = 0;
    while started < 3 {
        if g.recv().kind == ExecStarted::TYPE {
            started += 1;
        }
    }
    g.send(
        ids[1],
        &ExecSignal {
            signal: 9,
            all: false,
        },
    );
    let mut results = std::collections::HashMap::new();
    while results.len() < 3 {
        let m = g.recv();
        match m.kind.as_str() {
            ExecStdout::TYPE => assert!(m.id != ids[1]),
            ExecExited::TYPE => {
                results.insert(m.id, m.decode::<ExecExited>().unwrap().code);
            }
            _ => {}
        }
    }
    assert_eq!(
        (results[&ids[0]], results[&ids[1]], results[&ids[2]]),
        (0, 137, 0)
    );

    // pids, stats, pause/resume.
    let pids = ask(&mut g, &ContainerPids { id: "c2".into() })
        .decode::<ContainerPidsReply>()
        .unwrap();
    assert_eq!(pids.pids.len(), 1, "only the init is left: {:?}", pids.pids);
    let stats = ask(&mut g, &ContainerStats { id: "c2".into() })
        .decode::<ContainerStatsReply>()
        .unwrap();
    assert!(stats.memory.usage > 0);
    assert_eq!(stats.memory.limit, 32 << 20);
    assert_eq!(
        ask(&mut g, &ContainerPause { id: "c2".into() }).kind,
        ContainerDone::TYPE
    );
    assert_eq!(
        ask(&mut g, &ContainerResume { id: "c2".into() }).kind,
        ContainerDone::TYPE
    );

    // Past its memory limit a process is OOM-killed: 137, and the container reports the OOM.
    let (_, _, code) = g.exec(sh("c2", "tail /dev/zero"));
    assert_eq!(code.unwrap(), 137);
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.ooms.is_empty() {
        let m = g.recv();
        if m.kind == ContainerOom::TYPE {
            assert_eq!(m.id, 0);
            g.ooms.push(m.decode::<ContainerOom>().unwrap().id);
        }
        assert!(Instant::now() < deadline, "no core.container.oom");
    }
    assert_eq!(g.ooms, ["c2"]);

    // kill --all ends the init; delete cleans up.
    g.send(
        init,
        &ExecSignal {
            signal: 9,
            all: true,
        },
    );
    loop {
        let m = g.recv();
        if m.id == init && m.kind == ExecExited::TYPE {
            assert_eq!(m.decode::<ExecExited>().unwrap().code, 137);
            break;
        }
    }
    assert_eq!(
        ask(&mut g, &ContainerDelete { id: "c2".into() }).kind,
        ContainerDone::TYPE
    );
    let failed = ask(&mut g, &ContainerStats { id: "c2".into() });
    assert_eq!(failed.kind, ContainerFailed::TYPE);
}

/// Writes `data` to `path` with `core.fs` (chunks, the empty chunk) and returns the response.
fn write_file(g: &mut Guest, container: &str, path: &str, data: &[u8]) -> FsResponse {
    let id = g.id();
    g.send(
        id,
        &FsRequest {
            op: FsOp::Write {
                path: path.into(),
                mode: Some(0o644),
            },
            container: Some(container.into()),
        },
    );
    g.send(
        id,
        &FsData {
            data: data.to_vec(),
        },
    );
    g.send(id, &FsData { data: Vec::new() });
    loop {
        let m = g.recv();
        if m.id == id {
            assert_eq!(m.kind, FsResponse::TYPE, "{m:?}");
            return m.decode().unwrap();
        }
    }
}

/// An image that tries to turn agentd against the VM: a FIFO as `/etc/group` (reading it would
/// block the exec, and agentd's dispatcher with it), a FIFO and a symlink as targets of a
/// `core.fs` write, and a symlink `/data -> /../../run/msb` under a mount destination (followed
/// in the VM, the mount's directory would be created in the VM's own `/run/msb`). Everything is
/// answered with an error or stays inside the container's root.
#[test]
fn a_hostile_image_stays_inside_its_root() {
    let Some(assets) = assets() else { return };
    let mut g = Guest::boot_with(&assets, "hostile", |root| {
        let fifo = |p: &str| {
            run(Command::new("mkfifo").arg(root.join(p)));
        };
        fifo("etc/group");
        fifo("etc/fifo");
        std::os::unix::fs::symlink("/run/msb/hosts", root.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink("/../../run/msb", root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("run/msb")).unwrap();
    });
    assert_eq!(g.recv().kind, Ready::TYPE);
    let tmpfs = ContainerMount {
        destination: "/data/x".into(),
        kind: "tmpfs".into(),
        source: String::new(),
        options: vec!["size=1m".into()],
    };
    // A read-only bind (of a VM directory: the image's own /bin) under the same symlink.
    let bind = ContainerMount {
        destination: "/data/ro".into(),
        kind: "bind".into(),
        source: "/run/msb/c/h1/rootfs/bin".into(),
        options: vec!["rbind".into(), "ro".into()],
    };
    create_with(&mut g, "h1", Default::default(), vec![tmpfs, bind]);

    // The FIFO is refused, promptly.
    let started = Instant::now();
    let (_, _, code) = g.exec(sh("h1", "id"));
    let failed = code.unwrap_err();
    assert_eq!(
        (failed.kind, failed.message.as_str()),
        (
            ExecFailureKind::UserSetupFailed,
            "the container's /etc/group: not a regular file (FIFO)"
        )
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Writes to a FIFO or through a last-component symlink are refused; a plain one works.
    let refused = |r: FsResponse| (r.ok, r.error.unwrap_or_default());
    assert_eq!(
        refused(write_file(&mut g, "h1", "/etc/fifo", b"x")),
        (false, "create /etc/fifo: not a regular file (FIFO)".into())
    );
    assert_eq!(
        refused(write_file(&mut g, "h1", "/etc/hosts", b"x")),
        (
            false,
            "create /etc/hosts: not a regular file (symbolic link)".into()
        )
    );
    assert_eq!(
        refused(write_file(&mut g, "h1", "/etc/hostname", b"h1\n")),
        (true, String::new())
    );

    // Without the FIFO the container starts; its mount went to its own /run/msb.
    let busybox = "/run/msb/c/h1/rootfs/bin/busybox";
    let vm = |args: &[&str]| ExecRequest {
        cmd: busybox.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        stdin: false,
        ..Default::default()
    };
    let (_, err, code) = g.exec(vm(&["rm", "/run/msb/c/h1/rootfs/etc/group"]));
    assert_eq!(code, Ok(0), "{err}");
    let (out, err, code) = g.exec(sh(
        "h1",
        "cat /etc/hostname; ls /data; ls /run/msb; busybox grep -c ' /run/msb/x tmpfs' /proc/mounts; \
         ls /data/ro/busybox; busybox touch /data/ro/t 2>/dev/null || echo read-only",
    ));
    assert_eq!(
        (out.as_str(), code),
        ("h1\nro\nx\nro\nx\n1\n/data/ro/busybox\nread-only\n", Ok(0)),
        "{err}"
    );
    // Nothing of it in the VM's /run/msb.
    let (out, err, code) = g.exec(vm(&["ls", "/run/msb"]));
    assert_eq!((out.as_str(), code), ("c\n", Ok(0)), "{err}");
}
