//! critest Streaming (`pkg/validate/streaming.go`, `streaming_linux.go`): exec, attach and
//! port-forward through containerd's streaming server, with this suite's WebSocket client
//! ([`msb_test_e2e::cri_stream`]) where critest uses client-go's SPDY executor. Plus ours: the
//! exec combinations critest leaves out, stdin echoed back, the exit code in the status
//! channel, a terminal resize, attach with a terminal.
//!
//! With microsandbox none of this runs in the VM for the stream itself: the streaming server
//! is containerd's, and it drives the shim's Exec, Start, ResizePty, CloseIO and the process's
//! FIFOs as it would runc's. Port-forward is the exception: containerd dials the port on the
//! loopback of the pod's network namespace on the host (of the host itself with `hostNetwork`),
//! where the shim listens on each port that listens in the VM and relays the connection over
//! the agent channel (docs/NETWORK.md, "Port forwarding"); the cases assert the same page as
//! with runc.

use std::net::TcpListener;
use std::time::Duration;

use msb_test_e2e::cri::api::{
    AttachRequest, ContainerState, ExecRequest, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, PortMapping,
};
use msb_test_e2e::cri::{container_config, pod_config, unique_name, CriTest, Handler};
use msb_test_e2e::cri_stream::{Forwarded, Output, RemoteCommand};
use msb_test_e2e::ctr::eventually;

use super::{run, running_container};

/// critest's `echoHelloCmd` and its output.
const ECHO_HELLO: &[&str] = &["echo", "-n", "hello"];

/// How long a session may take to end once its command should have.
const SESSION: Duration = Duration::from_secs(60);

per_handler! {
    /// critest Streaming: "runtime should support exec with tty=false and stdin=false".
    exec_tty_false_stdin_false => runc_exec_tty_false_stdin_false,
        microsandbox_exec_tty_false_stdin_false;
    /// critest Streaming: "runtime should support exec with tty=true and stdin=true".
    exec_tty_true_stdin_true => runc_exec_tty_true_stdin_true,
        microsandbox_exec_tty_true_stdin_true;
    /// Ours: exec with tty=true and stdin=false: the process's stdin and stdout are a terminal
    /// (and with tty=false they are not).
    exec_tty_true_stdin_false => runc_exec_tty_true_stdin_false,
        microsandbox_exec_tty_true_stdin_false;
    /// Ours: exec with tty=false and stdin=true: `cat` echoes what the client sends; closing
    /// the session ends its stdin (CloseIO) and `cat` exits.
    exec_stdin_echoed_back => runc_exec_stdin_echoed_back, microsandbox_exec_stdin_echoed_back;
    /// Ours: exec with a terminal: `cat` echoes (and so does the terminal); ^D ends it and the
    /// status says success.
    exec_tty_stdin_echoed_then_eof => runc_exec_tty_stdin_echoed_then_eof,
        microsandbox_exec_tty_stdin_echoed_then_eof;
    /// Ours: a streamed exec's stdout and stderr apart, and its exit code in the status channel.
    exec_exit_code_in_status => runc_exec_exit_code_in_status,
        microsandbox_exec_exit_code_in_status;
    /// Ours: a resize on the session's resize channel reaches the exec's terminal (`stty size`).
    exec_tty_resize => runc_exec_tty_resize, microsandbox_exec_tty_resize;
    /// critest Streaming: "runtime should support attach"; and the end of the attach's stdin
    /// closes the container's (`stdinOnce`), so the shell exits 0.
    attach => runc_attach, microsandbox_attach;
    /// Ours: attach to a container with a terminal: input, output, a resize, exit.
    attach_tty => runc_attach_tty, microsandbox_attach_tty;
    /// critest Streaming: "runtime should support portforward".
    portforward => runc_portforward, microsandbox_portforward;
    /// critest Streaming (Linux): "runtime should support portforward in host network".
    portforward_in_host_network => runc_portforward_in_host_network,
        microsandbox_portforward_in_host_network;
}

/// An exec request as critest sends it: stdout always; stderr unless there is a terminal (the
/// streaming server refuses both).
fn exec_request(c: &str, cmd: &[&str], tty: bool, stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: c.into(),
        cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// `Exec`, then the session on its URL.
fn open_exec(t: &CriTest, req: ExecRequest) -> RemoteCommand {
    let cmd = req.cmd.clone();
    let url = t
        .cri
        .exec(req)
        .unwrap_or_else(|e| panic!("Exec {cmd:?}: {e}\n{}", t.log()));
    RemoteCommand::connect(&url).unwrap_or_else(|e| panic!("{url}: {e:#}\n{}", t.log()))
}

/// Reads until `done` holds; fails (with what arrived) after `within`.
fn read_until(
    t: &CriTest,
    s: &mut RemoteCommand,
    within: Duration,
    what: &str,
    done: impl FnMut(&Output) -> bool,
) {
    let ok = s
        .read_until(within, done)
        .unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", t.log()));
    assert!(
        ok,
        "{what}: not within {within:?}: {:?}\n{}",
        s.output(),
        t.log()
    );
}

/// Waits for the session's end; all it received.
fn wait(t: &CriTest, s: &mut RemoteCommand) -> Output {
    s.wait(SESSION)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", t.log()))
}

/// The exit code the status channel reported.
fn exit_code(out: &Output) -> Option<i32> {
    out.status.as_ref().and_then(|s| s.exit_code)
}

fn exec_tty_false_stdin_false(t: &CriTest) {
    let c = running_container(t, "container-for-exec-test");
    let mut s = open_exec(t, exec_request(&c, ECHO_HELLO, false, false));
    let out = wait(t, &mut s);
    assert_eq!(
        (
            out.stdout_text().as_str(),
            out.stderr_text().as_str(),
            exit_code(&out)
        ),
        ("hello", "", Some(0)),
        "{out:?}"
    );
}

fn exec_tty_true_stdin_true(t: &CriTest) {
    let c = running_container(t, "container-for-exec-test");
    let mut s = open_exec(t, exec_request(&c, ECHO_HELLO, true, true));
    let out = wait(t, &mut s);
    assert!(out.stdout_text().contains("hello"), "{out:?}");
    assert_eq!((out.stderr.len(), exit_code(&out)), (0, Some(0)), "{out:?}");
}

/// The answer is the exit code, not output: over WebSocket the streaming server hands the
/// runtime a stdin even when the request has none (a channel that reads EOF at once), and
/// containerd closes a terminal exec's stdout when its stdin ends (`ExecIO.Attach`), so such an
/// exec's output is lost, with runc as with microsandbox. SPDY clients (kubectl) do not meet it.
fn exec_tty_true_stdin_false(t: &CriTest) {
    let c = running_container(t, "container-for-exec-test");
    let mut s = open_exec(
        t,
        exec_request(&c, &["sh", "-c", "[ -t 0 ] && [ -t 1 ]"], true, false),
    );
    let out = wait(t, &mut s);
    assert_eq!(exit_code(&out), Some(0), "not on a terminal: {out:?}");
    // And without one, the same test fails (the status carries the 1).
    let mut s = open_exec(
        t,
        exec_request(&c, &["sh", "-c", "[ -t 0 ] || [ -t 1 ]"], false, false),
    );
    let out = wait(t, &mut s);
    assert_eq!(exit_code(&out), Some(1), "a terminal without tty: {out:?}");
}

fn exec_stdin_echoed_back(t: &CriTest) {
    let c = running_container(t, "container-for-exec-stdin-test");
    let mut s = open_exec(t, exec_request(&c, &["cat"], false, true));
    let mut sent = Vec::new();
    for line in [&b"hello\n"[..], b"world\n"] {
        s.stdin(line).expect("stdin");
        sent.extend_from_slice(line);
        read_until(t, &mut s, SESSION, "cat's echo", |o| o.stdout == sent);
    }
    let out = s.close();
    assert!(out.stderr.is_empty(), "{out:?}");
    // containerd turns the end of the session's stdin into CloseIO: cat reads EOF and exits.
    let mut left = None;
    let gone = eventually(30, || {
        let r = t.exec(&c, &["sh", "-c", "pidof cat || true"]);
        let none = r.stdout.is_empty();
        left = Some(r);
        none
    });
    assert!(
        gone,
        "cat still runs after its stdin closed: {left:?}\n{}",
        t.log()
    );
}

fn exec_tty_stdin_echoed_then_eof(t: &CriTest) {
    let c = running_container(t, "container-for-exec-tty-stdin-test");
    let mut s = open_exec(t, exec_request(&c, &["cat"], true, true));
    s.stdin(b"hello\n").expect("stdin");
    // The terminal echoes the line, then cat writes it: each with the terminal's CR LF.
    read_until(t, &mut s, SESSION, "echo and cat", |o| {
        o.stdout == b"hello\r\nhello\r\n"
    });
    // ^D at the start of a line: cat reads EOF.
    s.stdin(b"\x04").expect("stdin");
    let out = wait(t, &mut s);
    assert!(out.stdout.starts_with(b"hello\r\nhello\r\n"), "{out:?}");
    assert_eq!(exit_code(&out), Some(0), "{out:?}");
}

fn exec_exit_code_in_status(t: &CriTest) {
    let c = running_container(t, "container-for-exec-status-test");
    let mut s = open_exec(
        t,
        exec_request(
            &c,
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            false,
        ),
    );
    let out = wait(t, &mut s);
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..]),
        "{out:?}"
    );
    let status = out.status.clone().expect("a status");
    assert_eq!(
        (
            status.status.as_str(),
            status.reason.as_str(),
            status.exit_code
        ),
        ("Failure", "NonZeroExitCode", Some(3)),
        "{status:?}"
    );
}

/// A shell loop that waits (at most 30 s) until its terminal is 40 rows by 100 columns, after
/// printing the size it started with; then prints `size=<rows> <cols>=`.
const AWAIT_40X100: &str = "echo \"before=$(stty size)=\"; i=0; \
     while [ \"$(stty size)\" != \"40 100\" ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done; \
     echo \"size=$(stty size)=\"";

fn exec_tty_resize(t: &CriTest) {
    let c = running_container(t, "container-for-exec-resize-test");
    let mut s = open_exec(t, exec_request(&c, &["sh", "-c", AWAIT_40X100], true, true));
    read_until(t, &mut s, SESSION, "the size before", |o| {
        String::from_utf8_lossy(&o.stdout).contains("before=")
    });
    assert!(
        !s.output().stdout_text().contains("before=40 100="),
        "already 40x100: {:?}",
        s.output()
    );
    s.resize(100, 40).expect("resize");
    let out = wait(t, &mut s);
    assert!(out.stdout_text().contains("size=40 100="), "{out:?}");
    assert_eq!(exit_code(&out), Some(0), "{out:?}");
}

/// critest's shell container (`/bin/sh` with stdin, once), or with a terminal; started and
/// running.
fn shell_container(t: &CriTest, prefix: &str, tty: bool) -> String {
    let (pod, pod_config) = t.run_default_pod("podsandbox-for-attach");
    let mut config = container_config(&unique_name(prefix), &["/bin/sh"]);
    config.stdin = true;
    config.stdin_once = !tty;
    config.tty = tty;
    let c = t.create_container(&pod, &config, &pod_config);
    t.start_container(&c);
    t.wait_state(&c, ContainerState::ContainerRunning);
    c
}

/// `Attach` to `c`, then the session on its URL.
fn open_attach(t: &CriTest, c: &str, tty: bool) -> RemoteCommand {
    let url = t
        .cri
        .attach(AttachRequest {
            container_id: c.into(),
            stdin: true,
            stdout: true,
            stderr: !tty,
            tty,
        })
        .unwrap_or_else(|e| panic!("Attach {c}: {e}\n{}", t.log()));
    RemoteCommand::connect(&url).unwrap_or_else(|e| panic!("{url}: {e:#}\n{}", t.log()))
}

fn attach(t: &CriTest) {
    let c = shell_container(t, "container-for-attach-test", false);
    let mut s = open_attach(t, &c, false);
    // critest: no input, no output (it watches for a second).
    let spoke = s
        .read_until(Duration::from_secs(1), |o| {
            !o.stdout.is_empty() || !o.stderr.is_empty() || o.closed
        })
        .expect("read");
    assert!(!spoke, "output without input: {:?}", s.output());
    s.stdin(b"echo -n hello\n").expect("stdin");
    read_until(t, &mut s, SESSION, "the shell's answer", |o| {
        o.stdout == b"hello"
    });
    // critest: and nothing else (it watches for 3 s).
    let more = s
        .read_until(Duration::from_secs(3), |o| {
            o.stdout != b"hello" || !o.stderr.is_empty() || o.closed
        })
        .expect("read");
    assert!(!more, "more than the answer: {:?}", s.output());
    let out = s.close();
    assert!(out.stderr.is_empty(), "{out:?}");
    // stdinOnce: the attach's stdin ended, so did the container's; sh exits at EOF.
    let status = t.wait_state(&c, ContainerState::ContainerExited);
    assert_eq!(status.exit_code, 0, "{status:?}");
}

fn attach_tty(t: &CriTest) {
    let c = shell_container(t, "container-for-attach-tty-test", true);
    let mut s = open_attach(t, &c, true);
    // The terminal echoes the typed line, which does not hold "hello"; the shell's output does.
    s.stdin(b"echo -n he; echo llo\n").expect("stdin");
    read_until(t, &mut s, SESSION, "the shell's answer", |o| {
        String::from_utf8_lossy(&o.stdout).contains("hello")
    });
    s.resize(100, 40).expect("resize");
    s.stdin(format!("{AWAIT_40X100}\n").as_bytes())
        .expect("stdin");
    read_until(t, &mut s, SESSION, "the new size", |o| {
        String::from_utf8_lossy(&o.stdout).contains("size=40 100=")
    });
    s.stdin(b"exit 0\n").expect("stdin");
    // The container's output ends with it, and so does the attach.
    let out = wait(t, &mut s);
    assert_eq!(exit_code(&out), Some(0), "{out:?}");
    let status = t.wait_state(&c, ContainerState::ContainerExited);
    assert_eq!(status.exit_code, 0, "{status:?}");
}

/// What critest's web server answers: busybox `httpd` serving this page.
const PAGE: &str = "hello-from-the-pod";

/// A free TCP port on the host's loopback now (for a server in the host's network: the runc
/// and microsandbox variants run at the same time and must not meet).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// critest's web server container in `pod`, listening on `port`, serving (checked from inside
/// the container, as kubelet's prober would; critest fetches the page from the pod's IP, which
/// a pod of these handlers does not have: their CNI network is loopback only).
fn web_server(
    t: &CriTest,
    pod: &str,
    pod_config: &msb_test_e2e::cri::api::PodSandboxConfig,
    port: u16,
) -> String {
    let script = format!(
        "mkdir -p /www && echo -n {PAGE} >/www/index.html && exec httpd -f -p {port} -h /www"
    );
    let c = t.create_container(
        pod,
        &container_config(
            &unique_name("container-for-portforward-test"),
            &["sh", "-c", &script],
        ),
        pod_config,
    );
    t.start_container(&c);
    let url = format!("http://127.0.0.1:{port}/");
    let probe = ["wget", "-qO-", &url];
    let mut last = None;
    let serving = eventually(60, || {
        let r = t.exec(&c, &probe);
        let ok = r.exit_code == 0 && r.stdout == PAGE.as_bytes();
        last = Some(r);
        ok
    });
    assert!(
        serving,
        "{url} not served in the pod ({probe:?}): {last:?}\n{}",
        t.log()
    );
    c
}

/// One HTTP request through a port-forward session of `pod`'s `port`; what came back.
fn forward_http_get(t: &CriTest, pod: &str, port: u16) -> Forwarded {
    t.port_forward_session(pod, port, |mut pf| {
        pf.send(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        // httpd closes after its answer (HTTP/1.0), and the server ends the session.
        pf.wait(SESSION)
    })
}

/// The port-forward outcome, the same for both handlers: the page, and a clean end.
fn assert_forwarded(got: &Forwarded) {
    let text = String::from_utf8_lossy(&got.data);
    // busybox httpd answers HTTP/1.1 to a 1.0 request, and closes.
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with(PAGE),
        "{text:?} {got:?}"
    );
    assert_eq!(got.error, "", "{text:?} {got:?}");
}

fn portforward(t: &CriTest) {
    // critest's web server listens on 80 in the pod's network namespace; the mapping names it
    // (no CNI plugin here maps ports: the pod has lo only).
    const PORT: u16 = 80;
    let mut config = pod_config(&unique_name("create-podsandbox-with-port-mapping"));
    config.port_mappings = vec![PortMapping {
        container_port: i32::from(PORT),
        ..Default::default()
    }];
    let pod = t.run_pod(&config);
    web_server(t, &pod, &config, PORT);
    let got = forward_http_get(t, &pod, PORT);
    assert_forwarded(&got);
}

fn portforward_in_host_network(t: &CriTest) {
    let port = free_port();
    let mut config = pod_config(&unique_name("create-podsandbox-with-host-network"));
    config.port_mappings = vec![PortMapping {
        container_port: i32::from(port),
        ..Default::default()
    }];
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            network: NamespaceMode::Node.into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = t.run_pod(&config);
    web_server(t, &pod, &config, port);
    let got = forward_http_get(t, &pod, port);
    assert_forwarded(&got);
}
