//! QEMU's confinement on the host, checked from the host against real guests (docs/SECURITY.md,
//! "VMM confinement"): two VMs at once, each QEMU in a mount namespace of its own that holds
//! only `/usr`, the guest kernel and initramfs, as a uid/gid of its own with no capability; the
//! guest still boots, mounts its runtime share through virtiofsd (itself in a mount namespace
//! holding only the share) and writes to its read-write disk; the uid lease ends with the VM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use msb_protocol::types::*;
use msb_runtime::vmm::ids::{IdLease, IdRange, LEASE_DIR};
use msb_runtime::vmm::{BackendKind, DiskSpec, ShareSpec};
use msb_runtime::{disks, Vm, VmConfig};
use msb_test_e2e::guest::{assets, busybox_rootfs, GuestSlot};
use msb_test_e2e::ids::container_id;

/// `Key:\tv1\tv2...` of `/proc/<pid>/status`, as the values.
fn status(pid: i32, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The mount points of `/proc/<pid>/mountinfo`, in order.
fn mount_points(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(4).unwrap().to_owned())
        .collect()
}

/// The pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            after.split_whitespace().nth(1) == Some(parent.to_string().as_str())
        })
        .collect()
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn sh(script: &str, container: Option<&str>) -> ExecRequest {
    ExecRequest {
        cmd: "sh".into(),
        args: vec!["-c".into(), script.into()],
        container: container.map(Into::into),
        stdin: false,
        ..Default::default()
    }
}

/// What every jailed QEMU shows from the host: its leased ids (returned), no capability, no
/// new privileges, a seccomp filter, only the jail's mounts, and nothing of `dir` by path.
fn assert_jailed(pid: i32, dir: &Path, kernel: &Path, initramfs: &Path) -> u32 {
    // `ps` still tells what it is and which VM it serves (its resources are descriptors).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv[0], "qemu-system-x86_64");
    let name = argv.iter().position(|a| a == "-name").unwrap();
    assert_eq!(argv[name + 1], format!("guest={}", dir.display()));
    let uids = status(pid, "Uid");
    let gids = status(pid, "Gid");
    let id: u32 = uids[0].parse().unwrap();
    let range = IdRange::from_env().unwrap();
    assert!(
        id != 0 && id >= range.first && id - range.first < range.count,
        "QEMU {pid} runs as uid {uids:?}, not one of the VMM range {range:?}"
    );
    assert_eq!(
        uids,
        vec![id.to_string(); 4],
        "uid (real, effective, saved, fs)"
    );
    assert_eq!(
        gids,
        vec![id.to_string(); 4],
        "gid (real, effective, saved, fs)"
    );
    assert_eq!(status(pid, "Groups"), Vec::<String>::new());
    assert_eq!(status(pid, "CapEff"), ["0000000000000000"]);
    assert_eq!(status(pid, "CapPrm"), ["0000000000000000"]);
    assert_eq!(status(pid, "NoNewPrivs"), ["1"]);
    assert_eq!(status(pid, "Seccomp"), ["2"]);
    assert!(
        IdLease::is_held(Path::new(LEASE_DIR), id).unwrap(),
        "uid {id} is not leased"
    );
    assert_eq!(
        mount_points(pid),
        [
            "/".to_owned(),
            "/usr".into(),
            kernel.display().to_string(),
            initramfs.display().to_string()
        ],
        "QEMU {pid}'s mounts"
    );
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());
    for hidden in [
        dir,
        Path::new("/root"),
        Path::new("/var/lib"),
        Path::new("/etc"),
        Path::new("/proc"),
    ] {
        assert!(
            !inside(hidden).exists(),
            "QEMU {pid} sees {}",
            hidden.display()
        );
    }
    assert!(inside(kernel).is_file() && inside(Path::new("/usr/bin")).is_dir());
    let mut dev: Vec<String> = std::fs::read_dir(inside(Path::new("/dev")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dev.sort();
    let kvm = msb_runtime::host::kvm_usable().is_ok();
    assert_eq!(
        dev,
        if kvm {
            vec!["kvm", "null", "urandom"]
        } else {
            vec!["null", "urandom"]
        }
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_runs_jailed_as_a_uid_of_its_own_and_the_guest_still_works() {
    let Some(asset_dir) = assets() else { return };
    let _slot_a = GuestSlot::acquire();
    let _slot_b = GuestSlot::acquire();
    let kernel = asset_dir.join("vmlinux");
    let initramfs = asset_dir.join("initramfs.cpio");

    // VM a: the lower image served through the runtime share (virtiofsd), a writable upper
    // disk; a container on them.
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    let mut a = VmConfig::new(container_id("jail-a"));
    a.dir = msb_runtime::vm::run_dir()
        .join("jail-test/k8s.io/sandboxes")
        .join(&a.id)
        .join("vm");
    a.backend = Some(BackendKind::Qemu);
    let dir_a = a.dir();
    let share = dir_a.join("share");
    std::fs::create_dir_all(&share).unwrap();
    disks::make_lower(root.path(), &share.join("lower.img")).unwrap();
    disks::make_upper(&dir_a.join("upper.img"), 64 << 20).unwrap();
    a.disks = vec![DiskSpec {
        serial: "upper".into(),
        path: dir_a.join("upper.img"),
        read_only: false,
    }];
    a.shares = vec![ShareSpec {
        tag: msb_protocol::consts::RUNTIME_FS_TAG.into(),
        host_path: share.clone(),
        read_only: true,
    }];
    // VM b: no disk, no share.
    let mut b = VmConfig::new(container_id("jail-b"));
    b.dir = msb_runtime::vm::run_dir().join("jail-test-b").join(&b.id);
    b.backend = Some(BackendKind::Qemu);
    let dir_b = b.dir();

    let (vm_a, vm_b) = tokio::join!(Vm::start(a), Vm::start(b));
    let vm_a = vm_a.expect("guest a boots in the jail");
    let vm_b = vm_b.expect("guest b boots in the jail");
    let id_a = assert_jailed(vm_a.vmm_pid(), &dir_a, &kernel, &initramfs);
    let id_b = assert_jailed(vm_b.vmm_pid(), &dir_b, &kernel, &initramfs);
    assert_ne!(id_a, id_b, "two VMs share a uid");

    // virtiofsd (ours: a child of this process; its sandbox's inner process a child of it):
    // a mount namespace that holds the share alone.
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let mut virtiofsd: Vec<i32> = children_of(std::process::id())
        .into_iter()
        .filter(|&p| comm(p) == "virtiofsd")
        .collect();
    assert_eq!(virtiofsd.len(), 1, "one virtiofsd for vm a's one share");
    let inner = children_of(u32::try_from(virtiofsd[0]).unwrap());
    virtiofsd.extend(inner);
    assert_eq!(
        virtiofsd.len(),
        2,
        "virtiofsd's namespace sandbox runs a child"
    );
    for p in &virtiofsd {
        assert_ne!(
            std::fs::read_link(format!("/proc/{p}/ns/mnt")).unwrap(),
            own_ns
        );
        let info = std::fs::read_to_string(format!("/proc/{p}/mountinfo")).unwrap();
        let lines: Vec<&str> = info.lines().collect();
        assert_eq!(lines.len(), 1, "virtiofsd {p}: {info}");
        let fields: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(
            (fields[3], fields[4]),
            (share.to_str().unwrap(), "/"),
            "virtiofsd {p}'s only mount is the share, as its root: {info}"
        );
    }

    // The guest works: a container on the lower image (read through virtiofs) and the upper
    // disk (written through QEMU's descriptor).
    let agent = vm_a.agent().clone();
    agent
        .container_create(&msb_test_e2e::guest::container(
            StorageRef::Image(format!(
                "{}/lower.img",
                msb_protocol::consts::RUNTIME_MOUNT_POINT
            )),
            StorageRef::Serial("upper".into()),
        ))
        .await
        .expect("container on the virtiofs lower and the upper disk");
    let (out, err, code) = agent
        .exec(&sh(
            "head -c 1048576 /dev/urandom > /root/blob && sync && echo jailed > /root/f && sync && cat /root/f && wc -c < /root/blob",
            Some("c"),
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        (String::from_utf8_lossy(&out).into_owned(), code.unwrap()),
        ("jailed\n1048576\n".to_owned(), 0),
        "stderr: {}",
        String::from_utf8_lossy(&err)
    );
    // (vm b has no container: its guest answered core.ready, which `Vm::start` waited for.)
    assert!(!vm_b.ready().agent_version.is_empty());

    // The VM's end ends the lease (QEMU's inherited copy included) and the processes.
    let (pid_a, pid_b) = (vm_a.vmm_pid(), vm_b.vmm_pid());
    vm_a.shutdown(Duration::from_secs(20)).await.unwrap();
    assert!(!Path::new(&format!("/proc/{pid_a}")).exists());
    for p in &virtiofsd {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "virtiofsd {p} left"
        );
    }
    assert!(
        !IdLease::is_held(Path::new(LEASE_DIR), id_a).unwrap(),
        "uid {id_a} still leased"
    );
    assert!(IdLease::is_held(Path::new(LEASE_DIR), id_b).unwrap());
    drop(vm_b);
    assert!(!Path::new(&format!("/proc/{pid_b}")).exists());
    assert!(
        !IdLease::is_held(Path::new(LEASE_DIR), id_b).unwrap(),
        "uid {id_b} still leased"
    );
    let _ = std::fs::remove_dir_all(msb_runtime::vm::run_dir().join("jail-test"));
    let _ = std::fs::remove_dir_all(msb_runtime::vm::run_dir().join("jail-test-b"));
}
