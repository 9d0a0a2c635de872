//! OCI `process` -> the guest's `core.exec.request`.
//!
//! The same mapping serves the container's init (from `config.json`) and every `Exec`, whose
//! process containerd sends as runtime-spec JSON. `args[0]` becomes `cmd` (the guest resolves it
//! in the `PATH` of `env`), the user travels numerically as `UID:GID` plus `additionalGids`
//! (never by name: the bundle already resolved it), rlimits keep the OCI spelling
//! (`RLIMIT_NOFILE`), which agentd accepts.

use msb_protocol::types::{CapabilitySets, ExecRequest, Rlimit};
use oci_spec::runtime::Process;

/// Why a process cannot be mapped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// `args` is missing or empty.
    #[error("process.args is empty: nothing to run")]
    MissingArgs,
    /// `args[0]` is an empty string.
    #[error("process.args[0] is an empty string")]
    EmptyCommand,
    /// The process JSON of an exec did not parse.
    #[error("invalid process JSON")]
    ParseJson(#[source] serde_json::Error),
    /// An rlimit type has no name we can send.
    #[error("process.rlimits[{index}]: unknown type")]
    RlimitType {
        /// Index in `rlimits`.
        index: usize,
    },
}

/// Parses the runtime-spec `Process` JSON containerd sends with `Exec`.
pub fn process_from_json(json: &[u8]) -> Result<Process, ProcessError> {
    serde_json::from_slice(json).map_err(ProcessError::ParseJson)
}

/// Maps an OCI process to an exec request; `container` names the container it runs in.
///
/// `stdin` is left `true`; the caller clears it when containerd gave no stdin.
pub fn exec_request_from_process(
    process: &Process,
    container: Option<String>,
) -> Result<ExecRequest, ProcessError> {
    let args = process.args().as_deref().unwrap_or_default();
    let (cmd, rest) = args.split_first().ok_or(ProcessError::MissingArgs)?;
    if cmd.is_empty() {
        return Err(ProcessError::EmptyCommand);
    }
    let user = process.user();
    let rlimits = process
        .rlimits()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(index, r)| {
            let resource = match serde_json::to_value(r.typ()) {
                Ok(serde_json::Value::String(s)) => s,
                _ => return Err(ProcessError::RlimitType { index }),
            };
            Ok(Rlimit {
                resource,
                soft: r.soft(),
                hard: r.hard(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tty = process.terminal().unwrap_or(false);
    let (rows, cols) = match process.console_size() {
        Some(size) if tty => (clamp_u16(size.height()), clamp_u16(size.width())),
        _ => (0, 0),
    };
    let cwd = process.cwd().to_string_lossy().into_owned();
    Ok(ExecRequest {
        cmd: cmd.clone(),
        args: rest.to_vec(),
        env: process.env().clone().unwrap_or_default(),
        cwd: (!cwd.is_empty()).then_some(cwd),
        user: Some(format!("{}:{}", user.uid(), user.gid())),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        tty,
        rows,
        cols,
        rlimits,
        container,
        stdin: true,
        capabilities: process.capabilities().as_ref().map(capability_sets),
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
    })
}

/// The OCI capability sets by name, each sorted (a spec's sets are unordered).
fn capability_sets(c: &oci_spec::runtime::LinuxCapabilities) -> CapabilitySets {
    let names = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut v: Vec<String> = set
            .iter()
            .flatten()
            .filter_map(|cap| match serde_json::to_value(cap) {
                Ok(serde_json::Value::String(s)) => Some(s),
                _ => None,
            })
            .collect();
        v.sort();
        v
    };
    CapabilitySets {
        bounding: names(c.bounding()),
        effective: names(c.effective()),
        inheritable: names(c.inheritable()),
        permitted: names(c.permitted()),
        ambient: names(c.ambient()),
    }
}

fn clamp_u16(v: u64) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_process_json_maps_every_field() {
        let json = br#"{
            "terminal": true,
            "consoleSize": {"height": 40, "width": 120},
            "user": {"uid": 1000, "gid": 100, "additionalGids": [10, 20]},
            "args": ["sh", "-c", "echo hi"],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/work",
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]
        }"#;
        let p = process_from_json(json).unwrap();
        let req = exec_request_from_process(&p, Some("c1".into())).unwrap();
        assert_eq!(
            req,
            ExecRequest {
                cmd: "sh".into(),
                args: vec!["-c".into(), "echo hi".into()],
                env: vec!["PATH=/bin".into(), "TERM=xterm".into()],
                cwd: Some("/work".into()),
                user: Some("1000:100".into()),
                additional_gids: vec![10, 20],
                tty: true,
                rows: 40,
                cols: 120,
                rlimits: vec![Rlimit {
                    resource: "RLIMIT_NOFILE".into(),
                    soft: 1024,
                    hard: 4096
                }],
                container: Some("c1".into()),
                stdin: true,
                capabilities: None,
                no_new_privileges: false,
            }
        );
    }

    #[test]
    fn console_size_ignored_without_terminal() {
        let json = br#"{"consoleSize": {"height": 40, "width": 120},
            "user": {"uid": 0, "gid": 0}, "args": ["true"], "cwd": "/"}"#;
        let req = exec_request_from_process(&process_from_json(json).unwrap(), None).unwrap();
        assert!(!req.tty);
        assert_eq!((req.rows, req.cols), (0, 0));
        assert_eq!(req.user.as_deref(), Some("0:0"));
    }

    #[test]
    fn empty_args_is_an_error() {
        let json = br#"{"user": {"uid": 0, "gid": 0}, "args": [], "cwd": "/"}"#;
        let err = exec_request_from_process(&process_from_json(json).unwrap(), None).unwrap_err();
        assert_eq!(err.to_string(), "process.args is empty: nothing to run");
        let json = br#"{"user": {"uid": 0, "gid": 0}, "args": [""], "cwd": "/"}"#;
        let err = exec_request_from_process(&process_from_json(json).unwrap(), None).unwrap_err();
        assert_eq!(err.to_string(), "process.args[0] is an empty string");
    }

    #[test]
    fn bad_json_is_an_error() {
        let err = process_from_json(b"{not json").unwrap_err();
        assert_eq!(err.to_string(), "invalid process JSON");
    }
}
