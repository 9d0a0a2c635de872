//! Task events for containerd, as our own enum so the task service (and its tests) deal in plain
//! values; [`RemoteSink`] turns them into containerd's protobuf events on the right topics.

use std::fmt::Debug;
#[cfg(any(test, feature = "test-utils"))]
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::Context;

/// The stdio a task was created with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskIo {
    /// stdin FIFO path (empty: none).
    pub stdin: String,
    /// stdout FIFO path.
    pub stdout: String,
    /// stderr FIFO path.
    pub stderr: String,
    /// Terminal mode.
    pub terminal: bool,
}

/// A rootfs mount as reported back in `TaskCreate`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventMount {
    /// Type.
    pub typ: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
}

/// One event of a task's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// `/tasks/create`.
    Create {
        /// Container id.
        container_id: String,
        /// Bundle path.
        bundle: String,
        /// Rootfs mounts as given.
        rootfs: Vec<EventMount>,
        /// Its stdio.
        io: TaskIo,
        /// Pid (0: the init has not started yet).
        pid: u32,
    },
    /// `/tasks/start`.
    Start {
        /// Container id.
        container_id: String,
        /// Init pid.
        pid: u32,
    },
    /// `/tasks/exec-added`.
    ExecAdded {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
    },
    /// `/tasks/exec-started`.
    ExecStarted {
        /// Container id.
        container_id: String,
        /// Exec id.
        exec_id: String,
        /// Its pid.
        pid: u32,
    },
    /// `/tasks/exit`.
    Exit {
        /// Container id.
        container_id: String,
        /// Process id: the container id for the init, else the exec id.
        id: String,
        /// Its pid.
        pid: u32,
        /// Exit status (128+signal for signals).
        exit_status: u32,
        /// When.
        exited_at: SystemTime,
    },
    /// `/tasks/oom`.
    Oom {
        /// Container id.
        container_id: String,
    },
    /// `/tasks/delete`.
    Delete {
        /// Container id.
        container_id: String,
        /// Init pid.
        pid: u32,
        /// Exit status.
        exit_status: u32,
        /// When it exited.
        exited_at: Option<SystemTime>,
    },
    /// `/tasks/paused`.
    Paused {
        /// Container id.
        container_id: String,
    },
    /// `/tasks/resumed`.
    Resumed {
        /// Container id.
        container_id: String,
    },
}

impl TaskEvent {
    /// containerd's topic.
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create { .. } => "/tasks/create",
            TaskEvent::Start { .. } => "/tasks/start",
            TaskEvent::ExecAdded { .. } => "/tasks/exec-added",
            TaskEvent::ExecStarted { .. } => "/tasks/exec-started",
            TaskEvent::Exit { .. } => "/tasks/exit",
            TaskEvent::Oom { .. } => "/tasks/oom",
            TaskEvent::Delete { .. } => "/tasks/delete",
            TaskEvent::Paused { .. } => "/tasks/paused",
            TaskEvent::Resumed { .. } => "/tasks/resumed",
        }
    }

    /// containerd's protobuf message.
    pub fn to_proto(&self) -> Box<dyn MessageDyn> {
        match self.clone() {
            TaskEvent::Create {
                container_id,
                bundle,
                rootfs,
                io,
                pid,
            } => Box::new(TaskCreate {
                container_id,
                bundle,
                rootfs: rootfs
                    .into_iter()
                    .map(|m| Mount {
                        type_: m.typ,
                        source: m.source,
                        options: m.options,
                        ..Default::default()
                    })
                    .collect(),
                io: MessageField::some(TaskIO {
                    stdin: io.stdin,
                    stdout: io.stdout,
                    stderr: io.stderr,
                    terminal: io.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
            TaskEvent::Start { container_id, pid } => Box::new(TaskStart {
                container_id,
                pid,
                ..Default::default()
            }),
            TaskEvent::ExecAdded {
                container_id,
                exec_id,
            } => Box::new(TaskExecAdded {
                container_id,
                exec_id,
                ..Default::default()
            }),
            TaskEvent::ExecStarted {
                container_id,
                exec_id,
                pid,
            } => Box::new(TaskExecStarted {
                container_id,
                exec_id,
                pid,
                ..Default::default()
            }),
            TaskEvent::Exit {
                container_id,
                id,
                pid,
                exit_status,
                exited_at,
            } => Box::new(TaskExit {
                container_id,
                id,
                pid,
                exit_status,
                exited_at: MessageField::some(timestamp(exited_at)),
                ..Default::default()
            }),
            TaskEvent::Oom { container_id } => Box::new(TaskOOM {
                container_id,
                ..Default::default()
            }),
            TaskEvent::Delete {
                container_id,
                pid,
                exit_status,
                exited_at,
            } => Box::new(TaskDelete {
                id: container_id.clone(),
                container_id,
                pid,
                exit_status,
                exited_at: exited_at.map(timestamp).into(),
                ..Default::default()
            }),
            TaskEvent::Paused { container_id } => Box::new(TaskPaused {
                container_id,
                ..Default::default()
            }),
            TaskEvent::Resumed { container_id } => Box::new(TaskResumed {
                container_id,
                ..Default::default()
            }),
        }
    }
}

/// A protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// Where events go.
#[async_trait]
pub trait EventSink: Send + Sync + Debug {
    /// Publishes one event; failures are logged, never fatal to the task.
    async fn publish(&self, event: TaskEvent);
}

/// How long one event may take to reach containerd.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Publishes to containerd through its ttrpc events service.
pub struct RemoteSink {
    publisher: RemotePublisher,
    namespace: String,
}

impl Debug for RemoteSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSink")
            .field("address", &self.publisher.address)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl RemoteSink {
    /// Wraps containerd's publisher for `namespace`.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher,
            namespace,
        }
    }
}

#[async_trait]
impl EventSink for RemoteSink {
    async fn publish(&self, event: TaskEvent) {
        let topic = event.topic();
        // The publisher forwards its queue one event at a time: unbounded, one stalled forward
        // would hold every later event (TaskExit included) forever. Bounded as containerd's own
        // shims bound it (5 s); the crate re-queues a failed forward up to 5 times.
        let ctx = Context {
            timeout_nano: i64::try_from(PUBLISH_TIMEOUT.as_nanos()).unwrap_or(i64::MAX),
            ..Default::default()
        };
        if let Err(e) = self
            .publisher
            .publish(ctx, topic, &self.namespace, event.to_proto())
            .await
        {
            tracing::warn!(topic, error = %e, "publish event");
        }
    }
}

/// Keeps events in memory (tests only).
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct RecordingSink {
    events: Mutex<Vec<TaskEvent>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl RecordingSink {
    /// Everything published so far.
    pub fn events(&self) -> Vec<TaskEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The topics published so far, in order.
    pub fn topics(&self) -> Vec<&'static str> {
        self.events().iter().map(TaskEvent::topic).collect()
    }
}

#[cfg(any(test, feature = "test-utils"))]
#[async_trait]
impl EventSink for RecordingSink {
    async fn publish(&self, event: TaskEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn exit_event_fields() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5);
        let ev = TaskEvent::Exit {
            container_id: "c1".into(),
            id: "c1".into(),
            pid: 42,
            exit_status: 137,
            exited_at: at,
        };
        assert_eq!(ev.topic(), "/tasks/exit");
        let bytes = ev.to_proto().write_to_bytes_dyn().unwrap();
        let back = TaskExit::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back.container_id, "c1");
        assert_eq!(back.id, "c1");
        assert_eq!(back.pid, 42);
        assert_eq!(back.exit_status, 137);
        assert_eq!(back.exited_at.seconds, 1_700_000_000);
        assert_eq!(back.exited_at.nanos, 5);
    }

    #[test]
    fn delete_event_carries_both_ids() {
        let ev = TaskEvent::Delete {
            container_id: "c1".into(),
            pid: 7,
            exit_status: 0,
            exited_at: None,
        };
        let bytes = ev.to_proto().write_to_bytes_dyn().unwrap();
        let back = TaskDelete::parse_from_bytes(&bytes).unwrap();
        assert_eq!((back.container_id.as_str(), back.id.as_str()), ("c1", "c1"));
        assert!(back.exited_at.is_none());
    }
}
