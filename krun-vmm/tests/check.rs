//! The real `msb-krun-vmm` binary receives its LaunchConfig through the runtime's fd 3
//! hand-off: `--check` prints the builder calls it would make, without KVM.

use std::process::Stdio;

use msb_runtime::vmm::krun::{spawn_with_config, LaunchConfig, LaunchDisk};

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
    }
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
