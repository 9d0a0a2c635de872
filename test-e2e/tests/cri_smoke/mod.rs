//! A two-container CRI pod on one containerd version, for the versions the full suite
//! (`cri.rs`, containerd 1.7) does not run on: each test binary including this module starts
//! its own containerd (a process shares one).

use msb_test_e2e::containerd::Version;
use msb_test_e2e::cri::api::ContainerState;
use msb_test_e2e::cri::{
    container_config, pod_config, processes_naming, unique_name, CriTest, Handler,
};

/// A pod with two containers under `handler` on containerd `version`: both run, exec in each
/// prints exactly what it echoes, they see one kernel (for microsandbox: one VM), and after the
/// pod is stopped and removed no process names it.
pub fn two_container_pod(handler: Handler, version: Version) {
    let Some(t) = CriTest::setup_on(handler, version) else {
        return;
    };
    let pod_config = pod_config(&unique_name("smoke"));
    let pod = t.run_pod(&pod_config);
    let mut containers = Vec::new();
    for name in ["first", "second"] {
        let config = container_config(&unique_name(name), &["sleep", "1000"]);
        let c = t.create_container(&pod, &config, &pod_config);
        t.start_container(&c);
        t.wait_state(&c, ContainerState::ContainerRunning);
        containers.push(c);
    }
    for (c, word) in containers.iter().zip(["one", "two"]) {
        let r = t.exec(c, &["echo", word]);
        assert_eq!(
            (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code),
            (format!("{word}\n"), 0),
            "{r:?}"
        );
    }
    let boot_id = |c: &str| {
        t.exec(c, &["cat", "/proc/sys/kernel/random/boot_id"])
            .stdout
    };
    assert_eq!(boot_id(&containers[0]), boot_id(&containers[1]));
    t.stop_pod(&pod);
    t.remove_pod(&pod);
    let mut ids = containers.clone();
    ids.push(pod.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !processes_naming(&ids).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        processes_naming(&ids),
        Vec::<String>::new(),
        "left after the pod\n{}",
        t.log()
    );
}
