//! Benchmarks printing JSON.
fn main() {}
