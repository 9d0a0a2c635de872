//! Harness for tests that boot real guests under QEMU.
//!
//! - [`GuestSlot`]: at most [`SLOTS`] guests run at once across every test thread and process
//!   (each takes a whole core under TCG): a slot is an exclusive `flock` on a file in /tmp.
//! - [`assets`]: the guest assets, or a printed reason to skip.
//! - [`busybox_rootfs`]: a root file system from Debian's busybox-static.
//! - [`lower_and_upper`]: a VM's two disks, an EROFS lower of a root file system and an ext4
//!   upper (serials `lower`, `upper`).
//! - [`container`]: the `core.container.create` of a plain container `c` on given storage.
//! - [`msbox`]: runs the `msbox` binary with a deadline; on expiry the VMM is killed and the
//!   guest console printed.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::paths::binary;

/// Guests allowed at once.
pub const SLOTS: usize = 2;

/// An exclusive guest slot, released on drop.
#[derive(Debug)]
pub struct GuestSlot {
    _file: File,
}

impl GuestSlot {
    /// Waits for a free slot.
    pub fn acquire() -> GuestSlot {
        let dir = Path::new("/tmp/msb-guest-slots");
        std::fs::create_dir_all(dir).expect("slot directory");
        loop {
            for i in 0..SLOTS {
                let f = File::create(dir.join(format!("slot{i}"))).expect("slot file");
                // SAFETY: flock on an open descriptor.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                    return GuestSlot { _file: f };
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The guest asset directory when kernel, initramfs and QEMU are present; otherwise prints why
/// the test is skipped and returns `None` (or fails, under `MSB_REQUIRE_GUESTS=1`).
pub fn assets() -> Option<PathBuf> {
    let a = msb_runtime::GuestAssets::default_location();
    if let Err(e) = a.check() {
        crate::require(&e);
        return None;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::require("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)");
        return None;
    }
    Some(msb_runtime::GuestAssets::dir())
}

/// The guest kernel release the assets were built for.
pub fn kernel_release() -> String {
    std::fs::read_to_string(msb_runtime::GuestAssets::dir().join("kernel.release"))
        .expect("kernel.release")
        .trim()
        .to_owned()
}

/// Makes a busybox root file system in `dir` (busybox + applet links, passwd, group, /tmp).
pub fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "etc", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("busybox-static is installed");
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// Makes `dir/lower.img` (EROFS of `rootfs`) and `dir/upper.img` (ext4, 64 MiB, sparse) and
/// returns them as a VM's disks, serials `lower` (read-only) and `upper`.
pub fn lower_and_upper(dir: &Path, rootfs: &Path) -> Vec<msb_runtime::DiskSpec> {
    try_lower_and_upper(dir, rootfs).unwrap()
}

/// [`lower_and_upper`], returning its failure (for the benchmarks, which report errors).
pub fn try_lower_and_upper(
    dir: &Path,
    rootfs: &Path,
) -> anyhow::Result<Vec<msb_runtime::DiskSpec>> {
    use msb_runtime::{disks, DiskSpec};
    std::fs::create_dir_all(dir)?;
    disks::make_lower(rootfs, &dir.join("lower.img"))?;
    disks::make_upper(&dir.join("upper.img"), 64 << 20)?;
    Ok(vec![
        DiskSpec {
            serial: "lower".into(),
            path: dir.join("lower.img"),
            read_only: true,
        },
        DiskSpec {
            serial: "upper".into(),
            path: dir.join("upper.img"),
            read_only: false,
        },
    ])
}

/// `core.container.create` of a container `c` on `lower` and `upper` (ext4), with nothing else
/// asked for: what a test changes, it sets on the value.
pub fn container(
    lower: msb_protocol::types::StorageRef,
    upper: msb_protocol::types::StorageRef,
) -> msb_protocol::types::ContainerCreate {
    use msb_protocol::types::{ContainerCreate, RootfsSpec};
    ContainerCreate {
        id: "c".into(),
        rootfs: RootfsSpec {
            lower: vec![lower],
            upper,
            fstype: "ext4".into(),
            readonly: false,
        },
        mounts: vec![],
        hostname: None,
        namespaces: Default::default(),
        handoff_init: None,
        resources: Default::default(),
        sysctls: vec![],
        masked_paths: Vec::new(),
        readonly_paths: Vec::new(),
        seccomp: None,
    }
}

/// A finished `msbox` run.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// stdout.
    pub stdout: Vec<u8>,
    /// stderr.
    pub stderr: String,
}

/// Runs `msbox ARGS` with `stdin` bytes, within `timeout`, holding a guest slot.
pub fn msbox(args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Run {
    let _slot = GuestSlot::acquire();
    let mut child = Command::new(binary("msbox"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("msbox starts");
    let pid = child.id();
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = w.write_all(&data);
        });
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let dir = msb_runtime::vm::run_dir()
                .join("sandboxes")
                .join(format!("msbox-{pid}"));
            let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
            // msbox's VMM (and its virtiofsd) run in process groups of their own, led by
            // msbox's children: kill those groups, never anything else.
            for vmm in children_of(pid) {
                if vmm > 1 {
                    // SAFETY: kill has no memory-safety preconditions; `-vmm` names the process
                    // group of a child of our own msbox, never -1 (every process).
                    unsafe { libc::kill(-vmm, libc::SIGKILL) };
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
            panic!("msbox {args:?} timed out after {timeout:?}; guest console:\n{console}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out_t.join().unwrap(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
    }
}

/// The pids whose parent is `parent`, from `/proc/<pid>/stat`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid ...`: comm may hold spaces and parentheses.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after.split_whitespace().nth(1) == Some(parent.to_string().as_str())
        })
        .collect()
}

/// `Output` helper for host tools.
pub fn tool(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}
