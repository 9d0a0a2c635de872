//! Ours: the pod's cgroup on the node holds the pod's sandbox task, so the limits kubelet sets
//! on the pod's cgroup count it. Under runc that task is the pause process; under microsandbox
//! the VM's VMM and its `virtiofsd` companions (docs/SECURITY.md, point 2), as Kata's
//! `sandbox_cgroup_only` places its hypervisor.
//!
//! The pod's parent cgroup is made by the test, in every mounted hierarchy, as kubelet makes a
//! pod's; containerd's CRI (cgroupfs driver) names the sandbox's cgroup `<cgroup_parent>/<pod
//! id>`, which the runtime makes and, once the pod is removed, removes; the parent stays for
//! the test to remove (which fails if anything was left inside).

use msb_test_e2e::cgroups::{self, TestCgroup};
use msb_test_e2e::containerd::{Containerd, CRI_NAMESPACE};
use msb_test_e2e::cri::{pod_config, unique_name, CriTest, Handler, CRI_VERSION};
use msb_test_e2e::ctr::{eventually, stdout};

use super::run;

per_handler! {
    /// Ours: a pod with `linux.cgroup_parent`: its sandbox task (runc: pause; microsandbox: the
    /// VMM, and each `virtiofsd` of the VM) runs in `<parent>/<pod id>` in every hierarchy; under
    /// microsandbox the parent's memory counts the VM (at least 32 MiB while it runs); once the
    /// pod is removed `<parent>/<pod id>` is gone everywhere and the parent is empty.
    pod_cgroup_holds_the_sandbox_task => runc_pod_cgroup_holds_the_sandbox_task,
        microsandbox_pod_cgroup_holds_the_sandbox_task;
}

/// The pid containerd records for task `id` in the CRI's namespace: runc's pause process, or
/// the microsandbox VM's VMM.
fn task_pid(id: &str) -> i32 {
    let ctrd = Containerd::shared_cri(CRI_VERSION).expect("the CRI containerd");
    let ls = stdout(&ctrd.ctr(CRI_NAMESPACE, &["task", "ls"]));
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid for {id} in {ls}"))
}

fn pod_cgroup_holds_the_sandbox_task(t: &CriTest) {
    let parent = TestCgroup::make(&unique_name("msbt-pod"));
    let mut config = pod_config(&unique_name("cgroup-parent"));
    config
        .linux
        .get_or_insert_with(Default::default)
        .cgroup_parent = parent.path().to_owned();
    let pod = t.run_pod(&config);
    let path = format!("{}/{pod}", parent.path());
    let task = task_pid(&pod);
    assert_eq!(
        cgroups::lines_not_in(task, &path),
        Vec::<String>::new(),
        "the sandbox task {task} ({}) is outside {path}: {:?}",
        cgroups::comm(task),
        cgroups::of_process(task)
    );
    if t.handler == Handler::Microsandbox {
        // The VMM's companions: the shim's children other than the VMM (virtiofsd per share;
        // a pod's VM has its runtime share).
        let shim: i32 = msb_test_e2e::cri::processes_naming(std::slice::from_ref(&pod))
            .iter()
            .find(|l| l.contains("containerd-shim-microsandbox-v1"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .expect("the pod's shim process");
        let kids = cgroups::children(shim);
        assert!(
            kids.contains(&task),
            "the VMM {task} is no child of the shim: {kids:?}"
        );
        let companions: Vec<i32> = kids.iter().copied().filter(|&p| p != task).collect();
        assert!(
            !companions.is_empty() && companions.iter().all(|&p| cgroups::comm(p) == "virtiofsd"),
            "the shim's other children: {:?}",
            companions
                .iter()
                .map(|&p| (p, cgroups::comm(p)))
                .collect::<Vec<_>>()
        );
        for p in companions {
            assert_eq!(
                cgroups::lines_not_in(p, &path),
                Vec::<String>::new(),
                "virtiofsd {p} is outside {path}"
            );
        }
        let usage = cgroups::memory_usage(parent.path()).expect("the parent's memory usage");
        eprintln!(
            "{}: {} MiB charged to the pod's cgroup",
            parent.path(),
            usage >> 20
        );
        assert!(
            usage >= 32 << 20,
            "the pod's cgroup is charged {usage} bytes"
        );
    }
    t.stop_pod(&pod);
    t.remove_pod(&pod);
    assert!(
        eventually(20, || cgroups::existing(&path).is_empty()),
        "the sandbox's cgroup is left: {:?}",
        cgroups::existing(&path)
    );
    assert_eq!(parent.remove(), Vec::<String>::new(), "the parent cgroup");
}
