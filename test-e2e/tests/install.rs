//! `hack/install` on a node's own containerd, for each containerd version: the binaries land on
//! the prefix, the CRI runtime handler `microsandbox` is what containerd then loads, the user's
//! other settings survive (containerd 1.x replaces a whole plugin table from an imported file,
//! so there the handler goes into the file itself), a second run changes nothing, and a file it
//! cannot edit safely is refused with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use msb_test_e2e::containerd::{fetched_or_skip, Version};
use msb_test_e2e::paths::{profile_dir, workspace_root};

fn containerd(version: Version) -> PathBuf {
    version
        .bin_dir()
        .map_or_else(|| PathBuf::from("containerd"), |d| d.join("containerd"))
}

fn install(version: Version, config: &Path, prefix: &Path) -> Output {
    Command::new(workspace_root().join("hack/install"))
        .arg("--from")
        .arg(profile_dir())
        .arg("--prefix")
        .arg(prefix)
        .arg("--containerd-config")
        .arg(config)
        .arg("--containerd")
        .arg(containerd(version))
        .arg("--no-assets")
        .output()
        .expect("hack/install runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `containerd config dump` of `config`: what containerd would run with.
fn dump(version: Version, config: &Path) -> String {
    let o = Command::new(containerd(version))
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(o.status.success(), "config dump: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn installs_the_handler_and_keeps_the_rest(version: Version) {
    let Some(()) = fetched_or_skip(version.check()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let cri = if version == Version::V2_1 {
        "version = 3\n[plugins.\"io.containerd.cri.v1.runtime\"]\n  restrict_oom_score_adj = true\n"
    } else {
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  restrict_oom_score_adj = true\n"
    };
    std::fs::write(&config, cri).unwrap();
    let before = dump(version, &config);
    assert!(!before.contains("runtimes.microsandbox]"), "{before}");

    let prefix = tmp.path().join("usr/local");
    let o = install(version, &config, &prefix);
    assert!(o.status.success(), "{}", text(&o));
    for bin in ["containerd-shim-microsandbox-v1", "msbox", "msb-krun-vmm"] {
        assert_eq!(
            std::fs::read(prefix.join("bin").join(bin)).unwrap(),
            std::fs::read(profile_dir().join(bin)).unwrap(),
            "{bin}"
        );
    }
    let after = dump(version, &config);
    let handler = after
        .split("runtimes.microsandbox]")
        .nth(1)
        .unwrap_or_else(|| panic!("no handler microsandbox in:\n{after}"));
    // The handler's own runtime_type (2.x writes strings in single quotes).
    let runtime_type = handler
        .lines()
        .find(|l| l.trim_start().starts_with("runtime_type"))
        .unwrap_or_default()
        .replace('\'', "\"");
    assert_eq!(
        runtime_type.trim(),
        "runtime_type = \"io.containerd.microsandbox.v1\"",
        "{handler}"
    );
    assert!(
        after.contains("restrict_oom_score_adj = true"),
        "the user's CRI setting was lost:\n{after}"
    );

    let first = std::fs::read(&config).unwrap();
    let o = install(version, &config, &prefix);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("already has the runtime handler microsandbox"),
        "{}",
        text(&o)
    );
    assert_eq!(
        std::fs::read(&config).unwrap(),
        first,
        "a second run changed the file"
    );
}

#[test]
fn install_on_containerd_1_6() {
    installs_the_handler_and_keeps_the_rest(Version::System);
}

#[test]
fn install_on_containerd_1_7() {
    installs_the_handler_and_keeps_the_rest(Version::V1_7);
}

#[test]
fn install_on_containerd_2_1() {
    installs_the_handler_and_keeps_the_rest(Version::V2_1);
}

#[test]
fn install_refuses_what_it_cannot_edit_safely() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    let prefix = tmp.path().join("p");
    // No `version = 2`: containerd 1.x reads it as version 1.
    let old = "[plugins.cri]\n  systemd_cgroup = true\n";
    std::fs::write(&config, old).unwrap();
    let o = install(Version::System, &config, &prefix);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not a version 2 configuration"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), old);
    // A handler of the same name the user wrote: never a second table.
    let own = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.microsandbox]\n  runtime_type = \"x\"\n";
    std::fs::write(&config, own).unwrap();
    let o = install(Version::System, &config, &prefix);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("already defines a runtime handler microsandbox outside our markers"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), own);
}
