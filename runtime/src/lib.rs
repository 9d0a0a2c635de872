//! A microsandbox sandbox on the host (filled by the guest-slice issue).
