//! An OCI `config.json` through everything the shim's `Create` does with it before it talks to
//! a VM: the bundle's spec mapping (`msb-oci`: mounts, namespaces, resources, sysctls, paths,
//! seccomp, the init process), the `io.microsandbox.*` annotations and the sandbox id
//! (`msb-shim`'s `ShimConfig::for_container`, `check_id`), containerd's rootfs mounts (here the
//! spec's own mounts in that role), then the `core.container.create` and `core.exec.request` the
//! host would send, which must survive the wire unchanged, and agentd's compilation of the
//! seccomp profile. The same bytes also go to the other JSON and protobuf decoders of
//! containerd's requests (`Exec`'s process, `Update`'s resources, the runtime options).
//!
//! Parsed from bytes (`Bundle::from_spec`; `Bundle::load` reads the file and parses the same
//! way), with a bundle directory that does not exist: nothing on the host is touched.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use msb_oci::{Bundle, OciRootfsSource, RootfsMount, Spec};
use msb_protocol::types::{ContainerCreate, ExecRequest, RootfsSpec, StorageRef};
use msb_protocol::{Message, Payload};
use msb_shim::config::{
    check_id, runtime_options_config_path, ShimConfig, ANNOTATION_PREFIX, RUNTIME_OPTIONS_TYPE,
    SANDBOX_ID_ANNOTATION,
};

const BUNDLE: &str = "/nonexistent/msb-fuzz/bundle";
const ID: &str = "fuzz-ctr";

/// What the guest decodes is what the host encoded.
fn over_the_wire<P: Payload + PartialEq + std::fmt::Debug>(p: &P) {
    let msg = Message::new(3, p).expect("a payload encodes");
    let back = Message::from_frame(&msg.to_frame())
        .and_then(|m| m.decode::<P>())
        .expect("an encoded payload decodes");
    assert_eq!(&back, p);
}

fn annotations(a: &HashMap<String, String>) {
    for (k, v) in a {
        if k.starts_with(ANNOTATION_PREFIX) || k == SANDBOX_ID_ANNOTATION {
            let _ = check_id(k, v);
        }
    }
    let _ = ShimConfig::default().for_container(a);
    let strict = ShimConfig {
        max_vcpus: 1,
        max_memory_mib: 64,
        max_upper_size: 16 << 20,
        ..ShimConfig::default()
    };
    let _ = strict.for_container(a);
}

fn bundle(spec: Spec) {
    let bundle = Bundle::from_spec(BUNDLE, spec);
    let _ = bundle.ignored_settings();
    let ann = bundle.annotations();
    annotations(&ann);
    let sandbox_id = ann
        .get(SANDBOX_ID_ANNOTATION)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| ID.to_owned());
    let sandbox_ok = check_id("sandbox id", &sandbox_id).is_ok();
    let _ = bundle.network_namespace();
    let _ = bundle.joins_host_network();
    let root = bundle.root_path();
    let _ = bundle.root_readonly();

    // containerd's rootfs mounts have the spec's mount shape: none, one (overlay, bind), many.
    let mounts: Vec<RootfsMount> = bundle
        .spec()
        .mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|m| RootfsMount {
            typ: m.typ().clone().unwrap_or_default(),
            source: m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            options: m.options().clone().unwrap_or_default(),
        })
        .collect();
    for n in 0..=mounts.len().min(2) {
        let _ = OciRootfsSource::from_mounts(Path::new(BUNDLE), &mounts[..n], &root);
    }
    for m in &mounts {
        let _ = OciRootfsSource::from_mounts(Path::new(BUNDLE), std::slice::from_ref(m), &root);
    }

    if let Ok(spec) = bundle.container_spec(ID, sandbox_ok.then_some(sandbox_id.as_str())) {
        for b in &spec.host_binds {
            let _ = (b.readonly(), b.recursive());
        }
        let rootfs = RootfsSpec {
            lower: vec![StorageRef::Serial("msb-lower-0".into())],
            upper: StorageRef::Serial("msb-upper".into()),
            fstype: "ext4".into(),
            readonly: bundle.root_readonly(),
        };
        let create: ContainerCreate = spec.into_create(ID, rootfs);
        over_the_wire(&create);
        for m in &create.mounts {
            let _ = msb_agentd::mount_opts::parse(&m.options);
        }
        if let Some(profile) = &create.seccomp {
            let _ = msb_agentd::seccomp::compile(profile);
        }
    }
    if let Ok(init) = bundle.init_exec(ID) {
        let init: ExecRequest = init;
        over_the_wire(&init);
        if let Some(caps) = &init.capabilities {
            let _ = msb_agentd::caps::CapMasks::new(caps);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = serde_json::from_slice::<Spec>(data) {
        bundle(spec);
    }
    // containerd's other JSON: `Exec`'s process and `Update`'s resources.
    if let Ok(p) = msb_oci::process_from_json(data) {
        if let Ok(req) = msb_oci::exec_request_from_process(&p, Some(ID.to_owned())) {
            over_the_wire(&req);
        }
    }
    let _ = msb_oci::resources_from_json(data);
    // The runtime options' protobuf (`Create`'s options).
    let _ = runtime_options_config_path(RUNTIME_OPTIONS_TYPE, data);
    // Annotations straight from `key=value` lines, as a pod spec would set them.
    if let Ok(text) = std::str::from_utf8(data) {
        let ann: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if !ann.is_empty() {
            annotations(&ann);
        }
    }
});
