//! OCI side of microsandbox: reads an OCI bundle's `config.json` (via `oci-spec`) and maps it to
//! the guest protocol (`ContainerCreate` plus the init `ExecRequest`), and maps the rootfs mounts
//! containerd passes (overlay lowerdirs from the overlayfs snapshotter, a bind of a plain
//! directory, or the bundle's own `rootfs/`) to an [`OciRootfsSource`]: read-only lower layers,
//! each of which the runtime turns into one cached read-only EROFS image.
//!
//! It knows nothing of ttrpc or of the runtime: containerd's `Mount` arrives as our own
//! [`RootfsMount`], and the result is plain data plus protocol payloads. Image pulls and layer
//! unpacking for the standalone CLI come later.

mod bundle;
mod container;
mod process;
mod rootfs;
mod seccomp;

pub use bundle::{Bundle, BundleError, CONFIG_FILE};
pub use container::{resources_from_json, resources_from_linux, ContainerSpec, HostBindMount};
pub use process::{exec_request_from_process, process_from_json, ProcessError};
pub use rootfs::{OciRootfsSource, RootfsError, RootfsMount};

/// Re-export of the runtime-spec types this crate reads, so callers need no own `oci-spec`.
pub use oci_spec::runtime::{Process, Spec};
