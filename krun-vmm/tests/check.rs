//! The real `msb-krun-vmm` binary receives its LaunchConfig through the runtime's fd 3
//! hand-off, and a pod network's TAP on fd 4: `--check` prints the builder calls it would make
//! and what it finds on fd 4, without KVM.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Stdio;

use msb_runtime::vmm::krun::{
    spawn_vmm, spawn_with_config, LaunchConfig, LaunchDisk, LaunchNet, NET_FD,
};

fn config() -> LaunchConfig {
    LaunchConfig {
        id: "t".into(),
        vcpus: 1,
        memory_mib: 256,
        krunfw: "/a/libkrunfw.so.5".into(),
        initramfs: "/a/initramfs.cpio".into(),
        init: "/init".into(),
        cmdline: vec!["MSB_HOSTNAME=t".into()],
        disks: vec![LaunchDisk {
            serial: "lower".into(),
            path: "/d/lower.img".into(),
            read_only: true,
        }],
        shares: vec![],
        agent_socket: "/d/agent.sock".into(),
        agent_accept_timeout_ms: 1000,
        console_log: "/d/console.log".into(),
        net: None,
    }
}

fn net_config() -> LaunchConfig {
    LaunchConfig {
        net: Some(LaunchNet {
            fd: NET_FD,
            mac: [0x02, 0x6d, 0x73, 0x62, 0x00, 0x0a],
            mtu: 1450,
        }),
        ..config()
    }
}

const NET_CALLS: &str = "machine vcpus=1 memory_mib=256\nkrunfw /a/libkrunfw.so.5\n\
    initramfs /a/initramfs.cpio\ninit /init\ncmdline MSB_HOSTNAME=t\ndisk lower /d/lower.img ro\n\
    net fd=4 mac=02:6d:73:62:00:0a mtu=1450\nconsole_output /d/console.log\nport agent fd=-1\n\
    on_exit\n";

async fn check_with_tap(cfg: &[u8], tap: Option<BorrowedFd<'_>>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msb-krun-vmm"));
    cmd.arg("--check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if tap.is_none() {
        // SAFETY: close (nix's wrapper is the bare call) is async-signal-safe; it runs in the
        // child between fork and exec (the harness may hold something at fd 4, which must not
        // pass for a TAP that was never given).
        unsafe {
            cmd.pre_exec(|| {
                let _ = nix::unistd::close(4);
                Ok(())
            });
        }
    }
    spawn_vmm(&mut cmd, cfg, tap)
        .unwrap()
        .wait_with_output()
        .await
        .unwrap()
}

async fn check(cfg: &[u8]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msb-krun-vmm"));
    cmd.arg("--check")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    spawn_with_config(&mut cmd, cfg)
        .unwrap()
        .wait_with_output()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_binary_reads_its_config_from_fd_3() {
    let out = check(&config().to_json()).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "machine vcpus=1 memory_mib=256\nkrunfw /a/libkrunfw.so.5\ninitramfs /a/initramfs.cpio\n\
         init /init\ncmdline MSB_HOSTNAME=t\ndisk lower /d/lower.img ro\n\
         console_output /d/console.log\nport agent fd=-1\non_exit\n"
    );
}

#[tokio::test]
async fn a_bad_config_or_none_is_a_clear_error() {
    let out = check(b"{\"id\":1}").await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("parse the LaunchConfig from fd 3"));
    // Without fd 3 (closed explicitly: the test harness may hold a jobserver descriptor there).
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_msb-krun-vmm"));
    // SAFETY: close (nix's wrapper is the bare call) is async-signal-safe; it runs in the child
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let _ = nix::unistd::close(3);
            Ok(())
        });
    }
    let out = cmd.output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("started by the microsandbox runtime"));
}

#[tokio::test]
async fn a_pod_network_is_one_net_call_on_the_inherited_fd_4() {
    // Not a TAP: the binary finds at fd 4 exactly the file we passed (it names it), so the
    // descriptor arrived at the number the config names. No root needed.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("not-a-tap");
    let file = std::fs::File::create(&marker).unwrap();
    let out = check_with_tap(&net_config().to_json(), Some(file.as_fd())).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout), NET_CALLS);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("fd 4 ({}) is not a TAP", marker.display())),
        "{err}"
    );

    // Nothing passed: the config's fd 4 is reported missing, not taken for something else.
    let out = check_with_tap(&net_config().to_json(), None).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no pod TAP on fd 4"), "{err}");
}

/// A real TAP, made the way the runtime makes the pod's, in a namespace of its own (kept alive
/// by the returned descriptor), as the pod's TAP is in the pod's.
fn tap_in_own_netns() -> (OwnedFd, OwnedFd) {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let ns = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
        let tap = msb_runtime::net::tap::create("tap0_msb").expect("create the TAP");
        (OwnedFd::from(ns), tap)
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn the_pods_tap_from_another_namespace_is_served_from_fd_4() {
    if !nix::unistd::geteuid().is_root() {
        msb_test_e2e::skip("making a TAP needs root (CAP_NET_ADMIN)");
        return;
    }
    let (_ns, tap) = tap_in_own_netns();
    // There is no tap0_msb in this (the VMM's) namespace: only the descriptor can reach it.
    assert!(!std::path::Path::new("/sys/class/net/tap0_msb").exists());
    let out = check_with_tap(&net_config().to_json(), Some(tap.as_fd())).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{NET_CALLS}fd 4: TAP tap0_msb (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR)\n")
    );
}
