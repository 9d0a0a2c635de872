//! critest's Security Context cases of the contexts "SeccompProfilePath" and "NoNewPrivs"
//! (`pkg/validate/security_context_linux.go`), once per handler like the rest of the suite.
//!
//! Seccomp: containerd 1.7 turns the CRI profile into the spec's `linux.seccomp` (RuntimeDefault:
//! its built-in profile; Localhost: the JSON file on the host, read by containerd; Unconfined,
//! nil, or a privileged container: none); runc installs it, and under `microsandbox` agentd does,
//! in the guest, for the container's init and each exec. Localhost profiles are written to a
//! temporary directory of the test on the host, where containerd reads them.
//!
//! NoNewPrivs: critest runs its `nonewprivs` image as uid 1000, a setuid-root program printing
//! its effective uid (`Effective uid: 0` when privileges may be gained, `1000` when not). The
//! suite has Debian's static busybox only, and no setuid file in the image; so the container
//! starts as root, makes one ([`SETUID_ID`]: a setuid-root copy of busybox, with busybox's
//! `/etc/busybox.conf` asking it to keep the root it gains when run as `id`), and runs it as
//! uid 1000 through `su`. With no new privileges the setuid bit is ignored: busybox, still uid
//! 1000, cannot take root (`setresgid: Operation not permitted`); without, `id` reports
//! `euid=0(root)`.

use msb_test_e2e::cri::api::{
    security_profile::ProfileType, Capability, ContainerConfig, ContainerState, PodSandboxConfig,
    SecurityProfile,
};
use msb_test_e2e::cri::{
    container_config, container_security, output, pod_config, pod_security, unique_name, CriTest,
    Handler, LogStream,
};

use super::{run, wait_log};

/// critest's `pauseCmd` with busybox: runs until killed, writes nothing.
const PAUSE: &[&str] = &["tail", "-f", "/dev/null"];

/// critest's `seccompBlockHostNameProfile`.
const BLOCK_HOSTNAME: &str = r#"{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [
         {
             "names": ["sethostname"],
             "action": "SCMP_ACT_ERRNO"
         }
     ]
}"#;

/// critest's `seccompBlockChmodProfile`.
const BLOCK_CHMOD: &str = r#"{
     "defaultAction": "SCMP_ACT_ALLOW",
     "syscalls": [
         {
             "names": ["chmod", "fchmodat"],
             "action": "SCMP_ACT_ERRNO"
         }
     ]
}"#;

/// critest's `seccompProcSelfStatusGrepCommand`.
const GREP_SECCOMP: &[&str] = &["grep", "Seccomp:", "/proc/self/status"];

/// The NoNewPrivs cases' program, run by root: makes a setuid-root busybox that keeps root as
/// `id` (`/etc/busybox.conf`, busybox's per-applet setuid policy), a user 1000, and runs it as
/// that user.
const SETUID_ID: &str = "mkdir /tmp/s && cp /bin/busybox /tmp/s/busybox \
    && chmod 4755 /tmp/s/busybox && ln -s busybox /tmp/s/id \
    && printf '[SUID]\\nid = ssx root.root\\n' >/etc/busybox.conf \
    && echo 'u:x:1000:1000::/:/bin/sh' >>/etc/passwd \
    && exec su -s /bin/sh u -c '/tmp/s/id 2>&1'";

per_handler! {
    /// critest Security Context, SeccompProfilePath: "should support seccomp unconfined on the
    /// container".
    seccomp_unconfined => runc_seccomp_unconfined, microsandbox_seccomp_unconfined;
    /// critest SeccompProfilePath: "should support seccomp localhost profile on the container"
    /// (`chmod` denied).
    seccomp_localhost_profile => runc_seccomp_localhost_profile,
        microsandbox_seccomp_localhost_profile;
    /// critest SeccompProfilePath: "should support seccomp default on the container".
    seccomp_default => runc_seccomp_default, microsandbox_seccomp_default;
    /// critest SeccompProfilePath: "should support nil profile, which is unconfined".
    seccomp_nil_profile => runc_seccomp_nil_profile, microsandbox_seccomp_nil_profile;
    /// critest SeccompProfilePath: "runtime should not block setting host name with unconfined
    /// seccomp and SYS_ADMIN".
    seccomp_unconfined_sys_admin_sets_hostname =>
        runc_seccomp_unconfined_sys_admin_sets_hostname,
        microsandbox_seccomp_unconfined_sys_admin_sets_hostname;
    /// critest SeccompProfilePath: "runtime should support an seccomp profile that blocks
    /// setting hostname with SYS_ADMIN".
    seccomp_profile_blocks_hostname_with_sys_admin =>
        runc_seccomp_profile_blocks_hostname_with_sys_admin,
        microsandbox_seccomp_profile_blocks_hostname_with_sys_admin;
    /// critest SeccompProfilePath: "runtime should ignore a seccomp profile that blocks setting
    /// hostname when privileged".
    seccomp_profile_ignored_when_privileged => runc_seccomp_profile_ignored_when_privileged,
        microsandbox_seccomp_profile_ignored_when_privileged;
    /// critest Security Context, NoNewPrivs: "should not allow privilege escalation when true"
    /// (adapted, see the module's doc: a setuid busybox made in the container).
    no_new_privs_true => runc_no_new_privs_true, microsandbox_no_new_privs_true;
    /// critest NoNewPrivs: "should allow privilege escalation when false" (adapted likewise).
    no_new_privs_false => runc_no_new_privs_false, microsandbox_no_new_privs_false;
}

fn profile(kind: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    })
}

/// A Localhost profile file with `json` on the host, in a directory of the test's.
fn localhost_profile(t: &CriTest, name: &str, json: &str) -> String {
    let path = t.temp_dir("seccomp").join(name);
    std::fs::write(&path, json).expect("write the profile");
    path.to_string_lossy().into_owned()
}

/// Creates `config` in `pod`, starts it and waits (60 s) until it runs; its id.
fn start_running(
    t: &CriTest,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: &ContainerConfig,
) -> String {
    let c = t.create_container(pod, config, pod_config);
    t.start_container(&c);
    t.wait_state(&c, ContainerState::ContainerRunning);
    c
}

/// critest's `seccompTestContainer`: a pod and a running container, both with `seccomp`.
fn seccomp_test_container(t: &CriTest, seccomp: Option<SecurityProfile>) -> String {
    let mut pod_config = pod_config(&unique_name("seccomp-sandbox"));
    pod_security(&mut pod_config).seccomp = seccomp.clone();
    let pod = t.run_pod(&pod_config);
    let mut config = container_config(&unique_name("seccomp-container"), PAUSE);
    container_security(&mut config).seccomp = seccomp;
    start_running(t, &pod, &pod_config, &config)
}

/// critest's `verifySeccomp` for the grep of `/proc/self/status`: exactly the `Seccomp:` line.
fn expect_seccomp_mode(t: &CriTest, c: &str, mode: u8) {
    assert_eq!(
        output(&t.exec(c, GREP_SECCOMP)),
        (format!("Seccomp:\t{mode}\n"), String::new(), 0)
    );
}

fn seccomp_unconfined(t: &CriTest) {
    let c = seccomp_test_container(t, profile(ProfileType::Unconfined, ""));
    expect_seccomp_mode(t, &c, 0);
}

fn seccomp_localhost_profile(t: &CriTest) {
    let path = localhost_profile(t, "block-chmod.json", BLOCK_CHMOD);
    let c = seccomp_test_container(t, profile(ProfileType::Localhost, &path));
    assert_eq!(
        output(&t.exec(&c, &["chmod", "400", "/"])),
        (
            String::new(),
            "chmod: /: Operation not permitted\n".into(),
            1
        )
    );
    // The init has the filter too (critest looks at the exec only).
    assert_eq!(
        output(&t.exec(&c, &["grep", "Seccomp:", "/proc/1/status"])),
        ("Seccomp:\t2\n".into(), String::new(), 0)
    );
}

fn seccomp_default(t: &CriTest) {
    // critest's `&SecurityProfile{}`: type RuntimeDefault.
    let c = seccomp_test_container(t, Some(SecurityProfile::default()));
    expect_seccomp_mode(t, &c, 2);
}

fn seccomp_nil_profile(t: &CriTest) {
    let c = seccomp_test_container(t, None);
    expect_seccomp_mode(t, &c, 0);
}

/// critest's `createSeccompContainer` in a default (or privileged) pod, started, then
/// `hostname ANewHostName` (critest's `checkSetHostname`): its exit code and stderr.
fn set_hostname(t: &CriTest, seccomp: Option<SecurityProfile>, privileged: bool) -> (i32, String) {
    let mut pod_config = pod_config(&unique_name("seccomp-hostname-sandbox"));
    if privileged {
        pod_security(&mut pod_config).privileged = true;
    }
    let pod = t.run_pod(&pod_config);
    let mut config = container_config(
        &unique_name("container-with-block-hostname-seccomp-profile-test"),
        PAUSE,
    );
    let security = container_security(&mut config);
    security.privileged = privileged;
    if !privileged {
        security.capabilities = Some(Capability {
            add_capabilities: vec!["SYS_ADMIN".into()],
            ..Default::default()
        });
    }
    security.seccomp = seccomp;
    let c = start_running(t, &pod, &pod_config, &config);
    let (stdout, stderr, code) = output(&t.exec(&c, &["hostname", "ANewHostName"]));
    assert_eq!(stdout, "");
    (code, stderr)
}

fn seccomp_unconfined_sys_admin_sets_hostname(t: &CriTest) {
    let got = set_hostname(t, profile(ProfileType::Unconfined, ""), false);
    assert_eq!(got, (0, String::new()));
}

fn seccomp_profile_blocks_hostname_with_sys_admin(t: &CriTest) {
    let path = localhost_profile(t, "block-host-name.json", BLOCK_HOSTNAME);
    let got = set_hostname(t, profile(ProfileType::Localhost, &path), false);
    assert_eq!(
        got,
        (1, "hostname: sethostname: Operation not permitted\n".into())
    );
}

fn seccomp_profile_ignored_when_privileged(t: &CriTest) {
    let path = localhost_profile(t, "block-host-name.json", BLOCK_HOSTNAME);
    let got = set_hostname(t, profile(ProfileType::Localhost, &path), true);
    assert_eq!(got, (0, String::new()));
}

/// critest's `createContainerWithNoNewPrivs` and `matchContainerOutput`, adapted (see the
/// module's doc): [`SETUID_ID`] runs to its end, its log then holds `line` on stdout.
fn no_new_privs_case(t: &CriTest, no_new_privs: bool, line: &str) {
    let mut pod_config = pod_config(&unique_name("podsandbox-for-no-new-privs"));
    pod_config.log_directory = t.temp_dir("logs").to_string_lossy().into_owned();
    let pod = t.run_pod(&pod_config);
    let name = unique_name(&format!("busybox-nnp-{no_new_privs}"));
    let mut config = container_config(&name, &["sh", "-c", SETUID_ID]);
    container_security(&mut config).no_new_privs = no_new_privs;
    config.log_path = format!("{name}.log");
    let c = t.create_container(&pod, &config, &pod_config);
    t.start_container(&c);
    t.wait_state(&c, ContainerState::ContainerExited);
    let log = std::path::Path::new(&pod_config.log_directory).join(&config.log_path);
    wait_log(t, &log, LogStream::Stdout, line);
}

fn no_new_privs_true(t: &CriTest) {
    no_new_privs_case(t, true, "id: setresgid: Operation not permitted");
}

fn no_new_privs_false(t: &CriTest) {
    no_new_privs_case(
        t,
        false,
        "uid=1000(u) gid=1000 euid=0(root) egid=0(root) groups=1000",
    );
}
