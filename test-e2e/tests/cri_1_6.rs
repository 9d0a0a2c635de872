//! A two-container CRI pod through containerd 1.6's CRI plugin (Debian 12), both handlers.

mod cri_smoke;

use msb_test_e2e::containerd::Version;
use msb_test_e2e::cri::Handler;

#[test]
fn runc_two_container_pod_on_containerd_1_6() {
    cri_smoke::two_container_pod(Handler::Runc, Version::System);
}

#[test]
fn microsandbox_two_container_pod_on_containerd_1_6() {
    cri_smoke::two_container_pod(Handler::Microsandbox, Version::System);
}
