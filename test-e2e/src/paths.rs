//! Where the workspace and the binaries under test are.

use std::path::{Path, PathBuf};

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-e2e lives inside the workspace")
        .to_path_buf()
}

/// The profile directory of the running test (`target/debug`): test executables live in its
/// `deps/` folder, the workspace's binaries next to it.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("test binaries live in deps/");
    deps.parent()
        .expect("deps/ lives in the profile dir")
        .to_path_buf()
}

/// A workspace binary built by `cargo build --workspace --bins` (which `./hack/test` runs first).
/// Panics with the command to run when it is missing: a missing binary is a broken set-up, not a
/// reason to skip.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` (./hack/test does)",
        path.display()
    );
    path
}
