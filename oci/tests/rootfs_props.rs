//! Properties of the rootfs mapping over arbitrary containerd mounts: it never panics, and an
//! overlay's lowers come back exactly, in order.

use std::path::{Path, PathBuf};

use msb_oci::{OciRootfsSource, RootfsMount};
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_mounts_never_panic(
        typ in "(overlay|bind|rbind|tmpfs|[a-z]{0,6})",
        source in ".{0,40}",
        options in proptest::collection::vec(".{0,60}", 0..6),
    ) {
        let m = RootfsMount { typ, source, options };
        let _ = OciRootfsSource::from_mounts(Path::new("/b"), &[m], Path::new("/nonexistent/rootfs"));
    }

    #[test]
    fn overlay_lowers_round_trip(ids in proptest::collection::vec(1u32..100_000, 1..12)) {
        let lowers: Vec<PathBuf> = ids
            .iter()
            .map(|i| PathBuf::from(format!("/var/lib/containerd/snapshots/{i}/fs")))
            .collect();
        let joined = lowers.iter().map(|p| p.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":");
        let m = RootfsMount {
            typ: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), format!("lowerdir={joined}")],
        };
        let src = OciRootfsSource::from_mounts(Path::new("/b"), &[m], Path::new("/b/rootfs")).unwrap();
        prop_assert_eq!(&src.lowers, &lowers);
    }
}
