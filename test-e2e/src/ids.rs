//! Container ids as real clients make them.
//!
//! CRI, Docker and nerdctl name containers with 64 hex characters, and a shim that only ever saw
//! short names once failed every one of them (its socket paths outgrew `sun_path`). Tests name
//! containers through [`container_id`], so every test runs with ids of that shape.

use sha2::{Digest, Sha256};

/// A 64-hex-character container id for `name`, unique to this test process (two test binaries
/// running at once never collide) and stable within it.
pub fn container_id(name: &str) -> String {
    let digest = Sha256::digest(format!("{}/{name}", std::process::id()));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = container_id("a");
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(a, container_id("a"));
        assert_ne!(a, container_id("b"));
    }
}
