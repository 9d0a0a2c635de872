//! The async client of agentd's protocol over one connection (the agent socket, or a relay).
//!
//! A reader task routes each guest frame by correlation id to its session's bounded channel
//! (the reader awaits when a session's consumer is slow: backpressure reaches the guest instead
//! of buffering without bound), id 0 to a broadcast of events (`core.container.oom`). A writer
//! task owns the write side. If the connection fails (I/O error, a frame out of bounds, EOF),
//! every session's channel closes and the failure is kept: later calls and waiting sessions get
//! [`AgentError::Closed`] with the reason. Nothing the guest sends can panic the host, and no
//! request waits on it without a deadline ([`Deadlines`]): a guest that does not answer, or
//! stops reading its port, makes the request fail with [`AgentError::Timeout`].

mod client;
mod exec;

pub use client::{AgentClient, AgentError, Deadlines, Session};
pub use exec::{ExecEvent, ExecSession, StdinSender, StdinWindow};
