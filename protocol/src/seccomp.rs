//! **Ours:** a container's seccomp profile, as the OCI runtime spec's `linux.seccomp` has it.
//!
//! The host maps the spec's profile one to one (`msb_oci`); agentd compiles it to a BPF program
//! and installs it in every process of the container (its init and each exec), as runc does.
//! Actions and operators are enums, so a name the protocol does not know fails to decode;
//! architectures and flags stay strings, which agentd checks against what it can filter (a
//! newer spec may name more than this crate lists).

use serde::{Deserialize, Serialize};

/// `linux.seccomp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seccomp {
    /// What a system call no rule matches gets.
    pub default_action: SeccompAction,
    /// The errno of `default_action` when it is `SCMP_ACT_ERRNO` (default `EPERM`) or
    /// `SCMP_ACT_TRACE` (the tracer's message; default `EPERM`).
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*` names: the architectures whose system calls the profile filters (the
    /// native one always is).
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `SECCOMP_FILTER_FLAG_*` names.
    #[serde(default)]
    pub flags: Vec<String>,
    /// The rules, in spec order.
    #[serde(default)]
    pub syscalls: Vec<SeccompSyscall>,
}

/// One rule: system calls by name, an action, and conditions on their arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompSyscall {
    /// System call names (`mkdir`); names unknown to the guest are skipped, as runc does.
    pub names: Vec<String>,
    /// The action when a call matches.
    pub action: SeccompAction,
    /// The errno of `SCMP_ACT_ERRNO` / `SCMP_ACT_TRACE` (default `EPERM`).
    #[serde(default)]
    pub errno_ret: Option<u32>,
    /// Conditions on arguments (see [`SeccompArg`] for how they combine).
    #[serde(default)]
    pub args: Vec<SeccompArg>,
}

/// A condition on one argument. The conditions of a rule must all hold, except that when two
/// of them name the same argument, each becomes a rule of its own (any may hold), as runc does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompArg {
    /// The argument, `0..=5`.
    pub index: u32,
    /// The operand; for `SCMP_CMP_MASKED_EQ` the mask.
    pub value: u64,
    /// For `SCMP_CMP_MASKED_EQ` the value the masked argument must equal; else unused.
    #[serde(default)]
    pub value_two: u64,
    /// The comparison (64-bit, unsigned).
    pub op: SeccompOp,
}

/// `SCMP_ACT_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeccompAction {
    /// Kill the thread (the historical name of `SCMP_ACT_KILL_THREAD`).
    #[serde(rename = "SCMP_ACT_KILL")]
    Kill,
    /// Kill the thread.
    #[serde(rename = "SCMP_ACT_KILL_THREAD")]
    KillThread,
    /// Kill the process.
    #[serde(rename = "SCMP_ACT_KILL_PROCESS")]
    KillProcess,
    /// Send `SIGSYS`.
    #[serde(rename = "SCMP_ACT_TRAP")]
    Trap,
    /// Fail with an errno.
    #[serde(rename = "SCMP_ACT_ERRNO")]
    Errno,
    /// Hand to a seccomp agent; not supported (refused by the host and the guest).
    #[serde(rename = "SCMP_ACT_NOTIFY")]
    Notify,
    /// Notify a ptrace tracer (`-ENOSYS` without one).
    #[serde(rename = "SCMP_ACT_TRACE")]
    Trace,
    /// Allow and log.
    #[serde(rename = "SCMP_ACT_LOG")]
    Log,
    /// Allow.
    #[serde(rename = "SCMP_ACT_ALLOW")]
    Allow,
}

impl SeccompAction {
    /// The OCI name.
    pub fn name(self) -> &'static str {
        match self {
            SeccompAction::Kill => "SCMP_ACT_KILL",
            SeccompAction::KillThread => "SCMP_ACT_KILL_THREAD",
            SeccompAction::KillProcess => "SCMP_ACT_KILL_PROCESS",
            SeccompAction::Trap => "SCMP_ACT_TRAP",
            SeccompAction::Errno => "SCMP_ACT_ERRNO",
            SeccompAction::Notify => "SCMP_ACT_NOTIFY",
            SeccompAction::Trace => "SCMP_ACT_TRACE",
            SeccompAction::Log => "SCMP_ACT_LOG",
            SeccompAction::Allow => "SCMP_ACT_ALLOW",
        }
    }
}

/// `SCMP_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SeccompOp {
    /// `!=`.
    #[serde(rename = "SCMP_CMP_NE")]
    Ne,
    /// `<`.
    #[serde(rename = "SCMP_CMP_LT")]
    Lt,
    /// `<=`.
    #[serde(rename = "SCMP_CMP_LE")]
    Le,
    /// `==`.
    #[serde(rename = "SCMP_CMP_EQ")]
    Eq,
    /// `>=`.
    #[serde(rename = "SCMP_CMP_GE")]
    Ge,
    /// `>`.
    #[serde(rename = "SCMP_CMP_GT")]
    Gt,
    /// `(arg & value) == value_two`.
    #[serde(rename = "SCMP_CMP_MASKED_EQ")]
    MaskedEq,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_oci_ones() {
        let json = r#"{"default_action": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["x"],
            "action": "SCMP_ACT_KILL", "args": [{"index": 1, "value": 2, "op": "SCMP_CMP_MASKED_EQ"}]}]}"#;
        let s: Seccomp = serde_json::from_str(json).unwrap();
        assert_eq!(s.default_action, SeccompAction::Errno);
        assert_eq!(s.syscalls[0].action.name(), "SCMP_ACT_KILL");
        assert_eq!(s.syscalls[0].args[0].op, SeccompOp::MaskedEq);
        assert_eq!(s.syscalls[0].args[0].value_two, 0);
        assert!(serde_json::from_str::<SeccompAction>(r#""SCMP_ACT_NOPE""#).is_err());
    }

    #[test]
    fn a_profile_round_trips_through_cbor() {
        let profile = Seccomp {
            default_action: SeccompAction::Errno,
            default_errno_ret: Some(1),
            architectures: vec!["SCMP_ARCH_X86_64".into()],
            flags: vec!["SECCOMP_FILTER_FLAG_LOG".into()],
            syscalls: vec![SeccompSyscall {
                names: vec!["personality".into()],
                action: SeccompAction::Allow,
                errno_ret: None,
                args: vec![SeccompArg {
                    index: 0,
                    value: u64::MAX,
                    value_two: 7,
                    op: SeccompOp::Le,
                }],
            }],
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&profile, &mut bytes).unwrap();
        let back: Seccomp = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, profile);
    }
}
