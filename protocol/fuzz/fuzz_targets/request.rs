//! What agentd decodes from the host, and agentd's own checks of it that run without a VM.
//!
//! Input, one of two forms:
//! - a byte stream of frames (a valid frame starts with a zero byte: its length is at most
//!   4 MiB), read as agentd's dispatcher reads its port;
//! - a selector byte `0x80 + i` and a bare CBOR payload for the `i`-th host -> guest type of
//!   [`KINDS`] (modulo its length), wrapped in an envelope: mutations then reach the payload
//!   without breaking the frame around it.
//!
//! Each message is decoded as the dispatcher decodes its type, and the result goes through the
//! pure functions agentd applies to it before it mounts or spawns anything: the user and group
//! resolution, rlimit names, capability masks, C strings, mount options, storage and in-root
//! paths, sysctl names and the seccomp compiler. Errors are fine; a panic is a bug (in PID 1, a
//! panic on the dispatcher powers the VM off).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use msb_agentd::caps::CapMasks;
use msb_agentd::inroot::InRootPath;
use msb_agentd::spawn::Step;
use msb_agentd::{mount_opts, prepare, seccomp, storage, sys, users};
use msb_protocol::boot::{RlimitResource, UserSpec};
use msb_protocol::types::{
    implied_flags, is_clean_absolute, sysctl_path, ClockSync, ContainerCreate, ContainerDelete,
    ContainerPause, ContainerPids, ContainerResume, ContainerStats, ContainerUpdate, ExecRequest,
    ExecResize, ExecSignal, ExecStdin, FsData, FsOp, FsRequest, InitAck, NetConfigure, Ping,
    PortAck, PortClose, PortConnect, PortData, RelayClientDisconnected, Shutdown, StorageRef,
};
use msb_protocol::{Message, Payload, PROTOCOL_GENERATION};

/// Every type agentd's dispatcher handles.
const KINDS: &[&str] = &[
    ExecRequest::TYPE,
    ContainerCreate::TYPE,
    FsRequest::TYPE,
    NetConfigure::TYPE,
    PortConnect::TYPE,
    ExecStdin::TYPE,
    ExecResize::TYPE,
    ExecSignal::TYPE,
    ContainerPause::TYPE,
    ContainerResume::TYPE,
    ContainerUpdate::TYPE,
    ContainerDelete::TYPE,
    ContainerStats::TYPE,
    ContainerPids::TYPE,
    FsData::TYPE,
    PortData::TYPE,
    PortAck::TYPE,
    PortClose::TYPE,
    ClockSync::TYPE,
    RelayClientDisconnected::TYPE,
    Shutdown::TYPE,
    Ping::TYPE,
    InitAck::TYPE,
];

/// A container's `/etc/passwd` and `/etc/group` with the shapes `users::resolve` meets: names,
/// numbers, members, a broken line, a duplicate.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    alice:x:1000:100:Alice:/home/alice:/bin/sh\n\
    nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n\
    broken line\n\
    alice:x:1001:101::/:/bin/sh\n\
    empty:x:7:7:::\n";
const GROUP: &str = "root:x:0:\nusers:x:100:\nwheel:x:10:alice,bob\n\
    docker:x:999:alice,,\nbad:x:notanumber:\n";

fn exec_request(req: &ExecRequest) {
    if let Ok(user) = req
        .user
        .as_deref()
        .map(|u| UserSpec::parse_for("user", u))
        .transpose()
    {
        let _ = users::resolve(user.as_ref(), PASSWD, GROUP, &req.additional_gids);
        let _ = users::resolve(user.as_ref(), "", "", &req.additional_gids);
    }
    for r in &req.rlimits {
        if let Some(res) = RlimitResource::from_name(&r.resource) {
            let _ = sys::rlimit_number(res);
        }
    }
    if let Some(caps) = &req.capabilities {
        let _ = CapMasks::new(caps);
    }
    for s in [&req.cmd]
        .into_iter()
        .chain(&req.args)
        .chain(&req.env)
        .chain(&req.cwd)
    {
        let _ = sys::cstr(s);
    }
    if req.cmd.contains('/') || req.cmd.is_empty() {
        // No file-system lookup on these; other names are looked up in the container's root.
        let _ = prepare::resolve_program(std::path::Path::new("/"), &req.cmd, "");
    }
    for step in [Step::Exec, Step::Cwd, Step::User, Step::Stdio, Step::Setup] {
        for errno in [
            libc::ENOENT,
            libc::EACCES,
            libc::ENOEXEC,
            libc::ENOMEM,
            0,
            -1,
        ] {
            let _ = prepare::child_failure(step, errno, req);
        }
    }
}

fn storage_ref(r: &StorageRef) {
    match r {
        StorageRef::Dir(p) | StorageRef::Image(p) => {
            if let Ok(p) = storage::check_path(p) {
                let _ = storage::on_shared_disk(p);
                let _ = sys::cpath(p);
            }
        }
        StorageRef::Serial(_) => {}
    }
}

fn container_create(c: &ContainerCreate) {
    for l in &c.rootfs.lower {
        storage_ref(l);
    }
    storage_ref(&c.rootfs.upper);
    for m in &c.mounts {
        // As `Container::root_setup` takes each mount apart.
        let opts = mount_opts::parse(&m.options);
        let _ = sys::cstr(&opts.data);
        let dest = m.destination.trim_end_matches('/');
        let mut prefix = String::new();
        for part in dest.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            let _ = InRootPath::new(&prefix);
        }
        let _ = InRootPath::new(dest);
        if m.kind == "bind" {
            let _ = storage::check_path(&m.source);
            let _ = sys::cpath(&m.source);
        }
    }
    for (name, value) in &c.sysctls {
        if let Some(file) = sysctl_path(name) {
            let _ = InRootPath::new(&format!("/proc/sys/{file}"));
        }
        let _ = sys::cstr(value);
    }
    for p in c.masked_paths.iter().chain(&c.readonly_paths) {
        if is_clean_absolute(p) {
            let _ = sys::cstr(p);
        }
    }
    if let Some(h) = &c.hostname {
        let _ = sys::cstr(h);
    }
    if let Some(profile) = &c.seccomp {
        if let Ok(filter) = seccomp::compile(profile) {
            assert!(!filter.instructions().is_empty());
        }
    }
}

/// The dispatcher's decoding of `msg`, then the checks of its payload.
fn handle(msg: &Message) {
    match msg.kind.as_str() {
        ExecRequest::TYPE => {
            if let Ok(req) = msg.decode::<ExecRequest>() {
                exec_request(&req);
            }
        }
        ContainerCreate::TYPE => {
            if let Ok(c) = msg.decode::<ContainerCreate>() {
                container_create(&c);
            }
        }
        FsRequest::TYPE => {
            if let Ok(FsRequest {
                op: FsOp::Write { path, .. },
                ..
            }) = msg.decode::<FsRequest>()
            {
                let _ = InRootPath::new(&path);
            }
        }
        NetConfigure::TYPE => {
            if let Ok(n) = msg.decode::<NetConfigure>() {
                for i in &n.interfaces {
                    let _ = msb_protocol::net::format_mac(&i.mac);
                }
            }
        }
        PortConnect::TYPE => drop(msg.decode::<PortConnect>()),
        ExecStdin::TYPE => drop(msg.decode::<ExecStdin>()),
        ExecResize::TYPE => drop(msg.decode::<ExecResize>()),
        ExecSignal::TYPE => drop(msg.decode::<ExecSignal>()),
        ContainerPause::TYPE => drop(msg.decode::<ContainerPause>()),
        ContainerResume::TYPE => drop(msg.decode::<ContainerResume>()),
        ContainerUpdate::TYPE => drop(msg.decode::<ContainerUpdate>()),
        ContainerDelete::TYPE => drop(msg.decode::<ContainerDelete>()),
        ContainerStats::TYPE => drop(msg.decode::<ContainerStats>()),
        ContainerPids::TYPE => drop(msg.decode::<ContainerPids>()),
        FsData::TYPE => drop(msg.decode::<FsData>()),
        PortData::TYPE => drop(msg.decode::<PortData>()),
        PortAck::TYPE => drop(msg.decode::<PortAck>()),
        PortClose::TYPE => drop(msg.decode::<PortClose>()),
        ClockSync::TYPE => drop(msg.decode::<ClockSync>()),
        RelayClientDisconnected::TYPE => drop(msg.decode::<RelayClientDisconnected>()),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((&sel, payload)) if sel >= 0x80 => {
            let kind = KINDS[usize::from(sel - 0x80) % KINDS.len()];
            let msg = Message {
                id: 1,
                flags: implied_flags(kind).expect("a known type"),
                version: PROTOCOL_GENERATION,
                kind: kind.to_owned(),
                payload: Bytes::copy_from_slice(payload),
            };
            let again = Message::from_frame(&msg.to_frame()).expect("a well-formed envelope");
            assert_eq!(again, msg);
            handle(&again);
        }
        _ => {
            let mut port = data;
            while let Ok(Some(frame)) = msb_protocol::read_frame(&mut port) {
                if let Ok(msg) = Message::from_frame(&frame) {
                    handle(&msg);
                }
            }
        }
    }
});
