//! The runtime API against a real guest: concurrent execs in one VM, a terminal resized while
//! it runs, the OOM event, a second host client through the relay, and a clean shutdown that
//! leaves nothing behind.

use std::time::Duration;

use msb_protocol::types::*;
use msb_runtime::vmm::BackendKind;
use msb_runtime::{AgentClient, ExecEvent, Vm, VmConfig};
use msb_test_e2e::guest::{assets, busybox_rootfs, container, lower_and_upper, GuestSlot};
use msb_test_e2e::ids::container_id;

fn sh(script: &str) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        container: Some("c".into()),
        stdin: false,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vm_many_processes() {
    let Some(_) = assets() else { return };
    let _slot = GuestSlot::acquire();
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    // A 64-hex id in a directory as deep as the shim's: every socket path exceeds `sun_path`.
    let mut cfg = VmConfig::new(container_id("rt"));
    cfg.dir = msb_runtime::vm::run_dir()
        .join("state-of-a-long-configured-root/k8s.io/sandboxes")
        .join(&cfg.id)
        .join("vm");
    assert!(cfg.dir.join("agent.sock").as_os_str().len() > msb_runtime::socket_path::SUN_PATH_MAX);
    cfg.backend = Some(BackendKind::Qemu);
    let dir = cfg.dir();
    cfg.disks = lower_and_upper(&dir, root.path());
    let sb = Vm::start(cfg).await.expect("guest boots");
    // Only root reads what the VM writes: its directory, disks, console and VMM logs.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let modes: Vec<(&str, u32)> = ["", "lower.img", "upper.img", "console.log", "qemu.log"]
            .into_iter()
            .map(|f| (f, mode(&dir.join(f))))
            .collect();
        assert_eq!(
            modes,
            [
                ("", 0o700),
                ("lower.img", 0o600),
                ("upper.img", 0o600),
                ("console.log", 0o600),
                ("qemu.log", 0o600)
            ]
        );
    }
    let vmm_pid = sb.vmm_pid();
    let agent = sb.agent().clone();
    assert!(sb.ready().ready_time_ns >= sb.ready().init_time_ns);
    agent
        .container_create(&ContainerCreate {
            resources: Resources {
                memory_limit: Some(32 << 20),
                ..Default::default()
            },
            ..container(
                StorageRef::Serial("lower".into()),
                StorageRef::Serial("upper".into()),
            )
        })
        .await
        .unwrap();
    let mut init = agent
        .exec(&ExecRequest {
            cmd: "sleep".into(),
            args: vec!["600".into()],
            container: Some("c".into()),
            stdin: false,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(matches!(init.next().await.unwrap(), ExecEvent::Started(_)));

    // Three at once; the second is killed, the others finish.
    let mut execs = Vec::new();
    for i in 0..3 {
        let mut e = agent
            .exec(&sh(&format!("sleep 2; echo done{i}")))
            .await
            .unwrap();
        assert!(matches!(e.next().await.unwrap(), ExecEvent::Started(_)));
        execs.push(e);
    }
    execs[1].signal(9, false).await.unwrap();
    let mut results = Vec::new();
    for e in execs {
        let (out, _, code) = e.collect().await.unwrap();
        results.push((String::from_utf8(out).unwrap(), code.unwrap()));
    }
    assert_eq!(
        results,
        vec![
            ("done0\n".to_owned(), 0),
            (String::new(), 137),
            ("done2\n".to_owned(), 0)
        ]
    );

    // A terminal reports the size set by a resize.
    let mut tty = agent
        .exec(&ExecRequest {
            tty: true,
            rows: 10,
            cols: 20,
            stdin: true,
            ..sh("read x; stty size")
        })
        .await
        .unwrap();
    assert!(matches!(tty.next().await.unwrap(), ExecEvent::Started(_)));
    tty.resize(51, 163).await.unwrap();
    tty.stdin().write(b"\n").await.unwrap();
    let (out, _, code) = tty.collect().await.unwrap();
    assert!(
        String::from_utf8_lossy(&out).ends_with("51 163\r\n"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(code.unwrap(), 0);

    // A process that never reads its stdin holds back only its own stdin: of 32 MiB offered,
    // the guest's window takes 1 MiB; another exec still runs and a signal still reaches the
    // process (agentd's one reader of the agent port never waits for a process's stdin).
    let mut deaf = agent
        .exec(&ExecRequest {
            stdin: true,
            ..sh("exec sleep 600")
        })
        .await
        .unwrap();
    assert!(matches!(deaf.next().await.unwrap(), ExecEvent::Started(_)));
    let sender = deaf.stdin();
    let feeding = tokio::spawn(async move { sender.write(&vec![b'x'; 32 << 20]).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!feeding.is_finished(), "32 MiB cannot fit in the window");
    let other = async { agent.exec(&sh("echo alive")).await.unwrap().collect().await };
    let (out, _, code) = tokio::time::timeout(Duration::from_secs(60), other)
        .await
        .expect("another exec runs while a process ignores its stdin")
        .unwrap();
    assert_eq!(
        (String::from_utf8(out).unwrap(), code.unwrap()),
        ("alive\n".to_owned(), 0)
    );
    deaf.signal(9, false).await.unwrap();
    let (_, _, code) = tokio::time::timeout(Duration::from_secs(60), deaf.collect())
        .await
        .expect("the signal reaches a process that ignores its stdin")
        .unwrap();
    assert_eq!(code.unwrap(), 137);
    let fed = tokio::time::timeout(Duration::from_secs(10), feeding)
        .await
        .expect("the stdin writer ends with its session")
        .unwrap();
    assert_eq!(
        fed.unwrap_err().to_string(),
        "agent connection closed: the process's session ended"
    );

    // Past the memory limit: 137 and an OOM event for the container.
    let mut events = agent.events();
    let (_, _, code) = agent
        .exec(&sh("tail /dev/zero"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(code.unwrap(), 137);
    let oom = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = events.recv().await.unwrap();
            if let Ok(o) = m.decode::<ContainerOom>() {
                return o;
            }
        }
    })
    .await
    .expect("core.container.oom");
    assert_eq!(oom.id, "c");

    let stats = agent.container_stats("c").await.unwrap();
    assert_eq!(
        (stats.memory.limit, stats.memory.oom_kills >= 1),
        (32 << 20, true)
    );

    // A second host client through the relay: its own ids, its own exec; when it goes away,
    // agentd kills what it started, and the first client is unaffected.
    let stream = msb_runtime::socket_path::connect(sb.relay().path())
        .await
        .unwrap();
    let (second, ready) = AgentClient::connect_relay(stream, Duration::from_secs(10))
        .await
        .expect("a second client attaches");
    assert_eq!(ready.boot_time_ns, sb.ready().boot_time_ns);
    assert_eq!(sb.relay().clients(), 2);
    let (out, _, code) = second
        .exec(&sh("echo from-second"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!((out, code.unwrap()), (b"from-second\n".to_vec(), 0));
    let mut orphan = second.exec(&sh("exec sleep 300")).await.unwrap();
    let pid = match orphan.next().await.unwrap() {
        ExecEvent::Started(pid) => pid,
        other => panic!("{other:?}"),
    };
    assert!(agent.container_pids("c").await.unwrap().contains(&pid));
    drop(orphan);
    drop(second);
    let mut gone = false;
    for _ in 0..100 {
        if !agent.container_pids("c").await.unwrap().contains(&pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the disconnected client's process {pid} still runs");
    assert_eq!(sb.relay().clients(), 1);

    // Shutdown: the VMM exits by itself, the directory and the process are gone.
    let exit = sb.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!((exit.code, exit.guest_panicked), (Some(0), false));
    assert!(!dir.exists(), "sandbox directory left behind");
    let _ = std::fs::remove_dir_all(dir.ancestors().nth(4).expect("the long root"));
    // SAFETY: probing a pid with signal 0.
    assert_eq!(unsafe { libc::kill(vmm_pid, 0) }, -1, "VMM still running");
    drop(init);
}

/// The VMM's resident set, KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// Memory the guest frees goes back to the host (the balloon device's free page reporting):
/// 300 MiB written to a tmpfs in the guest raise QEMU's resident set, removing the file lowers
/// it again within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_the_guest_frees_returns_to_the_host() {
    let Some(_) = assets() else { return };
    let _slot = GuestSlot::acquire();
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let mut cfg = VmConfig::new(container_id("balloon"));
    cfg.backend = Some(BackendKind::Qemu);
    cfg.memory_mib = 512;
    let dir = cfg.dir();
    cfg.disks = lower_and_upper(&dir, root.path());
    let sb = Vm::start(cfg).await.expect("guest starts");
    let agent = sb.agent().clone();
    agent
        .container_create(&ContainerCreate {
            mounts: vec![ContainerMount {
                destination: "/big".into(),
                kind: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["size=400m".into()],
            }],
            ..container(
                StorageRef::Serial("lower".into()),
                StorageRef::Serial("upper".into()),
            )
        })
        .await
        .unwrap();
    let run = |script: &'static str| {
        let agent = agent.clone();
        async move {
            let (out, err, code) = agent
                .exec(&sh(script))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            assert_eq!(code, Ok(0), "{script}: {}", String::from_utf8_lossy(&err));
            String::from_utf8(out).unwrap()
        }
    };
    // The container's init, which the probes below join.
    let mut init = agent.exec(&sh("exec sleep 600")).await.unwrap();
    assert!(matches!(init.next().await.unwrap(), ExecEvent::Started(_)));
    let before = rss_kib(sb.vmm_pid());
    run("head -c 314572800 /dev/zero > /big/fill").await;
    let filled = rss_kib(sb.vmm_pid());
    assert!(
        filled >= before + 250 * 1024,
        "300 MiB in the guest: QEMU's RSS {before} KiB -> {filled} KiB"
    );
    run("rm /big/fill").await;
    let mut now = filled;
    for _ in 0..100 {
        now = rss_kib(sb.vmm_pid());
        if now + 200 * 1024 <= filled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        now + 200 * 1024 <= filled,
        "freed in the guest, still resident: {before} KiB -> {filled} KiB -> {now} KiB after 20 s"
    );
    let exit = sb.shutdown(Duration::from_secs(20)).await.unwrap();
    assert_eq!(exit.code, Some(0));
    drop(init);
}
