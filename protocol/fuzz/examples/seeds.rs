//! Writes the seed corpus of `decode`, `request` and `boot_env` under `corpus/`: frames encoded
//! with this crate, from requests the host's own code builds (the CRI container fixture of
//! `oci/tests/fixtures` with containerd's RuntimeDefault seccomp profile), and typical `MSB_*`
//! values.
//!
//! `cargo run --manifest-path protocol/fuzz/Cargo.toml --example seeds` (then commit the files).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use msb_protocol::net::{NetAddress, NetInterface, NetNeighbour, NetRoute};
use msb_protocol::types::*;
use msb_protocol::{Message, Payload, DISKS_MOUNT_DIR, RUNTIME_MOUNT_POINT};

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.join("../..");
    let corpus = fuzz.join("corpus");

    // The host's own mapping of a real CRI spec, with containerd 1.7's RuntimeDefault profile.
    let mut spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("oci/tests/fixtures/cri-container.json")).unwrap(),
    )
    .unwrap();
    spec["linux"]["seccomp"] = serde_json::from_slice(
        &std::fs::read(repo.join("agentd/testdata/containerd-1.7-runtime-default.json")).unwrap(),
    )
    .unwrap();
    let bundle = msb_oci::Bundle::from_spec("/run/bundle", serde_json::from_value(spec).unwrap());
    let id = "web-1";
    let rootfs = RootfsSpec {
        lower: vec![
            StorageRef::Image(format!("{RUNTIME_MOUNT_POINT}/lowers/0123abcd.erofs")),
            StorageRef::Serial("msb-lower-1".into()),
        ],
        upper: StorageRef::Dir(format!("{DISKS_MOUNT_DIR}/msb-upper/{id}")),
        fstype: "ext4".into(),
        readonly: false,
    };
    let mut create = bundle
        .container_create(id, Some("sandbox-1"), rootfs.clone())
        .unwrap();
    create.mounts.push(ContainerMount {
        destination: "/data".into(),
        kind: "bind".into(),
        source: "/run/msb/volumes/web-1/0".into(),
        options: vec!["rbind".into(), "ro".into()],
    });
    create.handoff_init = Some("auto".into());
    let init = bundle.init_exec(id).unwrap();

    // A small profile: every action, operator and the argument forms, not 2000 instructions.
    let small_profile = msb_protocol::seccomp::Seccomp {
        default_action: msb_protocol::seccomp::SeccompAction::Errno,
        default_errno_ret: Some(1),
        architectures: vec!["SCMP_ARCH_X86_64".into(), "SCMP_ARCH_X86".into()],
        flags: vec!["SECCOMP_FILTER_FLAG_LOG".into()],
        syscalls: vec![
            rule(
                &["read", "write", "exit_group"],
                "SCMP_ACT_ALLOW",
                None,
                &[],
            ),
            rule(
                &["personality"],
                "SCMP_ACT_ALLOW",
                None,
                &[(0, 0xffff_ffff, 0, "SCMP_CMP_EQ"), (0, 8, 0, "SCMP_CMP_EQ")],
            ),
            rule(
                &["clone"],
                "SCMP_ACT_ALLOW",
                None,
                &[(0, 0x7e02_0000, 0, "SCMP_CMP_MASKED_EQ")],
            ),
            rule(&["clone3"], "SCMP_ACT_ERRNO", Some(38), &[]),
            rule(
                &["socket"],
                "SCMP_ACT_KILL_PROCESS",
                None,
                &[(0, 40, 0, "SCMP_CMP_GE"), (1, 3, 0, "SCMP_CMP_LT")],
            ),
            rule(&["ptrace"], "SCMP_ACT_TRACE", Some(1), &[]),
            rule(&["kill", "not_a_syscall"], "SCMP_ACT_LOG", None, &[]),
        ],
    };
    let small = ContainerCreate {
        id: "db".into(),
        rootfs,
        mounts: vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/tmp",
                "tmpfs",
                &["nosuid", "strictatime", "mode=1777", "size=64m"],
            ),
            mount("/sys/fs/cgroup", "cgroup2", &["ro"]),
            mount("/sys", "sysfs", &["rw"]),
        ],
        hostname: Some("db-0".into()),
        namespaces: NamespaceSpec {
            pid: NamespaceSource::Container("sandbox-1".into()),
            ipc: NamespaceSource::Vm,
            uts: NamespaceSource::New,
        },
        handoff_init: Some("/sbin/init".into()),
        resources: Resources {
            memory_limit: Some(256 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_weight: Some(39),
            pids_limit: Some(64),
        },
        sysctls: vec![
            ("net.ipv4.ip_forward".into(), "1".into()),
            ("net/ipv4/conf/eth0.1/forwarding".into(), "0".into()),
        ],
        masked_paths: vec!["/proc/kcore".into(), "/sys/firmware".into()],
        readonly_paths: vec!["/proc/sys".into()],
        seccomp: Some(small_profile),
    };
    let vm_exec = ExecRequest {
        cmd: "/bin/sh".into(),
        args: vec!["-c".into(), "echo hi".into()],
        env: vec!["PATH=/bin".into(), "TERM=xterm".into()],
        cwd: Some("/root".into()),
        user: Some("alice:wheel".into()),
        additional_gids: vec![5, 999],
        tty: true,
        rows: 40,
        cols: 120,
        rlimits: vec![
            Rlimit {
                resource: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 4096,
            },
            Rlimit {
                resource: "core".into(),
                soft: 0,
                hard: u64::MAX,
            },
        ],
        container: None,
        stdin: false,
        capabilities: Some(CapabilitySets {
            bounding: vec!["CAP_CHOWN".into(), "CAP_NET_RAW".into()],
            effective: vec!["CAP_CHOWN".into()],
            inheritable: vec![],
            permitted: vec!["CAP_CHOWN".into(), "CAP_UNKNOWN_NEW".into()],
            ambient: vec![],
        }),
        no_new_privileges: true,
    };
    let exec_in_container = ExecRequest {
        cmd: "ps".into(),
        user: Some("0".into()),
        container: Some(id.into()),
        ..ExecRequest::default()
    };
    let fs_write = FsRequest {
        op: FsOp::Write {
            path: "/etc/resolv.conf".into(),
            mode: Some(0o644),
        },
        container: Some(id.into()),
    };
    let fs_stat = FsRequest {
        op: FsOp::Stat {
            path: "/etc/hosts".into(),
        },
        container: None,
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let net = NetConfigure {
        interfaces: vec![NetInterface {
            name: "eth0".into(),
            mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0x02],
            mtu: 1450,
            addresses: vec![
                NetAddress {
                    address: ip("10.1.0.5"),
                    prefix_len: 24,
                },
                NetAddress {
                    address: ip("fd00::5"),
                    prefix_len: 64,
                },
            ],
            routes: vec![
                NetRoute {
                    destination: NetAddress {
                        address: ip("0.0.0.0"),
                        prefix_len: 0,
                    },
                    gateway: Some(ip("10.1.0.1")),
                    mtu: Some(1400),
                    source: Some(ip("10.1.0.5")),
                },
                NetRoute {
                    destination: NetAddress {
                        address: ip("10.1.0.0"),
                        prefix_len: 24,
                    },
                    gateway: None,
                    mtu: None,
                    source: None,
                },
            ],
            neighbours: vec![NetNeighbour {
                address: ip("10.1.0.1"),
                mac: [0xee; 6],
            }],
        }],
    };

    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("exec-cri-init", frame(3, &init)),
        ("exec-vm-tty", frame(5, &vm_exec)),
        ("exec-in-container", frame(7, &exec_in_container)),
        ("create-cri-runtime-default", frame(3, &create)),
        ("create-small", frame(9, &small)),
        (
            "fs-write-stream",
            [
                frame(11, &fs_write),
                frame(
                    11,
                    &FsData {
                        data: b"nameserver 10.0.0.10\n".to_vec(),
                    },
                ),
                frame(11, &FsData { data: Vec::new() }),
            ]
            .concat(),
        ),
        ("fs-stat", frame(13, &fs_stat)),
        ("net-configure", frame(15, &net)),
        (
            "port-session",
            [
                frame(17, &PortConnect { port: 8080 }),
                frame(
                    17,
                    &PortData {
                        data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                    },
                ),
                frame(17, &PortAck { bytes: 4096 }),
                frame(17, &PortClose {}),
            ]
            .concat(),
        ),
        (
            "exec-session",
            [
                frame(19, &vm_exec),
                frame(
                    19,
                    &ExecStdin {
                        data: b"ls\n".to_vec(),
                    },
                ),
                frame(
                    19,
                    &ExecResize {
                        rows: 50,
                        cols: 200,
                    },
                ),
                frame(
                    19,
                    &ExecSignal {
                        signal: 15,
                        all: true,
                    },
                ),
            ]
            .concat(),
        ),
        (
            "container-lifecycle",
            [
                frame(21, &ContainerPause { id: id.into() }),
                frame(23, &ContainerResume { id: id.into() }),
                frame(
                    25,
                    &ContainerUpdate {
                        id: id.into(),
                        resources: Resources {
                            memory_limit: Some(128 << 20),
                            pids_limit: Some(-1),
                            ..Resources::default()
                        },
                    },
                ),
                frame(27, &ContainerStats { id: id.into() }),
                frame(29, &ContainerPids { id: id.into() }),
                frame(31, &ContainerDelete { id: id.into() }),
            ]
            .concat(),
        ),
        (
            "control",
            [
                frame(0, &Ping {}),
                frame(0, &InitAck {}),
                frame(
                    0,
                    &ClockSync {
                        unix_time_nanos: 1_700_000_000_000_000_000,
                    },
                ),
                frame(
                    0,
                    &RelayClientDisconnected {
                        id_start: 0x1000_0000,
                        id_end_exclusive: 0x2000_0000,
                    },
                ),
                frame(0, &Shutdown),
            ]
            .concat(),
        ),
    ];
    for (name, bytes) in &frames {
        write(&corpus.join("decode"), name, bytes);
        write(&corpus.join("request"), name, bytes);
    }
    // The bare-payload form of `request` (a selector byte, then the CBOR payload).
    let kinds = [
        ExecRequest::TYPE,
        ContainerCreate::TYPE,
        FsRequest::TYPE,
        NetConfigure::TYPE,
    ];
    let selector =
        |kind: &str| 0x80 + u8::try_from(kinds.iter().position(|k| *k == kind).unwrap()).unwrap();
    let payloads: Vec<(&str, u8, Vec<u8>)> = vec![
        (
            "p-exec-vm-tty",
            selector(ExecRequest::TYPE),
            payload(&vm_exec),
        ),
        (
            "p-exec-cri-init",
            selector(ExecRequest::TYPE),
            payload(&init),
        ),
        (
            "p-create-small",
            selector(ContainerCreate::TYPE),
            payload(&small),
        ),
        ("p-fs-write", selector(FsRequest::TYPE), payload(&fs_write)),
        (
            "p-net-configure",
            selector(NetConfigure::TYPE),
            payload(&net),
        ),
    ];
    for (name, sel, bytes) in payloads {
        write(
            &corpus.join("request"),
            name,
            &[&[sel][..], &bytes].concat(),
        );
    }

    let boot = corpus.join("boot_env");
    let envs: &[(&str, &str)] = &[
        (
            "all",
            "MSB_HOSTNAME=worker-01\n\
             MSB_TMPFS=/tmp,size=256;/var/tmp,size=128,mode=1777,noexec\n\
             MSB_NET=iface=eth0,mac=02:42:ac:11:00:02,mtu=1450\n\
             MSB_NET_IPV4=addr=10.1.0.5/24,gw=10.1.0.1,dns=10.0.0.10\n\
             MSB_NET_IPV6=addr=fd00::5/64,gw=fd00::1,dns=fd00::53\n\
             MSB_USER=1000:100\n\
             MSB_RLIMITS=nofile=512:1024;core=0;RLIMIT_NPROC=unlimited\n\
             MSB_DIR_MOUNTS=vol0:/data:ro,nosuid;vol1:/cache\n\
             MSB_FILE_MOUNTS=cfg:app.toml:/etc/app.toml:ro\n\
             MSB_LOG=debug\n",
        ),
        (
            "kernel-env",
            "HOME=/\nTERM=linux\nMSB_LOG=info\nMSB_HOSTNAME=sandbox\nBOOT_IMAGE=vmlinux\n",
        ),
        ("user-names", "MSB_USER=nginx:www-data\n"),
        (
            "rlimits",
            "MSB_RLIMITS=stack=8388608:infinity;nice=0;rttime=1:2\n",
        ),
        (
            "tmpfs",
            "MSB_TMPFS=/run,size=64,mode=755;;/dev/shm,noexec\n",
        ),
        (
            "shortcut-keys",
            "0=vm-1\n2=iface=eth1,mac=aa:bb:cc:dd:ee:ff\n4=addr=::1/128,gw=::\n",
        ),
        ("empty-values", "MSB_NET=\nMSB_TMPFS=\nMSB_USER=\n"),
    ];
    for (name, text) in envs {
        write(&boot, name, text.as_bytes());
    }
}

fn rule(
    names: &[&str],
    action: &str,
    errno: Option<u32>,
    args: &[(u32, u64, u64, &str)],
) -> msb_protocol::seccomp::SeccompSyscall {
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    msb_protocol::seccomp::SeccompSyscall {
        names: names.iter().map(|n| n.to_string()).collect(),
        action: serde_json::from_value(s(action)).unwrap(),
        errno_ret: errno,
        args: args
            .iter()
            .map(
                |&(index, value, value_two, op)| msb_protocol::seccomp::SeccompArg {
                    index,
                    value,
                    value_two,
                    op: serde_json::from_value(s(op)).unwrap(),
                },
            )
            .collect(),
    }
}

fn mount(destination: &str, kind: &str, options: &[&str]) -> ContainerMount {
    ContainerMount {
        destination: destination.into(),
        kind: kind.into(),
        source: String::new(),
        options: options.iter().map(|o| o.to_string()).collect(),
    }
}

fn frame<P: Payload + serde::Serialize>(id: u32, p: &P) -> Vec<u8> {
    let mut out = Vec::new();
    msb_protocol::write_message(&mut out, &Message::new(id, p).unwrap()).unwrap();
    out
}

fn payload<P: serde::Serialize>(p: &P) -> Vec<u8> {
    msb_protocol::message::to_cbor(p).unwrap()
}

fn write(dir: &PathBuf, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}
