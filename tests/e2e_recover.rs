//! Disaster recovery I on real machines and real kubeadm v1.20.2: a 3-master cluster
//! (1 load balancer with the VIP, 1 worker) loses machines for real (`docker rm -f`),
//! and `kubeforge recover` brings them back while a 1 s prober asks the API's /readyz
//! through the VIP the whole time. In sequence on one cluster: a control-plane machine;
//! another after the `kubeadm-certs` Secret is gone (a cluster older than 2 hours); the
//! FIRST control-plane machine; the worker (repaired by `recover --watch`); an orphaned
//! etcd member; a repair killed
//! with SIGKILL and finished by the next run; and finally two of three control planes
//! lost: refused (quorum), nothing changed; a corrupted snapshot refused before anything
//! stops; then `kubeforge restore` from the snapshot the control planes' timer took.
//!
//! Needs the Docker engine, the node image and the mirror; fails, never skips, without.

mod common_podnet;
#[allow(dead_code)]
#[path = "common/moto.rs"]
mod moto;
mod support;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Std, Stdio};
use std::time::{Duration, Instant};
use support::{docker, kubeforge, mirror, require_testbed, ClusterGuard, Prober};

const NAME: &str = "kf-recover";
const BUCKET: &str = "kf-recover-state";
static MOTO_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
const SUBNET: &str = "10.252.40";

fn machine(role: &str) -> String {
    format!("{NAME}-{role}")
}

fn kubectl(args: &[&str]) -> std::process::Output {
    // Any control plane that runs: the first one may be the machine just lost.
    for cp in ["cp-1", "cp-2", "cp-3"] {
        let mut full = vec![
            "exec".to_string(),
            machine(cp),
            "/usr/local/bin/kubectl".into(),
            "--kubeconfig=/etc/kubernetes/admin.conf".into(),
            "--request-timeout=10s".into(),
        ];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = docker(&refs);
        if out.status.success() {
            return out;
        }
    }
    panic!("no control plane answers kubectl {args:?}");
}

/// Ready nodes and started etcd members, asked of any running control plane.
fn health() -> (Vec<String>, Vec<String>, usize) {
    let out = kubectl(&["get", "nodes", "-o", "json"]);
    let (ready, _) = kubeforge::phase::ready_nodes(&String::from_utf8_lossy(&out.stdout)).unwrap();
    for cp in ["cp-1", "cp-2", "cp-3"] {
        let running = docker(&[
            "exec",
            &machine(cp),
            "test",
            "-f",
            "/etc/kubernetes/admin.conf",
        ]);
        if !running.status.success() {
            continue;
        }
        let m = support::etcd_member_list(&machine(cp));
        let members = m["members"].as_array().cloned().unwrap_or_default();
        let started: Vec<String> = members
            .iter()
            .filter_map(|m| {
                m["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .map(String::from)
            })
            .collect();
        return (ready, started, members.len());
    }
    panic!("no control plane runs etcd");
}

fn recover(dir: &Path) -> std::process::Output {
    kubeforge(dir)
        .args(["recover", "-f", "cluster.yaml", "--yes", "-o", "json"])
        .timeout(Duration::from_secs(900))
        .output()
        .unwrap()
}

/// Lose `lost`, recover, and check 4 Ready nodes and 3 started etcd members of 3.
fn lose_and_recover(dir: &Path, prober: &Prober, lost: &[&str], what: &str) -> Duration {
    let t0 = prober.destroy(&lost.iter().map(|m| machine(m)).collect::<Vec<_>>());
    let out = kubeforge(dir)
        .args(["plan", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    for m in lost {
        assert!(
            plan.contains(&format!("host {} ", machine(m)))
                && plan.contains("is missing at the provider"),
            "{what}: the plan names the lost machine: {plan}"
        );
    }
    assert!(!plan.contains("No changes"), "{plan}");
    let out = recover(dir);
    assert!(
        out.status.success(),
        "{what}: recover failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    print_notes(what, &out.stdout);
    let (ready, started, members) = health();
    assert_eq!(ready.len(), 4, "{what}: Ready nodes {ready:?}");
    assert_eq!((started.len(), members), (3, 3), "{what}: etcd {started:?}");
    let took = t0.elapsed();
    eprintln!(
        "{what}: healthy again {:.0} s after the loss",
        took.as_secs_f64()
    );
    took
}

/// `recover --watch` runs (a healthy round first); `lost` is destroyed; the watch
/// repairs it by itself. Returns the time from the loss to a healthy cluster.
fn lose_and_watch(dir: &Path, prober: &Prober, lost: &str) -> Duration {
    let bin = assert_cmd::cargo::cargo_bin("kubeforge");
    let mut child = Std::new(bin)
        .current_dir(dir)
        .env("KUBEFORGE_STATE_KEY_FILE", dir.join("state.agekey"))
        .args([
            "recover",
            "-f",
            "cluster.yaml",
            "--watch",
            "--yes",
            "--interval",
            "5s",
            "-o",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let next = |limit: u64| {
        rx.recv_timeout(Duration::from_secs(limit))
            .expect("a round of recover --watch")
    };
    let first = next(300);
    assert_eq!(first["outcome"], "healthy", "{first}");
    let t0 = prober.destroy(&[machine(lost)]);
    let repaired = loop {
        let round = next(900);
        match round["outcome"].as_str() {
            Some("repaired") => break round,
            Some("healthy") if t0.elapsed() < Duration::from_secs(60) => continue,
            _ => panic!("recover --watch: {round}"),
        }
    };
    let took = t0.elapsed();
    let after = next(300);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        repaired["findings"]
            .to_string()
            .contains(&format!("host {} ", machine(lost))),
        "{repaired}"
    );
    assert_eq!(
        after["outcome"], "healthy",
        "the round after the repair: {after}"
    );
    let (ready, started, members) = health();
    assert_eq!(ready.len(), 4, "Ready nodes {ready:?}");
    assert_eq!((started.len(), members), (3, 3), "etcd {started:?}");
    eprintln!(
        "{lost} lost under recover --watch: repaired {:.0} s after the loss",
        took.as_secs_f64()
    );
    took
}

#[test]
fn lost_machines_come_back_with_one_command_and_the_api_stays_up() {
    require_testbed();
    let _guard = ClusterGuard::new(NAME);
    let dir = tempfile::tempdir().unwrap();
    // The state on S3 (moto, its own for this test: it dies with the test process), as
    // in production: kubeforge reaches it on 127.0.0.1, the control planes through their
    // network's gateway, each with its own key (spec.backup.ship).
    let (_moto, port) = moto::start_on_all_addresses();
    assert_eq!(moto::http(port, "PUT", &format!("/{BUCKET}")).unwrap(), 200);
    std::env::set_var("KF_TEST_S3_ID", "operator-key");
    std::env::set_var("KF_TEST_S3_SECRET", "operator-secret");
    std::env::set_var("KF_TEST_SHIP_ID", "node-key");
    std::env::set_var("KF_TEST_SHIP_SECRET", "node-secret-never-printed");
    MOTO_PORT.set(port).unwrap();
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {NAME}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker: {{subnet: {SUBNET}.0/24}}
  nodePools:
    controlPlane: {{count: 3}}
    workers: {{count: 1}}
    loadBalancers: {{count: 1}}
  artifacts: {{mirror: {}}}
  kubeadm: {{skipPhases: [preflight, addon/coredns]}}
  state:
    url: s3://{BUCKET}/{NAME}
    endpoint: http://127.0.0.1:{port}
    pathStyle: true
    allowHttp: true
    accessKeyIdEnv: KF_TEST_S3_ID
    secretAccessKeyEnv: KF_TEST_S3_SECRET
  backup:
    intervalMinutes: 1
    keep: 5
    ship:
      accessKeyIdEnv: KF_TEST_SHIP_ID
      secretAccessKeyEnv: KF_TEST_SHIP_SECRET
      endpoint: http://{SUBNET}.1:{port}
",
            mirror()
        ),
    )
    .unwrap();
    kubeforge(dir.path())
        .args(["state", "keygen", "--out", "state.agekey"])
        .assert()
        .success();
    let out = kubeforge(dir.path())
        .args(["apply", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing to recover on a healthy cluster.
    let out = kubeforge(dir.path())
        .args(["recover", "-f", "cluster.yaml", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to recover"));
    // `status`: healthy, exit 0, one etcd leader, one load balancer holding the VIP.
    let out = kubeforge(dir.path())
        .args(["status", "-f", "cluster.yaml", "-o", "json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{st}");
    assert_eq!(st["healthy"], true, "{st}");
    let members = st["etcd"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{st}");
    assert_eq!(
        members.iter().filter(|m| m["leader"] == true).count(),
        1,
        "{st}"
    );
    let holders = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["holdsVip"] == true)
        .count();
    assert_eq!(holders, 1, "{st}");
    // No drift right after a converge: `status` says so, `plan --detailed-exitcode`
    // exits 0 with "No changes".
    assert_eq!(st["drift"]["pending"], false, "{st}");
    let out = kubeforge(dir.path())
        .args(["plan", "-f", "cluster.yaml", "--detailed-exitcode"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{plan}");
    assert!(plan.contains("No changes"), "{plan}");

    // `kubeforge proxy`: the API through SSH on a local port, kept running while the
    // machines are lost and re-created below.
    let proxy_dir = dir.path().join("proxy");
    std::fs::create_dir(&proxy_dir).unwrap();
    let mut proxy = Std::new(assert_cmd::cargo::cargo_bin("kubeforge"))
        .current_dir(dir.path())
        .env("KUBEFORGE_STATE_KEY_FILE", dir.path().join("state.agekey"))
        .args(["proxy", "-f", "cluster.yaml", "--port", "0", "-o", "json"])
        .arg("--kubeconfig-out")
        .arg(proxy_dir.join("kubeconfig"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(proxy.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let served: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert!(
        served["server"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"),
        "{served}"
    );
    let through_proxy = |what: &str| {
        let out = common_podnet::kubectl(&proxy_dir, &["get", "--raw", "/readyz"]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout) == "ok",
            "{what}: /readyz through `kubeforge proxy`: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    through_proxy("healthy cluster");

    let prober = Prober::start(&format!("{SUBNET}.254:6443"));
    let mut figures = Vec::new();

    // 1. A control-plane machine is gone.
    figures.push((
        "cp-2",
        lose_and_recover(dir.path(), &prober, &["cp-2"], "cp-2 lost"),
    ));

    // 2. The same on a cluster older than 2 hours: kubeadm has deleted the uploaded
    //    control-plane certificates; recover uploads them again.
    kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "secret",
        "kubeadm-certs",
        "--ignore-not-found",
    ]);
    figures.push((
        "cp-3 (kubeadm-certs gone)",
        lose_and_recover(
            dir.path(),
            &prober,
            &["cp-3"],
            "cp-3 lost, kubeadm-certs gone",
        ),
    ));

    // 3. The first control-plane machine (the one kubeadm init ran on).
    figures.push((
        "cp-1 (first)",
        lose_and_recover(dir.path(), &prober, &["cp-1"], "cp-1 lost"),
    ));

    // 4. The worker, repaired by `recover --watch` (auto-repair) without anyone asking.
    figures.push((
        "worker-1 (--watch)",
        lose_and_watch(dir.path(), &prober, "worker-1"),
    ));

    // 5. An orphaned member: added by a join that never finished (no machine runs it).
    let add = docker(&[
        "exec",
        &machine("cp-2"),
        "curl",
        "-sS",
        "--cacert",
        "/etc/kubernetes/pki/etcd/ca.crt",
        "--cert",
        "/etc/kubernetes/pki/etcd/healthcheck-client.crt",
        "--key",
        "/etc/kubernetes/pki/etcd/healthcheck-client.key",
        "-X",
        "POST",
        "https://127.0.0.1:2379/v3/cluster/member/add",
        "-d",
        &format!("{{\"peerURLs\":[\"https://{SUBNET}.99:2380\"]}}"),
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert_eq!(health().2, 4, "the orphan is a member");
    let out = recover(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"].to_string().contains("never started"),
        "{report}"
    );
    assert_eq!(health().2, 3, "the orphan was removed in one run");

    // 6. kubeforge killed (SIGKILL) in the middle of a repair: the next run finishes it.
    prober.destroy(&[machine("cp-2")]);
    let bin = assert_cmd::cargo::cargo_bin("kubeforge");
    let mut child = Std::new(bin)
        .current_dir(dir.path())
        .env("KUBEFORGE_STATE_KEY_FILE", dir.path().join("state.agekey"))
        .args(["recover", "-f", "cluster.yaml", "--yes"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.starts_with("==> phase") && line.contains(" join-control-plane:") {
            std::thread::sleep(Duration::from_secs(6));
            child.kill().unwrap();
            break;
        }
    }
    assert!(!child.wait().unwrap().success());
    // The killed holder was a process on this host that no longer exists: `state
    // unlock` breaks its lock without --force.
    let out = kubeforge(dir.path())
        .args(["state", "unlock", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = recover(dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ready, started, members) = health();
    assert_eq!((ready.len(), started.len(), members), (4, 3, 3));

    // The proxy started before every control-plane machine was re-created (new host
    // keys, pinned by recover in the state): it follows them and still serves.
    through_proxy("every control plane re-created");
    let _ = proxy.kill();
    let _ = proxy.wait();

    std::thread::sleep(Duration::from_secs(3));
    let probed = prober.finish();
    let requests = probed.requests;
    eprintln!(
        "prober through the VIP from the first loss to the end: {requests} requests, {} failed {:?}; /readyz not ok {} times {:?}",
        probed.failed.len(),
        probed.failed,
        probed.not_ready.len(),
        probed.not_ready
    );
    let failed = probed.failed;
    for (what, took) in &figures {
        eprintln!(
            "recovery figure: {what}: {:.0} s from loss to healthy",
            took.as_secs_f64()
        );
    }
    assert!(requests > 60, "the prober ran: {requests}");
    assert_eq!(
        failed.len(),
        0,
        "API requests through the VIP failed while machines were lost and recovered"
    );

    // 7a. A snapshot taken by the control planes' timer (every minute here), between two
    //     objects: the restore below brings back the first and not the second.
    let before_uid = create_configmap("before-snapshot");
    let created = chrono::Utc::now();
    let snapshot = wait_for_timer_snapshot(dir.path(), created);
    create_configmap("after-snapshot");
    let list = kubeforge(dir.path())
        .args(["backup", "list", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(list.contains(&snapshot) && list.contains("timer"), "{list}");
    eprintln!("{list}");

    // 7. Two of three control planes lost: quorum is gone; recover refuses, points to a
    //    restore, and changes nothing (no machine is made anew).
    docker(&["rm", "-f", "-v", &machine("cp-2")]);
    docker(&["rm", "-f", "-v", &machine("cp-3")]);
    let out = kubeforge(dir.path())
        .args(["recover", "-f", "cluster.yaml", "--yes"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("quorum") && stderr.contains("Restore"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    let out = kubeforge(dir.path())
        .args(["status", "-f", "cluster.yaml", "-o", "json"])
        .output()
        .unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(8), "degraded: {st}");
    assert_eq!(st["healthy"], false, "{st}");
    assert!(st["problems"].to_string().contains("QUORUM LOST"), "{st}");
    let ps = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    let names = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !names.contains(&machine("cp-2")) && !names.contains(&machine("cp-3")),
        "{names}"
    );

    // 8. A damaged snapshot is refused before anything is stopped: the timer's object in
    //    the bucket cut in half (its metadata still verifies), then put back.
    let object = snapshot_url(&snapshot);
    let good = curl(&["-sSf", &object]);
    let half = dir.path().join("half.age").display().to_string();
    let whole = dir.path().join("good.age").display().to_string();
    std::fs::write(dir.path().join("half.age"), &good[..good.len() / 2]).unwrap();
    std::fs::write(dir.path().join("good.age"), &good).unwrap();
    curl(&["-sSf", "-T", &half, &object]);
    let stderr = refused_restore(dir.path(), &snapshot);
    assert!(stderr.contains("corrupted or truncated"), "{stderr}");
    let still = docker(&[
        "exec",
        &machine("cp-1"),
        "test",
        "-f",
        "/etc/kubernetes/manifests/etcd.yaml",
    ]);
    assert!(still.status.success(), "nothing was stopped on cp-1");
    curl(&["-sSf", "-T", &whole, &object]);
    // A snapshot planted by someone with only the bucket's key (it encrypts to the
    // state's public key like a node, but cannot sign the metadata) is never used.
    let planted = "auto-kf-recover-cp-1-20991231T000000Z";
    curl(&["-sSf", "-T", &whole, &snapshot_url(planted)]);
    let stderr = refused_restore(dir.path(), planted);
    assert!(
        stderr.contains("refused") && stderr.contains("no metadata"),
        "{stderr}"
    );
    let list = kubeforge(dir.path())
        .args(["backup", "list", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.contains(&format!("! {planted}: no metadata")),
        "{list}"
    );
    curl(&["-sSf", "-X", "DELETE", &snapshot_url(planted)]);

    // 9. Restore from the timer's snapshot: cp-2 and cp-3 made anew and joined, the
    //    object from before the snapshot back with its UID, the one after it gone.
    let prober = Prober::start(&format!("{SUBNET}.254:6443"));
    let t0 = Instant::now();
    // Killed (SIGKILL) in the middle of the restore (etcd held, being restored): the next
    // run finishes it.
    let bin = assert_cmd::cargo::cargo_bin("kubeforge");
    let mut child = Std::new(bin)
        .current_dir(dir.path())
        .env("KUBEFORGE_STATE_KEY_FILE", dir.path().join("state.agekey"))
        .args([
            "restore",
            "-f",
            "cluster.yaml",
            "--yes",
            "--snapshot",
            &snapshot,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.starts_with("==> phase") && line.contains(" etcd-restore:") {
            // Killed once the survivor's etcd and apiserver are held aside: the next
            // run must take it for the control plane it is (not a new machine to
            // `kubeadm init`) and finish the restore there.
            let held = Instant::now();
            while held.elapsed() < Duration::from_secs(120) {
                let st = docker(&[
                    "exec",
                    &machine("cp-1"),
                    "test",
                    "-f",
                    "/etc/kubernetes/kubeforge-held/etcd.yaml",
                ]);
                if st.status.success() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            child.kill().unwrap();
            break;
        }
    }
    assert!(!child.wait().unwrap().success());
    let out = kubeforge(dir.path())
        .args(["state", "unlock", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kubeforge(dir.path())
        .args([
            "restore",
            "-f",
            "cluster.yaml",
            "--yes",
            "--snapshot",
            &snapshot,
            "-o",
            "json",
        ])
        .timeout(Duration::from_secs(1200))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restore failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = t0.elapsed();
    print_notes("restore", &out.stdout);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["snapshot"]["name"], snapshot.as_str(), "{report}");
    let (ready, started, members) = health();
    assert_eq!(ready.len(), 4, "Ready nodes after the restore {ready:?}");
    assert_eq!(
        (started.len(), members),
        (3, 3),
        "etcd after the restore {started:?}"
    );
    let uid = kubectl(&[
        "-n",
        "default",
        "get",
        "configmap",
        "before-snapshot",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout),
        before_uid,
        "same object, same UID"
    );
    let after = kubectl(&[
        "-n",
        "default",
        "get",
        "configmap",
        "after-snapshot",
        "--ignore-not-found",
        "-o",
        "name",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&after.stdout).trim(),
        "",
        "created after the snapshot: gone"
    );
    let ep = kubectl(&[
        "-n",
        "default",
        "get",
        "endpoints",
        "kubernetes",
        "-o",
        "jsonpath={.subsets[*].addresses[*].ip}",
    ]);
    let mut ips: Vec<String> = String::from_utf8_lossy(&ep.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    ips.sort();
    let mut live: Vec<String> = ["cp-1", "cp-2", "cp-3"]
        .iter()
        .map(|cp| {
            let o = docker(&[
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &machine(cp),
            ]);
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        })
        .collect();
    live.sort();
    assert_eq!(
        ips, live,
        "the kubernetes Endpoints list the live masters only"
    );
    let probed = prober.finish();
    eprintln!(
        "restore figure: quorum loss restored from {snapshot} in {:.0} s; prober through the VIP during the restore: {} requests, {} failed (the API was down since the quorum loss; the first ok answer ends the outage)",
        took.as_secs_f64(),
        probed.requests,
        probed.failed.len()
    );
    assert!(probed.requests > 20, "the prober ran");
    assert!(
        (probed.failed.len() as u64) < u64::from(probed.requests),
        "the API answered through the VIP again during the restore"
    );

    // 10. Every machine lost (total loss): rebuilt from the state alone — the same CA,
    //     the admin kubeconfig and a service-account token from before still work.
    let out = kubeforge(dir.path())
        .args([
            "kubeconfig",
            "-f",
            "cluster.yaml",
            "--out",
            "old-admin.conf",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sa_token = service_account_token("restore-probe");
    let ca_before = ca_fingerprint();
    let kept_uid = create_configmap("before-rebuild");
    let out = kubeforge(dir.path())
        .args(["backup", "-f", "cluster.yaml", "-o", "json"])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manual = v["taken"]["name"].as_str().unwrap().to_string();
    eprintln!(
        "manual snapshot {manual}: {} bytes, revision {}, {:.1} s",
        v["taken"]["dbBytes"],
        v["taken"]["revision"],
        v["seconds"].as_f64().unwrap_or(0.0)
    );
    for m in ["cp-1", "cp-2", "cp-3", "worker-1", "lb-1"] {
        docker(&["rm", "-f", "-v", &machine(m)]);
    }
    let t0 = Instant::now();
    let out = kubeforge(dir.path())
        .args([
            "restore",
            "-f",
            "cluster.yaml",
            "--yes",
            "--snapshot",
            &manual,
            "-o",
            "json",
        ])
        .timeout(Duration::from_secs(1500))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rebuild failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let took = t0.elapsed();
    print_notes("rebuild", &out.stdout);
    let (ready, started, members) = health();
    assert_eq!(ready.len(), 4, "Ready nodes after the rebuild {ready:?}");
    assert_eq!(
        (started.len(), members),
        (3, 3),
        "etcd after the rebuild {started:?}"
    );
    assert_eq!(ca_fingerprint(), ca_before, "the same CA");
    let uid = kubectl(&[
        "-n",
        "default",
        "get",
        "configmap",
        "before-rebuild",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout),
        kept_uid,
        "same object, same UID"
    );
    docker(&[
        "cp",
        &dir.path().join("old-admin.conf").to_string_lossy(),
        &format!("{}:/root/old-admin.conf", machine("cp-1")),
    ]);
    let old = docker(&[
        "exec",
        &machine("cp-1"),
        "/usr/local/bin/kubectl",
        "--kubeconfig=/root/old-admin.conf",
        "get",
        "nodes",
    ]);
    assert!(
        old.status.success(),
        "the admin kubeconfig from before the loss: {}",
        String::from_utf8_lossy(&old.stderr)
    );
    let code = docker(&[
        "exec",
        &machine("cp-1"),
        "curl",
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("Authorization: Bearer {sa_token}"),
        &format!(
            "https://{SUBNET}.254:6443/api/v1/namespaces/default/serviceaccounts/restore-probe"
        ),
    ]);
    let code = String::from_utf8_lossy(&code.stdout).to_string();
    assert!(
        code == "200" || code == "403",
        "a service-account token from before the loss authenticates (401 = rejected): {code}"
    );
    eprintln!(
        "restore figure: every machine lost, rebuilt from the state and {manual} in {:.0} s",
        took.as_secs_f64()
    );
}

/// The token of a new service account's token Secret (Kubernetes 1.20 makes one).
fn service_account_token(name: &str) -> String {
    let out = kubectl(&["-n", "default", "create", "serviceaccount", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..30 {
        let secret = kubectl(&[
            "-n",
            "default",
            "get",
            "serviceaccount",
            name,
            "-o",
            "jsonpath={.secrets[0].name}",
        ]);
        let secret = String::from_utf8_lossy(&secret.stdout).to_string();
        if !secret.is_empty() {
            let tok = kubectl(&[
                "-n",
                "default",
                "get",
                "secret",
                &secret,
                "-o",
                "jsonpath={.data.token}",
            ]);
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&tok.stdout).trim())
                .unwrap();
            return String::from_utf8(raw).unwrap();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("no token Secret for service account {name}");
}

/// sha256 of the cluster CA certificate on cp-1.
fn ca_fingerprint() -> String {
    let out = docker(&[
        "exec",
        &machine("cp-1"),
        "sha256sum",
        "/etc/kubernetes/pki/ca.crt",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The phases' notes of a run's JSON report (for the log: what the gates did).
fn print_notes(what: &str, json: &[u8]) {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let phases = v["run"]["phases"].as_array().cloned().unwrap_or_default();
    for p in phases {
        for n in p["notes"].as_array().cloned().unwrap_or_default() {
            eprintln!(
                "  [{what}] {}: {}",
                p["phase"].as_str().unwrap_or("?"),
                n.as_str().unwrap_or("")
            );
        }
    }
}

/// Create a ConfigMap in `default`; its UID.
fn create_configmap(name: &str) -> String {
    let out = kubectl(&[
        "-n",
        "default",
        "create",
        "configmap",
        name,
        "--from-literal=k=v",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uid = kubectl(&[
        "-n",
        "default",
        "get",
        "configmap",
        name,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    String::from_utf8_lossy(&uid.stdout).to_string()
}

/// Wait until the control planes have shipped a timer snapshot taken after `after`
/// into the bucket (nobody collects: `spec.backup.ship`); its name.
fn wait_for_timer_snapshot(dir: &Path, after: chrono::DateTime<chrono::Utc>) -> String {
    let t0 = Instant::now();
    loop {
        let list = kubeforge(dir)
            .args(["backup", "list", "-f", "cluster.yaml", "-o", "json"])
            .output()
            .unwrap();
        assert!(
            list.status.success(),
            "{}",
            String::from_utf8_lossy(&list.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        let found = v["snapshots"].as_array().unwrap().iter().find_map(|s| {
            let m = &s["meta"];
            let taken: chrono::DateTime<chrono::Utc> = m["taken"].as_str()?.parse().ok()?;
            (m["trigger"] == "timer" && taken > after + chrono::Duration::seconds(1))
                .then(|| (s["name"].as_str().unwrap().to_string(), s.clone()))
        });
        if let Some((n, s)) = found {
            eprintln!(
                "timer snapshot {n} shipped by its control plane {:.0} s after the object: {s}",
                t0.elapsed().as_secs_f64()
            );
            assert_eq!(s["authenticity"], "verified", "{s}");
            assert!(s["meta"]["revision"].as_i64().unwrap() > 0, "{s}");
            assert!(s["meta"]["totalKeys"].as_i64().unwrap() > 0, "{s}");
            return n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no timer snapshot shipped within 4 minutes: {v}"
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// `restore --snapshot NAME`, which must fail (before anything is stopped); its stderr.
fn refused_restore(dir: &Path, snapshot: &str) -> String {
    let out = kubeforge(dir)
        .args([
            "restore",
            "-f",
            "cluster.yaml",
            "--yes",
            "--snapshot",
            snapshot,
        ])
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    stderr
}

/// The object URL (path style, moto) of snapshot `name` in the test's bucket.
fn snapshot_url(name: &str) -> String {
    format!(
        "http://127.0.0.1:{}/{BUCKET}/{NAME}/snapshots/{name}.age",
        MOTO_PORT.get().unwrap()
    )
}

/// curl with the operator's key (S3 signature v4); its stdout.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Std::new("curl")
        .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg("operator-key:operator-secret")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
