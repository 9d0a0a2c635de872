//! Real `config.json` files, as `ctr run` and the CRI plugin of containerd 1.6 write them, mapped
//! to the guest protocol.

use std::path::{Path, PathBuf};

use msb_oci::{Bundle, BundleError, HostBindMount};
use msb_protocol::types::{
    CapabilitySets, ContainerMount, ExecRequest, NamespaceSource, NamespaceSpec, Resources, Rlimit,
    RootfsSpec, StorageRef,
};

/// containerd's default capabilities (its `oci.WithDefaultSpec`), sorted.
fn default_caps() -> Vec<String> {
    [
        "CAP_AUDIT_WRITE",
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_MKNOD",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_RAW",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT",
    ]
    .map(String::from)
    .to_vec()
}

const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A bundle directory holding the named fixture as `config.json`.
fn bundle(fixture: &str) -> (tempfile::TempDir, Bundle) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    std::fs::copy(src, dir.path().join("config.json")).unwrap();
    let b = Bundle::load(dir.path()).unwrap();
    (dir, b)
}

fn rootfs() -> RootfsSpec {
    RootfsSpec {
        lower: vec![StorageRef::Serial("lower0".into())],
        upper: StorageRef::Serial("upper".into()),
        fstype: "ext4".into(),
        readonly: false,
    }
}

fn m(dest: &str, kind: &str, opts: &[&str]) -> ContainerMount {
    ContainerMount {
        destination: dest.into(),
        kind: kind.into(),
        source: String::new(),
        options: opts.iter().map(|s| s.to_string()).collect(),
    }
}

fn ctr_mounts() -> Vec<ContainerMount> {
    vec![
        m("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        m(
            "/dev",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        m(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        m(
            "/dev/shm",
            "tmpfs",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        m("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        m("/sys", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        m(
            "/run",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
    ]
}

#[test]
fn ctr_run_without_terminal() {
    let (dir, b) = bundle("ctr-run.json");
    assert_eq!(b.root_path(), dir.path().join("rootfs"));
    assert!(!b.root_readonly());
    assert_eq!(
        b.init_exec("demo").unwrap(),
        ExecRequest {
            cmd: "uname".into(),
            args: vec!["-r".into()],
            env: vec![PATH_ENV.into()],
            cwd: Some("/".into()),
            user: Some("0:0".into()),
            additional_gids: vec![0, 1, 2, 3, 4, 6, 10, 11, 20, 26, 27],
            tty: false,
            rows: 0,
            cols: 0,
            rlimits: vec![Rlimit {
                resource: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 1024
            }],
            container: Some("demo".into()),
            stdin: true,
            capabilities: Some(CapabilitySets {
                bounding: default_caps(),
                effective: default_caps(),
                inheritable: Vec::new(),
                permitted: default_caps(),
                ambient: Vec::new(),
            }),
            no_new_privileges: true,
        }
    );
    let create = b.container_create("demo", None, rootfs()).unwrap();
    assert_eq!(create.id, "demo");
    assert_eq!(create.rootfs, rootfs());
    assert_eq!(create.mounts, ctr_mounts());
    assert_eq!(create.hostname, None);
    assert_eq!(create.namespaces, NamespaceSpec::default());
    assert_eq!(create.resources, Resources::default());
    assert!(create.sysctls.is_empty());
    assert_eq!(create.handoff_init, None);
}

#[test]
fn ctr_run_with_terminal() {
    let (_dir, b) = bundle("ctr-run-tty.json");
    let init = b.init_exec("shell").unwrap();
    assert_eq!(init.cmd, "sh");
    assert!(init.args.is_empty());
    assert!(init.tty);
    assert_eq!((init.rows, init.cols), (24, 80));
    assert_eq!(
        init.env,
        vec![PATH_ENV.to_string(), "TERM=xterm".to_string()]
    );
}

#[test]
fn ctr_run_with_memory_limit() {
    let (_dir, b) = bundle("ctr-run-memory.json");
    let spec = b.container_spec("memtest", None).unwrap();
    assert_eq!(spec.hostname.as_deref(), Some("memtest"));
    assert_eq!(
        spec.resources,
        Resources {
            memory_limit: Some(64 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_weight: Some(20),
            pids_limit: Some(128),
        }
    );
    let init = b.init_exec("memtest").unwrap();
    assert_eq!(
        init.args,
        vec![
            "-c".to_string(),
            "head -c 300m /dev/zero | tail".to_string()
        ]
    );
}

#[test]
fn cri_container_of_a_pod() {
    let (_dir, b) = bundle("cri-container.json");
    let ann = b.annotations();
    assert_eq!(
        ann.get("io.kubernetes.cri.sandbox-id").map(String::as_str),
        Some("5f0c")
    );
    assert_eq!(
        ann.get("io.microsandbox.memory_mib").map(String::as_str),
        Some("1024")
    );
    let spec = b.container_spec("9a1e", Some("5f0c")).unwrap();
    assert_eq!(
        spec.namespaces,
        NamespaceSpec {
            pid: NamespaceSource::Container("5f0c".into()),
            ipc: NamespaceSource::Container("5f0c".into()),
            uts: NamespaceSource::Container("5f0c".into()),
        }
    );
    assert_eq!(spec.masked_paths.len(), 10);
    assert_eq!(spec.masked_paths[0], "/proc/acpi");
    assert_eq!(
        spec.readonly_paths,
        [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]
    );
    // The cgroup mount becomes cgroup2; /dev/shm appears twice as in the spec (tmpfs, then the
    // pod's shared bind, which is a host path and so is set apart).
    let kinds: Vec<(&str, &str)> = spec
        .mounts
        .iter()
        .map(|m| (m.destination.as_str(), m.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("/proc", "proc"),
            ("/dev", "tmpfs"),
            ("/dev/pts", "devpts"),
            ("/dev/shm", "tmpfs"),
            ("/dev/mqueue", "mqueue"),
            ("/sys", "sysfs"),
            ("/sys/fs/cgroup", "cgroup2"),
        ]
    );
    let sandboxes = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/5f0c";
    let opts = vec![
        "rbind".to_string(),
        "rprivate".to_string(),
        "rw".to_string(),
    ];
    assert_eq!(
        spec.host_binds,
        vec![
            HostBindMount {
                source: format!("{sandboxes}/hosts"),
                destination: "/etc/hosts".into(),
                options: opts.clone(),
                position: 7,
            },
            HostBindMount {
                source: format!("{sandboxes}/hostname"),
                destination: "/etc/hostname".into(),
                options: opts.clone(),
                position: 7,
            },
            HostBindMount {
                source: format!("{sandboxes}/resolv.conf"),
                destination: "/etc/resolv.conf".into(),
                options: opts.clone(),
                position: 7,
            },
            HostBindMount {
                source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/5f0c/shm".into(),
                destination: "/dev/shm".into(),
                options: opts,
                position: 7,
            },
        ]
    );
    assert!(!spec.host_binds[0].readonly());
    assert_eq!(
        spec.sysctls,
        vec![
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string()
            ),
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string()
            ),
        ]
    );
    assert_eq!(spec.resources.memory_limit, Some(256 << 20));
    assert_eq!(spec.resources.cpu_weight, Some(4));
    let init = b.init_exec("9a1e").unwrap();
    assert_eq!(init.user.as_deref(), Some("101:101"));
    assert!(init.additional_gids.is_empty());
    assert_eq!(init.cwd.as_deref(), Some("/usr/share/nginx"));
    // The sandbox container itself shares with nobody.
    let own = b.container_spec("5f0c", Some("5f0c")).unwrap();
    assert_eq!(own.namespaces, NamespaceSpec::default());
}

#[test]
fn unsupported_mount_names_field_and_bundle() {
    let (dir, b) = bundle("unsupported-mount.json");
    let err = b.container_spec("x", None).unwrap_err();
    assert!(matches!(
        err,
        BundleError::UnsupportedMount { index: 7, .. }
    ));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: mounts[7] (/data): unsupported type \"nfs\"",
            dir.path().join("config.json").display()
        )
    );
}

#[test]
fn missing_process_names_field_and_bundle() {
    let (dir, b) = bundle("no-process.json");
    let err = b.init_exec("x").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: process is missing",
            dir.path().join("config.json").display()
        )
    );
}

#[test]
fn unreadable_and_malformed_configs() {
    let dir = tempfile::tempdir().unwrap();
    let err = Bundle::load(dir.path()).unwrap_err();
    let path: PathBuf = dir.path().join("config.json");
    assert!(matches!(err, BundleError::ReadConfig { .. }));
    assert_eq!(err.to_string(), format!("read {}", path.display()));
    std::fs::write(&path, b"{\"ociVersion\": 3}").unwrap();
    let err = Bundle::load(dir.path()).unwrap_err();
    assert!(matches!(err, BundleError::ParseConfig { .. }));
    assert_eq!(err.to_string(), format!("parse {}", path.display()));
}

/// The CRI fixture with its `linux` section edited by `edit`.
fn edited_cri_bundle(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, Bundle) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cri-container.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(src).unwrap()).unwrap();
    edit(&mut v["linux"]);
    std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap();
    let b = Bundle::load(dir.path()).unwrap();
    (dir, b)
}

/// A kind the spec does not list is the host's under runc: in the guest, the VM's own. One
/// listed without a path is new.
#[test]
fn unlisted_namespaces_are_the_vms_and_pathless_ones_new() {
    let (_dir, b) = edited_cri_bundle(|linux| {
        linux["namespaces"] = serde_json::json!([
            {"type": "ipc"}, {"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}
        ]);
    });
    let spec = b.container_spec("9a1e", Some("5f0c")).unwrap();
    assert_eq!(
        spec.namespaces,
        NamespaceSpec {
            pid: NamespaceSource::Vm,
            ipc: NamespaceSource::New,
            uts: NamespaceSource::Vm,
        }
    );
}

#[test]
fn a_bad_sysctl_name_or_masked_path_names_the_field() {
    let config = |dir: &tempfile::TempDir| dir.path().join("config.json").display().to_string();
    let (dir, b) = edited_cri_bundle(|linux| {
        linux["sysctl"] = serde_json::json!({"net/../../../etc/x": "1"});
    });
    let err = b.container_spec("9a1e", Some("5f0c")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: linux.sysctl: \"net/../../../etc/x\" is not a sysctl name ([A-Za-z0-9_.-/], no empty, '.' or '..' component)",
            config(&dir)
        )
    );
    let (dir, b) = edited_cri_bundle(|linux| {
        linux["readonlyPaths"] = serde_json::json!(["/proc/sys", "/proc/../etc"]);
    });
    let err = b.container_spec("9a1e", Some("5f0c")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: linux.readonlyPaths[1]: \"/proc/../etc\" must be absolute without '.' or '..'",
            config(&dir)
        )
    );
}

/// AppArmor, SELinux and host devices are listed for a debug log, not refused.
#[test]
fn host_confinement_settings_are_listed_as_ignored() {
    let (_dir, b) = edited_cri_bundle(|linux| {
        linux["mountLabel"] = serde_json::json!("system_u:object_r:container_file_t:s0");
        linux["devices"] = serde_json::json!([
            {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0},
            {"path": "/dev/kvm", "type": "c", "major": 10, "minor": 232}
        ]);
    });
    assert_eq!(
        b.ignored_settings(),
        [
            "linux.mountLabel=system_u:object_r:container_file_t:s0",
            "linux.devices=<2 host devices>"
        ]
    );
    let (_dir, b) = bundle("ctr-run.json");
    assert_eq!(b.ignored_settings(), Vec::<String>::new());
}
