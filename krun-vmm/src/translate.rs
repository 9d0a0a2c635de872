//! LaunchConfig -> VM builder calls.
//!
//! The translation goes through [`VmConfigurator`], a small trait with one method per builder
//! call we use: [`crate::krun::KrunVm`] implements it on `msb_krun::VmBuilder`, and [`Recorder`]
//! writes each call down, so tests (and `msb-krun-vmm --check`) see exactly what a VM would be
//! built from, field by field, without KVM.
//!
//! What the guest relies on (the same as under QEMU, see `msb_runtime::vmm::qemu`):
//! - agentd is `/init` of the initramfs; libkrunfw's kernel has every driver built in, so
//!   agentd finds no modules for it and loads none.
//! - disks are virtio-blk whose block id is the serial the guest looks up in
//!   `/sys/block/vd*/serial` (at most 20 bytes: the virtio-blk id field).
//! - the agent channel is a virtio-console port named `agent` on a connected Unix socket.
//! - `MSB_*` words on the kernel command line become agentd's environment; libkrun's own words
//!   (`console=hvc0 panic=-1 quiet` ...) come first.
//! - a pod network is one virtio-net device with the pod interface's MAC, on the TAP descriptor
//!   the runtime passed ([`crate::tap`]); agentd finds the interface by that MAC and sets its
//!   MTU (libkrun's device cannot announce one, hence the limit of [`MAX_NET_MTU`]).

use std::os::fd::RawFd;
use std::path::Path;

use crate::{LaunchConfig, CONFIG_FD};
pub use msb_runtime::vmm::krun::MAX_NET_MTU;

/// The smallest MTU an Ethernet interface carrying IPv4 takes (`ETH_MIN_MTU`).
pub const MIN_NET_MTU: u32 = 68;

/// Name of the agent's virtio-console port (agentd looks for it in `/sys/class/virtio-ports`).
pub const AGENT_PORT: &str = "agent";

/// Longest disk serial the guest can read back (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_BYTES: usize = 20;

/// A callback told the VMM's exit code when the guest stops.
pub type ExitObserver = Box<dyn Fn(i32) + Send + 'static>;

/// The builder calls a LaunchConfig turns into.
pub trait VmConfigurator {
    /// vCPUs and memory.
    fn machine(&mut self, vcpus: u8, memory_mib: u32);
    /// The libkrunfw library with the guest kernel.
    fn krunfw(&mut self, path: &Path);
    /// The initramfs.
    fn initramfs(&mut self, path: &Path);
    /// The init program inside the initramfs.
    fn init(&mut self, path: &str);
    /// Words appended to the kernel command line.
    fn cmdline(&mut self, words: &str);
    /// A virtio-blk disk.
    fn disk(&mut self, serial: &str, path: &Path, read_only: bool);
    /// A read-write virtio-fs share.
    fn share(&mut self, tag: &str, path: &Path);
    /// The guest console's output file.
    fn console_output(&mut self, path: &Path);
    /// A named virtio-console port on a connected descriptor (read and written).
    fn port(&mut self, name: &str, fd: RawFd);
    /// A virtio-net device with this MAC on the TAP descriptor `fd`, which it takes over; the
    /// guest sets `mtu` itself.
    fn net(&mut self, fd: RawFd, mac: [u8; 6], mtu: u32);
    /// Called with the exit code when the VM stops.
    fn on_exit(&mut self, observer: ExitObserver);
}

/// A LaunchConfig the VM cannot be built from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    /// Zero vCPUs or zero memory.
    #[error(
        "a VM needs at least 1 vCPU and 1 MiB of memory (got {vcpus} vCPUs, {memory_mib} MiB)"
    )]
    Machine {
        /// vCPUs asked for.
        vcpus: u8,
        /// Memory asked for.
        memory_mib: u32,
    },
    /// A kernel command line word that would split, or that libkrun refuses.
    #[error("kernel command line word {0:?} is empty or has whitespace, control or non-ASCII characters")]
    CmdlineWord(String),
    /// A disk serial the guest could not read back, or a duplicate.
    #[error("disk serial {0:?} must be 1 to 20 ASCII letters, digits, '-' or '_', and unique")]
    Serial(String),
    /// libkrun's virtio-fs has no read-only mode; a writable view must never be given instead.
    #[error("read-only virtio-fs share {0:?}: libkrun cannot share a directory read-only")]
    ReadOnlyShare(String),
    /// A pod network the VMM cannot serve.
    #[error("pod network: {0}")]
    Net(String),
    /// A path that is not absolute (the VMM does not know the runtime's working directory).
    #[error("{what} path {path:?} is not absolute")]
    RelativePath {
        /// Which path.
        what: &'static str,
        /// The path.
        path: String,
    },
}

/// Translates `cfg` into calls on `vm`; `agent_fd` is the accepted agent connection and
/// `on_exit` reports the VM's exit.
pub fn configure(
    cfg: &LaunchConfig,
    agent_fd: RawFd,
    on_exit: ExitObserver,
    vm: &mut impl VmConfigurator,
) -> Result<(), TranslateError> {
    validate(cfg)?;
    vm.machine(cfg.vcpus, cfg.memory_mib);
    vm.krunfw(&cfg.krunfw);
    vm.initramfs(&cfg.initramfs);
    vm.init(&cfg.init);
    if !cfg.cmdline.is_empty() {
        vm.cmdline(&cfg.cmdline.join(" "));
    }
    for d in &cfg.disks {
        vm.disk(&d.serial, &d.path, d.read_only);
    }
    for s in &cfg.shares {
        vm.share(&s.tag, &s.host_path);
    }
    if let Some(n) = &cfg.net {
        vm.net(n.fd, n.mac, n.mtu);
    }
    vm.console_output(&cfg.console_log);
    vm.port(AGENT_PORT, agent_fd);
    vm.on_exit(on_exit);
    Ok(())
}

/// Checks everything [`configure`] relies on, before anything is opened.
pub fn validate(cfg: &LaunchConfig) -> Result<(), TranslateError> {
    if cfg.vcpus == 0 || cfg.memory_mib == 0 {
        return Err(TranslateError::Machine {
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
        });
    }
    for w in &cfg.cmdline {
        if w.is_empty() || !w.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TranslateError::CmdlineWord(w.clone()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for d in &cfg.disks {
        let ok = !d.serial.is_empty()
            && d.serial.len() <= MAX_SERIAL_BYTES
            && d.serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok || !seen.insert(d.serial.as_str()) {
            return Err(TranslateError::Serial(d.serial.clone()));
        }
    }
    if let Some(s) = cfg.shares.iter().find(|s| s.read_only) {
        return Err(TranslateError::ReadOnlyShare(s.tag.clone()));
    }
    if let Some(n) = &cfg.net {
        // Not a standard stream, not the config's descriptor (closed once read).
        if n.fd <= 2 || n.fd == CONFIG_FD {
            return Err(TranslateError::Net(format!(
                "fd {} cannot be the TAP's descriptor",
                n.fd
            )));
        }
        // A group address (bit 0 of the first byte) or all zeros is no interface's.
        if n.mac[0] & 1 != 0 || n.mac == [0; 6] {
            return Err(TranslateError::Net(format!(
                "MAC {} is not a unicast address",
                format_mac(&n.mac)
            )));
        }
        if !(MIN_NET_MTU..=MAX_NET_MTU).contains(&n.mtu) {
            return Err(TranslateError::Net(format!(
                "MTU {} is outside {MIN_NET_MTU}..={MAX_NET_MTU} (libkrun's virtio-net cannot \
                 announce an MTU, so the guest receives frames of at most 1514 bytes)",
                n.mtu
            )));
        }
    }
    let paths = [
        ("libkrunfw", &cfg.krunfw),
        ("initramfs", &cfg.initramfs),
        ("agent socket", &cfg.agent_socket),
        ("console log", &cfg.console_log),
    ];
    let disks = cfg.disks.iter().map(|d| ("disk", &d.path));
    let shares = cfg.shares.iter().map(|s| ("share", &s.host_path));
    for (what, path) in paths.into_iter().chain(disks).chain(shares) {
        if !path.is_absolute() {
            return Err(TranslateError::RelativePath {
                what,
                path: path.display().to_string(),
            });
        }
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A [`VmConfigurator`] that writes each call down as one line.
#[derive(Debug, Default)]
pub struct Recorder {
    /// The calls, in order.
    pub calls: Vec<String>,
}

impl VmConfigurator for Recorder {
    fn machine(&mut self, vcpus: u8, memory_mib: u32) {
        self.calls
            .push(format!("machine vcpus={vcpus} memory_mib={memory_mib}"));
    }
    fn krunfw(&mut self, path: &Path) {
        self.calls.push(format!("krunfw {}", path.display()));
    }
    fn initramfs(&mut self, path: &Path) {
        self.calls.push(format!("initramfs {}", path.display()));
    }
    fn init(&mut self, path: &str) {
        self.calls.push(format!("init {path}"));
    }
    fn cmdline(&mut self, words: &str) {
        self.calls.push(format!("cmdline {words}"));
    }
    fn disk(&mut self, serial: &str, path: &Path, read_only: bool) {
        let mode = if read_only { "ro" } else { "rw" };
        self.calls
            .push(format!("disk {serial} {} {mode}", path.display()));
    }
    fn share(&mut self, tag: &str, path: &Path) {
        self.calls.push(format!("share {tag} {}", path.display()));
    }
    fn console_output(&mut self, path: &Path) {
        self.calls
            .push(format!("console_output {}", path.display()));
    }
    fn port(&mut self, name: &str, fd: RawFd) {
        self.calls.push(format!("port {name} fd={fd}"));
    }
    fn net(&mut self, fd: RawFd, mac: [u8; 6], mtu: u32) {
        self.calls
            .push(format!("net fd={fd} mac={} mtu={mtu}", format_mac(&mac)));
    }
    fn on_exit(&mut self, _observer: ExitObserver) {
        self.calls.push("on_exit".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LaunchDisk, LaunchNet, LaunchShare};

    fn config() -> LaunchConfig {
        LaunchConfig {
            id: "sb".into(),
            vcpus: 2,
            memory_mib: 384,
            krunfw: "/assets/libkrunfw.so.5".into(),
            initramfs: "/assets/initramfs.cpio".into(),
            init: "/init".into(),
            cmdline: vec!["MSB_HOSTNAME=web".into(), "MSB_LOG=debug".into()],
            disks: vec![
                LaunchDisk {
                    serial: "lower".into(),
                    path: "/sb/lower.erofs".into(),
                    read_only: true,
                },
                LaunchDisk {
                    serial: "upper".into(),
                    path: "/sb/upper.img".into(),
                    read_only: false,
                },
            ],
            shares: vec![LaunchShare {
                tag: "pod".into(),
                host_path: "/sb/share".into(),
                read_only: false,
            }],
            agent_socket: "/sb/agent.sock".into(),
            agent_accept_timeout_ms: 1000,
            console_log: "/sb/console.log".into(),
            net: None,
        }
    }

    fn net() -> LaunchNet {
        LaunchNet {
            fd: 4,
            mac: [0x02, 0x6d, 0x73, 0x62, 0x00, 0x0a],
            mtu: 1450,
        }
    }

    fn calls(cfg: &LaunchConfig) -> Result<Vec<String>, TranslateError> {
        let mut r = Recorder::default();
        configure(cfg, 7, Box::new(|_| {}), &mut r)?;
        Ok(r.calls)
    }

    #[test]
    fn every_field_becomes_a_builder_call() {
        assert_eq!(
            calls(&config()).unwrap(),
            [
                "machine vcpus=2 memory_mib=384",
                "krunfw /assets/libkrunfw.so.5",
                "initramfs /assets/initramfs.cpio",
                "init /init",
                "cmdline MSB_HOSTNAME=web MSB_LOG=debug",
                "disk lower /sb/lower.erofs ro",
                "disk upper /sb/upper.img rw",
                "share pod /sb/share",
                "console_output /sb/console.log",
                "port agent fd=7",
                "on_exit",
            ]
        );
    }

    #[test]
    fn a_pod_network_is_exactly_one_net_call() {
        let mut c = config();
        c.net = Some(net());
        let with = calls(&c).unwrap();
        let without = calls(&config()).unwrap();
        let nets: Vec<_> = with.iter().filter(|c| c.starts_with("net")).collect();
        assert_eq!(nets, ["net fd=4 mac=02:6d:73:62:00:0a mtu=1450"]);
        // After the shares, before the console; nothing else changes.
        assert_eq!(with[8], "net fd=4 mac=02:6d:73:62:00:0a mtu=1450");
        let rest: Vec<_> = with.iter().filter(|c| !c.starts_with("net")).collect();
        assert_eq!(rest, without.iter().collect::<Vec<_>>());
        assert!(!without.iter().any(|c| c.starts_with("net")));
    }

    #[test]
    fn refuses_a_pod_network_it_cannot_serve() {
        let bad = [
            LaunchNet { fd: 1, ..net() },
            LaunchNet { fd: 3, ..net() },
            LaunchNet {
                mac: [0x03, 0, 0, 0, 0, 1],
                ..net()
            },
            LaunchNet {
                mac: [0; 6],
                ..net()
            },
            LaunchNet { mtu: 1501, ..net() },
            LaunchNet { mtu: 9001, ..net() },
            LaunchNet { mtu: 67, ..net() },
        ];
        for n in bad {
            let mut c = config();
            c.net = Some(n.clone());
            assert!(
                matches!(calls(&c), Err(TranslateError::Net(_))),
                "{n:?} accepted"
            );
        }
        let mut c = config();
        c.net = Some(LaunchNet { mtu: 1500, ..net() });
        assert!(calls(&c).is_ok());
    }

    #[test]
    fn minimal_config_has_no_cmdline_disks_or_shares() {
        let mut c = config();
        c.cmdline.clear();
        c.disks.clear();
        c.shares.clear();
        let calls = calls(&c).unwrap();
        assert!(!calls.iter().any(|c| c.starts_with("cmdline")
            || c.starts_with("disk")
            || c.starts_with("share")
            || c.starts_with("net")));
        assert_eq!(calls.len(), 7);
    }

    #[test]
    fn refuses_what_the_guest_could_not_use() {
        let mut c = config();
        c.vcpus = 0;
        assert!(matches!(
            calls(&c),
            Err(TranslateError::Machine { vcpus: 0, .. })
        ));
        for word in ["", "A=b c", "A=\tb", "A=é"] {
            let mut c = config();
            c.cmdline.push(word.into());
            assert_eq!(calls(&c), Err(TranslateError::CmdlineWord(word.into())));
        }
        for serial in ["", "lower", "a-serial-of-21-bytes-", "sp ace"] {
            let mut c = config();
            c.disks.push(LaunchDisk {
                serial: serial.into(),
                path: "/x".into(),
                read_only: true,
            });
            assert_eq!(calls(&c), Err(TranslateError::Serial(serial.into())));
        }
        let mut c = config();
        c.shares[0].read_only = true;
        assert_eq!(calls(&c), Err(TranslateError::ReadOnlyShare("pod".into())));
        let mut c = config();
        c.disks[1].path = "upper.img".into();
        assert_eq!(
            calls(&c),
            Err(TranslateError::RelativePath {
                what: "disk",
                path: "upper.img".into()
            })
        );
    }
}
