//! The shim through a real containerd 1.6 and `ctr`: runtime names, exit statuses, the task
//! verbs, cleanup after many containers and after a killed shim, and clear errors.
//!
//! Each test uses its own containerd namespace so that leak checks see only their own state.

use std::process::{Command, Output};
use std::time::Duration;

use msb_test_e2e::cgroups;
use msb_test_e2e::containerd::{Containerd, BUSYBOX};
use msb_test_e2e::ctr::*;
use msb_test_e2e::guest::{assets, kernel_release, GuestSlot};
use msb_test_e2e::ids::container_id;

fn setup(ns: &str) -> Option<Containerd> {
    assets()?;
    let ctrd = Containerd::start_with_shim().expect("containerd starts");
    ctrd.import_busybox(ns).expect("image imports");
    Some(ctrd)
}

#[test]
fn ctr_run_with_both_runtime_names_and_exact_statuses() {
    let ns = "names";
    let Some(ctrd) = setup(ns) else { return };
    let n3 = container_id("n3");
    let n5 = container_id("n5");
    let n4 = container_id("n4");
    let _slot = GuestSlot::acquire();
    for (i, runtime) in ["io.microsandbox.v1", "io.containerd.microsandbox.v1"]
        .iter()
        .enumerate()
    {
        let o = ctrd.ctr(
            ns,
            &[
                "run",
                "--runtime",
                runtime,
                "--rm",
                BUSYBOX,
                &container_id(&format!("n{i}")),
                "uname",
                "-r",
            ],
        );
        assert_eq!(
            (stdout(&o), o.status.code()),
            (format!("{}\n", kernel_release()), Some(0)),
            "{}\n{}",
            text(&o),
            ctrd.log()
        );
    }
    let o = run_msb(&ctrd, ns, &["--rm"], &n3, &["sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // stdin through ctr, byte-exact: ctr sends CloseIO as soon as its own input ends, when its
    // last writes may still be in the FIFO; they must reach the process before its EOF. The
    // process starts reading late, so the input waits in every queue on the way (the FIFO, the
    // shim, the guest's window) when CloseIO comes.
    // 8 MB: 2 MB fitted in the queues and never showed the loss (a lost EOF: a hang).
    let input: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = {
        let path = std::env::temp_dir().join(format!("msb-stdin-{}", std::process::id()));
        std::fs::write(&path, &input).unwrap();
        let o = Command::new("sha256sum").arg(&path).output().unwrap();
        let _ = std::fs::remove_file(&path);
        stdout(&o).split_whitespace().next().unwrap().to_owned()
    };
    let o = ctrd.ctr_with_stdin(
        ns,
        &[
            "run",
            "--runtime",
            "io.microsandbox.v1",
            "--rm",
            BUSYBOX,
            &n5,
            "sh",
            "-c",
            "sleep 2; cat > /in && sha256sum < /in && wc -c < /in",
        ],
        input,
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        (format!("{want}  -\n8000000\n"), Some(0)),
        "{}",
        text(&o)
    );
    // An OOM kill: status 137, and containerd hears /tasks/oom before /tasks/exit (a client
    // that sees the exit first would miss the reason, as CRI's OOMKilled).
    let events = EventStream::subscribe(&ctrd, ns);
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--memory-limit", "33554432"],
        &n4,
        &["tail", "/dev/zero"],
    );
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    let first = events
        .wait_for(30, |l| {
            (l.contains("/tasks/oom") || l.contains("/tasks/exit")) && l.contains(&n4)
        })
        .expect("no /tasks/oom or /tasks/exit event");
    assert!(first.contains("/tasks/oom"), "the exit came first: {first}");
    let exit = events
        .wait_for(30, |l| l.contains("/tasks/exit") && l.contains(&n4))
        .expect("no /tasks/exit event after the OOM");
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
}

/// A single container's host binds, a file and a directory, through its VM's volume share: read,
/// written both ways, read-only where asked; nothing of them is left bound afterwards.
#[test]
fn host_binds_reach_the_container_through_the_volume_share() {
    let ns = "binds";
    let Some(ctrd) = setup(ns) else { return };
    let b1 = container_id("b1");
    let _slot = GuestSlot::acquire();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "10.1.2.3 msb-test\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in"), "from the host\n").unwrap();
    let file = format!(
        "type=bind,src={},dst=/etc/deep/hosts,options=rbind:ro",
        hosts.display()
    );
    let rw = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        data.display()
    );
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--mount", &file, "--mount", &rw],
        &b1,
        &[
            "sh",
            "-c",
            "cat /etc/deep/hosts /data/in; hostname; echo out >/data/out; \
             echo x >>/etc/deep/hosts || echo refused",
        ],
    );
    // The VM's hostname is the container id, cut to a host name's 63 characters (ctr sets none).
    assert_eq!(
        (stdout(&o), o.status.code()),
        (
            format!("10.1.2.3 msb-test\nfrom the host\n{}\nrefused\n", &b1[..63]),
            Some(0)
        ),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap(), "out\n");
    assert_eq!(
        std::fs::read_to_string(&hosts).unwrap(),
        "10.1.2.3 msb-test\n"
    );
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&b1))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
}

#[test]
fn handoff_init_makes_the_images_init_pid_1() {
    let ns = "handoff";
    let Some(ctrd) = setup(ns) else { return };
    let h1 = container_id("h1");
    let h2 = container_id("h2");
    let _slot = GuestSlot::acquire();
    // The busybox image has its init at /bin/init: a path hands off to it, `auto` finds none.
    let o = run_msb(
        &ctrd,
        ns,
        &[
            "-d",
            "--annotation",
            "io.microsandbox.handoff_init=/bin/init",
        ],
        &h1,
        &["sleep", "600"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = exec_in(&ctrd, ns, &h1, "e", &["cat", "/proc/1/comm"]);
    // The name, not the command line: busybox init overwrites its argv with "init" and NULs
    // soon after it starts, so /proc/1/cmdline depends on when it is read.
    assert_eq!(stdout(&o), "init\n", "{}", text(&o));
    kill_and_remove(&ctrd, ns, &h1);

    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--annotation", "io.microsandbox.handoff_init=auto"],
        &h2,
        &["true"],
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("handoff_init=auto: no init in the image (looked for /sbin/init"),
        "{}",
        text(&o)
    );
}

#[test]
fn detached_task_verbs() {
    let ns = "verbs";
    let Some(ctrd) = setup(ns) else { return };
    let v1 = container_id("v1");
    let v2 = container_id("v2");
    let v3 = container_id("v3");
    let e1 = container_id("e1");
    let _slot = GuestSlot::acquire();
    let run = |id: &str, cmd: &[&str]| {
        let o = run_msb(&ctrd, ns, &["-d"], id, cmd);
        assert!(o.status.success(), "{}", text(&o));
    };
    // A light loop, so CPU time shows whether it runs.
    run(&v1, &["sh", "-c", "while :; do usleep 20000; done"]);
    assert_eq!(task_status(&ctrd, ns, &v1).as_deref(), Some("RUNNING"));
    // The task's pid is a host process: its VM's VMM (never a guest pid, which would name some
    // unrelated host process); the guest's pids show in `task ps` below.
    let pid = task_pid(&ctrd, ns, &v1);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("qemu-system") || cmdline.contains("msb-krun-vmm"),
        "task pid {pid} is no VMM: {cmdline:?}"
    );
    // And it is confined as far as docs/SECURITY.md says: no new privileges, and for QEMU its
    // own seccomp filter.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    if cmdline.contains("qemu-system") {
        assert!(status.contains("Seccomp:\t2"), "{status}");
    }

    let o = exec_in(&ctrd, ns, &v1, &e1, &["sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("in-exec\n".into(), Some(5)),
        "{}",
        text(&o)
    );
    // With a terminal: script(1) gives ctr one. The time limit stays outside script: a
    // `timeout` inside would move ctr into a process group of its own, in the background of that
    // terminal, where ctr's switch to raw mode stops it with SIGTTOU (whenever script's $SHELL
    // forks rather than execs the command: dash does, bash does not). SHELL is set so the test
    // runs the same with any caller's environment.
    let sock = ctrd.socket().display().to_string();
    let o = Command::new("timeout")
        .args(["--kill-after=5", "120", "script", "-qec"])
        .arg(format!("ctr --address {sock} -n {ns} task exec -t --exec-id e2 {v1} sh -c 'test -t 0 && echo is-a-tty'"))
        .arg("/dev/null")
        .env("SHELL", "/bin/sh")
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("is-a-tty"),
        "{}\ncontainerd's log (shim lines included):\n{}",
        text(&o),
        tail(&ctrd.log(), 80)
    );

    let ps = stdout(&ctrd.ctr(ns, &["task", "ps", &v1]));
    assert!(ps.lines().count() >= 2, "task ps lists the init: {ps}");

    let cpu = || -> u64 {
        let m = stdout(&ctrd.ctr(ns, &["task", "metrics", &v1]));
        m.lines()
            .find(|l| l.starts_with("cpu.usage_usec"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("cpu.usage_usec")
    };
    let metrics = stdout(&ctrd.ctr(ns, &["task", "metrics", &v1]));
    let mem: u64 = metrics
        .lines()
        .find(|l| l.starts_with("memory.usage "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("memory.usage");
    assert!(mem > 0, "{metrics}");

    assert!(ctrd.ctr(ns, &["task", "pause", &v1]).status.success());
    assert_eq!(task_status(&ctrd, ns, &v1).as_deref(), Some("PAUSED"));
    let before = cpu();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cpu(), before, "a paused container made progress");
    assert!(ctrd.ctr(ns, &["task", "resume", &v1]).status.success());
    assert!(
        eventually(10, || cpu() > before),
        "a resumed container makes progress"
    );

    assert!(ctrd
        .ctr(ns, &["task", "kill", "-s", "SIGKILL", &v1])
        .status
        .success());
    assert!(eventually(30, || task_status(&ctrd, ns, &v1).as_deref()
        == Some("STOPPED")));
    let o = ctrd.ctr(ns, &["task", "delete", &v1]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("exit code 137"),
        "{}",
        text(&o)
    );
    assert!(ctrd.ctr(ns, &["container", "rm", &v1]).status.success());

    // kill --all reaches every process of the container.
    run(&v2, &["sh", "-c", "sleep 600 & sleep 600 & wait"]);
    assert!(ctrd
        .ctr(ns, &["task", "kill", "--all", "-s", "SIGKILL", &v2])
        .status
        .success());
    assert!(eventually(30, || task_status(&ctrd, ns, &v2).as_deref()
        == Some("STOPPED")));
    assert!(ctrd.ctr(ns, &["task", "delete", &v2]).status.success());
    assert!(ctrd.ctr(ns, &["container", "rm", &v2]).status.success());

    // `ctr run -d` leaves the output FIFOs unread: 3 MB of output must not stall the VM's other
    // sessions (exec, kill), and the writer itself gets to finish.
    run(
        &v3,
        &[
            "sh",
            "-c",
            "yes | head -c 3000000; touch /written; exec sleep 600",
        ],
    );
    let o = exec_in(
        &ctrd,
        ns,
        &v3,
        "e3",
        &[
            "sh",
            "-c",
            "while [ ! -e /written ]; do usleep 100000; done; echo written",
        ],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("written\n".into(), Some(0)),
        "{}",
        text(&o)
    );
    kill_and_remove(&ctrd, ns, &v3);
    assert_eq!(vmms_mentioning(&format!("/{ns}/")), 0);
}

#[test]
fn fifty_containers_leave_nothing_behind() {
    let ns = "leaks";
    let Some(ctrd) = setup(ns) else { return };
    let _slot = GuestSlot::acquire();
    for i in 0..50 {
        let o = run_msb(
            &ctrd,
            ns,
            &["--rm"],
            &container_id(&format!("l{i}")),
            &["true"],
        );
        assert_eq!(o.status.code(), Some(0), "run {i}: {}", text(&o));
    }
    assert_eq!(vmms_mentioning(&format!("/{ns}/")), 0, "VMM processes left");
    assert_eq!(
        state_files(ns),
        Vec::<String>::new(),
        "files left in the shim state"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&format!("{STATE}/{ns}")), "mounts left");
    let socks = Command::new("find")
        .args(["/run/microsandbox", "-type", "s"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&socks.stdout).contains(ns),
        "sockets left"
    );
    assert_eq!(stdout(&ctrd.ctr(ns, &["container", "ls", "-q"])), "");
}

#[test]
fn a_killed_shim_is_cleaned_up_by_containerd() {
    let ns = "crash";
    let Some(ctrd) = setup(ns) else { return };
    let k1 = container_id("k1");
    let _slot = GuestSlot::acquire();
    let o = ctrd.ctr(
        ns,
        &[
            "run",
            "-d",
            "--runtime",
            "io.microsandbox.v1",
            BUSYBOX,
            &k1,
            "sleep",
            "600",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let shim = shim_pid(ns).expect("the shim process");
    let events = EventStream::subscribe(&ctrd, ns);
    // SAFETY: sending SIGKILL to the shim we found.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    // containerd runs the shim binary's `delete` action and publishes the task's exit.
    let exit = events
        .wait_for(60, |l| {
            l.contains("/tasks/exit") && l.contains(&format!("\"{k1}\""))
        })
        .expect("no /tasks/exit event for k1 within 60 s");
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    assert!(
        eventually(20, || stdout(&ctrd.ctr(ns, &["task", "ls", "-q"]))
            .is_empty()),
        "task left"
    );
    assert!(ctrd.ctr(ns, &["container", "rm", &k1]).status.success());
    assert!(
        eventually(20, || vmms_mentioning(&format!("/{ns}/")) == 0),
        "VMM left after the shim died"
    );
    assert_eq!(
        state_files(ns),
        Vec::<String>::new(),
        "files left after the shim died"
    );
    // The VMM's cgroup (ctr's default path), which the VM made, went in the cleanup too.
    let cgroup = format!("/{ns}/{k1}");
    assert_eq!(
        cgroups::existing(&cgroup),
        Vec::<std::path::PathBuf>::new(),
        "cgroups left after the shim died"
    );
}

#[test]
fn clear_errors() {
    let ns = "errors";
    let Some(ctrd) = setup(ns) else { return };
    let x1 = container_id("x1");
    let x2 = container_id("x2");
    let x3 = container_id("x3");
    let x4 = container_id("x4");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shim.toml");
    std::fs::write(&cfg, "kernel = \"/nonexistent/vmlinux\"\n").unwrap();
    let o = run_msb(
        &ctrd,
        ns,
        &["--runtime-config-path", cfg.to_str().unwrap(), "--rm"],
        &x1,
        &["true"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("guest kernel not found at /nonexistent/vmlinux"),
        "{}",
        text(&o)
    );

    // A boot the VMM itself refuses: the error names QEMU's own reason, from its log, in what
    // ctr prints and in containerd's log (it used to say `start the qemu VMM: unknown`).
    let bogus = dir.path().join("vmlinux");
    std::fs::write(&bogus, "not a kernel\n").unwrap();
    std::fs::write(&cfg, format!("kernel = \"{}\"\n", bogus.display())).unwrap();
    let o = run_msb(
        &ctrd,
        ns,
        &["--runtime-config-path", cfg.to_str().unwrap(), "--rm"],
        &x4,
        &["true"],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for want in [
        "boot sandbox: the guest did not become ready: the VMM exited",
        "--- VMM log (last lines) ---",
        "qemu: linux kernel too old to load a ram disk",
    ] {
        assert!(stderr.contains(want), "{want:?} missing:\n{}", text(&o));
    }
    assert!(
        ctrd.log()
            .contains("qemu: linux kernel too old to load a ram disk"),
        "containerd's log lacks the root cause:\n{}",
        tail(&ctrd.log(), 40)
    );

    let o = ctrd.ctr(
        ns,
        &[
            "run",
            "--runtime",
            "io.microsandbox.v1",
            "--rm",
            "--rootfs",
            "/nonexistent",
            &x2,
            "true",
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no root directory at /nonexistent"),
        "{}",
        text(&o)
    );

    let spec = dir.path().join("config.json");
    std::fs::write(
        &spec,
        r#"{"ociVersion": "1.0.2", "process": {"args": [], "cwd": "/"}, "root": {"path": "/"}}"#,
    )
    .unwrap();
    let o = ctrd.ctr(
        ns,
        &[
            "run",
            "--runtime",
            "io.microsandbox.v1",
            "--rm",
            "--config",
            spec.to_str().unwrap(),
            &x3,
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("process.args is empty"),
        "{}",
        text(&o)
    );
}

#[test]
fn containers_of_one_pod_share_one_vm() {
    let ns = "pod";
    let Some(ctrd) = setup(ns) else { return };
    let p1 = container_id("p1");
    let p2 = container_id("p2");
    let pod1 = container_id("pod1");
    let _slot = GuestSlot::acquire();
    let pod = &format!("io.kubernetes.cri.sandbox-id={pod1}");
    let o = run_msb(
        &ctrd,
        ns,
        &["-d", "--annotation", pod],
        &p1,
        &["sh", "-c", "echo first > /mark; exec sleep 600"],
    );
    assert!(o.status.success(), "{}\n{}", text(&o), ctrd.log());
    let boot_id = |o: Output| -> String {
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        let s = stdout(&o);
        assert_eq!(s.trim().len(), 36, "a boot id: {s:?}");
        s
    };
    let first = boot_id(exec_in(
        &ctrd,
        ns,
        &p1,
        "b1",
        &["cat", "/proc/sys/kernel/random/boot_id"],
    ));

    // The second container joins the running VM, with its own root and namespaces.
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--annotation", pod],
        &p2,
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id; test -e /mark && echo shared-root; echo $$",
        ],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        (format!("{first}1\n"), Some(0)),
        "{}\n{}",
        text(&o),
        ctrd.log()
    );
    assert_eq!(vmms_mentioning(&format!("/{ns}/")), 1, "one VM for the pod");

    // The first container still runs and kept its own upper.
    let o = exec_in(&ctrd, ns, &p1, "b2", &["cat", "/mark"]);
    assert_eq!(stdout(&o), "first\n", "{}", text(&o));
    kill_and_remove(&ctrd, ns, &p1);
    assert!(
        eventually(20, || vmms_mentioning(&format!("/{ns}/")) == 0),
        "VMM left after the pod's last container"
    );
    let virtiofsd = Command::new("pgrep")
        .args(["-f", &format!("virtiofsd.*/{ns}/")])
        .output()
        .unwrap();
    assert!(
        virtiofsd.stdout.is_empty(),
        "virtiofsd left: {}",
        stdout(&virtiofsd)
    );
    assert_eq!(
        state_files(ns),
        Vec::<String>::new(),
        "files left in the shim state"
    );
}

/// The longest namespace name containerd accepts (76 characters).
const LONG_NS: &str =
    "a-namespace-whose-name-is-as-long-as-containerd-accepts-0123456789abcdefghij";

/// Ids, namespaces and state directories as long as real clients and users make them: two
/// containers of a pod (64-hex ids, a 76-character namespace, a configured state directory of
/// over 100 bytes) boot, run and leave nothing behind, with every socket of their VM (agent,
/// relay, virtiofsd) at a path far beyond `sun_path`'s 107 bytes.
#[test]
fn long_ids_namespaces_and_state_directories() {
    let ns = LONG_NS;
    let Some(ctrd) = setup(ns) else { return };
    let _slot = GuestSlot::acquire();
    let (pod, c1, c2) = (container_id("pod"), container_id("c1"), container_id("c2"));
    let state = format!(
        "/var/lib/microsandbox/{}",
        "a-state-directory-a-user-configured-".repeat(3)
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shim.toml");
    std::fs::write(&cfg, format!("state_dir = \"{state}\"\n")).unwrap();
    let annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    let flags = |more: &'static str| {
        vec![
            more,
            "--runtime-config-path",
            cfg.to_str().unwrap(),
            "--annotation",
            annotation.as_str(),
        ]
    };
    let o = run_msb(&ctrd, ns, &flags("-d"), &c1, &["sleep", "600"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );
    let o = run_msb(&ctrd, ns, &flags("--rm"), &c2, &["echo", "second"]);
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("second\n".into(), Some(0)),
        "{}\n{}",
        text(&o),
        tail(&ctrd.log(), 40)
    );
    let sockets = Command::new("find")
        .args([&state, "-type", "s"])
        .output()
        .unwrap();
    let sockets = stdout(&sockets);
    for name in ["agent.sock", "relay.sock", "fs0.sock"] {
        assert!(
            sockets.lines().any(|l| l.ends_with(name) && l.len() > 107),
            "no {name} beyond 107 bytes among:\n{sockets}"
        );
    }
    kill_and_remove(&ctrd, ns, &c1);
    assert!(
        eventually(20, || vmms_mentioning(&state) == 0),
        "VMM left after the pod's last container"
    );
    let left = Command::new("find")
        .args([&state, "-type", "f"])
        .output()
        .unwrap();
    assert_eq!(stdout(&left), "", "files left in the shim state");
    let _ = std::fs::remove_dir_all(&state);
}

/// The container's capabilities and `NoNewPrivs` are what runc gives the same spec: containerd's
/// defaults (14 capabilities, no new privileges), and a spec that adds one, drops one and allows
/// new privileges. Applied inside the guest: the container, not the VM, is what the spec confines.
/// (ctr 1.6 has no flag for a non-root user; the CRI suite's runAsUser cases will cover it.)
#[test]
fn capabilities_and_no_new_privs_as_runc_gives_them() {
    let ns = "caps";
    let Some(ctrd) = setup(ns) else { return };
    let _slot = GuestSlot::acquire();
    let cmd = [
        "grep",
        "-E",
        "^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)",
        "/proc/self/status",
    ];
    let cases: [&[&str]; 2] = [
        &[],
        &[
            "--cap-add",
            "CAP_SYS_ADMIN",
            "--cap-drop",
            "CAP_CHOWN",
            "--allow-new-privs",
        ],
    ];
    for (i, flags) in cases.iter().enumerate() {
        let mut args = vec!["run", "--rm"];
        args.extend(*flags);
        let runc_id = container_id(&format!("runc{i}"));
        args.extend([BUSYBOX, &runc_id]);
        args.extend(cmd);
        let runc = ctrd.ctr(ns, &args);
        assert_eq!(runc.status.code(), Some(0), "runc: {}", text(&runc));
        let mut flags = flags.to_vec();
        flags.insert(0, "--rm");
        let ours = run_msb(&ctrd, ns, &flags, &container_id(&format!("msb{i}")), &cmd);
        assert_eq!(
            (stdout(&ours), ours.status.code()),
            (stdout(&runc), Some(0)),
            "case {i}: {flags:?}\n{}",
            text(&ours)
        );
    }
}

/// A seccomp profile confines the container as runc confines it, inside the guest: ctr's
/// default profile (`--seccomp`: `unshare` is denied without CAP_SYS_ADMIN, even for a user
/// namespace, which needs no capability), and a profile of
/// ours (`--seccomp-profile`) with an errno of its own, an argument condition and a default that
/// allows, installed both ways runc installs it (right before `execve` with no new privileges,
/// the default; before the capabilities are dropped with `--allow-new-privs`). Same standard
/// output, standard error and exit status as runc, and the expected ones.
#[test]
fn seccomp_profiles_confine_as_runc_confines() {
    let ns = "seccomp";
    let Some(ctrd) = setup(ns) else { return };
    let _slot = GuestSlot::acquire();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    // mkdir: EPERM; chmod: ENOSYS; kill only with signal 0; everything else allowed.
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
          {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
          {"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
          {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
           "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_NE"}]}]}"#,
    )
    .unwrap();
    let profile = profile.to_str().unwrap();
    let script = "grep '^Seccomp:' /proc/self/status; mkdir /tmp/d; echo mkdir=$?; \
        touch /tmp/f; chmod 600 /tmp/f; echo chmod=$?; kill -0 $$; echo kill0=$?; \
        trap '' USR1; kill -USR1 $$; echo usr1=$?; unshare -U true; echo unshare=$?";
    let ours_denied = "Seccomp:\t2\nmkdir=1\nchmod=1\nkill0=0\nusr1=1\nunshare=0\n";
    let cases: [(&[&str], &str); 3] = [
        (&["--seccomp", "--seccomp-profile", profile], ours_denied),
        (
            &[
                "--seccomp",
                "--seccomp-profile",
                profile,
                "--allow-new-privs",
            ],
            ours_denied,
        ),
        (
            &["--seccomp"],
            "Seccomp:\t2\nmkdir=0\nchmod=0\nkill0=0\nusr1=0\nunshare=1\n",
        ),
    ];
    for (i, (flags, want)) in cases.iter().enumerate() {
        let cmd = ["sh", "-c", script];
        let mut args = vec!["run", "--rm"];
        args.extend(*flags);
        let runc_id = container_id(&format!("runc{i}"));
        args.extend([BUSYBOX, &runc_id]);
        args.extend(cmd);
        let runc = ctrd.ctr(ns, &args);
        assert_eq!(
            (stdout(&runc).as_str(), runc.status.code()),
            (*want, Some(0)),
            "runc, case {i}: {flags:?}\n{}",
            text(&runc)
        );
        let mut flags = flags.to_vec();
        flags.insert(0, "--rm");
        let ours = run_msb(&ctrd, ns, &flags, &container_id(&format!("msb{i}")), &cmd);
        assert_eq!(
            (
                stdout(&ours),
                String::from_utf8_lossy(&ours.stderr),
                ours.status.code()
            ),
            (
                stdout(&runc),
                String::from_utf8_lossy(&runc.stderr),
                Some(0)
            ),
            "case {i}: {flags:?}\n{}",
            text(&ours)
        );
    }
}

/// The pid `ctr task ls` shows for `id` (its VM's VMM).
fn task_pid(ctrd: &Containerd, ns: &str, id: &str) -> i32 {
    let ls = stdout(&ctrd.ctr(ns, &["task", "ls"]));
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id} in {ls}"))
}

/// A fault: the VMM is killed with SIGKILL while the container runs (an exec too). Every
/// process of the VM ends with 137, containerd gets the task's exit, and Delete leaves nothing
/// (no VMM, no state file, no disk image).
#[test]
fn a_killed_vmm_ends_its_processes_with_137_and_leaves_nothing() {
    let ns = "vmmkill";
    let Some(ctrd) = setup(ns) else { return };
    let k1 = container_id("k1");
    let _slot = GuestSlot::acquire();
    let o = run_msb(&ctrd, ns, &["-d"], &k1, &["sleep", "600"]);
    assert!(o.status.success(), "{}", text(&o));
    let vmm = task_pid(&ctrd, ns, &k1);
    let events = EventStream::subscribe(&ctrd, ns);
    // An exec that would run for long: it ends with the VM too.
    let exec = {
        let sock = ctrd.socket().display().to_string();
        let k1 = k1.clone();
        std::thread::spawn(move || {
            Command::new("ctr")
                .args([
                    "--address",
                    &sock,
                    "-n",
                    ns,
                    "task",
                    "exec",
                    "--exec-id",
                    "e1",
                ])
                .args([k1.as_str(), "sleep", "600"])
                .output()
                .unwrap()
        })
    };
    events
        .wait_for(60, |l| l.contains("/tasks/exec-started"))
        .expect("the exec started");
    // SAFETY: sending SIGKILL to the VMM whose pid containerd reported for the task.
    unsafe { libc::kill(vmm, libc::SIGKILL) };
    let exit = events
        .wait_for(60, |l| {
            l.contains("/tasks/exit") && l.contains(&format!("\"{k1}\"")) && !l.contains("\"e1\"")
        })
        .expect("no /tasks/exit event for k1 within 60 s");
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    let e1 = exec.join().unwrap();
    assert_eq!(e1.status.code(), Some(137), "the exec: {}", text(&e1));
    let o = ctrd.ctr(ns, &["task", "delete", &k1]);
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stderr).contains("exit code 137"),
        "delete: {}",
        text(&o)
    );
    assert!(ctrd.ctr(ns, &["container", "rm", &k1]).status.success());
    assert_nothing_left(ns, || ctrd.log());
}

/// A fault: the container's writable layer fills up. The writer gets ENOSPC (exit 1 and the
/// message), the container stays usable, and a container in another VM is unaffected.
#[test]
fn a_full_upper_gives_enospc_to_its_container_only() {
    let ns = "enospc";
    let Some(ctrd) = setup(ns) else { return };
    let f1 = container_id("f1");
    let f2 = container_id("f2");
    let _slot = GuestSlot::acquire();
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--annotation", "io.microsandbox.upper_size=16M"],
        &f1,
        &[
            "sh",
            "-c",
            "out=$(dd if=/dev/zero of=/fill bs=1M count=64 2>&1); rc=$?; \
             echo \"$out\" | grep -o 'No space left on device' | head -1; \
             rm -f /fill; echo after >/after && cat /after; exit $rc",
        ],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("No space left on device\nafter\n".into(), Some(1)),
        "{}",
        text(&o)
    );
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm"],
        &f2,
        &["sh", "-c", "echo fine >/x && cat /x"],
    );
    assert_eq!(
        (stdout(&o), o.status.code()),
        ("fine\n".into(), Some(0)),
        "{}",
        text(&o)
    );
    assert_nothing_left(ns, || ctrd.log());
}

/// Five containers at once, each in its own VM, all finish with their exit code and leave
/// nothing behind (the guest slots are all held: no other test's VM runs meanwhile).
#[test]
fn five_concurrent_containers_leave_nothing_behind() {
    let ns = "concurrent";
    let Some(ctrd) = setup(ns) else { return };
    let _slots: Vec<GuestSlot> = (0..msb_test_e2e::guest::SLOTS)
        .map(|_| GuestSlot::acquire())
        .collect();
    let codes: Vec<Option<i32>> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..5)
            .map(|i| {
                let ctrd = &ctrd;
                scope.spawn(move || {
                    let id = container_id(&format!("p{i}"));
                    let o = run_msb(
                        ctrd,
                        ns,
                        &["--rm"],
                        &id,
                        &["sh", "-c", &format!("exit {i}")],
                    );
                    o.status.code()
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(codes, [Some(0), Some(1), Some(2), Some(3), Some(4)]);
    assert_nothing_left(ns, || ctrd.log());
    assert_eq!(stdout(&ctrd.ctr(ns, &["container", "ls", "-q"])), "");
}

/// A fault inside the guest: its kernel crashes (`sysrq c` from a privileged container, as a
/// hostile guest root could). The VMM exits, every process of the VM ends with 137, and
/// nothing is left.
#[test]
fn a_crashed_guest_kernel_ends_its_processes_with_137_and_leaves_nothing() {
    let ns = "guestcrash";
    let Some(ctrd) = setup(ns) else { return };
    let c1 = container_id("c1");
    let _slot = GuestSlot::acquire();
    let o = run_msb(
        &ctrd,
        ns,
        &["--rm", "--privileged"],
        &c1,
        &["sh", "-c", "echo c >/proc/sysrq-trigger; sleep 600"],
    );
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));
    assert_nothing_left(ns, || ctrd.log());
    assert_eq!(stdout(&ctrd.ctr(ns, &["container", "ls", "-q"])), "");
}

/// The peak resident memory seen so far of the process `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A fault: 1 GiB of stdout to a reader that stalls for 2 s after every 256 MiB (within the
/// shim's 5 s window for output nobody reads). Nothing is lost or reordered (the exact length
/// and content of `yes` lines), and the shim's memory stays bounded (its peak resident set
/// under 256 MiB): the queues from the guest to the FIFO hold back, they do not grow.
#[test]
fn a_gib_of_stdout_to_a_stalling_reader_loses_nothing() {
    use std::io::Read;
    const GIB: u64 = 1 << 30;
    const LINE: &[u8] = b"0123456789abcde\n";
    let ns = "bigout";
    let Some(ctrd) = setup(ns) else { return };
    let b1 = container_id("b1");
    let _slot = GuestSlot::acquire();
    let mut ctr = Command::new("timeout")
        .args(["--kill-after=5", "900"])
        .arg(ctrd.ctr_binary())
        .arg("--address")
        .arg(ctrd.socket())
        .args([
            "--namespace",
            ns,
            "run",
            "--rm",
            "--runtime",
            "io.microsandbox.v1",
        ])
        .args([BUSYBOX, b1.as_str(), "sh", "-c"])
        .arg(format!("yes 0123456789abcde | head -c {GIB}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = ctr.stdout.take().unwrap();
    // A pattern buffer long enough to compare any read, at any offset, with one memcmp.
    let pattern: Vec<u8> = LINE
        .iter()
        .copied()
        .cycle()
        .take((1 << 20) + LINE.len())
        .collect();
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut next_stall, mut shim, mut peak) = (0u64, 256u64 << 20, None, 0u64);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let off = usize::try_from(total % 16).unwrap();
        assert!(
            buf[..n] == pattern[off..off + n],
            "output differs from `yes` near byte {total}"
        );
        total += n as u64;
        if shim.is_none() {
            shim = shim_pid(ns);
        }
        if let Some(kib) = shim.and_then(peak_rss_kib) {
            peak = peak.max(kib);
        }
        if total >= next_stall {
            std::thread::sleep(Duration::from_secs(2));
            next_stall += 256 << 20;
        }
    }
    let status = ctr.wait().unwrap();
    assert_eq!((total, status.code()), (GIB, Some(0)));
    assert!(peak > 0, "the shim's memory was never read");
    assert!(peak < 256 << 10, "the shim's peak resident set: {peak} KiB");
    eprintln!("1 GiB of stdout; shim peak RSS {} MiB", peak >> 10);
    assert_nothing_left(ns, || ctrd.log());
}

/// Arbitrary bytes (every byte value, no period a swapped or repeated chunk could hide in) go
/// into a container through ctr's stdin and come back on stdout and stderr at the same time,
/// each exactly: the guest's output frames are built around data read in place, in chunks of
/// every size the pipes give, and two streams of one process share the agent channel.
#[test]
fn arbitrary_bytes_through_stdin_stdout_and_stderr_at_once_arrive_exactly() {
    let ns = "exact";
    let Some(ctrd) = setup(ns) else { return };
    let x1 = container_id("x1");
    let _slot = GuestSlot::acquire();
    // xorshift64*: 16 MiB that no short pattern describes.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let input: Vec<u8> = (0..16 << 20)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes()[0]
        })
        .collect();
    let o = ctrd.ctr_with_stdin(
        ns,
        &[
            "run",
            "--runtime",
            "io.microsandbox.v1",
            "--rm",
            BUSYBOX,
            &x1,
            "sh",
            "-c",
            "cat > /f && { cat /f & cat /f >&2; wait; }",
        ],
        input.clone(),
    );
    let tail = |b: &[u8]| String::from_utf8_lossy(&b[b.len().saturating_sub(2000)..]).into_owned();
    assert_eq!(o.status.code(), Some(0), "{}", tail(&o.stderr));
    for (name, got) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        assert_eq!(got.len(), input.len(), "{name} length");
        if let Some(at) = got.iter().zip(&input).position(|(a, b)| a != b) {
            panic!("{name} differs from the input first at byte {at}");
        }
    }
    assert_nothing_left(ns, || ctrd.log());
}

/// The pid of the shim serving namespace `ns`, if one runs.
fn shim_pid(ns: &str) -> Option<i32> {
    let ps = Command::new("ps").args(["-eo", "pid,args"]).output().ok()?;
    String::from_utf8_lossy(&ps.stdout)
        .lines()
        .find(|l| {
            l.contains("containerd-shim-microsandbox-v1") && l.contains(&format!("-namespace {ns}"))
        })
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
}

/// The VMM and its `virtiofsd` run in the cgroup of the container's spec (`linux.cgroupsPath`:
/// `ctr run --cgroup`, else ctr's `/<namespace>/<id>`), in every mounted hierarchy, so that the
/// limits set there count them (docs/SECURITY.md, point 2); Delete removes the cgroups the shim
/// made and only those: a parent the test made stays (empty), a parent the shim made goes.
#[test]
fn the_vmm_and_its_virtiofsd_run_in_the_containers_cgroup() {
    let ns = "cgroups";
    let Some(ctrd) = setup(ns) else { return };
    let c1 = container_id("c1");
    let c2 = container_id("c2");
    let _slot = GuestSlot::acquire();
    let parent = cgroups::TestCgroup::make(&format!("msbt-{}-ctr", std::process::id()));
    let path = format!("{}/c1", parent.path());
    let share = tempfile::tempdir().unwrap();
    let bind = format!(
        "type=bind,src={},dst=/v,options=rbind:ro",
        share.path().display()
    );
    let o = run_msb(
        &ctrd,
        ns,
        &["-d", "--cgroup", &path, "--mount", &bind],
        &c1,
        &["sleep", "600"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let vmm = task_pid(&ctrd, ns, &c1);
    assert_eq!(
        cgroups::lines_not_in(vmm, &path),
        Vec::<String>::new(),
        "the VMM {vmm} is outside {path}: {:?}",
        cgroups::of_process(vmm)
    );
    let shim = shim_pid(ns).expect("the shim process");
    let kids = cgroups::children(shim);
    let virtiofsd: Vec<i32> = kids
        .iter()
        .copied()
        .filter(|&p| cgroups::comm(p) == "virtiofsd")
        .collect();
    assert_eq!(virtiofsd.len(), 1, "the shim's children: {kids:?}");
    assert_eq!(
        cgroups::lines_not_in(virtiofsd[0], &path),
        Vec::<String>::new(),
        "virtiofsd is outside {path}"
    );
    let usage = cgroups::memory_usage(parent.path()).expect("the parent's memory usage");
    eprintln!("{}: {} MiB charged", parent.path(), usage >> 20);
    assert!(usage >= 32 << 20, "the parent is charged {usage} bytes");
    kill_and_remove(&ctrd, ns, &c1);
    assert!(
        eventually(20, || cgroups::existing(&path).is_empty()),
        "the container's cgroup is left: {:?}",
        cgroups::existing(&path)
    );
    assert_eq!(parent.remove(), Vec::<String>::new(), "the test's parent");

    // ctr's default, `/<namespace>/<id>`: the shim makes the namespace's cgroup too where it is
    // missing, and removes it again.
    let default = format!("/{ns}/{c2}");
    let ns_cgroups = cgroups::existing(&format!("/{ns}"));
    let o = run_msb(&ctrd, ns, &["-d"], &c2, &["sleep", "600"]);
    assert!(o.status.success(), "{}", text(&o));
    let vmm = task_pid(&ctrd, ns, &c2);
    assert_eq!(
        cgroups::lines_not_in(vmm, &default),
        Vec::<String>::new(),
        "the VMM {vmm} is outside {default}"
    );
    kill_and_remove(&ctrd, ns, &c2);
    assert!(
        eventually(20, || cgroups::existing(&default).is_empty()),
        "the container's cgroup is left: {:?}",
        cgroups::existing(&default)
    );
    assert_eq!(cgroups::existing(&format!("/{ns}")), ns_cgroups);
    assert_nothing_left(ns, || ctrd.log());
}

/// A cgroup path that would leave the hierarchy is refused before anything is made; one that
/// cannot be made (it runs through a file) fails Create naming the cgroup and the cause, and
/// what the shim made on the way is removed: no cgroup, VMM or state file is left.
#[test]
fn a_cgroup_that_cannot_be_used_fails_create_and_leaves_nothing() {
    let ns = "cgroupfail";
    let Some(ctrd) = setup(ns) else { return };
    let f1 = container_id("f1");
    let f2 = container_id("f2");
    let _slot = GuestSlot::acquire();
    let top = format!("/msbt-{}-fail", std::process::id());
    let up = format!("{top}/../../etc");
    let o = run_msb(&ctrd, ns, &["--rm", "--cgroup", &up], &f1, &["true"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr.contains(&format!(
            "linux.cgroupsPath: cgroup path {up:?}: a \"..\" component"
        )),
        "{}",
        text(&o)
    );
    assert_eq!(cgroups::existing(&top), Vec::<std::path::PathBuf>::new());

    let through = format!("{top}/cgroup.procs/x");
    let o = run_msb(&ctrd, ns, &["--rm", "--cgroup", &through], &f2, &["true"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        stderr.contains(&format!("place the VMM in cgroup {through}: create "))
            && stderr.contains(&format!("{top}/cgroup.procs: Not a directory")),
        "{}",
        text(&o)
    );
    let left = cgroups::existing(&top);
    cgroups::remove_everywhere(&top);
    assert_eq!(left, Vec::<std::path::PathBuf>::new(), "cgroups left");
    assert_nothing_left(ns, || ctrd.log());
}
