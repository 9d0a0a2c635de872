//! The multi-client relay of PROTOCOL.md: not written yet. The direct client connection is the
//! only mode used today (one host client per sandbox).
