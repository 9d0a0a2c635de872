//! Property tests: every payload, frame and boot setting survives encode -> decode unchanged.

use bytes::BytesMut;
use msb_protocol::boot::*;
use msb_protocol::codec::FrameCodec;
use msb_protocol::types::*;
use msb_protocol::{read_message, write_message, Flags, Frame, Message, Payload};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn round_trip<P: Payload + PartialEq + std::fmt::Debug>(id: u32, p: &P) {
    let msg = Message::new(id, p).unwrap();
    // blocking
    let mut buf = Vec::new();
    write_message(&mut buf, &msg).unwrap();
    let back = read_message(&mut buf.as_slice()).unwrap().unwrap();
    assert_eq!(back, msg);
    assert_eq!(&back.decode::<P>().unwrap(), p);
    // async codec, split at an arbitrary point
    let mut codec = FrameCodec;
    let mut dst = BytesMut::new();
    codec.encode(msg.clone(), &mut dst).unwrap();
    let mut first = dst.split_to(dst.len() / 2);
    assert!(codec.decode(&mut first).unwrap().is_none());
    first.unsplit(dst);
    let frame = codec.decode(&mut first).unwrap().unwrap();
    assert_eq!(
        Message::from_frame(&frame).unwrap().decode::<P>().unwrap(),
        *p
    );
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

prop_compose! {
    fn exec_request()(
        cmd in text(), args in proptest::collection::vec(text(), 0..4),
        env in proptest::collection::vec("[A-Z]{1,5}=.{0,8}", 0..4), cwd in opt_text(), user in opt_text(),
        additional_gids in proptest::collection::vec(any::<u32>(), 0..3),
        tty: bool, rows: u16, cols: u16, container in opt_text(), stdin: bool,
        rl in proptest::collection::vec(("[a-z]{2,8}", any::<u64>(), any::<u64>()), 0..3),
        caps in proptest::option::of(proptest::collection::vec("CAP_[A-Z_]{2,12}", 0..4)),
        no_new_privileges: bool,
    ) -> ExecRequest {
        let rlimits = rl.into_iter().map(|(resource, soft, hard)| Rlimit { resource, soft, hard }).collect();
        let capabilities = caps.map(|c| CapabilitySets {
            bounding: c.clone(), effective: c.clone(), inheritable: Vec::new(), permitted: c, ambient: Vec::new(),
        });
        ExecRequest {
            cmd, args, env, cwd, user, additional_gids, tty, rows, cols, rlimits, container, stdin,
            capabilities, no_new_privileges,
        }
    }
}

fn storage() -> impl Strategy<Value = StorageRef> {
    prop_oneof![
        text().prop_map(StorageRef::Serial),
        text().prop_map(StorageRef::Image),
        text().prop_map(StorageRef::Dir)
    ]
}

prop_compose! {
    fn container_create()(
        id in text(), lower in proptest::collection::vec(storage(), 0..3), upper in storage(),
        fstype in "[a-z0-9]{1,6}", readonly: bool, hostname in opt_text(), handoff_init in opt_text(),
        mounts in proptest::collection::vec((text(), "[a-z]{3,8}", text(), proptest::collection::vec(text(), 0..3)), 0..3),
        share_pid_with in opt_text(),
        memory_limit: Option<u64>, cpu_quota: Option<i64>, cpu_period: Option<u64>, pids_limit: Option<i64>,
        sysctls in proptest::collection::vec((text(), text()), 0..2),
        masked_paths in proptest::collection::vec(text(), 0..2),
        readonly_paths in proptest::collection::vec(text(), 0..2),
        ipc_vm: bool,
    ) -> ContainerCreate {
        ContainerCreate {
            id,
            rootfs: RootfsSpec { lower, upper, fstype, readonly },
            mounts: mounts.into_iter().map(|(destination, kind, source, options)| ContainerMount { destination, kind, source, options }).collect(),
            hostname,
            namespaces: NamespaceSpec {
                pid: share_pid_with.map_or(NamespaceSource::New, NamespaceSource::Container),
                ipc: if ipc_vm { NamespaceSource::Vm } else { NamespaceSource::New },
                uts: NamespaceSource::New,
            },
            handoff_init,
            resources: Resources { memory_limit, cpu_quota, cpu_period, cpu_weight: None, pids_limit },
            sysctls,
            masked_paths,
            readonly_paths,
            seccomp: None,
        }
    }
}

proptest! {
    #[test]
    fn exec_request_round_trips(id: u32, req in exec_request()) {
        round_trip(id, &req);
    }

    #[test]
    fn container_create_round_trips(id: u32, c in container_create()) {
        round_trip(id, &c);
    }

    #[test]
    fn stream_payloads_round_trip(id: u32, data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        round_trip(id, &ExecStdout { data: data.clone() });
        round_trip(id, &ExecStderr { data: data.clone() });
        round_trip(id, &ExecStdin { data: data.clone() });
        round_trip(id, &ExecStdinAck { bytes: data.len() as u64 });
        round_trip(id, &FsData { data });
    }

    #[test]
    fn small_payloads_round_trip(id: u32, code: i32, signal: i32, all: bool, rows: u16, cols: u16, pid: u32,
                                 msg in text(), errno: Option<i32>, a: u64, b: u64, c: u64) {
        round_trip(id, &ExecExited { code });
        round_trip(id, &ExecSignal { signal, all });
        round_trip(id, &ExecResize { rows, cols });
        round_trip(id, &ExecStarted { pid });
        round_trip(id, &ExecFailed { kind: ExecFailureKind::BadCwd, errno, message: msg.clone() });
        round_trip(id, &ErrorReply { kind: ErrorKind::InvalidSession, message: msg.clone(), offending_type: Some(msg.clone()) });
        round_trip(id, &Ready { boot_time_ns: a, init_time_ns: b, ready_time_ns: c, agent_version: msg.clone(), kernel_release: msg.clone(), boot_id: msg.clone() });
        round_trip(id, &ClockSync { unix_time_nanos: a });
        round_trip(
            id,
            &Restore {
                boot_env: vec!["MSB_HOSTNAME=clone-1".into()],
                entropy: vec![7; 64],
                unix_time_nanos: a,
            },
        );
        round_trip(id, &Restored {});
        round_trip(id, &RelayClientDisconnected { id_start: pid, id_end_exclusive: pid });
        round_trip(id, &ContainerOom { id: msg.clone() });
        round_trip(id, &ContainerPidsReply { pids: vec![pid, 1] });
        round_trip(id, &ContainerStatsReply {
            cpu: CpuStats { usage_usec: a, user_usec: b, system_usec: c, ..Default::default() },
            memory: MemoryStats { usage: a, peak: b, limit: c, stat: vec![(msg.clone(), a)], ..Default::default() },
            pids: PidsStats { current: a, limit: b },
            io: IoStats { rbytes: a, wbytes: b, rios: c, wios: a },
        });
        round_trip(id, &FsRequest { op: FsOp::Rename { from: msg.clone(), to: msg.clone() }, container: Some(msg) });
    }

    #[test]
    fn raw_frames_round_trip(id: u32, bits in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let frame = Frame::new(id, Flags::from_bits(bits).unwrap(), body);
        let bytes = frame.to_bytes().unwrap();
        prop_assert_eq!(msb_protocol::read_frame(&mut bytes.as_ref()).unwrap().unwrap(), frame);
    }

    #[test]
    fn tmpfs_round_trips(specs in proptest::collection::vec(("/[a-z]{1,8}(/[a-z0-9._-]{1,8}){0,2}", proptest::option::of(1u64..100000), proptest::option::of(0u32..=0o7777), any::<bool>()), 0..4)) {
        let specs: Vec<TmpfsSpec> = specs.into_iter().map(|(path, size_mib, mode, noexec)| TmpfsSpec { path, size_mib, mode, noexec }).collect();
        let s = TmpfsSpec::format_list(&specs);
        prop_assert_eq!(TmpfsSpec::parse_list(&s).unwrap(), specs);
    }

    #[test]
    fn net_round_trips(iface in "[a-z][a-z0-9]{0,14}", mac: [u8; 6], mtu in proptest::option::of(68u16..)) {
        let spec = NetSpec { iface, mac, mtu };
        prop_assert_eq!(NetSpec::parse(&spec.to_string()).unwrap(), spec);
    }

    #[test]
    fn ip_round_trips(a: [u8; 4], g: [u8; 4], d: Option<[u8; 4]>, p4 in 0u8..=32, a6: [u16; 8], p6 in 0u8..=128) {
        let v4 = Ipv4Spec { addr: a.into(), prefix: p4, gw: g.into(), dns: d.map(Into::into) };
        prop_assert_eq!(Ipv4Spec::parse(&v4.to_string()).unwrap(), v4);
        let v6 = Ipv6Spec { addr: a6.into(), prefix: p6, gw: a6.into(), dns: None };
        prop_assert_eq!(Ipv6Spec::parse(&v6.to_string()).unwrap(), v6);
    }

    #[test]
    fn rlimits_round_trip(items in proptest::collection::vec((0usize..16, any::<u64>(), any::<u64>()), 0..5)) {
        let specs: Vec<RlimitSpec> = items.into_iter().map(|(i, a, b)| RlimitSpec { resource: RlimitResource::ALL[i].0, soft: a.min(b), hard: a.max(b) }).collect();
        prop_assert_eq!(RlimitSpec::parse_list(&RlimitSpec::format_list(&specs)).unwrap(), specs);
    }

    #[test]
    fn user_round_trips(user in "[a-z_][a-z0-9_-]{0,8}|[1-9][0-9]{0,8}|0", group in proptest::option::of("[a-z_][a-z0-9_-]{0,8}|[1-9][0-9]{0,8}|0")) {
        let s = match &group { Some(g) => format!("{user}:{g}"), None => user.clone() };
        prop_assert_eq!(UserSpec::parse(&s).unwrap().to_string(), s);
    }

    #[test]
    fn mounts_round_trip(tag in "[a-z][a-z0-9_]{0,8}", path in "/[a-z]{1,8}", file in "[a-z][a-z.]{0,8}", ro: bool, noexec: bool, nosuid: bool, nodev: bool) {
        let flags = MountFlags { ro, noexec, nosuid, nodev };
        let d = vec![DirMountSpec { tag: tag.clone(), guest_path: path.clone(), flags }];
        prop_assert_eq!(DirMountSpec::parse_list(&DirMountSpec::format_list(&d)).unwrap(), d);
        let f = vec![FileMountSpec { tag, filename: file, guest_path: path, flags }];
        prop_assert_eq!(FileMountSpec::parse_list(&FileMountSpec::format_list(&f)).unwrap(), f);
    }

    #[test]
    fn boot_env_parsers_never_panic(var in proptest::sample::select(ALL_ENV_VARS), value in ".{0,64}") {
        let _ = BootEnv::from_vars([(var, value)]);
    }
}

#[test]
fn boot_env_round_trips_through_cmdline_words() {
    let env = BootEnv::from_vars([
        ("MSB_HOSTNAME", "worker-01"),
        (
            "MSB_TMPFS",
            "/tmp,size=256;/var/tmp,size=128,mode=1777,noexec",
        ),
        ("MSB_NET", "iface=eth0,mac=02:5a:7b:13:01:02,mtu=1500"),
        (
            "MSB_NET_IPV4",
            "addr=169.254.1.2/30,gw=169.254.1.1,dns=169.254.1.1",
        ),
        ("MSB_NET_IPV6", "addr=fd42::2/64,gw=fd42::1"),
        ("MSB_USER", "alice:developers"),
        (
            "MSB_RLIMITS",
            "nofile=512:1024;core=0;RLIMIT_NPROC=unlimited",
        ),
        ("MSB_DIR_MOUNTS", "data:/data:ro,nosuid;cache:/cache"),
        ("MSB_FILE_MOUNTS", "cfg:app.json:/etc/app.json:ro"),
        ("MSB_LOG", "debug"),
        ("MSB_TEMPLATE", "1"),
        ("PATH", "/bin"),
    ])
    .unwrap();
    let words = env.to_cmdline_words();
    assert_eq!(
        words,
        [
            "MSB_HOSTNAME=worker-01",
            "MSB_TMPFS=/tmp,size=256;/var/tmp,size=128,mode=1777,noexec",
            "MSB_NET=iface=eth0,mac=02:5a:7b:13:01:02,mtu=1500",
            "MSB_NET_IPV4=addr=169.254.1.2/30,gw=169.254.1.1,dns=169.254.1.1",
            "MSB_NET_IPV6=addr=fd42::2/64,gw=fd42::1",
            "MSB_USER=alice:developers",
            "MSB_RLIMITS=nofile=512:1024;core=0;nproc=unlimited",
            "MSB_DIR_MOUNTS=data:/data:ro,nosuid;cache:/cache",
            "MSB_FILE_MOUNTS=cfg:app.json:/etc/app.json:ro",
            "MSB_LOG=debug",
            "MSB_TEMPLATE=1",
        ]
    );
    let back = BootEnv::from_vars(words.iter().map(|w| w.split_once('=').unwrap())).unwrap();
    assert_eq!(back, env);
}

#[test]
fn boot_env_errors_name_variable_entry_and_problem() {
    let cases = [
        ("MSB_TMPFS", "/tmp,size=256;tmp,size=1", "MSB_TMPFS: entry \"tmp,size=1\": path \"tmp\" is not absolute"),
        ("MSB_TMPFS", "/tmp,size=0", "MSB_TMPFS: entry \"/tmp,size=0\": size must be at least 1 MiB"),
        ("MSB_TMPFS", "/tmp,mode=999", "MSB_TMPFS: entry \"/tmp,mode=999\": mode \"999\" is not an octal mode up to 7777"),
        ("MSB_TMPFS", "/tmp,exec", "MSB_TMPFS: entry \"/tmp,exec\": unknown option \"exec\" (size=, mode=, noexec)"),
        ("MSB_NET", "iface=eth0", "MSB_NET: entry \"iface=eth0\": mac= is required"),
        ("MSB_NET", "iface=eth0,mac=zz:00:00:00:00:00", "MSB_NET: entry \"iface=eth0,mac=zz:00:00:00:00:00\": mac \"zz:00:00:00:00:00\" is not AA:BB:CC:DD:EE:FF"),
        ("MSB_NET_IPV4", "addr=10.0.0.1,gw=10.0.0.2", "MSB_NET_IPV4: entry \"addr=10.0.0.1,gw=10.0.0.2\": addr \"10.0.0.1\" lacks a /prefix"),
        ("MSB_NET_IPV4", "addr=10.0.0.1/33,gw=10.0.0.2", "MSB_NET_IPV4: entry \"addr=10.0.0.1/33,gw=10.0.0.2\": prefix 33 exceeds 32"),
        ("MSB_NET_IPV6", "addr=fd::1/64", "MSB_NET_IPV6: entry \"addr=fd::1/64\": gw= is required"),
        ("MSB_USER", "alice:", "MSB_USER: entry \"alice:\": group is empty"),
        ("MSB_USER", "99999999999", "MSB_USER: entry \"99999999999\": user value \"99999999999\" is not a valid number"),
        ("MSB_HOSTNAME", "bad_name", "MSB_HOSTNAME: entry \"bad_name\": character '_' is not allowed (letters, digits, '-', '.')"),
        ("MSB_RLIMITS", "nofile=10:5", "MSB_RLIMITS: entry \"nofile=10:5\": soft limit 10 exceeds hard limit 5"),
        ("MSB_RLIMITS", "files=1", "MSB_RLIMITS: entry \"files=1\": unknown resource \"files\""),
        ("MSB_DIR_MOUNTS", "data", "MSB_DIR_MOUNTS: entry \"data\": expected tag:guest_path[:options]"),
        ("MSB_FILE_MOUNTS", "cfg:..:/etc/x", "MSB_FILE_MOUNTS: entry \"cfg:..:/etc/x\": filename \"..\" is not a file name"),
        ("MSB_TEMPLATE", "yes", "MSB_TEMPLATE: entry \"yes\": expected 1 or 0"),
    ];
    for (var, value, expected) in cases {
        let err = BootEnv::from_vars([(var, value)]).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert_eq!(err.var, var);
    }
}

#[test]
fn every_message_type_implies_one_flags_value() {
    let mut seen = std::collections::HashSet::new();
    for (name, flags) in MESSAGE_TYPES {
        assert!(seen.insert(*name), "{name} listed twice");
        assert_eq!(implied_flags(name), Some(*flags));
    }
    assert_eq!(
        implied_flags("core.exec.request"),
        Some(Flags::SESSION_START)
    );
    assert_eq!(implied_flags("core.exec.exited"), Some(Flags::TERMINAL));
    assert_eq!(implied_flags("core.exec.stdin.ack"), Some(Flags::NONE));
    assert_eq!(implied_flags("core.shutdown"), Some(Flags::SHUTDOWN));
    assert_eq!(implied_flags("core.nope"), None);
}
