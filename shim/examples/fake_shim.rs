//! `containerd-shim-msbfake-v1`: the real shim binary over the scripted fake sandbox, to check
//! the containerd contract (start, FIFOs, exit codes, events, exec, kill, pause) with a real
//! containerd before guests exist. Not a product backend: nothing runs in a VM.
//!
//! ```text
//! cargo build -p msb-shim --features test-utils --example containerd-shim-msbfake-v1
//! ctr run --runtime io.containerd.msbfake.v1 --rm IMAGE c1 echo hello   # prints hello
//! ```

use msb_shim::pod_vm::fake::FakeFactory;
use msb_shim::shim::{set_factory, MicrosandboxShim};

#[tokio::main]
async fn main() {
    set_factory(FakeFactory::scripted());
    containerd_shim::asynchronous::run::<MicrosandboxShim>(
        "io.containerd.msbfake.v1",
        Some(MicrosandboxShim::config()),
    )
    .await;
}
