//! The real `msb-krun-vmm`, started as the runtime starts it (LaunchConfig on fd 3, a share, a
//! read-only shared mount standing for the volumes view, disk images, the guest assets and
//! libkrunfw), confines itself before the guest runs: its own mount namespace whose root holds
//! only the shares and `/proc/self/fd`, `no_new_privs`, the seccomp filters; and it keeps
//! running with them (device set-up survived).
//!
//! On hosts whose KVM cannot boot a standard guest (PVM here, docs/HOSTS.md) the VMM gets that
//! far and its vCPU later stops with `KVM_EXIT_INTERNAL_ERROR`: then the test also sees the
//! verdict appended to the console log from inside the jail. Where the guest boots, the VMM is
//! killed once checked. Without root or `/dev/kvm` it is skipped with the reason.

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use msb_runtime::vmm::krun::{
    spawn_with_config, LaunchConfig, LaunchDisk, LaunchShare, KRUNFW_NAME,
};
use nix::mount::{MntFlags, MsFlags};

/// Undoes the host mounts of the test, whatever happens.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = nix::mount::umount2(m, MntFlags::MNT_DETACH);
        }
    }
}

fn mount(src: Option<&Path>, target: &Path, fstype: Option<&str>, flags: MsFlags) {
    nix::mount::mount(src, target, fstype, flags, None::<&str>)
        .unwrap_or_else(|e| panic!("mount {src:?} on {}: {e}", target.display()));
}

/// CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP (capability bits).
const FILE_SERVER: u64 = 1 | 1 << 1 | 1 << 3 | 1 << 4 | 1 << 6 | 1 << 7 | 1 << 27 | 1 << 31;
/// CAP_SYS_ADMIN.
const SYS_ADMIN: u64 = 1 << 21;

/// One thread's capability sets.
#[derive(Debug)]
#[allow(dead_code)] // read through Debug in assertion messages
struct Caps {
    effective: u64,
    permitted: u64,
    inheritable: u64,
    bounding: u64,
    ambient: u64,
}

/// Every thread of `pid` with its capability sets.
fn thread_caps(pid: u32) -> Vec<(String, Caps)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = t.unwrap().file_name().to_string_lossy().into_owned();
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue; // the thread ended
        };
        let field = |name: &str| {
            let v = s
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_else(|| panic!("no {name} in {s}"));
            u64::from_str_radix(v.trim(), 16).unwrap()
        };
        out.push((
            tid,
            Caps {
                effective: field("CapEff"),
                permitted: field("CapPrm"),
                inheritable: field("CapInh"),
                bounding: field("CapBnd"),
                ambient: field("CapAmb"),
            },
        ));
    }
    out
}

/// The `/proc/<pid>/status` field `name`.
fn status(pid: u32, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Mount point -> mount options + super options, from `/proc/<pid>/mountinfo`.
fn mounts(pid: u32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[4].to_owned(), format!("{} {}", f[5], l))
        })
        .collect()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test]
async fn the_vmm_runs_confined_to_its_shares() {
    if !nix::unistd::geteuid().is_root() {
        msb_test_e2e::skip("the VMM's mount namespace needs root, as the runtime runs it");
        return;
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        msb_test_e2e::skip("no read-write /dev/kvm: libkrun stops before the VMM confines itself");
        return;
    }
    let assets = msb_runtime::GuestAssets::default_location();
    if let Err(e) = assets.check() {
        msb_test_e2e::require(e);
        return;
    }
    let krunfw = msb_runtime::GuestAssets::dir().join(KRUNFW_NAME);
    if !krunfw.exists() {
        msb_test_e2e::require(format!(
            "{} is missing: run hack/libkrunfw",
            krunfw.display()
        ));
        return;
    }

    let vm = tempfile::tempdir().unwrap();
    let vm_dir = vm.path().to_path_buf();
    let share = vm_dir.join("share");
    let private = vm_dir.join("volumes.d");
    let volumes = vm_dir.join("volumes");
    for d in [&share, &private, &volumes] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(share.join("hello"), "from the host").unwrap();
    std::fs::create_dir(private.join("c1")).unwrap();
    for disk in ["lower.img", "upper.img"] {
        let f = std::fs::File::create(vm_dir.join(disk)).unwrap();
        f.set_len(16 << 20).unwrap();
    }
    // The volumes view as a read-only bind with a peer group of its own, so that volumes the
    // host binds into it later reach the VMM's namespace (which holds a slave of it).
    let mut host_mounts = Mounts(Vec::new());
    mount(Some(&private), &volumes, None, MsFlags::MS_BIND);
    host_mounts.0.push(volumes.clone());
    mount(None, &volumes, None, MsFlags::MS_PRIVATE);
    mount(None, &volumes, None, MsFlags::MS_SHARED);
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(None, &volumes, None, ro);

    let console = vm_dir.join("console.log");
    let agent_socket = vm_dir.join("agent.sock");
    let cfg = LaunchConfig {
        id: "confined".into(),
        vcpus: 1,
        memory_mib: 256,
        krunfw,
        initramfs: assets.initramfs.clone(),
        init: "/init".into(),
        cmdline: vec!["MSB_HOSTNAME=confined".into()],
        disks: vec![
            LaunchDisk {
                serial: "lower".into(),
                path: vm_dir.join("lower.img"),
                read_only: true,
            },
            LaunchDisk {
                serial: "upper".into(),
                path: vm_dir.join("upper.img"),
                read_only: false,
            },
        ],
        shares: [("share", &share), ("volumes", &volumes)]
            .into_iter()
            .map(|(tag, p)| LaunchShare {
                tag: tag.into(),
                host_path: p.clone(),
                read_only: false,
            })
            .collect(),
        agent_socket: agent_socket.clone(),
        agent_accept_timeout_ms: 10_000,
        console_log: console.clone(),
        net: None,
    };
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("krun.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msb-krun-vmm"));
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = spawn_with_config(&mut cmd, &cfg.to_json()).unwrap();
    let pid = child.id().unwrap();
    let krun_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The runtime's agent connection, which the VMM waits for before it enters the VM.
    let deadline = Instant::now() + Duration::from_secs(10);
    let _agent = loop {
        if let Ok(s) = UnixStream::connect(&agent_socket) {
            break s;
        }
        assert!(Instant::now() < deadline, "no agent socket: {}", krun_log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Confined once the filters are on (the last step, after the pivot); a VMM that never
    // confines itself is looked at 5 s after it entered the VM, so that the checks below say
    // what it lacks.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut entered = None;
    while status(pid, "Seccomp").as_deref() != Some("2") {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "the VMM ended ({st}) before it was confined:\n{}",
                krun_log()
            );
        }
        assert!(Instant::now() < deadline, "never confined:\n{}", krun_log());
        if krun_log().contains("entering the VM") {
            let at = *entered.get_or_insert_with(Instant::now);
            if at.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let confined = Instant::now();

    // Exactly the new root, the two shares and /proc/self/fd: no host /, /root, /home, /var/lib.
    let m = mounts(pid);
    let points: BTreeSet<&str> = m.iter().map(|(p, _)| p.as_str()).collect();
    let want: BTreeSet<&str> = [
        "/",
        share.to_str().unwrap(),
        volumes.to_str().unwrap(),
        "/proc/self/fd",
    ]
    .into();
    assert_eq!(points, want, "{m:#?}");
    let line = |p: &Path| &m.iter().find(|(q, _)| q == p.to_str().unwrap()).unwrap().1;
    assert!(line(Path::new("/")).starts_with("ro,"), "{m:#?}");
    assert!(line(Path::new("/")).contains(" - tmpfs "), "{m:#?}");
    assert!(line(&share).starts_with("rw,nosuid,nodev"), "{m:#?}");
    assert!(line(&volumes).starts_with("ro,nosuid,nodev"), "{m:#?}");
    assert!(
        line(Path::new("/proc/self/fd")).starts_with("ro,"),
        "{m:#?}"
    );

    // What a guest's `..` from a share reaches: the path down to the shares, and proc.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let first = vm_dir.components().nth(1).unwrap();
    let first = first.as_os_str().to_string_lossy().into_owned();
    assert_eq!(names(&root), BTreeSet::from([first, "proc".to_owned()]));
    let inner = root.join(vm_dir.strip_prefix("/").unwrap());
    assert_eq!(
        names(&inner),
        BTreeSet::from(["share".to_owned(), "volumes".to_owned()]),
        "the disks, the console log and the agent socket stay outside"
    );
    assert_eq!(
        std::fs::read_to_string(inner.join("share/hello")).unwrap(),
        "from the host"
    );

    // A volume the host binds after the VMM started still reaches it.
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("data"), "volume").unwrap();
    mount(
        Some(vol.path()),
        &volumes.join("c1"),
        None,
        MsFlags::MS_BIND,
    );
    host_mounts.0.push(volumes.join("c1"));
    assert_eq!(
        std::fs::read_to_string(inner.join("volumes/c1/data")).unwrap(),
        "volume"
    );

    assert_eq!(status(pid, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status(pid, "Seccomp").as_deref(), Some("2"));
    let filters = if cfg!(target_arch = "x86_64") {
        "3"
    } else {
        "2"
    };
    assert_eq!(status(pid, "Seccomp_filters").as_deref(), Some(filters));

    // Capabilities: what virtio-fs needs, in every thread; nothing to regain.
    let threads = thread_caps(pid);
    assert!(!threads.is_empty());
    for (tid, c) in &threads {
        assert_eq!(
            (c.bounding, c.inheritable, c.ambient),
            (0, 0, 0),
            "thread {tid}: {threads:#x?}"
        );
        assert!(
            c.permitted == FILE_SERVER || c.permitted == FILE_SERVER | SYS_ADMIN,
            "thread {tid}: {threads:#x?}"
        );
        assert_eq!(c.effective & !c.permitted, 0, "thread {tid}: {threads:#x?}");
    }
    // The thread that built the jail gave SYS_ADMIN up.
    assert!(
        threads.iter().any(|(_, c)| c.permitted == FILE_SERVER),
        "{threads:#x?}"
    );

    // Device set-up survived the namespace, the capabilities and the filters.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(confined.elapsed())).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the VMM died within 3 s of its confinement:\n{}",
        krun_log()
    );

    if msb_runtime::host::kvm_usable().is_ok() {
        // The guest boots here: nothing more to wait for.
        child.kill().await.unwrap();
        return;
    }
    // Here the vCPU stops (KVM_EXIT_INTERNAL_ERROR): the verdict still reaches the console
    // log, from inside the jail, through the descriptor opened before the pivot.
    let st = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the VMM did not stop within 60 s")
        .unwrap();
    assert_eq!(st.code(), Some(1), "{}", krun_log());
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(
        text.contains("msb-krun-vmm: the libkrun VM failed: "),
        "{text}\n{}",
        krun_log()
    );
    drop(host_mounts);
}
