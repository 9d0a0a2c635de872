//! `Stats`: the container's cgroup v2 figures from the guest, as the
//! `io.containerd.cgroups.v2.Metrics` containerd (and `ctr task metrics`, the CRI) decode.

use containerd_shim::api::{StatsRequest, StatsResponse};
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use msb_protocol::types::ContainerStatsReply;

use super::TaskService;
use crate::error::ShimError;

/// Type URL containerd expects for cgroup v2 metrics.
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

impl TaskService {
    /// Handles `Stats`.
    pub async fn stats(&self, req: StatsRequest) -> Result<StatsResponse, ShimError> {
        let sandbox = self.inner.tables.lock().await.vm_of(&req.id)?;
        let reply = sandbox.stats(&req.id).await?;
        let value = metrics_from_stats(&reply)
            .write_to_bytes()
            .map_err(|e| ShimError::InvalidArgument(format!("encode metrics: {e}")))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_V2_TYPE.to_owned(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

/// The guest's figures in containerd's cgroup v2 metrics message.
pub fn metrics_from_stats(s: &ContainerStatsReply) -> Metrics {
    let stat = |name: &str| {
        s.memory
            .stat
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    };
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids.current,
            limit: s.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: s.cpu.usage_usec,
            user_usec: s.cpu.user_usec,
            system_usec: s.cpu.system_usec,
            nr_periods: s.cpu.nr_periods,
            nr_throttled: s.cpu.nr_throttled,
            throttled_usec: s.cpu.throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: s.memory.usage,
            usage_limit: s.memory.limit,
            max_usage: s.memory.peak,
            swap_usage: s.memory.swap_usage,
            anon: stat("anon"),
            file: stat("file"),
            kernel_stack: stat("kernel_stack"),
            slab: stat("slab"),
            sock: stat("sock"),
            shmem: stat("shmem"),
            file_mapped: stat("file_mapped"),
            file_dirty: stat("file_dirty"),
            file_writeback: stat("file_writeback"),
            anon_thp: stat("anon_thp"),
            inactive_anon: stat("inactive_anon"),
            active_anon: stat("active_anon"),
            inactive_file: stat("inactive_file"),
            active_file: stat("active_file"),
            unevictable: stat("unevictable"),
            slab_reclaimable: stat("slab_reclaimable"),
            slab_unreclaimable: stat("slab_unreclaimable"),
            pgfault: stat("pgfault"),
            pgmajfault: stat("pgmajfault"),
            workingset_refault: stat("workingset_refault"),
            workingset_activate: stat("workingset_activate"),
            workingset_nodereclaim: stat("workingset_nodereclaim"),
            pgrefill: stat("pgrefill"),
            pgscan: stat("pgscan"),
            pgsteal: stat("pgsteal"),
            pgactivate: stat("pgactivate"),
            pgdeactivate: stat("pgdeactivate"),
            pglazyfree: stat("pglazyfree"),
            pglazyfreed: stat("pglazyfreed"),
            thp_fault_alloc: stat("thp_fault_alloc"),
            thp_collapse_alloc: stat("thp_collapse_alloc"),
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            oom_kill: s.memory.oom_kills,
            ..Default::default()
        }),
        io: MessageField::some(IOStat {
            usage: vec![IOEntry {
                rbytes: s.io.rbytes,
                wbytes: s.io.wbytes,
                rios: s.io.rios,
                wios: s.io.wios,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use msb_protocol::types::{CpuStats, IoStats, MemoryStats, PidsStats};

    #[test]
    fn guest_figures_land_in_containerd_fields() {
        let reply = ContainerStatsReply {
            cpu: CpuStats {
                usage_usec: 10,
                user_usec: 6,
                system_usec: 4,
                nr_periods: 1,
                nr_throttled: 2,
                throttled_usec: 3,
            },
            memory: MemoryStats {
                usage: 100,
                peak: 150,
                limit: 200,
                swap_usage: 0,
                oom_kills: 1,
                stat: vec![
                    ("anon".into(), 70),
                    ("file".into(), 30),
                    ("pgfault".into(), 9),
                ],
            },
            pids: PidsStats {
                current: 3,
                limit: 64,
            },
            io: IoStats {
                rbytes: 1,
                wbytes: 2,
                rios: 3,
                wios: 4,
            },
        };
        let bytes = metrics_from_stats(&reply).write_to_bytes().unwrap();
        let m = Metrics::parse_from_bytes(&bytes).unwrap();
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.user_usec, m.cpu.system_usec),
            (10, 6, 4)
        );
        assert_eq!(m.cpu.throttled_usec, 3);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.max_usage),
            (100, 200, 150)
        );
        assert_eq!(
            (m.memory.anon, m.memory.file, m.memory.pgfault),
            (70, 30, 9)
        );
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (3, 64));
        assert_eq!(m.io.usage[0].wios, 4);
    }
}
