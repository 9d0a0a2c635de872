//! OCI `linux.seccomp` -> the guest's [`Seccomp`] profile, field for field.
//!
//! The guest compiles and installs it (agentd's `seccomp` module); here only what no runtime
//! could apply is refused, naming the field: `SCMP_ACT_NOTIFY` (it needs a seccomp agent on the
//! host, which we do not run), an argument index past the sixth, an errno that does not fit the
//! 16 data bits of a seccomp return value, an empty system call name (runc refuses it too).
//! Unknown system call names are the guest's business: it skips them, as runc does.

use msb_protocol::seccomp::{Seccomp, SeccompAction, SeccompArg, SeccompOp, SeccompSyscall};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

/// A value of the profile no runtime can apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// JSON-path style: `linux.seccomp.syscalls[3].args[0].index`.
    pub field: String,
    /// The value, as the spec has it.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The profile of `linux.seccomp`.
pub fn seccomp_from_linux(s: &LinuxSeccomp) -> Result<Seccomp, InvalidField> {
    let base = "linux.seccomp";
    let default_errno_ret = errno(s.default_errno_ret(), || format!("{base}.defaultErrnoRet"))?;
    let default_action = action(s.default_action(), || format!("{base}.defaultAction"))?;
    let mut syscalls = Vec::new();
    for (i, rule) in s
        .syscalls()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let at = format!("{base}.syscalls[{i}]");
        for (n, name) in rule.names().iter().enumerate() {
            if name.is_empty() {
                return Err(InvalidField {
                    field: format!("{at}.names[{n}]"),
                    value: String::new(),
                    why: "is not a system call name",
                });
            }
        }
        let mut args = Vec::new();
        for (a, arg) in rule
            .args()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let index = u32::try_from(arg.index())
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| InvalidField {
                    field: format!("{at}.args[{a}].index"),
                    value: arg.index().to_string(),
                    why: "is not an argument index (a system call has 6: 0 to 5)",
                })?;
            args.push(SeccompArg {
                index,
                value: arg.value(),
                value_two: arg.value_two().unwrap_or(0),
                op: op(arg.op()),
            });
        }
        syscalls.push(SeccompSyscall {
            names: rule.names().clone(),
            action: action(rule.action(), || format!("{at}.action"))?,
            errno_ret: errno(rule.errno_ret(), || format!("{at}.errnoRet"))?,
            args,
        });
    }
    Ok(Seccomp {
        default_action,
        default_errno_ret,
        architectures: s
            .architectures()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|a| a.to_string())
            .collect(),
        flags: s
            .flags()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|f| f.to_string())
            .collect(),
        syscalls,
    })
}

fn errno(e: Option<u32>, field: impl FnOnce() -> String) -> Result<Option<u32>, InvalidField> {
    match e {
        Some(v) if v > u32::from(u16::MAX) => Err(InvalidField {
            field: field(),
            value: v.to_string(),
            why: "does not fit the 16 data bits of a seccomp return value",
        }),
        e => Ok(e),
    }
}

fn action(
    a: LinuxSeccompAction,
    field: impl FnOnce() -> String,
) -> Result<SeccompAction, InvalidField> {
    Ok(match a {
        LinuxSeccompAction::ScmpActKill => SeccompAction::Kill,
        LinuxSeccompAction::ScmpActKillThread => SeccompAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActNotify => {
            return Err(InvalidField {
                field: field(),
                value: "SCMP_ACT_NOTIFY".into(),
                why: "is not supported (it needs a seccomp agent; microsandbox runs none)",
            })
        }
    })
}

fn op(o: LinuxSeccompOperator) -> SeccompOp {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => SeccompOp::Ne,
        LinuxSeccompOperator::ScmpCmpLt => SeccompOp::Lt,
        LinuxSeccompOperator::ScmpCmpLe => SeccompOp::Le,
        LinuxSeccompOperator::ScmpCmpEq => SeccompOp::Eq,
        LinuxSeccompOperator::ScmpCmpGe => SeccompOp::Ge,
        LinuxSeccompOperator::ScmpCmpGt => SeccompOp::Gt,
        LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompOp::MaskedEq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Seccomp, InvalidField> {
        seccomp_from_linux(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn a_profile_maps_field_for_field() {
        let s = parse(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
              {"names": ["getpid", "read"], "action": "SCMP_ACT_ALLOW"},
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
              {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
              {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
        )
        .unwrap();
        assert_eq!(s.default_action, SeccompAction::Errno);
        assert_eq!(s.default_errno_ret, Some(1));
        assert_eq!(
            s.architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(s.flags, ["SECCOMP_FILTER_FLAG_LOG"]);
        assert_eq!(s.syscalls.len(), 4);
        assert_eq!(s.syscalls[0].names, ["getpid", "read"]);
        assert_eq!(
            s.syscalls[1].args,
            [SeccompArg {
                index: 0,
                value: 0xffff_ffff,
                value_two: 0,
                op: SeccompOp::Eq
            }]
        );
        assert_eq!(s.syscalls[2].args[0].op, SeccompOp::MaskedEq);
        assert_eq!(s.syscalls[3].action, SeccompAction::Errno);
        assert_eq!(s.syscalls[3].errno_ret, Some(38));
    }

    #[test]
    fn the_spec_s_profile_is_mapped_and_errors_name_the_file() {
        let spec = |seccomp: &str| -> oci_spec::runtime::Spec {
            serde_json::from_str(&format!(
                r#"{{"ociVersion": "1.0.2", "linux": {{"seccomp": {seccomp}}}}}"#
            ))
            .unwrap()
        };
        let path = std::path::Path::new("/b/config.json");
        let ok = spec(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        let container = crate::container::container_spec(&ok, "c", None, path).unwrap();
        let s = container.seccomp.expect("a profile");
        assert_eq!(s.syscalls[0].names, ["read"]);
        let bad = spec(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["a"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        );
        let e = crate::container::container_spec(&bad, "c", None, path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/b/config.json: linux.seccomp.syscalls[0].action: \"SCMP_ACT_NOTIFY\" is not \
             supported (it needs a seccomp agent; microsandbox runs none)"
        );
        let none = spec("null");
        let create = crate::container::container_spec(&none, "c", None, path).unwrap();
        assert_eq!(create.seccomp, None);
    }

    #[test]
    fn what_no_runtime_applies_is_refused_by_field() {
        let e = parse(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
              {"names": ["a"], "action": "SCMP_ACT_ERRNO"},
              {"names": ["b"], "action": "SCMP_ACT_ERRNO",
               "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"},
                        {"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls[1].args[1].index");
        assert_eq!(e.value, "6");
        let e = parse(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
              {"names": ["a"], "action": "SCMP_ACT_NOTIFY"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls[0].action");
        let e = parse(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).unwrap_err();
        assert_eq!(e.field, "linux.seccomp.defaultAction");
        let e =
            parse(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65536}"#).unwrap_err();
        assert_eq!(e.field, "linux.seccomp.defaultErrnoRet");
        let e = parse(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
              {"names": ["a", ""], "action": "SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls[0].names[1]");
    }
}
