//! The shim's errors and their one mapping to ttrpc status codes, which containerd turns into
//! its `errdefs` (`NotFound`, `AlreadyExists`, `FailedPrecondition`, ...).

use containerd_shim::protos::ttrpc;

use crate::config::ConfigError;
use crate::pod_vm::PodVmError;
use crate::task::state::StateError;

/// The whole cause chain on one line (the runtime's, so that both print errors alike).
pub use msb_runtime::error_chain as chain;

/// Everything a task RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// No such container or exec.
    #[error("{0} not found")]
    NotFound(String),
    /// The container or exec id is taken.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is not valid in the task's current state.
    #[error(transparent)]
    State(#[from] StateError),
    /// A request field is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A feature this shim does not offer.
    #[error("{0} is not supported by the microsandbox shim")]
    Unimplemented(&'static str),
    /// The bundle cannot be used.
    #[error(transparent)]
    Bundle(#[from] msb_oci::BundleError),
    /// The rootfs mounts cannot be used.
    #[error(transparent)]
    Rootfs(#[from] msb_oci::RootfsError),
    /// An exec's process spec cannot be used.
    #[error("exec process spec")]
    Process(#[source] msb_oci::ProcessError),
    /// Configuration or annotations are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] PodVmError),
    /// Host I/O failed (FIFOs, state files).
    #[error("{context}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ShimError {
    /// The ttrpc code containerd sees.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            ShimError::NotFound(_) | ShimError::Vm(PodVmError::NotFound(_)) => Code::NOT_FOUND,
            ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            ShimError::State(_) => Code::FAILED_PRECONDITION,
            ShimError::InvalidArgument(_)
            | ShimError::Bundle(_)
            | ShimError::Rootfs(_)
            | ShimError::Process(_)
            | ShimError::Config(_) => Code::INVALID_ARGUMENT,
            ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
            ShimError::Vm(PodVmError::Gone(_)) => Code::UNAVAILABLE,
            ShimError::Vm(_) | ShimError::Io { .. } => Code::INTERNAL,
        }
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::state::{Status, Transition};
    use ttrpc::Code;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn not_found() {
        assert_eq!(
            status(ShimError::NotFound("container c1".into())),
            (Code::NOT_FOUND, "container c1 not found".into())
        );
        assert_eq!(
            status(PodVmError::NotFound("exec 7".into()).into()).0,
            Code::NOT_FOUND
        );
    }

    #[test]
    fn already_exists() {
        assert_eq!(
            status(ShimError::AlreadyExists("exec e1 in c1".into())),
            (Code::ALREADY_EXISTS, "exec e1 in c1 already exists".into())
        );
    }

    #[test]
    fn failed_precondition() {
        let e = Status::Running.apply(Transition::Delete).unwrap_err();
        assert_eq!(
            status(e.into()),
            (
                Code::FAILED_PRECONDITION,
                "cannot delete a running process".into()
            )
        );
    }

    #[test]
    fn invalid_argument() {
        assert_eq!(
            status(ShimError::InvalidArgument("exec spec is missing".into())),
            (
                Code::INVALID_ARGUMENT,
                "invalid argument: exec spec is missing".into()
            )
        );
        let bundle = msb_oci::Bundle::load("/nonexistent/bundle").unwrap_err();
        assert_eq!(
            status(bundle.into()),
            (
                Code::INVALID_ARGUMENT,
                "read /nonexistent/bundle/config.json: No such file or directory (os error 2)"
                    .into()
            )
        );
    }

    #[test]
    fn unimplemented() {
        assert_eq!(
            status(ShimError::Unimplemented("checkpoint")),
            (
                Code::UNIMPLEMENTED,
                "checkpoint is not supported by the microsandbox shim".into()
            )
        );
    }

    #[test]
    fn sandbox_failures() {
        assert_eq!(
            status(PodVmError::Gone("vmm exited".into()).into()),
            (Code::UNAVAILABLE, "sandbox is gone: vmm exited".into())
        );
        assert_eq!(
            status(PodVmError::Boot("no kernel".into()).into()),
            (Code::INTERNAL, "boot sandbox: no kernel".into())
        );
    }

    /// The runtime's typed causes arrive whole: the status names the root cause, not only the
    /// outer context (`start the qemu VMM` alone told nobody anything).
    #[test]
    fn root_causes_reach_the_status_text() {
        use msb_runtime::vmm::{BackendKind, VmmError};
        let missing = msb_runtime::VmError::Vmm {
            backend: BackendKind::Qemu,
            source: VmmError::MissingProgram {
                program: "qemu-system-x86_64".into(),
                hint: "install the Debian package qemu-system-x86".into(),
            },
        };
        assert_eq!(
            status(PodVmError::Boot(missing.into()).into()),
            (
                Code::INTERNAL,
                "boot sandbox: start the qemu VMM: qemu-system-x86_64 not found: install the \
                 Debian package qemu-system-x86"
                    .into()
            )
        );
        let too_long = msb_runtime::VmError::Vmm {
            backend: BackendKind::Krun,
            source: VmmError::Io {
                what: "bind /run/x/agent.sock".into(),
                source: std::io::Error::from_raw_os_error(libc::ENAMETOOLONG),
            },
        };
        assert_eq!(
            status(PodVmError::Boot(too_long.into()).into()).1,
            "boot sandbox: start the krun VMM: bind /run/x/agent.sock: File name too long (os \
             error 36)"
        );
        let rootfs = PodVmError::Rootfs(Box::new(msb_runtime::rootfs::RootfsError::Io {
            what: "create",
            path: "/var/lib/x".into(),
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        }));
        assert_eq!(
            status(rootfs.into()).1,
            "prepare rootfs: create /var/lib/x: Permission denied (os error 13)"
        );
    }
}
