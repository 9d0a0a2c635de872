//! Host volumes: critest's "Container Mount Propagation" and "Container Mount Readonly" cases
//! (`pkg/validate/container_linux.go`), and ours for what a pod's volumes must do (hostPath both
//! ways, read-only, an emptyDir shared by two containers, the pod's `/dev/shm`), once per
//! handler like the rest of the suite.
//!
//! Under `microsandbox` a volume reaches the VM through its virtio-fs volume share (see
//! docs/SHIM.md): the host binds the volume's path into the share, with the spec's propagation
//! and read-only options, so what the host sees and does is what a runc container would get.
//! One thing cannot cross: a mount made inside the container is in the guest's kernel and never
//! reaches the host (`rshared`'s container-to-host half), which the bidirectional case asserts
//! for `microsandbox`.

use std::path::{Path, PathBuf};

use msb_test_e2e::cri::api::{ContainerState, Mount, MountPropagation};
use msb_test_e2e::cri::{
    container_config, container_security, output, unique_name, CriTest, Handler,
};
use msb_test_e2e::ctr::eventually;

use super::run;

/// Runs until stopped.
const PAUSE: &[&str] = &["tail", "-f", "/dev/null"];

per_handler! {
    /// critest Container Mount Propagation: "mount with 'rprivate' should not support
    /// propagation".
    mount_rprivate_does_not_propagate => runc_mount_rprivate_does_not_propagate,
        microsandbox_mount_rprivate_does_not_propagate;
    /// critest Container Mount Propagation: "mount with 'rshared' should support propagation
    /// from host to container and vice versa". microsandbox: host to container only.
    mount_rshared_propagates_both_ways => runc_mount_rshared_propagates_both_ways,
        microsandbox_mount_rshared_propagates_both_ways;
    /// critest Container Mount Propagation: "mount with 'rslave' should support propagation
    /// from host to container".
    mount_rslave_propagates_from_host => runc_mount_rslave_propagates_from_host,
        microsandbox_mount_rslave_propagates_from_host;
    /// critest Container Mount Readonly: "should support non-recursive readonly mounts".
    non_recursive_readonly_mount => runc_non_recursive_readonly_mount,
        microsandbox_non_recursive_readonly_mount;
    /// Ours: a hostPath volume is shared both ways: host files are read in the container, and
    /// files the container writes, and later host changes, are seen on the other side.
    host_path_volume_both_ways => runc_host_path_volume_both_ways,
        microsandbox_host_path_volume_both_ways;
    /// Ours: a read-only volume refuses writes with EROFS, and its files are still read.
    read_only_volume_refuses_writes => runc_read_only_volume_refuses_writes,
        microsandbox_read_only_volume_refuses_writes;
    /// Ours: one host directory (an emptyDir) in two containers of a pod: what one writes the
    /// other reads.
    empty_dir_shared_by_two_containers => runc_empty_dir_shared_by_two_containers,
        microsandbox_empty_dir_shared_by_two_containers;
    /// Ours: the pod's `/dev/shm` is shared by its containers.
    dev_shm_shared_by_a_pods_containers => runc_dev_shm_shared_by_a_pods_containers,
        microsandbox_dev_shm_shared_by_a_pods_containers;
}

/// Host mounts a case made, detached when it ends, however it ends (before its temporary
/// directories go).
struct HostMounts(Vec<PathBuf>);

impl HostMounts {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
    ) {
        nix::mount::mount(src, target, fstype, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("mount {src:?} on {}: {e}", target.display()));
        if !flags.intersects(nix::mount::MsFlags::MS_PRIVATE | nix::mount::MsFlags::MS_SHARED) {
            self.0.push(target.to_owned());
        }
    }
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `cmd` in container `c`: (stdout, stderr, exit code).
fn exec(t: &CriTest, c: &str, cmd: &[&str]) -> (String, String, i32) {
    output(&t.exec(c, cmd))
}

/// A running container of `pod` with `mounts`, privileged if asked.
fn container_with(
    t: &CriTest,
    pod: &str,
    pod_config: &msb_test_e2e::cri::api::PodSandboxConfig,
    mounts: Vec<Mount>,
    privileged: bool,
) -> String {
    let mut config = container_config(&unique_name("container-with-volume"), PAUSE);
    config.mounts = mounts;
    if privileged {
        container_security(&mut config).privileged = true;
    }
    let c = t.create_container(pod, &config, pod_config);
    t.start_container(&c);
    t.wait_state(&c, ContainerState::ContainerRunning);
    c
}

fn volume(host: &Path, container: &str) -> Mount {
    Mount {
        host_path: host.to_string_lossy().into_owned(),
        container_path: container.into(),
        ..Default::default()
    }
}

/// critest's `testMountPropagation`: a host path bound rprivate/rshared on the host, a mount
/// made under it on the host after the start (seen in the container?), and a mount made in the
/// container (seen on the host?).
fn mount_propagation(t: &CriTest, propagation: MountPropagation) {
    let mut pod_config = msb_test_e2e::cri::pod_config(&unique_name("mount-propagation"));
    msb_test_e2e::cri::pod_security(&mut pod_config).privileged = true;
    let pod = t.run_pod(&pod_config);
    let host = t.temp_dir("propagation");
    let source = host.join("mnt");
    let point = source.join("propagationMnt");
    let src_dir = host.join("propagationSrcDir");
    for d in [&point, &src_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(src_dir.join("flagFile"), "").unwrap();
    use nix::mount::MsFlags;
    let mut mounts = HostMounts(Vec::new());
    mounts.mount(
        Some(&source),
        &source,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
    );
    let kind = if propagation == MountPropagation::PropagationPrivate {
        MsFlags::MS_PRIVATE
    } else {
        MsFlags::MS_SHARED
    };
    mounts.mount(None, &source, None, kind | MsFlags::MS_REC);

    let path = source.to_string_lossy().into_owned();
    let mut m = volume(&source, &path);
    m.propagation = propagation.into();
    let c = container_with(t, &pod, &pod_config, vec![m], true);
    mounts.mount(
        Some(&src_dir),
        &point,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
    );

    let point_s = point.to_string_lossy().into_owned();
    let (out, err, code) = exec(t, &c, &["ls", "-A", &point_s]);
    assert_eq!((err.as_str(), code), ("", 0), "ls {point_s}");
    match propagation {
        MountPropagation::PropagationPrivate => assert_eq!(out, "", "host mount seen"),
        _ => assert_eq!(out, "flagFile\n", "host mount not seen"),
    }

    let in_container = source.join("containerMntPoint");
    let ic = in_container.to_string_lossy().into_owned();
    let (_, err, code) = exec(
        t,
        &c,
        &[
            "sh",
            "-c",
            &format!("mkdir -p {ic} && mount --bind /etc {ic}"),
        ],
    );
    assert_eq!((err.as_str(), code), ("", 0), "mount in the container");
    let seen = std::fs::read_dir(&in_container)
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("read {ic} on the host: {e}"));
    let expect_seen =
        propagation == MountPropagation::PropagationBidirectional && t.handler == Handler::Runc;
    assert_eq!(
        seen > 0,
        expect_seen,
        "{ic} on the host holds {seen} entries"
    );
    // The container's mount (runc, rshared) came back to the host: detach it with the rest.
    if expect_seen {
        mounts.0.push(in_container);
    }
}

fn mount_rprivate_does_not_propagate(t: &CriTest) {
    mount_propagation(t, MountPropagation::PropagationPrivate);
}

fn mount_rshared_propagates_both_ways(t: &CriTest) {
    mount_propagation(t, MountPropagation::PropagationBidirectional);
}

fn mount_rslave_propagates_from_host(t: &CriTest) {
    mount_propagation(t, MountPropagation::PropagationHostToContainer);
}

fn non_recursive_readonly_mount(t: &CriTest) {
    let mut pod_config = msb_test_e2e::cri::pod_config(&unique_name("readonly-mount"));
    msb_test_e2e::cri::pod_security(&mut pod_config).privileged = true;
    let pod = t.run_pod(&pod_config);
    let host = t.temp_dir("rro");
    let tmpfs = host.join("tmpfs");
    std::fs::create_dir_all(&tmpfs).unwrap();
    let mut mounts = HostMounts(Vec::new());
    mounts.mount(
        Some(Path::new("none")),
        &tmpfs,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
    );
    let mut m = volume(&host, "/mnt");
    m.readonly = true;
    let c = container_with(t, &pod, &pod_config, vec![m], false);
    // The mount inside the volume keeps its own mode; the volume itself is read-only.
    assert_eq!(
        exec(t, &c, &["touch", "/mnt/tmpfs/file"]),
        (String::new(), String::new(), 0)
    );
    assert_eq!(
        exec(t, &c, &["touch", "/mnt/file"]),
        (
            String::new(),
            "touch: /mnt/file: Read-only file system\n".into(),
            1
        )
    );
}

fn host_path_volume_both_ways(t: &CriTest) {
    let (pod, pod_config) = t.run_default_pod("hostpath");
    let host = t.temp_dir("hostpath");
    std::fs::write(host.join("from-host"), "hello from the host\n").unwrap();
    let c = container_with(t, &pod, &pod_config, vec![volume(&host, "/data")], false);
    assert_eq!(
        exec(t, &c, &["cat", "/data/from-host"]),
        ("hello from the host\n".into(), String::new(), 0)
    );
    assert_eq!(
        exec(
            t,
            &c,
            &["sh", "-c", "echo from the container >/data/from-container"]
        )
        .2,
        0
    );
    assert_eq!(
        std::fs::read_to_string(host.join("from-container")).unwrap(),
        "from the container\n"
    );
    std::fs::write(host.join("from-host"), "changed on the host\n").unwrap();
    std::fs::write(host.join("later"), "made later\n").unwrap();
    let mut last = None;
    let seen = eventually(30, || {
        let r = exec(t, &c, &["cat", "/data/from-host", "/data/later"]);
        let ok = r == ("changed on the host\nmade later\n".into(), String::new(), 0);
        last = Some(r);
        ok
    });
    assert!(seen, "host changes not seen in the container: {last:?}");
}

fn read_only_volume_refuses_writes(t: &CriTest) {
    let (pod, pod_config) = t.run_default_pod("readonly-volume");
    let host = t.temp_dir("readonly");
    std::fs::write(host.join("kept"), "kept\n").unwrap();
    let mut m = volume(&host, "/config");
    m.readonly = true;
    let c = container_with(t, &pod, &pod_config, vec![m], false);
    assert_eq!(
        exec(t, &c, &["touch", "/config/new"]),
        (
            String::new(),
            "touch: /config/new: Read-only file system\n".into(),
            1
        )
    );
    assert_eq!(
        exec(t, &c, &["cat", "/config/kept"]),
        ("kept\n".into(), String::new(), 0)
    );
    assert!(!host.join("new").exists());
}

fn empty_dir_shared_by_two_containers(t: &CriTest) {
    let (pod, pod_config) = t.run_default_pod("emptydir");
    let host = t.temp_dir("emptydir");
    let writer = container_with(t, &pod, &pod_config, vec![volume(&host, "/cache")], false);
    let reader = container_with(t, &pod, &pod_config, vec![volume(&host, "/shared")], false);
    assert_eq!(
        exec(t, &writer, &["sh", "-c", "echo one >/cache/note"]).2,
        0
    );
    let mut last = None;
    let seen = eventually(30, || {
        let r = exec(t, &reader, &["cat", "/shared/note"]);
        let ok = r == ("one\n".into(), String::new(), 0);
        last = Some(r);
        ok
    });
    assert!(seen, "the other container does not see it: {last:?}");
}

fn dev_shm_shared_by_a_pods_containers(t: &CriTest) {
    let (pod, pod_config) = t.run_default_pod("devshm");
    let a = container_with(t, &pod, &pod_config, Vec::new(), false);
    let b = container_with(t, &pod, &pod_config, Vec::new(), false);
    assert_eq!(exec(t, &a, &["sh", "-c", "echo shm >/dev/shm/note"]).2, 0);
    assert_eq!(
        exec(t, &b, &["cat", "/dev/shm/note"]),
        ("shm\n".into(), String::new(), 0)
    );
}
