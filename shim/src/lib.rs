//! containerd shim v2 (`containerd-shim-microsandbox-v1`: task service, stdio, events, pod
//! grouping, configuration) and the `msbox` CLI. See `docs/SHIM.md`.

pub mod cleanup;
pub mod config;
pub mod error;
pub mod events;
pub mod msbox;
pub mod output_gate;
pub mod pod_vm;
pub mod record;
pub mod runtime_adapter;
pub mod shim;
pub mod stdio;
pub mod task;
