//! The life of a task's process (a container's init or an exec), as one explicit state machine.
//!
//! ```text
//!            start            pause
//!  Created ---------> Running <-----> Paused
//!     |                 |    resume     |
//!     | exit/kill       | exit          | exit
//!     v                 v               v
//!   Stopped <-------------------------------
//!     | delete
//!     v
//!  Deleted
//! ```
//!
//! `Created` may also be deleted directly (containerd deletes a task that never started). Every
//! other request in the wrong state is an error that reaches containerd as FAILED_PRECONDITION.

use std::fmt;

use containerd_shim::protos::types::task::Status as ProtoStatus;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Frozen (whole container).
    Paused,
    /// Exited; its status is known.
    Stopped,
    /// Deleted; kept only until forgotten.
    Deleted,
}

/// What happens to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `Start`.
    Start,
    /// The process ended (or was killed before it ran).
    Exit,
    /// `Pause`.
    Pause,
    /// `Resume`.
    Resume,
    /// `Delete`.
    Delete,
    /// `Kill`: a signal for a live process (state unchanged).
    Signal,
    /// `Exec` or `Update` against the container (state unchanged; it must run).
    Use,
}

/// A request that is not valid in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a {} process", verb(*.transition), .status)]
pub struct StateError {
    /// Current state.
    pub status: Status,
    /// Refused transition.
    pub transition: Transition,
}

fn verb(t: Transition) -> &'static str {
    match t {
        Transition::Start => "start",
        Transition::Exit => "exit",
        Transition::Pause => "pause",
        Transition::Resume => "resume",
        Transition::Delete => "delete",
        Transition::Signal => "signal",
        Transition::Use => "use",
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
            Status::Deleted => "deleted",
        })
    }
}

impl Status {
    /// The state after `t`, or why `t` is refused.
    pub fn apply(self, t: Transition) -> Result<Status, StateError> {
        use Status::*;
        use Transition as T;
        let next = match (self, t) {
            (Created, T::Start) => Running,
            (Created | Running | Paused, T::Exit) => Stopped,
            (Running, T::Pause) => Paused,
            (Paused, T::Resume) => Running,
            (Created | Stopped, T::Delete) => Deleted,
            (Created | Running | Paused, T::Signal) => self,
            (Running | Paused, T::Use) => self,
            _ => {
                return Err(StateError {
                    status: self,
                    transition: t,
                })
            }
        };
        Ok(next)
    }

    /// containerd's view of it.
    pub fn to_proto(self) -> ProtoStatus {
        match self {
            Status::Created => ProtoStatus::CREATED,
            Status::Running => ProtoStatus::RUNNING,
            Status::Paused => ProtoStatus::PAUSED,
            Status::Stopped | Status::Deleted => ProtoStatus::STOPPED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Status::*;
    use super::Transition as T;
    use super::*;

    #[test]
    fn the_happy_path() {
        let s = Created.apply(T::Start).unwrap();
        assert_eq!(s, Running);
        let s = s.apply(T::Pause).unwrap().apply(T::Resume).unwrap();
        assert_eq!(s, Running);
        let s = s.apply(T::Exit).unwrap();
        assert_eq!(s, Stopped);
        assert_eq!(s.apply(T::Delete).unwrap(), Deleted);
    }

    #[test]
    fn refused_transitions_say_why() {
        let cases = [
            (Running, T::Start, "cannot start a running process"),
            (Stopped, T::Start, "cannot start a stopped process"),
            (Running, T::Delete, "cannot delete a running process"),
            (Paused, T::Delete, "cannot delete a paused process"),
            (Created, T::Pause, "cannot pause a created process"),
            (Running, T::Resume, "cannot resume a running process"),
            (Stopped, T::Signal, "cannot signal a stopped process"),
            (Created, T::Use, "cannot use a created process"),
            (Deleted, T::Exit, "cannot exit a deleted process"),
        ];
        for (s, t, msg) in cases {
            assert_eq!(s.apply(t).unwrap_err().to_string(), msg, "{s:?} {t:?}");
        }
    }

    #[test]
    fn proto_status() {
        assert_eq!(Created.to_proto(), ProtoStatus::CREATED);
        assert_eq!(Paused.to_proto(), ProtoStatus::PAUSED);
        assert_eq!(Deleted.to_proto(), ProtoStatus::STOPPED);
    }
}
