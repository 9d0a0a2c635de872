//! agentd: PID 1 of a microsandbox microVM (filled by the guest-slice issue).
fn main() {}
