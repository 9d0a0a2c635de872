//! What the benchmarks take from the host before they measure: the binaries built next to this
//! one (the shim, `msbox`), a private containerd with the busybox image, and the note saying
//! which VMM backend microsandbox uses.
//!
//! `ctr`, `stdio` and `cri` run the same shim and report the backend the same way, so their
//! figures can be read side by side; one place says how.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use msb_test_e2e::containerd::{Containerd, SHIM_BINARY};

/// The binary `name` in this binary's directory; an error saying how to build it (`build`) if
/// it is not there.
pub(crate) fn next_to_this(name: &str, build: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    ensure!(path.is_file(), "{} is missing: {build}", path.display());
    Ok(path)
}

/// The shim (`containerd-shim-microsandbox-v1`) next to this binary.
pub(crate) fn shim() -> Result<PathBuf> {
    next_to_this(
        SHIM_BINARY,
        "cargo build --release -p msb-bench -p msb-shim",
    )
}

/// The end-to-end tests' private containerd with the shim next to this binary, the busybox
/// image imported into namespace `ns`.
pub(crate) fn containerd_with_busybox(ns: &str) -> Result<Containerd> {
    let ctrd = Containerd::start_linking(&shim()?)?;
    ctrd.import_busybox(ns)?;
    Ok(ctrd)
}

/// The reports' `backend_note`: the backend microsandbox picks on this host and why.
pub(crate) fn backend_note() -> String {
    let (backend, why) = msb_runtime::vmm::select_backend(None);
    format!("microsandbox backend {backend} ({why}); default shim config")
}
