//! The deployment files: deploy/kubernetes/daemonset.yaml and deploy/systemd/twtrace.service.
//!
//! Both are parsed as they are in the repository and checked against what the rest of the
//! project says: the capability set against docs/privileges.md's least set, the memory numbers
//! against bench/results.md, the port, probes and mounts against each other. When
//! `systemd-analyze` is installed, the unit also goes through `systemd-analyze verify`, which
//! knows every option systemd accepts, and the manifests through `kubernetes-validate --strict`
//! (the Kubernetes 1.30 schema) when that is on PATH; without them those tests say SKIPPED and
//! why.
//!
//! None of this needs root or a built twtrace.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// The one port everything agrees on: listen address, container port, probes, annotations.
const PORT: i64 = 9814;
/// What the kernel charges to twtrace's memory cgroup for its eBPF maps, on top of its RSS:
/// the sum of the `memlock` lines in /proc/<pid>/fdinfo of a running twtrace's map fds
/// (60,792,864 bytes on the 2-CPU test machine, 46.0 MiB of it the preallocated socket table).
const BPF_MAPS_MIB: f64 = 58.0;
/// On a Kubernetes node the sockets live in the pods' network namespaces; reading their socket
/// tables needs setns(), hence this capability beyond the least set (docs/privileges.md).
const CONTAINER_HOST_EXTRA: &str = "CAP_SYS_ADMIN";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The least set for full function, as docs/privileges.md states it in bold: every `CAP_*` in
/// the sentence "the least set for full function is ...".
fn least_set() -> BTreeSet<String> {
    let doc = read("docs/privileges.md");
    let start = doc
        .find("least set for full function is")
        .expect("docs/privileges.md states the least set");
    let sentence = &doc[start..start + doc[start..].find("**").expect("the bold ends")];
    let caps: BTreeSet<String> = sentence
        .split('`')
        .filter(|w| w.starts_with("CAP_"))
        .map(str::to_owned)
        .collect();
    assert!(
        caps.contains("CAP_BPF") && caps.contains("CAP_PERFMON") && caps.len() >= 3,
        "could not read the least set from docs/privileges.md: {caps:?}"
    );
    caps
}

// ---------------------------------------------------------------------------------------------
// The DaemonSet

fn manifests() -> Vec<Yaml> {
    let text = read("deploy/kubernetes/daemonset.yaml");
    YamlLoader::load_from_str(&text)
        .expect("daemonset.yaml is valid YAML")
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in daemonset.yaml");
    found[0]
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is a string, got {y:?}"))
}

fn list<'a>(y: &'a Yaml, what: &str) -> &'a [Yaml] {
    y.as_vec()
        .unwrap_or_else(|| panic!("{what} is a list, got {y:?}"))
}

fn daemonset() -> Yaml {
    of_kind(&manifests(), "DaemonSet").clone()
}

fn container(ds: &Yaml) -> &Yaml {
    let containers = list(&ds["spec"]["template"]["spec"]["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// Kubernetes spells capabilities without the `CAP_` prefix; the runtime adds it.
fn k8s_caps(y: &Yaml, what: &str) -> Vec<String> {
    list(y, what)
        .iter()
        .map(|c| {
            let c = s(c, what);
            if c == "ALL" || c.starts_with("CAP_") {
                c.to_owned()
            } else {
                format!("CAP_{c}")
            }
        })
        .collect()
}

/// The values of every `key` anywhere in `y`.
fn find_key<'a>(y: &'a Yaml, key: &str, out: &mut Vec<&'a Yaml>) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                if k.as_str() == Some(key) {
                    out.push(v);
                }
                find_key(v, key, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| find_key(v, key, out)),
        _ => {}
    }
}

/// A Kubernetes memory quantity in MiB (`160Mi`, `1Gi`, `268435456`).
fn mib(q: &str) -> f64 {
    let (num, unit) = q.split_at(q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len()));
    let n: f64 = num.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    match unit {
        "Mi" => n,
        "Gi" => n * 1024.0,
        "Ki" => n / 1024.0,
        "" => n / (1024.0 * 1024.0),
        _ => panic!("unexpected memory unit in {q} (use Ki, Mi or Gi)"),
    }
}

#[test]
fn daemonset_shares_the_host_namespaces_it_observes() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "hostPID: true");
    assert_eq!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "hostNetwork: true"
    );

    // Its namespace and account are declared in the same file, and no API token is mounted.
    let docs = manifests();
    let ns = s(&ds["metadata"]["namespace"], "DaemonSet namespace");
    assert_eq!(
        s(&of_kind(&docs, "Namespace")["metadata"]["name"], "ns"),
        ns
    );
    let sa = of_kind(&docs, "ServiceAccount");
    assert_eq!(s(&sa["metadata"]["namespace"], "SA namespace"), ns);
    assert_eq!(
        s(&pod["serviceAccountName"], "serviceAccountName"),
        s(&sa["metadata"]["name"], "SA name")
    );
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));

    let c = container(&ds);
    let image = s(&c["image"], "image");
    assert!(
        image.contains("REPLACE"),
        "the image is a placeholder, marked as one: {image}"
    );
    let args: Vec<&str> = list(&c["args"], "args")
        .iter()
        .map(|a| s(a, "arg"))
        .collect();
    assert_eq!(
        args,
        ["serve", "--listen", &format!("0.0.0.0:{PORT}")],
        "serve on every address: the pod's loopback is the node's, unreachable for Prometheus"
    );
    let ports = list(&c["ports"], "ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"].as_i64() == Some(PORT)),
        "containerPort {PORT}"
    );
}

#[test]
fn daemonset_has_the_documented_capabilities_and_nothing_else() {
    let ds = daemonset();
    let c = container(&ds);
    let sc = &c["securityContext"];

    let docs = manifests();
    let mut privileged = Vec::new();
    for doc in &docs {
        find_key(doc, "privileged", &mut privileged);
    }
    assert!(
        privileged.iter().all(|v| v.as_bool() == Some(false)),
        "no privileged: true anywhere: {privileged:?}"
    );
    assert_eq!(
        k8s_caps(&sc["capabilities"]["drop"], "drop"),
        ["ALL"],
        "drop ALL"
    );
    let add = k8s_caps(&sc["capabilities"]["add"], "add");
    let added: BTreeSet<String> = add.iter().cloned().collect();
    assert_eq!(added.len(), add.len(), "no capability added twice: {add:?}");
    let mut expected = least_set();
    expected.insert(CONTAINER_HOST_EXTRA.to_owned());
    assert_eq!(
        added, expected,
        "add = docs/privileges.md's least set + {CONTAINER_HOST_EXTRA} (other pods' network namespaces)"
    );
    for unneeded in ["CAP_NET_ADMIN", "CAP_SYS_RESOURCE"] {
        assert!(
            !added.contains(unneeded),
            "{unneeded} is not needed (docs/privileges.md)"
        );
    }
    // Added capabilities reach only a root process in a container (runtimes set no ambient
    // capabilities), so root it is, with a read-only root file system.
    assert_eq!(sc["runAsUser"].as_i64(), Some(0));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(
        s(&sc["seccompProfile"]["type"], "seccompProfile"),
        "RuntimeDefault"
    );
}

#[test]
fn daemonset_probes_and_scrape_annotations_agree_on_the_port() {
    let ds = daemonset();
    let c = container(&ds);
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(s(&get["path"], probe), "/healthz", "{probe} path");
        assert_eq!(get["port"].as_i64(), Some(PORT), "{probe} port");
    }
    // Annotation values must be strings: a bare `true` or `9814` is refused by the API server.
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(PORT.to_string().as_str())
    );
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));
}

/// The largest peak RSS of the twtrace modes (not bpftrace) in bench/results.md, in MiB.
fn bench_peak_rss_mib() -> f64 {
    let results = read("bench/results.md");
    let peak: Vec<f64> = results
        .lines()
        .filter(|l| {
            l.starts_with("| (")
                && ["trace --json", "leaderboard", "record -o"]
                    .iter()
                    .any(|m| l.contains(m))
        })
        .flat_map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .filter_map(|cell| cell.strip_suffix(" MiB")?.parse().ok())
        .collect();
    assert!(
        peak.len() >= 3,
        "bench/results.md has the twtrace modes' peak RSS: {peak:?}"
    );
    peak.into_iter().fold(0.0, f64::max)
}

#[test]
fn daemonset_memory_covers_the_benchmark_peak_and_the_maps() {
    let ds = daemonset();
    let res = &container(&ds)["resources"];
    for kind in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(!res[kind][what].is_badvalue(), "resources.{kind}.{what}");
        }
    }
    let request = mib(s(&res["requests"]["memory"], "requests.memory"));
    let limit = mib(s(&res["limits"]["memory"], "limits.memory"));
    let needed = bench_peak_rss_mib() + BPF_MAPS_MIB;
    assert!(
        request >= needed,
        "memory request {request} MiB < peak RSS + BPF maps = {needed:.1} MiB"
    );
    assert!(
        limit >= request,
        "limit {limit} MiB below request {request}"
    );
    assert!(
        limit <= 4.0 * needed,
        "limit {limit} MiB no longer follows from the measured {needed:.1} MiB"
    );
}

#[test]
fn daemonset_mounts_what_twtrace_reads_read_only() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let volumes: BTreeMap<&str, &str> = list(&pod["volumes"], "volumes")
        .iter()
        .map(|v| {
            (
                s(&v["name"], "volume name"),
                s(&v["hostPath"]["path"], "hostPath volume"),
            )
        })
        .collect();
    let mounts: BTreeMap<&str, &str> = list(&container(&ds)["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| {
            let name = s(&m["name"], "mount name");
            assert_eq!(m["readOnly"].as_bool(), Some(true), "{name} is read-only");
            (s(&m["mountPath"], "mountPath"), volumes[name])
        })
        .collect();
    for path in ["/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup"] {
        assert_eq!(
            mounts.get(path),
            Some(&path),
            "the host's {path} at the same place"
        );
    }
    // twtrace pins nothing and uses tracefs only (docs/kernel.md, section 2); hostPID already
    // gives the host's /proc. Mounting these would only widen what the pod can touch.
    for unneeded in [
        "/sys/fs/bpf",
        "/sys/kernel/debug",
        "/proc",
        "/var/run/docker.sock",
    ] {
        assert!(
            !volumes.values().any(|p| *p == unneeded),
            "{unneeded} is not mounted"
        );
    }
}

/// Strict schema validation against Kubernetes 1.30 (the oldest version with
/// `securityContext.appArmorProfile`), when the `kubernetes-validate` tool (PyPI) is on PATH:
/// it catches misspelt or misplaced fields, which the checks above do not look for.
#[test]
fn daemonset_passes_kubernetes_schema_validation() {
    let path = repo().join("deploy/kubernetes/daemonset.yaml");
    let out = match Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.30.0"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "SKIPPED: kubernetes-validate is not on PATH ({e}); `pip install \
                 kubernetes-validate` to check daemonset.yaml against the 1.30 schema"
            );
            return;
        }
    };
    let report = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.matches("passed for resource").count() == 3,
        "kubernetes-validate: {}\n{report}",
        out.status
    );
}

/// The scrape configuration README.md shows in "A fleet": the yaml block with `scrape_configs`.
fn readme_scrape_config() -> Yaml {
    let readme = read("README.md");
    let fleet = &readme[readme.find("\n## A fleet").expect("README has \"A fleet\"")..];
    let fleet = &fleet[..fleet[1..].find("\n## ").map_or(fleet.len(), |e| e + 1)];
    let block = fleet
        .split("```yaml\n")
        .skip(1)
        .map(|b| &b[..b.find("```").expect("the block ends")])
        .find(|b| b.contains("scrape_configs"))
        .expect("a yaml block with scrape_configs in \"A fleet\"");
    YamlLoader::load_from_str(block)
        .expect("the README's scrape config is valid YAML")
        .remove(0)
}

/// Prometheus' meta label for a pod annotation: every character outside [A-Za-z0-9_] becomes `_`.
fn annotation_label(annotation: &str) -> String {
    let name: String = annotation
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("__meta_kubernetes_pod_annotation_{name}")
}

#[test]
fn readme_scrape_config_reads_the_daemonsets_annotations() {
    let jobs = readme_scrape_config();
    let jobs = list(&jobs["scrape_configs"], "scrape_configs");
    let ds = daemonset();
    let annotations = ds["spec"]["template"]["metadata"]["annotations"]
        .as_hash()
        .expect("pod annotations");

    let k8s = jobs
        .iter()
        .find(|j| !j["kubernetes_sd_configs"].is_badvalue())
        .expect("a kubernetes_sd_configs job");
    let sd = &list(&k8s["kubernetes_sd_configs"], "kubernetes_sd_configs")[0];
    assert_eq!(s(&sd["role"], "role"), "pod");
    assert!(
        list(&sd["namespaces"]["names"], "namespaces")
            .iter()
            .any(|n| n.as_str() == ds["metadata"]["namespace"].as_str()),
        "the job looks in the DaemonSet's namespace"
    );
    // Every annotation the relabelling reads is one the pods carry.
    let rules = list(&k8s["relabel_configs"], "relabel_configs");
    let sources: BTreeSet<&str> = rules
        .iter()
        .flat_map(|r| list(&r["source_labels"], "source_labels"))
        .map(|l| s(l, "source label"))
        .filter(|l| l.starts_with("__meta_kubernetes_pod_annotation_"))
        .collect();
    let carried: BTreeSet<String> = annotations
        .keys()
        .map(|k| annotation_label(s(k, "annotation")))
        .collect();
    for needed in [
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
    ] {
        assert!(
            sources.contains(annotation_label(needed).as_str()),
            "the README's relabelling reads {needed}"
        );
    }
    for source in &sources {
        assert!(carried.contains(*source), "the pods carry {source}");
    }
    let keep = rules
        .iter()
        .find(|r| r["action"].as_str() == Some("keep"))
        .expect("a keep rule");
    assert_eq!(
        s(&list(&keep["source_labels"], "keep")[0], "keep source"),
        annotation_label("prometheus.io/scrape")
    );
    assert_eq!(
        keep["regex"].as_str(),
        annotations
            .get(&Yaml::String("prometheus.io/scrape".into()))
            .and_then(Yaml::as_str),
        "the keep rule matches the pods' scrape annotation"
    );

    // The systemd hosts: static targets on the unit's port.
    let hosts = jobs
        .iter()
        .find(|j| !j["static_configs"].is_badvalue())
        .expect("a static_configs job for the systemd hosts");
    for target in list(&hosts["static_configs"], "static_configs")
        .iter()
        .flat_map(|c| list(&c["targets"], "targets"))
    {
        let target = s(target, "target");
        assert!(
            target.ends_with(&format!(":{PORT}")),
            "{target} on port {PORT}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The systemd unit

/// `(section, key) -> values` of a unit file, in order; `#`/`;` comments and `\` continuations
/// as systemd reads them.
fn unit() -> BTreeMap<(String, String), Vec<String>> {
    let text = read("deploy/systemd/twtrace.service");
    let mut keys: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        if let Some(name) = full.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = full
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {full}"));
        keys.entry((section.clone(), k.trim().to_owned()))
            .or_default()
            .push(v.trim().to_owned());
    }
    keys
}

fn service<'a>(u: &'a BTreeMap<(String, String), Vec<String>>, key: &str) -> Option<&'a str> {
    let v = u.get(&("Service".to_owned(), key.to_owned()))?;
    assert_eq!(v.len(), 1, "{key}= is set once");
    Some(&v[0])
}

fn words(v: &str) -> BTreeSet<String> {
    v.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn unit_sandboxes_twtrace_and_keeps_what_it_needs() {
    let u = unit();
    assert_eq!(
        service(&u, "ExecStart"),
        Some(format!("/usr/bin/twtrace serve --listen 127.0.0.1:{PORT}").as_str())
    );
    for (key, value) in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("Restart", "on-failure"),
    ] {
        assert_eq!(service(&u, key), Some(value), "{key}={value}");
    }
    assert_eq!(
        words(service(&u, "RestrictAddressFamilies").expect("RestrictAddressFamilies")),
        words("AF_UNIX AF_INET AF_INET6 AF_NETLINK")
    );
    // twtrace writes nothing and pins nothing; hiding other processes or the host's network
    // would blind it, and a user namespace of its own would make its capabilities worthless.
    for absent in [
        "ReadWritePaths",
        "ProtectProc",
        "ProcSubset",
        "PrivateNetwork",
        "PrivateUsers",
    ] {
        assert_eq!(service(&u, absent), None, "{absent}= is not set");
    }
    // A system call filter, if any, must let the programs load and attach.
    if let Some(filter) = service(&u, "SystemCallFilter") {
        let allowed = words(filter);
        assert!(
            !filter.starts_with('~')
                && allowed.contains("bpf")
                && allowed.contains("perf_event_open"),
            "SystemCallFilter={filter} must allow bpf and perf_event_open"
        );
        assert_eq!(
            service(&u, "SystemCallErrorNumber"),
            Some("EPERM"),
            "a refused call fails with EPERM rather than killing twtrace"
        );
    }
    assert!(
        u.contains_key(&("Install".to_owned(), "WantedBy".to_owned())),
        "[Install] WantedBy="
    );
}

#[test]
fn unit_capabilities_are_the_least_set_and_match_the_daemonset() {
    let u = unit();
    let least = least_set();
    let bounding = words(service(&u, "CapabilityBoundingSet").expect("CapabilityBoundingSet"));
    let ambient = words(service(&u, "AmbientCapabilities").expect("AmbientCapabilities"));
    assert_eq!(bounding, least, "CapabilityBoundingSet = docs' least set");
    assert_eq!(ambient, least, "AmbientCapabilities = docs' least set");

    // The DaemonSet adds exactly one capability, for the pods' network namespaces.
    let ds = daemonset();
    let mut k8s: BTreeSet<String> = k8s_caps(
        &container(&ds)["securityContext"]["capabilities"]["add"],
        "add",
    )
    .into_iter()
    .collect();
    assert!(k8s.remove(CONTAINER_HOST_EXTRA));
    assert_eq!(
        k8s, bounding,
        "the DaemonSet's set less {CONTAINER_HOST_EXTRA}"
    );
}

#[test]
fn unit_memory_max_is_the_daemonset_limit() {
    let u = unit();
    let max = service(&u, "MemoryMax").expect("MemoryMax");
    // systemd's M and G are powers of 1024, like Kubernetes' Mi and Gi.
    let unit_mib = if let Some(m) = max.strip_suffix('M') {
        m.parse::<f64>().expect("MemoryMax number")
    } else if let Some(g) = max.strip_suffix('G') {
        g.parse::<f64>().expect("MemoryMax number") * 1024.0
    } else {
        panic!("MemoryMax={max}: use M or G")
    };
    let ds = daemonset();
    let limit = mib(s(
        &container(&ds)["resources"]["limits"]["memory"],
        "limits.memory",
    ));
    assert_eq!(unit_mib, limit, "MemoryMax = the DaemonSet's memory limit");
    assert!(unit_mib >= bench_peak_rss_mib() + BPF_MAPS_MIB);
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian/Ubuntu: package systemd); \
             the unit's keys are still checked by the other unit_* tests"
        );
        return;
    };
    assert!(out.status.success(), "systemd-analyze --version");

    // verify also checks that ExecStart's program exists. twtrace is not installed at
    // /usr/bin on a build machine, so a copy of the unit points at an executable that exists
    // (this test binary); every other line is verified as written.
    let exe = std::env::current_exe().expect("current_exe");
    let text = read("deploy/systemd/twtrace.service");
    assert!(text.contains("ExecStart=/usr/bin/twtrace "));
    let copy = text.replace(
        "ExecStart=/usr/bin/twtrace ",
        &format!("ExecStart={} ", exe.display()),
    );
    let dir = std::env::temp_dir().join(format!("twtrace-deploy-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("twtrace.service");
    fs::write(&path, copy).expect("write the copy");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let _ = fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings (and a zero exit status): any line about
    // this unit fails the test.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("twtrace.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
