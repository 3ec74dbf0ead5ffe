//! `kubeforge apply` on real machines (docker provider, systemd + sshd), with a playbook
//! that stops after the load balancers: HAProxy + keepalived come up and the VIP
//! answers; a re-run changes nothing; the VIP fails over; a machine rebuilt with a new
//! SSH host key is refused until re-pinned on purpose.
//!
//! Needs the Docker engine and the node image (scripts/testbed/30-docker.sh and
//! 40-node-image.sh); fails, never skips, without them.

use assert_cmd::Command;
mod support;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::{docker, kubeforge, require_testbed};

const NAME: &str = "kf-apply-lb";
const VIP: &str = "10.252.7.254";

struct Cleanup;
impl Drop for Cleanup {
    fn drop(&mut self) {
        support::cleanup(NAME);
    }
}

fn write_files(dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {NAME}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker: {{subnet: 10.252.7.0/24}}
  nodePools:
    controlPlane: {{count: 1}}
    loadBalancers: {{count: 2}}
"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("lb.yaml"),
        "apiVersion: kubeforge.dev/v1alpha1
kind: Playbook
name: load-balancers
phases:
  - {name: provision, hosts: none}
  - {name: connect, hosts: all}
  - {name: load-balancer, hosts: load-balancers}
",
    )
    .unwrap();
    dir.join("cluster.yaml")
}

fn apply(dir: &Path, extra: &[&str]) -> std::process::Output {
    kubeforge(dir)
        .args([
            "apply",
            "-f",
            "cluster.yaml",
            "--playbook",
            "lb.yaml",
            "--yes",
        ])
        .args(extra)
        .output()
        .unwrap()
}

fn vip_holders() -> Vec<String> {
    ["lb-1", "lb-2"]
        .iter()
        .map(|n| format!("{NAME}-{n}"))
        .filter(|m| {
            let out = docker(&["exec", m, "ip", "-o", "-4", "addr", "show"]);
            String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/"))
        })
        .collect()
}

/// This test's user id (the keeper's directory is named by it).
fn own_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

fn exec(machine: &str, cmd: &str) -> String {
    let out = docker(&["exec", machine, "sh", "-c", cmd]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn apply_brings_up_the_load_balancers_and_converges() {
    require_testbed();
    support::cleanup(NAME);
    let _cleanup = Cleanup;
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());

    // Without an encryption key the state cannot hold the secrets: a clear refusal.
    let out = Command::cargo_bin("kubeforge")
        .unwrap()
        .current_dir(dir.path())
        .env_remove("KUBEFORGE_STATE_KEY_FILE")
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .env_remove("KUBEFORGE_STATE_KEY")
        .args([
            "apply",
            "-f",
            "cluster.yaml",
            "--playbook",
            "lb.yaml",
            "--yes",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("give it an encryption key"));

    kubeforge(dir.path())
        .args(["state", "keygen", "--out", "state.agekey"])
        .assert()
        .success();

    // Machines only (no `connect`): nothing is pinned yet. A plan against the hosts
    // then pins every host key on first use and records the pins in the state.
    let out = apply(dir.path(), &["--phases", "machines"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned = |dir: &Path| -> usize {
        let out = kubeforge(dir)
            .args(["state", "show", "-f", "cluster.yaml"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.strip_prefix("host keys:"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no host keys line: {text}"))
    };
    assert_eq!(pinned(dir.path()), 0);
    // A plan asks each host once (it does not wait for sshd to come up on machines that
    // just booted): plan again until every host answered, as an operator would.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = kubeforge(dir.path())
            .args(["plan", "-f", "cluster.yaml", "--playbook", "lb.yaml"])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            stderr.contains("cannot reach") && Instant::now() < deadline,
            "{stderr}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(pinned(dir.path()), 3, "plan records the keys it pinned");

    // First full run: host keys checked against those pins, HAProxy + keepalived, VIP.
    let t0 = Instant::now();
    let out = apply(dir.path(), &[]);
    let first = t0.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains(&format!("cluster `{NAME}` applied (3 phases")));
    assert_eq!(
        vip_holders().len(),
        1,
        "exactly one load balancer holds the VIP"
    );
    let lb1 = format!("{NAME}-lb-1");
    assert_eq!(
        exec(&lb1, "systemctl is-active haproxy keepalived"),
        "active\nactive"
    );
    assert!(exec(&lb1, "cat /etc/haproxy/haproxy.cfg")
        .contains(&format!("server {NAME}-cp-1 10.252.7.10:6443 check")));

    // The state records machines, pinned host keys and the journal; secrets are
    // encrypted (listed by name only).
    let out = kubeforge(dir.path())
        .args(["state", "show", "-f", "cluster.yaml", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let doc = if v.get("state").is_some() {
        &v["state"]
    } else {
        &v
    };
    let state_text = doc.to_string();
    for host in ["10.252.7.2", "10.252.7.3", "10.252.7.10"] {
        assert!(
            state_text.contains(host),
            "{host} missing from the state: {text}"
        );
    }
    assert!(
        !text.contains("BEGIN OPENSSH PRIVATE KEY"),
        "the SSH key is never shown"
    );
    assert!(
        text.contains(kubeforge::ops::session::SSH_KEY),
        "secrets are listed by name"
    );

    // Second run: nothing changes (same file, same HAProxy process), quickly, and the
    // state gets at most one new generation (the run's journal).
    let generation_before = v["state"]["generation"]
        .as_u64()
        .or_else(|| v["generation"].as_u64())
        .expect("the state shows its generation");
    let mtime = exec(&lb1, "stat -c %Y.%s /etc/haproxy/haproxy.cfg");
    let pid = exec(&lb1, "systemctl show -p MainPID --value haproxy");
    let t1 = Instant::now();
    let out = apply(dir.path(), &["-o", "json"]);
    let second = t1.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["phases"].as_array().unwrap().len(), 3);
    let generation_after = report["generation"].as_u64().unwrap();
    assert!(
        generation_after <= generation_before + 1,
        "a no-op apply wrote {} state generations (from {generation_before} to {generation_after})",
        generation_after - generation_before
    );
    assert!(report["state_writes"].as_u64().unwrap() <= 1, "{report}");
    for p in report["phases"].as_array().unwrap() {
        assert_eq!(p["files_sent"], 0, "{p}");
        assert_eq!(p["steps_run"], 0, "{p}");
    }
    assert_eq!(exec(&lb1, "stat -c %Y.%s /etc/haproxy/haproxy.cfg"), mtime);
    assert_eq!(
        exec(&lb1, "systemctl show -p MainPID --value haproxy"),
        pid,
        "haproxy was not restarted"
    );
    eprintln!("first apply {first:?}, second apply {second:?}");

    // plan against the converged hosts is empty ...
    let plan = |dir: &Path| -> serde_json::Value {
        let out = kubeforge(dir)
            .args([
                "plan",
                "-f",
                "cluster.yaml",
                "--playbook",
                "lb.yaml",
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let p = plan(dir.path());
    assert_eq!(p["phases"], serde_json::json!([]), "{p}");
    // Runs within spec.ssh.persistSeconds (default 60 s) take the connections kept
    // since the last one: the next plan logs in nowhere anew (sshd's own journal), and
    // the keeper's socket sits in a directory only this user can enter.
    let logins = |m: &str| -> usize {
        exec(
            m,
            "journalctl -u ssh --no-pager -o cat | grep -c '^Accepted publickey' || true",
        )
        .parse()
        .unwrap()
    };
    let machines = ["cp-1", "lb-1", "lb-2"].map(|n| format!("{NAME}-{n}"));
    let before: Vec<usize> = machines.iter().map(|m| logins(m)).collect();
    assert!(
        before.iter().all(|n| *n > 0),
        "sshd logs its logins: {before:?}"
    );
    let p = plan(dir.path());
    assert_eq!(p["phases"], serde_json::json!([]), "{p}");
    let after: Vec<usize> = machines.iter().map(|m| logins(m)).collect();
    assert_eq!(after, before, "a run 60 s after the last one logs in again");
    let socket_dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() && Path::new(&d).is_dir() => {
            PathBuf::from(d).join("kubeforge")
        }
        _ => std::env::temp_dir().join(format!("kubeforge-{}", own_uid())),
    };
    let meta = std::fs::symlink_metadata(&socket_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", socket_dir.display()));
    assert!(meta.is_dir(), "{}", socket_dir.display());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o700
    );
    // ... and after one edit shows exactly that file's diff on the load balancers.
    let cluster = dir.path().join("cluster.yaml");
    let text = std::fs::read_to_string(&cluster).unwrap();
    std::fs::write(
        &cluster,
        format!("{text}  loadBalancer: {{healthCheck: tcp}}\n"),
    )
    .unwrap();
    let p = plan(dir.path());
    let phases = p["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 1, "{p}");
    assert_eq!(phases[0]["name"], "load-balancer");
    let hosts = phases[0]["hosts"].as_array().unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["host"].as_str().unwrap()).collect();
    assert_eq!(names, [format!("{NAME}-lb-1"), format!("{NAME}-lb-2")]);
    for h in hosts {
        let files = h["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{h}");
        assert_eq!(files[0]["path"], "/etc/haproxy/haproxy.cfg");
        assert_eq!(files[0]["change"], "update");
        let diff = files[0]["diff"].as_str().unwrap();
        assert!(
            diff.contains("-    option httpchk") && diff.contains("+    option tcp-check"),
            "{diff}"
        );
        let cmds = h["commands"].as_array().unwrap();
        assert_eq!(cmds.len(), 1, "only HAProxy is reloaded: {h}");
        assert!(cmds[0]
            .as_str()
            .unwrap()
            .contains("reload-or-restart haproxy"));
    }
    // Applying it reloads HAProxy with the new check, one load balancer at a time,
    // while a 1 s prober connects through the VIP; then the plan is empty again.
    let prober = Prober::start(&format!("{VIP}:6443"));
    let out = apply(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(exec(&lb1, "cat /etc/haproxy/haproxy.cfg").contains("option tcp-check"));
    assert_eq!(plan(dir.path())["phases"], serde_json::json!([]));
    // A keepalived change (another virtual router id) on both load balancers: reloaded
    // one at a time, the holder last; the VIP keeps answering.
    let text = std::fs::read_to_string(&cluster).unwrap();
    std::fs::write(
        &cluster,
        text.replace(
            "loadBalancer: {healthCheck: tcp}",
            "loadBalancer: {healthCheck: tcp, virtualRouterId: 77}",
        ),
    )
    .unwrap();
    let keepalived_at = prober.at();
    let out = apply(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done_at = prober.at();
    std::thread::sleep(Duration::from_secs(3));
    let (requests, failed) = prober.finish();
    eprintln!(
        "VIP prober during two LB config changes: {requests} requests, {} failed (at {failed:?} s; keepalived change {keepalived_at:.1}-{done_at:.1} s)",
        failed.len()
    );
    assert!(requests >= 5, "the prober ran: {requests}");
    assert_eq!(
        failed.len(),
        0,
        "VIP prober failures during the LB config changes"
    );
    assert!(exec(&lb1, "cat /etc/keepalived/keepalived.conf").contains("virtual_router_id 77"));
    assert_eq!(vip_holders().len(), 1);
    assert_eq!(plan(dir.path())["phases"], serde_json::json!([]));

    // The VIP moves when its holder dies, and apply brings the machine back.
    let holder = vip_holders().remove(0);
    docker(&["stop", "-t", "1", &holder]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while vip_holders().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let now = vip_holders();
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], holder, "the VIP moved to the other load balancer");
    let out = apply(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exec(&holder, "systemctl is-active haproxy"), "active");
    assert_eq!(vip_holders().len(), 1);

    // A machine the provider re-creates (gone, then made anew by `provision`) gets a new
    // host key: the plan says the machine is missing, and apply pins the new key
    // without a flag.
    let lb2 = format!("{NAME}-lb-2");
    docker(&["rm", "-f", "-v", &lb2]);
    let out = kubeforge(dir.path())
        .args(["plan", "-f", "cluster.yaml", "--playbook", "lb.yaml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!(
            "host {lb2} (load-balancer) is missing at the provider"
        )),
        "{text}"
    );
    assert!(!text.contains("No changes"), "{text}");
    let out = apply(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{lb2} was re-created by the provider: its new SSH host key will be pinned"
        )),
        "{stderr}"
    );
    assert_eq!(exec(&lb2, "systemctl is-active keepalived"), "active");

    // An existing machine whose host key changes is refused with both fingerprints,
    // exit 4 ... (once the connection kept from the last run, made with the old key, is
    // gone: as with OpenSSH's ControlPersist, a connection already verified stays in use
    // while it lasts; the machine drops it here, as a reinstall or reboot would)
    exec(
        &lb2,
        "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A -q && systemctl restart ssh \
         && pkill -f '^sshd: root@' ; true",
    );
    let out = apply(dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("10.252.7.3"), "{stderr}");
    assert!(
        stderr.matches("SHA256:").count() >= 2,
        "both fingerprints are shown: {stderr}"
    );
    // ... until re-pinned on purpose.
    let out = apply(dir.path(), &["--accept-new-host-key", "10.252.7.3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exec(&lb2, "systemctl is-active keepalived"), "active");
    assert_eq!(vip_holders().len(), 1);
}

/// Connects to `addr` once a second until stopped; counts the attempts that failed.
struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u32, Vec<f64>)>>,
    started: Instant,
}

impl Prober {
    fn start(addr: &str) -> Prober {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let handle = std::thread::spawn(move || {
            let (mut total, mut failed) = (0, Vec::new());
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                total += 1;
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
                    failed.push(started.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            (total, failed)
        });
        Prober {
            stop,
            handle: Some(handle),
            started,
        }
    }

    /// Seconds since the prober started (to place events next to its failures).
    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// (requests, seconds at which a request failed)
    fn finish(mut self) -> (u32, Vec<f64>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}
