//! Benchmarks that print JSON, one object per run, for `docs/PERFORMANCE.md`.
//!
//! - `msb-bench codec`: the protocol codec on the stdout path (a `core.exec.stdout` payload
//!   encoded to a frame and decoded back) for several payload sizes.
//! - `msb-bench boot [N]`: N guests booted one after the other: the `core.ready` breakdown
//!   reported by agentd and the host's wall time to ready, then the wall time of
//!   `msbox run ROOTFS -- true` (the `msbox` binary next to this one; build both with
//!   `cargo build --release -p msb-bench -p msb-shim`).
//! - `msb-bench ctr [N]`: through a private containerd, `ctr run --rm IMAGE true` wall time
//!   (first run, then N more), the resident memory of an idle container's shim + VMM and
//!   `ctr task exec ... true` into it (at least 10), for `io.microsandbox.v1` and
//!   `io.containerd.runc.v2` in the same run.
//! - `msb-bench stdio [N] [MiB]`: through a private containerd, MiB (default 100) from
//!   `head -c` in the container to `ctr run`'s stdout, and into `ctr run`'s stdin, each
//!   beside the same container's time for the same bytes without the transport, N runs (default
//!   3) for `io.microsandbox.v1` and `io.containerd.runc.v2` in the same run.
//! - `msb-bench cri [N] [P]`: through a private containerd 1.7's CRI plugin, a pod with a
//!   `sleep` container started as the kubelet does (RunPodSandbox, CreateContainer,
//!   StartContainer): N pods one after the other (default 20), then P at once (default 10),
//!   p50/p95; the resident and proportional memory of idle pods with 1 and P up; `microsandbox`
//!   and `runc` handlers in the same run.
//! - `msb-bench density [SECONDS] [WORKERS] [MAX]`: through a private containerd 1.7's CRI
//!   plugin, idle pods (`sleep` containers) started by WORKERS at once (default 4) until SECONDS
//!   (default 60) are up or MAX pods (default 200) run: how many ran within the time, the
//!   memory and host CPU the idle pods hold, and their removal; `microsandbox` and `runc`
//!   handlers in the same run.
//! - `msb-bench image [N]`: `msbox run IMAGE -- true` from a local registry: pull, first run
//!   (unpack and layer images), cached runs, and a root file system directory's run beside them.

mod boot;
mod codec;
mod cri;
mod ctr;
mod density;
mod image;
mod procs;
mod setup;
mod stdio;

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("codec") | None => {
            let report = codec::run(std::time::Duration::from_millis(
                std::env::var("MSB_BENCH_MILLIS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1500),
            ))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some("boot") => {
            let n = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
            let report = tokio::runtime::Runtime::new()?.block_on(boot::run(n))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some("ctr") => {
            let n = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
            println!("{}", serde_json::to_string_pretty(&ctr::run(n)?)?);
            Ok(())
        }
        Some("stdio") => {
            let n = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
            let mib = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100);
            println!("{}", serde_json::to_string_pretty(&stdio::run(n, mib)?)?);
            Ok(())
        }
        Some("image") => {
            let n = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
            println!("{}", serde_json::to_string_pretty(&image::run(n)?)?);
            Ok(())
        }
        Some("cri") => {
            let n = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
            let p = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
            println!("{}", serde_json::to_string_pretty(&cri::run(n, p)?)?);
            Ok(())
        }
        Some("density") => {
            let arg = |i: usize, default: u64| -> Result<u64> {
                Ok(args
                    .get(i)
                    .map(|s| s.parse())
                    .transpose()?
                    .unwrap_or(default))
            };
            let limits = density::Limits {
                seconds: arg(1, 60)?,
                workers: usize::try_from(arg(2, 4)?)?,
                max_pods: usize::try_from(arg(3, 200)?)?,
            };
            println!("{}", serde_json::to_string_pretty(&density::run(limits)?)?);
            Ok(())
        }
        Some(other) => {
            bail!(
                "unknown benchmark {other:?}; available: codec, boot, ctr, stdio, image, cri, \
                 density"
            )
        }
    }
}
