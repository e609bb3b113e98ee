//! Containers named from cgroups: a client moved into a cgroup whose path is laid out as the
//! kubelet with containerd (cgroupfs driver) lays out a pod's container. Its events carry that
//! container's id, runtime and pod UID; the server's, in the host's cgroup, carry none. The test
//! makes the cgroups in the v2 hierarchy and removes them, also on failure.
//! Run as root with `cargo xtask test`; without root every test prints `SKIPPED` and passes.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use twtrace_tests::{
    Client, ClientOpts, DRIVER_TIMEOUT, Mode, Server, Twtrace,
    cgroup::{Cgroups, cgroup2_root},
    select, skip_unless_root,
};

const CONTAINER: &str = "4f9b2c7e1d3a5b6c8e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d";
const POD: &str = "3f1c9a52-7b4e-4d8a-9c6f-2e5b8d0a1f47";

/// `<root>/twtrace-test-<pid>/kubepods/burstable/pod<POD>/<CONTAINER>`, the layout of a pod's
/// container under the kubelet with containerd (cgroupfs driver); returns the container's.
fn pod_container(cgroups: &mut Cgroups, root: &Path) -> PathBuf {
    let mut dir = cgroups.make(root.join(format!("twtrace-test-{}", std::process::id())));
    for part in ["kubepods", "burstable", &format!("pod{POD}"), CONTAINER] {
        dir = cgroups.make(dir.join(part));
    }
    dir
}

#[test]
fn events_of_a_process_in_a_pod_container_carry_its_id() {
    const TEST: &str = "container events_of_a_process_in_a_pod_container_carry_its_id";
    if skip_unless_root(TEST) {
        return;
    }
    let Some(root) = cgroup2_root() else {
        eprintln!("[{TEST}] SKIPPED: no cgroup v2 hierarchy is mounted");
        return;
    };
    const N: usize = 3;
    let driver = std::path::Path::new(env!("CARGO_BIN_EXE_tcpdrive"));
    let mut cgroups = Cgroups::new(root.clone());
    let container = pod_container(&mut cgroups, &root);
    let server = Server::start(driver, "127.0.0.1:0", N, Mode::ClientFirst, "twct-srv");
    let trace = Twtrace::start(&["--port".into(), server.port.to_string()]);
    let mut client = Client::start(
        driver,
        &format!("127.0.0.1:{}", server.port),
        N,
        Mode::ClientFirst,
        "twct-cl",
        ClientOpts {
            wait_stdin: true,
            ..ClientOpts::default()
        },
    );
    Cgroups::enter(&container, client.pid());
    client.go();
    client.guard.wait_success(DRIVER_TIMEOUT);
    let mut server = server;
    server.guard.wait_success(DRIVER_TIMEOUT);
    std::thread::sleep(Duration::from_millis(200));
    let t = trace.stop();
    t.summary();
    let events = t.on_port(server.port);
    let client_events = select(&events, |e| e.pid == client.pid());
    let server_events = select(&events, |e| e.pid == server.pid());
    assert_eq!(
        select(&client_events, |e| e.new == "TIME_WAIT").len(),
        N,
        "the client's TIME_WAIT entries"
    );
    for e in &client_events {
        assert_eq!(e.container.as_deref(), Some(CONTAINER), "{}", e.raw);
        assert_eq!(e.runtime.as_deref(), Some("containerd"), "{}", e.raw);
        assert_eq!(e.pod_uid.as_deref(), Some(POD), "{}", e.raw);
    }
    assert!(!server_events.is_empty());
    for e in &server_events {
        assert_eq!(
            e.container, None,
            "the server is in no container: {}",
            e.raw
        );
    }
}
