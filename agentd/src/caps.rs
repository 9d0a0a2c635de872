//! Linux capabilities by their OCI names, and the five sets of a process as the bit masks and
//! `capset(2)` data that the spawned child applies between fork and exec (where it may not
//! allocate: everything is computed here, in the parent).

use msb_protocol::types::CapabilitySets;

/// Capability numbers are indexes into this table (`linux/capability.h`).
const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
pub const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CapHeader {
    /// [`CAPABILITY_VERSION_3`].
    pub version: u32,
    /// 0: this thread.
    pub pid: i32,
}

/// `struct __user_cap_data_struct`: one 32-bit half of three sets.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapData {
    /// Effective.
    pub effective: u32,
    /// Permitted.
    pub permitted: u32,
    /// Inheritable.
    pub inheritable: u32,
}

/// A process's capabilities, ready for the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapMasks {
    /// Bit `n` set: capability `n` stays in the bounding set.
    pub bounding: u64,
    /// Bit `n` set: capability `n` is raised in the ambient set.
    pub ambient: u64,
    /// The `capset(2)` data: low and high halves of effective, permitted, inheritable.
    pub data: [CapData; 2],
}

/// The bit mask of `names`; names this table does not know (a newer runtime spec) are skipped
/// with a warning, as runc does.
fn mask(names: &[String]) -> u64 {
    names
        .iter()
        .fold(0, |m, name| match NAMES.iter().position(|n| *n == name) {
            Some(bit) => m | (1 << bit),
            None => {
                tracing::warn!("unknown capability {name}: ignored");
                m
            }
        })
}

/// The low and high 32 bits of a 64-bit set.
fn halves(m: u64) -> (u32, u32) {
    let [a, b, c, d, e, f, g, h] = m.to_le_bytes();
    (
        u32::from_le_bytes([a, b, c, d]),
        u32::from_le_bytes([e, f, g, h]),
    )
}

impl CapMasks {
    /// The masks of the OCI sets.
    pub fn new(sets: &CapabilitySets) -> CapMasks {
        let (e, p, i) = (
            halves(mask(&sets.effective)),
            halves(mask(&sets.permitted)),
            halves(mask(&sets.inheritable)),
        );
        CapMasks {
            bounding: mask(&sets.bounding),
            ambient: mask(&sets.ambient),
            data: [
                CapData {
                    effective: e.0,
                    permitted: p.0,
                    inheritable: i.0,
                },
                CapData {
                    effective: e.1,
                    permitted: p.1,
                    inheritable: i.1,
                },
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_bits_and_unknown_ones_are_skipped() {
        let sets = CapabilitySets {
            bounding: vec!["CAP_CHOWN".into(), "CAP_KILL".into(), "CAP_NO_SUCH".into()],
            effective: vec!["CAP_CHECKPOINT_RESTORE".into(), "CAP_CHOWN".into()],
            inheritable: vec![],
            permitted: vec!["CAP_AUDIT_READ".into()],
            ambient: vec!["CAP_KILL".into()],
        };
        let m = CapMasks::new(&sets);
        assert_eq!(m.bounding, 1 | 1 << 5);
        assert_eq!(m.ambient, 1 << 5);
        assert_eq!(
            m.data,
            [
                CapData {
                    effective: 1,
                    permitted: 0,
                    inheritable: 0
                },
                // CAP_CHECKPOINT_RESTORE is 40, CAP_AUDIT_READ 37: the high halves' bits 8 and 5.
                CapData {
                    effective: 1 << 8,
                    permitted: 1 << 5,
                    inheritable: 0
                }
            ]
        );
        // containerd's 14 defaults: CapEff 00000000a80425fb, as runc gives them.
        let defaults = [
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FSETID",
            "CAP_FOWNER",
            "CAP_MKNOD",
            "CAP_NET_RAW",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE",
            "CAP_SYS_CHROOT",
            "CAP_KILL",
            "CAP_AUDIT_WRITE",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(mask(&defaults), 0xa804_25fb);
    }
}
