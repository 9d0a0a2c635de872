//! A pod through the CRI, as the kubelet starts one: `RunPodSandbox`, `CreateContainer`,
//! `StartContainer` (busybox `sleep`), timed until `StartContainer` returns (the container is
//! running then); one pod after the other, then several (10 by default) at once; and the host
//! memory of idle pods (resident and proportional set of each pod's shim and everything under
//! it) with 1 and with that many pods up. For the `microsandbox` and `runc` handlers of one containerd 1.7 with the CRI
//! plugin (the end-to-end tests' set-up, `hack/lib/containerd.sh`), in the same run.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use msb_test_e2e::containerd::{Containerd, Version, CRI_NAMESPACE};
use msb_test_e2e::cri::{container_config, pod_config, unique_name, Cri, Handler};
use serde::Serialize;

use crate::boot::{ms, stats, Stats};
use crate::{procs, setup};

/// Figures of one handler.
#[derive(Debug, Serialize)]
pub struct HandlerFigures {
    handler: &'static str,
    /// One pod after the other: RunPodSandbox + CreateContainer + StartContainer.
    serial_ms: Stats,
    /// How many pods start at once in the parallel round, and stay up for the memory figure.
    parallel: usize,
    /// Those pods, each pod's time.
    parallel_ms: Stats,
    /// Until the last of them runs.
    parallel_wall_ms: f64,
    /// One idle pod: its shim and all the shim's descendants.
    idle_1: Memory,
    /// The parallel round's idle pods: per pod, the mean over them.
    idle_parallel_per_pod: Memory,
}

/// Resident and proportional set, MiB.
#[derive(Debug, Serialize, Default)]
pub struct Memory {
    rss_mib: f64,
    pss_mib: f64,
    /// Which processes were counted (of the first pod), with their RSS and PSS in KiB.
    processes: Vec<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    benchmark: &'static str,
    runs: usize,
    backend_note: String,
    serial_start_ms_p50_p95: Vec<(String, f64, f64)>,
    handlers: Vec<HandlerFigures>,
}

/// Starts one pod with a `sleep` container; its id, its container's and how long it took.
pub(crate) fn start_pod(cri: &Cri, handler: Handler) -> Result<(String, String, Duration)> {
    let name = unique_name("bench");
    let config = pod_config(&name);
    let t = Instant::now();
    let pod = cri
        .run_pod(&config, handler)
        .map_err(|e| anyhow::anyhow!("RunPodSandbox: {e}"))?;
    let container = cri
        .create_container(
            &pod,
            &container_config(&format!("{name}-c"), &["sleep", "3600"]),
            &config,
        )
        .map_err(|e| anyhow::anyhow!("CreateContainer in {pod}: {e}"))?;
    cri.start_container(&container)
        .map_err(|e| anyhow::anyhow!("StartContainer {container}: {e}"))?;
    let took = t.elapsed();
    let state = cri
        .container_status(&container)
        .map_err(|e| anyhow::anyhow!("ContainerStatus {container}: {e}"))?
        .state();
    ensure!(
        state == msb_test_e2e::cri::api::ContainerState::ContainerRunning,
        "container {container} is {state:?} after StartContainer"
    );
    Ok((pod, container, took))
}

/// Stops and removes `pod` (and its container).
pub(crate) fn remove_pod(cri: &Cri, pod: &str) -> Result<()> {
    cri.stop_pod(pod)
        .map_err(|e| anyhow::anyhow!("StopPodSandbox {pod}: {e}"))?;
    cri.remove_pod(pod)
        .map_err(|e| anyhow::anyhow!("RemovePodSandbox {pod}: {e}"))
}

/// The resident and proportional set of the shim serving `pod` and all its descendants.
fn pod_memory(pod: &str) -> Result<Memory> {
    let mut m = Memory::default();
    for (name, rss, pss) in procs::resident_proportional(&procs::shim_tree(pod, CRI_NAMESPACE)?) {
        m.rss_mib += rss as f64 / 1024.0;
        m.pss_mib += pss as f64 / 1024.0;
        m.processes
            .push(format!("{name} rss {rss} KiB pss {pss} KiB"));
    }
    Ok(m)
}

fn measure(
    socket: &std::path::Path,
    handler: Handler,
    runs: usize,
    parallel: usize,
) -> Result<HandlerFigures> {
    let cri = Cri::connect(socket)?;
    // A first pod, not counted: the layer images and the page cache warm up.
    let (pod, _, _) = start_pod(&cri, handler)?;
    remove_pod(&cri, &pod)?;
    let mut serial = Vec::new();
    let mut idle_1 = None;
    for i in 0..runs {
        let (pod, _, took) = start_pod(&cri, handler)?;
        serial.push(ms(took));
        if i == 0 {
            // Let the guest settle (page cache, translation cache) before reading memory.
            std::thread::sleep(Duration::from_secs(3));
            idle_1 = Some(pod_memory(&pod)?);
        }
        remove_pod(&cri, &pod)?;
    }
    let t = Instant::now();
    let started: Vec<Result<(String, Duration)>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..parallel)
            .map(|_| {
                s.spawn(|| {
                    let cri = Cri::connect(socket)?;
                    start_pod(&cri, handler).map(|(pod, _, took)| (pod, took))
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| bail!("a pod's thread panicked"))
            })
            .collect()
    });
    let wall = t.elapsed();
    let mut pods = Vec::new();
    let mut parallel_ms = Vec::new();
    let mut failed = Vec::new();
    for r in started {
        match r {
            Ok((pod, took)) => {
                pods.push(pod);
                parallel_ms.push(ms(took));
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    let idle_n = if failed.is_empty() {
        std::thread::sleep(Duration::from_secs(3));
        let mut sum = Memory::default();
        for (i, pod) in pods.iter().enumerate() {
            let m = pod_memory(pod)?;
            sum.rss_mib += m.rss_mib / parallel as f64;
            sum.pss_mib += m.pss_mib / parallel as f64;
            if i == 0 {
                sum.processes = m.processes;
            }
        }
        Some(sum)
    } else {
        None
    };
    for pod in &pods {
        remove_pod(&cri, pod)?;
    }
    if !failed.is_empty() {
        bail!(
            "{} of {parallel} parallel pods failed: {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(HandlerFigures {
        handler: handler.name(),
        serial_ms: stats(serial),
        parallel,
        parallel_ms: stats(parallel_ms),
        parallel_wall_ms: ms(wall),
        idle_1: idle_1.context("no serial run")?,
        idle_parallel_per_pod: idle_n.context("no parallel round")?,
    })
}

/// Runs the comparison with `runs` serial pods per handler, then `parallel` at once.
pub fn run(runs: usize, parallel: usize) -> Result<Report> {
    ensure!(
        runs > 0 && parallel > 0,
        "at least one run and one pod at once"
    );
    let shim = setup::shim()?;
    Version::V1_7.check().map_err(anyhow::Error::msg)?;
    let ctrd = Containerd::shared_cri_linking(Version::V1_7, &shim).map_err(anyhow::Error::msg)?;
    let handlers = vec![
        measure(ctrd.socket(), Handler::Microsandbox, runs, parallel)?,
        measure(ctrd.socket(), Handler::Runc, runs, parallel)?,
    ];
    Ok(Report {
        benchmark: "cri",
        runs,
        backend_note: setup::backend_note(),
        serial_start_ms_p50_p95: handlers
            .iter()
            .map(|h| (h.handler.to_owned(), h.serial_ms.median, h.serial_ms.p95))
            .collect(),
        handlers,
    })
}
