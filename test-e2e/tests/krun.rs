//! The krun backend (libkrun through `msb-krun-vmm`) driven by `msbox run --backend krun`.
//!
//! Boot tests need a KVM that boots a standard guest (`msb_runtime::host::kvm_usable`); where
//! there is none (the development hosts: PVM-backed KVM) they print `SKIPPED` with the reason.
//! There, the opposite is checked instead: krun forced past `auto` fails quickly, naming the
//! cause and suggesting `--backend qemu`, rather than hanging.

use std::path::Path;
use std::time::{Duration, Instant};

use msb_test_e2e::guest::{assets, busybox_rootfs, msbox, Run};
use msb_test_e2e::paths::profile_dir;

const T: Duration = Duration::from_secs(120);

/// How long a forced krun may take to fail here. libkrun stops with KVM_EXIT_INTERNAL_ERROR
/// 9-19 s after the start on the PVM hosts (docs/HOSTS.md); the point is "seconds, not a hang".
const FAIL_WITHIN: Duration = Duration::from_secs(45);

/// The guest assets, libkrunfw and the VMM program, or a printed reason to skip.
fn krun_prerequisites() -> Option<()> {
    let dir = assets()?;
    let lib = dir.join(msb_runtime::vmm::krun::KRUNFW_NAME);
    if !lib.exists() {
        msb_test_e2e::require(format!(
            "{} is missing: run hack/libkrunfw (hack/guest-assets does)",
            lib.display()
        ));
        return None;
    }
    let vmm = profile_dir().join(msb_runtime::vmm::krun::VMM_PROGRAM);
    assert!(
        vmm.is_file(),
        "{} is missing: run `cargo build --workspace --bins`",
        vmm.display()
    );
    Some(())
}

/// Prerequisites plus a KVM that boots a standard guest, or a printed reason to skip.
fn krun_bootable() -> Option<()> {
    krun_prerequisites()?;
    if let Err(why) = msb_runtime::host::kvm_usable() {
        msb_test_e2e::skip(format!("krun cannot boot a guest on this host: {why}"));
        return None;
    }
    Some(())
}

fn rootfs() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    busybox_rootfs(d.path());
    d
}

fn krun(root: &Path, script: &str, stdin: Option<&[u8]>) -> Run {
    msbox(
        &[
            "run",
            "--backend",
            "krun",
            "-i",
            root.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ],
        stdin,
        T,
    )
}

#[test]
fn krun_boots_libkrunfw_with_the_container_init_as_pid_1() {
    let Some(()) = krun_bootable() else { return };
    let root = rootfs();
    let r = krun(root.path(), "uname -r; echo $$", None);
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut lines = out.lines();
    // libkrunfw's kernel, not the Debian kernel the QEMU backend boots.
    let release = lines.next().unwrap_or_default();
    assert_ne!(release, msb_test_e2e::guest::kernel_release(), "{out}");
    assert_eq!(lines.next(), Some("1"), "{out}");
}

#[test]
fn krun_exit_statuses_and_streams() {
    let Some(()) = krun_bootable() else { return };
    let root = rootfs();
    assert_eq!(krun(root.path(), "exit 7", None).code, 7);
    let r = krun(
        root.path(),
        "cat; echo err >&2",
        Some(b"through the agent port\n"),
    );
    assert_eq!(
        (String::from_utf8_lossy(&r.stdout).as_ref(), r.code),
        ("through the agent port\n", 0),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("err"), "{}", r.stderr);
    // The upper disk is writable and the lower read-only, as under QEMU.
    let r = krun(root.path(), "echo x > /new && cat /new", None);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "x\n", "{}", r.stderr);
}

#[test]
fn forced_krun_where_kvm_cannot_boot_a_guest_fails_fast_and_says_why() {
    let Some(()) = krun_prerequisites() else {
        return;
    };
    let Err(why) = msb_runtime::host::kvm_usable() else {
        msb_test_e2e::skip("KVM here boots a standard guest, so krun does not fail");
        return;
    };
    let root = rootfs();
    let started = Instant::now();
    let r = msbox(
        &[
            "run",
            "--backend",
            "krun",
            root.path().to_str().unwrap(),
            "--",
            "true",
        ],
        None,
        T,
    );
    let took = started.elapsed();
    eprintln!(
        "forced krun failed after {:.1} s with {}:\n{}",
        took.as_secs_f64(),
        r.code,
        r.stderr
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(took < FAIL_WITHIN, "took {took:?}: {}", r.stderr);
    // The cause, in the host's terms (PVM, no /dev/kvm, no vmx/svm), and the way out.
    assert!(
        r.stderr.contains(&why),
        "cause {why:?} not named:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("--backend qemu"), "{}", r.stderr);
    assert!(r.stderr.contains("libkrun"), "{}", r.stderr);
}
