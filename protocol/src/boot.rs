//! `MSB_*` boot settings: VM-wide guest settings that reach agentd as `KEY=VALUE` words on the
//! kernel command line (the kernel hands unknown words to init as environment variables).
//!
//! The command line is world-readable in the guest and visible on the host, so nothing secret
//! belongs here: container env and credentials travel over the agent channel.
//!
//! Every value has a typed form with `parse` and `Display`, and the two round-trip. Values may
//! not contain white space, since the kernel splits its command line on it.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// `MSB_HOSTNAME`: the VM's hostname. Format: a bare name, e.g. `worker-01`.
pub const ENV_HOSTNAME: &str = "MSB_HOSTNAME";
/// `MSB_TMPFS`: tmpfs mounts. Format `path[,size=MiB][,mode=OCTAL][,noexec][;...]`,
/// e.g. `/tmp,size=256;/var/tmp,size=128`.
pub const ENV_TMPFS: &str = "MSB_TMPFS";
/// `MSB_NET`: the network interface. Format `iface=NAME,mac=AA:BB:CC:DD:EE:FF[,mtu=N]`.
pub const ENV_NET: &str = "MSB_NET";
/// `MSB_NET_IPV4`: Format `addr=A.B.C.D/N,gw=A.B.C.D[,dns=A.B.C.D]`.
pub const ENV_NET_IPV4: &str = "MSB_NET_IPV4";
/// `MSB_NET_IPV6`: Format `addr=ADDR/N,gw=ADDR[,dns=ADDR]`.
pub const ENV_NET_IPV6: &str = "MSB_NET_IPV6";
/// `MSB_USER`: default user of execs. Format `USER[:GROUP]` or `UID[:GID]`.
pub const ENV_USER: &str = "MSB_USER";
/// `MSB_RLIMITS`: VM-wide resource limits. Format `resource=soft[:hard][;...]`,
/// e.g. `nofile=512:1024;core=0`.
pub const ENV_RLIMITS: &str = "MSB_RLIMITS";
/// `MSB_DIR_MOUNTS`: virtio-fs directory shares. Format `tag:guest_path[:opt,opt][;...]` with
/// options `ro`, `noexec`, `nosuid`, `nodev`.
pub const ENV_DIR_MOUNTS: &str = "MSB_DIR_MOUNTS";
/// `MSB_FILE_MOUNTS`: single files from a virtio-fs share. Format
/// `tag:filename:guest_path[:opt,opt][;...]`.
pub const ENV_FILE_MOUNTS: &str = "MSB_FILE_MOUNTS";
/// `MSB_LOG`: agentd's log level (`error`, `warn`, `info`, `debug`, `trace`). Ours.
pub const ENV_LOG: &str = "MSB_LOG";
/// `MSB_TEMPLATE`: this boot makes a template VM (format `1`), saved once agentd is ready and
/// restored for each sandbox (docs/PERFORMANCE.md, "Templates"). agentd then leaves the disks
/// and network devices unbound until `core.restore` names the sandbox's. Ours.
pub const ENV_TEMPLATE: &str = "MSB_TEMPLATE";

/// Every `MSB_*` variable name.
pub const ALL_ENV_VARS: &[&str] = &[
    ENV_HOSTNAME,
    ENV_TMPFS,
    ENV_NET,
    ENV_NET_IPV4,
    ENV_NET_IPV6,
    ENV_USER,
    ENV_RLIMITS,
    ENV_DIR_MOUNTS,
    ENV_FILE_MOUNTS,
    ENV_LOG,
    ENV_TEMPLATE,
];

/// A value that does not parse. Names the variable, the entry and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: entry {entry:?}: {reason}")]
pub struct BootEnvError {
    /// The variable.
    pub var: &'static str,
    /// The offending entry (the whole value for single-entry variables).
    pub entry: String,
    /// What was wrong.
    pub reason: String,
}

fn err(var: &'static str, entry: &str, reason: impl Into<String>) -> BootEnvError {
    BootEnvError {
        var,
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

/// Splits a `;`-separated list, skipping empty entries.
fn entries(value: &str) -> impl Iterator<Item = &str> {
    value.split(';').filter(|e| !e.is_empty())
}

/// Rejects characters that cannot travel on the kernel command line or would break the format.
fn check_token(
    var: &'static str,
    entry: &str,
    what: &str,
    s: &str,
    forbidden: &[char],
) -> Result<(), BootEnvError> {
    if s.is_empty() {
        return Err(err(var, entry, format!("{what} is empty")));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || forbidden.contains(c))
    {
        return Err(err(
            var,
            entry,
            format!("{what} {s:?} contains the character {c:?}"),
        ));
    }
    Ok(())
}

fn check_abs_path(var: &'static str, entry: &str, path: &str) -> Result<(), BootEnvError> {
    check_token(var, entry, "path", path, &[';', ',', ':', '='])?;
    if !path.starts_with('/') {
        return Err(err(var, entry, format!("path {path:?} is not absolute")));
    }
    Ok(())
}

/// Splits `key=value` pairs separated by `,`.
fn key_values<'a>(
    var: &'static str,
    entry: &'a str,
) -> Result<Vec<(&'a str, &'a str)>, BootEnvError> {
    entry
        .split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| err(var, entry, format!("{kv:?} is not key=value")))
        })
        .collect()
}

fn parse_num<T: FromStr>(
    var: &'static str,
    entry: &str,
    key: &str,
    v: &str,
) -> Result<T, BootEnvError> {
    v.parse().map_err(|_| {
        err(
            var,
            entry,
            format!("{key} value {v:?} is not a valid number"),
        )
    })
}

// ---------------------------------------------------------------------------------------------

/// `MSB_HOSTNAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    /// Checks a hostname: 1 to 64 bytes of letters, digits, `-` and `.`.
    pub fn parse(value: &str) -> Result<Self, BootEnvError> {
        if value.is_empty() || value.len() > 64 {
            return Err(err(ENV_HOSTNAME, value, "must be 1 to 64 characters long"));
        }
        if let Some(c) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
        {
            return Err(err(
                ENV_HOSTNAME,
                value,
                format!("character {c:?} is not allowed (letters, digits, '-', '.')"),
            ));
        }
        Ok(Hostname(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------

/// One entry of `MSB_TMPFS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsSpec {
    /// Mount point.
    pub path: String,
    /// Size limit in MiB.
    pub size_mib: Option<u64>,
    /// Permission bits of the root (octal on the wire).
    pub mode: Option<u32>,
    /// Mount with `noexec`.
    pub noexec: bool,
}

impl TmpfsSpec {
    /// Parses the whole `MSB_TMPFS` value.
    pub fn parse_list(value: &str) -> Result<Vec<Self>, BootEnvError> {
        entries(value).map(Self::parse_entry).collect()
    }

    fn parse_entry(entry: &str) -> Result<Self, BootEnvError> {
        let mut parts = entry.split(',');
        let path = parts.next().unwrap_or_default();
        check_abs_path(ENV_TMPFS, entry, path)?;
        let mut spec = TmpfsSpec {
            path: path.to_owned(),
            size_mib: None,
            mode: None,
            noexec: false,
        };
        for opt in parts {
            match opt.split_once('=') {
                Some(("size", v)) => {
                    let size: u64 = parse_num(ENV_TMPFS, entry, "size", v)?;
                    if size == 0 {
                        return Err(err(ENV_TMPFS, entry, "size must be at least 1 MiB"));
                    }
                    spec.size_mib = Some(size);
                }
                Some(("mode", v)) => {
                    let mode = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            err(
                                ENV_TMPFS,
                                entry,
                                format!("mode {v:?} is not an octal mode up to 7777"),
                            )
                        })?;
                    spec.mode = Some(mode);
                }
                None if opt == "noexec" => spec.noexec = true,
                _ => {
                    return Err(err(
                        ENV_TMPFS,
                        entry,
                        format!("unknown option {opt:?} (size=, mode=, noexec)"),
                    ))
                }
            }
        }
        Ok(spec)
    }

    /// Formats a list as the `MSB_TMPFS` value.
    pub fn format_list(specs: &[Self]) -> String {
        join(specs)
    }
}

impl fmt::Display for TmpfsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)?;
        if let Some(size) = self.size_mib {
            write!(f, ",size={size}")?;
        }
        if let Some(mode) = self.mode {
            write!(f, ",mode={mode:o}")?;
        }
        if self.noexec {
            f.write_str(",noexec")?;
        }
        Ok(())
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";")
}

// ---------------------------------------------------------------------------------------------

/// `MSB_NET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Interface name in the guest.
    pub iface: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU.
    pub mtu: Option<u16>,
}

impl NetSpec {
    /// Parses the `MSB_NET` value.
    pub fn parse(value: &str) -> Result<Self, BootEnvError> {
        let (mut iface, mut mac, mut mtu) = (None, None, None);
        for (k, v) in key_values(ENV_NET, value)? {
            match k {
                "iface" => {
                    check_token(ENV_NET, value, "iface", v, &[',', ';', '=', '/'])?;
                    if v.len() > 15 {
                        return Err(err(
                            ENV_NET,
                            value,
                            format!("iface {v:?} is longer than 15 characters"),
                        ));
                    }
                    iface = Some(v.to_owned());
                }
                "mac" => {
                    mac = Some(parse_mac(v).ok_or_else(|| {
                        err(
                            ENV_NET,
                            value,
                            format!("mac {v:?} is not AA:BB:CC:DD:EE:FF"),
                        )
                    })?)
                }
                "mtu" => {
                    let m: u16 = parse_num(ENV_NET, value, "mtu", v)?;
                    if m < 68 {
                        return Err(err(ENV_NET, value, format!("mtu {m} is below 68")));
                    }
                    mtu = Some(m);
                }
                _ => {
                    return Err(err(
                        ENV_NET,
                        value,
                        format!("unknown key {k:?} (iface, mac, mtu)"),
                    ))
                }
            }
        }
        Ok(NetSpec {
            iface: iface.ok_or_else(|| err(ENV_NET, value, "iface= is required"))?,
            mac: mac.ok_or_else(|| err(ENV_NET, value, "mac= is required"))?,
            mtu,
        })
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl fmt::Display for NetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.mac;
        write!(
            f,
            "iface={},mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            self.iface, m[0], m[1], m[2], m[3], m[4], m[5]
        )?;
        if let Some(mtu) = self.mtu {
            write!(f, ",mtu={mtu}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// `MSB_NET_IPV4` (`A = Ipv4Addr`) and `MSB_NET_IPV6` (`A = Ipv6Addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSpec<A> {
    /// Address.
    pub addr: A,
    /// Prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gw: A,
    /// DNS server.
    pub dns: Option<A>,
}

/// `MSB_NET_IPV4`.
pub type Ipv4Spec = IpSpec<Ipv4Addr>;
/// `MSB_NET_IPV6`.
pub type Ipv6Spec = IpSpec<Ipv6Addr>;

/// Address families of [`IpSpec`].
pub trait IpFamily: FromStr + fmt::Display + Copy {
    /// The variable carrying this family.
    const VAR: &'static str;
    /// Longest prefix.
    const MAX_PREFIX: u8;
}

impl IpFamily for Ipv4Addr {
    const VAR: &'static str = ENV_NET_IPV4;
    const MAX_PREFIX: u8 = 32;
}

impl IpFamily for Ipv6Addr {
    const VAR: &'static str = ENV_NET_IPV6;
    const MAX_PREFIX: u8 = 128;
}

impl<A: IpFamily> IpSpec<A> {
    /// Parses the variable's value.
    pub fn parse(value: &str) -> Result<Self, BootEnvError> {
        let var = A::VAR;
        let ip = |k: &str, v: &str| {
            v.parse::<A>()
                .map_err(|_| err(var, value, format!("{k} {v:?} is not a valid address")))
        };
        let (mut addr, mut gw, mut dns) = (None, None, None);
        for (k, v) in key_values(var, value)? {
            match k {
                "addr" => {
                    let (a, p) = v
                        .split_once('/')
                        .ok_or_else(|| err(var, value, format!("addr {v:?} lacks a /prefix")))?;
                    let prefix: u8 = parse_num(var, value, "prefix", p)?;
                    if prefix > A::MAX_PREFIX {
                        return Err(err(
                            var,
                            value,
                            format!("prefix {prefix} exceeds {}", A::MAX_PREFIX),
                        ));
                    }
                    addr = Some((ip(k, a)?, prefix));
                }
                "gw" => gw = Some(ip(k, v)?),
                "dns" => dns = Some(ip(k, v)?),
                _ => {
                    return Err(err(
                        var,
                        value,
                        format!("unknown key {k:?} (addr, gw, dns)"),
                    ))
                }
            }
        }
        let (addr, prefix) = addr.ok_or_else(|| err(var, value, "addr= is required"))?;
        Ok(IpSpec {
            addr,
            prefix,
            gw: gw.ok_or_else(|| err(var, value, "gw= is required"))?,
            dns,
        })
    }
}

impl<A: IpFamily> fmt::Display for IpSpec<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "addr={}/{},gw={}", self.addr, self.prefix, self.gw)?;
        if let Some(dns) = self.dns {
            write!(f, ",dns={dns}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// A user or group: by name or by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdRef {
    /// Numeric id.
    Id(u32),
    /// Name, resolved in the guest's `/etc/passwd` or `/etc/group`.
    Name(String),
}

impl fmt::Display for IdRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdRef::Id(id) => write!(f, "{id}"),
            IdRef::Name(name) => f.write_str(name),
        }
    }
}

/// `MSB_USER`, and the `user` field of `core.exec.request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// The user.
    pub user: IdRef,
    /// The group, when given.
    pub group: Option<IdRef>,
}

impl UserSpec {
    /// Parses `USER[:GROUP]` or `UID[:GID]`; `var` names the source in errors.
    pub fn parse_for(var: &'static str, value: &str) -> Result<Self, BootEnvError> {
        let id = |what: &str, s: &str| -> Result<IdRef, BootEnvError> {
            check_token(var, value, what, s, &[':', ';', ',', '='])?;
            if s.bytes().all(|b| b.is_ascii_digit()) {
                return parse_num(var, value, what, s).map(IdRef::Id);
            }
            Ok(IdRef::Name(s.to_owned()))
        };
        let (user, group) = match value.split_once(':') {
            Some((u, g)) => (id("user", u)?, Some(id("group", g)?)),
            None => (id("user", value)?, None),
        };
        Ok(UserSpec { user, group })
    }

    /// Parses the `MSB_USER` value.
    pub fn parse(value: &str) -> Result<Self, BootEnvError> {
        Self::parse_for(ENV_USER, value)
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.user)?;
        if let Some(g) = &self.group {
            write!(f, ":{g}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// A resource `setrlimit` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum RlimitResource {
    Cpu,
    Fsize,
    Data,
    Stack,
    Core,
    Rss,
    Nproc,
    Nofile,
    Memlock,
    As,
    Locks,
    Sigpending,
    Msgqueue,
    Nice,
    Rtprio,
    Rttime,
}

impl RlimitResource {
    /// Every resource with its short name.
    pub const ALL: [(RlimitResource, &'static str); 16] = [
        (Self::Cpu, "cpu"),
        (Self::Fsize, "fsize"),
        (Self::Data, "data"),
        (Self::Stack, "stack"),
        (Self::Core, "core"),
        (Self::Rss, "rss"),
        (Self::Nproc, "nproc"),
        (Self::Nofile, "nofile"),
        (Self::Memlock, "memlock"),
        (Self::As, "as"),
        (Self::Locks, "locks"),
        (Self::Sigpending, "sigpending"),
        (Self::Msgqueue, "msgqueue"),
        (Self::Nice, "nice"),
        (Self::Rtprio, "rtprio"),
        (Self::Rttime, "rttime"),
    ];

    /// Accepts the short name (`nofile`) or the OCI/C spelling (`RLIMIT_NOFILE`).
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        let short = lower.strip_prefix("rlimit_").unwrap_or(&lower);
        Self::ALL.iter().find(|(_, n)| *n == short).map(|(r, _)| *r)
    }

    /// The short name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("?")
    }
}

/// One entry of `MSB_RLIMITS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlimitSpec {
    /// Resource.
    pub resource: RlimitResource,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit (equal to soft when not given).
    pub hard: u64,
}

impl RlimitSpec {
    /// Parses the whole `MSB_RLIMITS` value.
    pub fn parse_list(value: &str) -> Result<Vec<Self>, BootEnvError> {
        entries(value).map(Self::parse_entry).collect()
    }

    fn parse_entry(entry: &str) -> Result<Self, BootEnvError> {
        let v = ENV_RLIMITS;
        let (name, limits) = entry
            .split_once('=')
            .ok_or_else(|| err(v, entry, "expected resource=soft[:hard]"))?;
        let resource = RlimitResource::from_name(name)
            .ok_or_else(|| err(v, entry, format!("unknown resource {name:?}")))?;
        let limit = |s: &str| -> Result<u64, BootEnvError> {
            if s == "unlimited" || s == "infinity" {
                return Ok(u64::MAX);
            }
            parse_num(v, entry, "limit", s)
        };
        let (soft, hard) = match limits.split_once(':') {
            Some((s, h)) => (limit(s)?, limit(h)?),
            None => {
                let l = limit(limits)?;
                (l, l)
            }
        };
        if soft > hard {
            return Err(err(
                v,
                entry,
                format!("soft limit {soft} exceeds hard limit {hard}"),
            ));
        }
        Ok(RlimitSpec {
            resource,
            soft,
            hard,
        })
    }

    /// Formats a list as the `MSB_RLIMITS` value.
    pub fn format_list(specs: &[Self]) -> String {
        join(specs)
    }
}

fn fmt_limit(l: u64) -> String {
    if l == u64::MAX {
        "unlimited".to_owned()
    } else {
        l.to_string()
    }
}

impl fmt::Display for RlimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.resource.name(), fmt_limit(self.soft))?;
        if self.hard != self.soft {
            write!(f, ":{}", fmt_limit(self.hard))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Options of a share mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    /// Read-only.
    pub ro: bool,
    /// `noexec`.
    pub noexec: bool,
    /// `nosuid`.
    pub nosuid: bool,
    /// `nodev`.
    pub nodev: bool,
}

impl MountFlags {
    fn parse(var: &'static str, entry: &str, s: &str) -> Result<Self, BootEnvError> {
        let mut f = MountFlags::default();
        for opt in s.split(',') {
            match opt {
                "ro" => f.ro = true,
                "noexec" => f.noexec = true,
                "nosuid" => f.nosuid = true,
                "nodev" => f.nodev = true,
                _ => {
                    return Err(err(
                        var,
                        entry,
                        format!("unknown option {opt:?} (ro, noexec, nosuid, nodev)"),
                    ))
                }
            }
        }
        Ok(f)
    }

    fn is_empty(self) -> bool {
        self == MountFlags::default()
    }
}

impl fmt::Display for MountFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (self.ro, "ro"),
            (self.noexec, "noexec"),
            (self.nosuid, "nosuid"),
            (self.nodev, "nodev"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&set.join(","))
    }
}

/// One entry of `MSB_DIR_MOUNTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirMountSpec {
    /// virtio-fs tag.
    pub tag: String,
    /// Mount point in the guest.
    pub guest_path: String,
    /// Options.
    pub flags: MountFlags,
}

impl DirMountSpec {
    /// Parses the whole `MSB_DIR_MOUNTS` value.
    pub fn parse_list(value: &str) -> Result<Vec<Self>, BootEnvError> {
        entries(value)
            .map(|entry| {
                let var = ENV_DIR_MOUNTS;
                let parts: Vec<&str> = entry.split(':').collect();
                let (tag, path, flags) = match parts.as_slice() {
                    [tag, path] => (*tag, *path, MountFlags::default()),
                    [tag, path, opts] => (*tag, *path, MountFlags::parse(var, entry, opts)?),
                    _ => return Err(err(var, entry, "expected tag:guest_path[:options]")),
                };
                check_token(var, entry, "tag", tag, &[',', ';', '=', '/'])?;
                check_abs_path(var, entry, path)?;
                Ok(DirMountSpec {
                    tag: tag.to_owned(),
                    guest_path: path.to_owned(),
                    flags,
                })
            })
            .collect()
    }

    /// Formats a list as the `MSB_DIR_MOUNTS` value.
    pub fn format_list(specs: &[Self]) -> String {
        join(specs)
    }
}

impl fmt::Display for DirMountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tag, self.guest_path)?;
        if !self.flags.is_empty() {
            write!(f, ":{}", self.flags)?;
        }
        Ok(())
    }
}

/// One entry of `MSB_FILE_MOUNTS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMountSpec {
    /// virtio-fs tag of the share holding the file.
    pub tag: String,
    /// File name inside the share.
    pub filename: String,
    /// Where the file appears in the guest.
    pub guest_path: String,
    /// Options.
    pub flags: MountFlags,
}

impl FileMountSpec {
    /// Parses the whole `MSB_FILE_MOUNTS` value.
    pub fn parse_list(value: &str) -> Result<Vec<Self>, BootEnvError> {
        entries(value)
            .map(|entry| {
                let var = ENV_FILE_MOUNTS;
                let parts: Vec<&str> = entry.split(':').collect();
                let (tag, file, path, flags) = match parts.as_slice() {
                    [tag, file, path] => (*tag, *file, *path, MountFlags::default()),
                    [tag, file, path, opts] => {
                        (*tag, *file, *path, MountFlags::parse(var, entry, opts)?)
                    }
                    _ => {
                        return Err(err(
                            var,
                            entry,
                            "expected tag:filename:guest_path[:options]",
                        ))
                    }
                };
                check_token(var, entry, "tag", tag, &[',', ';', '=', '/'])?;
                check_token(var, entry, "filename", file, &[',', ';', '=', '/'])?;
                if file == "." || file == ".." {
                    return Err(err(
                        var,
                        entry,
                        format!("filename {file:?} is not a file name"),
                    ));
                }
                check_abs_path(var, entry, path)?;
                Ok(FileMountSpec {
                    tag: tag.to_owned(),
                    filename: file.to_owned(),
                    guest_path: path.to_owned(),
                    flags,
                })
            })
            .collect()
    }

    /// Formats a list as the `MSB_FILE_MOUNTS` value.
    pub fn format_list(specs: &[Self]) -> String {
        join(specs)
    }
}

impl fmt::Display for FileMountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.tag, self.filename, self.guest_path)?;
        if !self.flags.is_empty() {
            write!(f, ":{}", self.flags)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------

/// Every boot setting, typed. Built by the host, rendered to kernel command line words, and
/// parsed back by agentd from its environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootEnv {
    /// `MSB_HOSTNAME`.
    pub hostname: Option<Hostname>,
    /// `MSB_TMPFS`.
    pub tmpfs: Vec<TmpfsSpec>,
    /// `MSB_NET`.
    pub net: Option<NetSpec>,
    /// `MSB_NET_IPV4`.
    pub ipv4: Option<Ipv4Spec>,
    /// `MSB_NET_IPV6`.
    pub ipv6: Option<Ipv6Spec>,
    /// `MSB_USER`.
    pub user: Option<UserSpec>,
    /// `MSB_RLIMITS`.
    pub rlimits: Vec<RlimitSpec>,
    /// `MSB_DIR_MOUNTS`.
    pub dir_mounts: Vec<DirMountSpec>,
    /// `MSB_FILE_MOUNTS`.
    pub file_mounts: Vec<FileMountSpec>,
    /// `MSB_LOG`.
    pub log: Option<String>,
    /// `MSB_TEMPLATE`.
    pub template: bool,
}

impl BootEnv {
    /// Reads the `MSB_*` variables among `vars`; others are ignored. Empty values count as unset.
    pub fn from_vars<K: AsRef<str>, V: AsRef<str>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, BootEnvError> {
        let mut env = BootEnv::default();
        for (k, v) in vars {
            let (k, v) = (k.as_ref(), v.as_ref());
            if v.is_empty() {
                continue;
            }
            match k {
                ENV_HOSTNAME => env.hostname = Some(Hostname::parse(v)?),
                ENV_TMPFS => env.tmpfs = TmpfsSpec::parse_list(v)?,
                ENV_NET => env.net = Some(NetSpec::parse(v)?),
                ENV_NET_IPV4 => env.ipv4 = Some(Ipv4Spec::parse(v)?),
                ENV_NET_IPV6 => env.ipv6 = Some(Ipv6Spec::parse(v)?),
                ENV_USER => env.user = Some(UserSpec::parse(v)?),
                ENV_RLIMITS => env.rlimits = RlimitSpec::parse_list(v)?,
                ENV_DIR_MOUNTS => env.dir_mounts = DirMountSpec::parse_list(v)?,
                ENV_FILE_MOUNTS => env.file_mounts = FileMountSpec::parse_list(v)?,
                ENV_LOG => {
                    check_token(ENV_LOG, v, "level", v, &[])?;
                    env.log = Some(v.to_owned())
                }
                ENV_TEMPLATE => match v {
                    "1" => env.template = true,
                    "0" => env.template = false,
                    _ => return Err(err(ENV_TEMPLATE, v, "expected 1 or 0")),
                },
                _ => {}
            }
        }
        Ok(env)
    }

    /// The settings as `(name, value)` pairs, unset ones omitted.
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut push = |k: &'static str, v: String| {
            if !v.is_empty() {
                out.push((k, v));
            }
        };
        push(
            ENV_HOSTNAME,
            self.hostname
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        push(ENV_TMPFS, TmpfsSpec::format_list(&self.tmpfs));
        push(
            ENV_NET,
            self.net
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        push(
            ENV_NET_IPV4,
            self.ipv4
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        push(
            ENV_NET_IPV6,
            self.ipv6
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        push(
            ENV_USER,
            self.user
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        );
        push(ENV_RLIMITS, RlimitSpec::format_list(&self.rlimits));
        push(ENV_DIR_MOUNTS, DirMountSpec::format_list(&self.dir_mounts));
        push(
            ENV_FILE_MOUNTS,
            FileMountSpec::format_list(&self.file_mounts),
        );
        push(ENV_LOG, self.log.clone().unwrap_or_default());
        if self.template {
            push(ENV_TEMPLATE, "1".into());
        }
        out
    }

    /// The settings as kernel command line words (`KEY=VALUE`).
    pub fn to_cmdline_words(&self) -> Vec<String> {
        self.to_vars()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}
