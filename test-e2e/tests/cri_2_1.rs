//! A two-container CRI pod through containerd 2.1's CRI plugin (Debian sid), both handlers.

mod cri_smoke;

use msb_test_e2e::containerd::Version;
use msb_test_e2e::cri::Handler;

#[test]
fn runc_two_container_pod_on_containerd_2_1() {
    cri_smoke::two_container_pod(Handler::Runc, Version::V2_1);
}

#[test]
fn microsandbox_two_container_pod_on_containerd_2_1() {
    cri_smoke::two_container_pod(Handler::Microsandbox, Version::V2_1);
}
