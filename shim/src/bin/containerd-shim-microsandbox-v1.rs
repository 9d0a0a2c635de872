//! `containerd-shim-microsandbox-v1`: the containerd shim v2 binary, serving both runtime names
//! `io.microsandbox.v1` and `io.containerd.microsandbox.v1` (containerd keeps the last two
//! dot-separated parts to find the binary). All work is in the library.

use msb_shim::shim::{MicrosandboxShim, RUNTIME_ID};

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<MicrosandboxShim>(
        RUNTIME_ID,
        Some(MicrosandboxShim::config()),
    )
    .await;
}
