//! `Bundle::network_namespace`: the pod network comes from the namespace a spec joins by path.

use msb_oci::{Bundle, Spec};

fn bundle(namespaces: serde_json::Value) -> Bundle {
    let spec: Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": namespaces}
    }))
    .unwrap();
    Bundle::from_spec("/b", spec)
}

#[test]
fn the_network_namespace_joined_by_path_is_the_pods() {
    let b = bundle(serde_json::json!([
        {"type": "pid"},
        {"type": "network", "path": "/var/run/netns/cni-1234"}
    ]));
    assert_eq!(
        b.network_namespace(),
        Some(std::path::PathBuf::from("/var/run/netns/cni-1234"))
    );
}

#[test]
fn a_new_or_absent_network_namespace_is_none() {
    // A new namespace (ctr run), an empty path, the host's (hostNetwork: no entry at all).
    for ns in [
        serde_json::json!([{"type": "network"}]),
        serde_json::json!([{"type": "network", "path": ""}]),
        serde_json::json!([{"type": "pid"}]),
    ] {
        assert_eq!(bundle(ns.clone()).network_namespace(), None, "{ns}");
    }
}
