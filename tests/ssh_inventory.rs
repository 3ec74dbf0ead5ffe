//! SSH as operators' Ansible inventories configure it (issue 17): per-host
//! `ansible_port`, `ansible_user` and `ansible_ssh_private_key_file`, on real sshd in
//! systemd machines, through the binary (`apply --phases machines,connect`, then
//! `inventory --host`). Each host is set up so that only its own settings can work:
//! sshd on 2222 only, or a user who accepts only the host's own key.

mod common_docker;

use common_docker::{run, with_cluster};
use kubeforge::provider::MachineRole;
use kubeforge::transport::ssh::generate_ed25519_key;
use std::process::Command as Std;

fn docker_exec(machine: &str, script: &str) {
    let out = Std::new("docker")
        .args(["exec", machine, "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{machine}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The binary in `d`, with the state key there.
fn kubeforge_in(d: &std::path::Path) -> assert_cmd::Command {
    let mut k = assert_cmd::Command::cargo_bin("kubeforge").unwrap();
    k.current_dir(d)
        .env("KUBEFORGE_STATE_KEY_FILE", d.join("state.key"))
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .env_remove("KUBEFORGE_STATE_KEY");
    k
}

/// A static cluster `name` on `hosts.ini` with the test cluster's key, its API at
/// `api_ip` (external endpoint), and a state key.
fn cluster_file(d: &std::path::Path, name: &str, key: &std::path::Path, api_ip: &str) {
    std::fs::copy(key, d.join("cluster.key")).unwrap();
    std::fs::write(
        d.join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {{name: {name}}}
spec:
  kubernetesVersion: v1.20.2
  ssh: {{user: root, keyFile: cluster.key, connectTimeoutSeconds: 5}}
  provider:
    static: {{inventory: hosts.ini}}
  loadBalancer: {{type: external, endpoint: '{api_ip}:6443'}}
"
        ),
    )
    .unwrap();
    kubeforge_in(d)
        .args(["state", "keygen", "--out", "state.key"])
        .assert()
        .success();
}

#[test]
fn per_host_port_user_and_key_from_an_ansible_inventory() {
    run(|| async {
        let roles = [
            MachineRole::ControlPlane,
            MachineRole::Worker,
            MachineRole::Worker,
        ];
        with_cluster("kft-sshinv", &roles, |c| async move {
            let names: Vec<String> = c.machines.iter().map(|m| m.name.clone()).collect();
            // worker-1: sshd on 2222 only.
            docker_exec(
                &names[1],
                "sed -i '/^#\\?Port /d' /etc/ssh/sshd_config && echo 'Port 2222' >> /etc/ssh/sshd_config && systemctl restart ssh",
            );
            // worker-2: the plain user `kubeforge` accepts only a key of its own.
            let own = generate_ed25519_key();
            let private = own
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .unwrap()
                .to_string();
            let public = own.public_key().to_openssh().unwrap();
            docker_exec(
                &names[2],
                &format!("echo '{public}' > /home/kubeforge/.ssh/authorized_keys"),
            );
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::write(d.join("w2.key"), private).unwrap();
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(d.join("w2.key"), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
            std::fs::write(
                d.join("hosts.ini"),
                format!(
                    "[kube_control_plane]\n{} ansible_host={}\n\n[kube_node]\n{} ansible_host={} ansible_port=2222\n{} ansible_host={} ansible_user=kubeforge ansible_ssh_private_key_file=w2.key\n",
                    names[0], c.ip(0), names[1], c.ip(1), names[2], c.ip(2)
                ),
            )
            .unwrap();
            cluster_file(d, "kft-sshinv", &c.key_path, &c.ip(0));
            let kf = || kubeforge_in(d);
            let out = kf()
                .args(["apply", "-f", "cluster.yaml", "--yes", "--phases", "machines,connect"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{err}");
            // Every host answered with its own settings: its key is pinned.
            let out = kf()
                .args(["state", "show", "-f", "cluster.yaml", "-o", "json"])
                .output()
                .unwrap();
            let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let pins = st["state"]["hostKeys"].as_object().cloned().unwrap_or_default();
            for (i, name) in names.iter().enumerate() {
                assert!(pins.contains_key(&c.ip(i)), "{name} pinned: {st}");
            }
            // The plan shows how each host is reached.
            let out = kf()
                .args(["plan", "--offline", "-f", "cluster.yaml"])
                .output()
                .unwrap();
            let plan = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(plan.contains(&format!("ssh root@{}:2222", c.ip(1))), "{plan}");
            assert!(plan.contains(&format!("ssh kubeforge@{}:22", c.ip(2))), "{plan}");
            // Ansible gets the same per-host variables back.
            let out = kf()
                .args(["inventory", "-f", "cluster.yaml", "--host", &names[2]])
                .output()
                .unwrap();
            let vars: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(vars["ansible_user"], "kubeforge", "{vars}");
            // Without the host's own key, that host is refused (the cluster key is not
            // accepted there): the per-host key was what worked.
            std::fs::write(
                d.join("hosts.ini"),
                format!(
                    "[kube_control_plane]\n{} ansible_host={}\n\n[kube_node]\n{} ansible_host={} ansible_port=2222\n{} ansible_host={} ansible_user=kubeforge\n",
                    names[0], c.ip(0), names[1], c.ip(1), names[2], c.ip(2)
                ),
            )
            .unwrap();
            let out = kf()
                .args(["apply", "-f", "cluster.yaml", "--yes", "--phases", "connect"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!out.status.success(), "{err}");
            assert!(err.contains(&names[2]) || err.contains(&c.ip(2)), "{err}");
            assert!(err.contains("authentication") || err.contains("auth"), "{err}");
            eprintln!("without its own key: {}", err.lines().last().unwrap_or_default());
            // The same settings from an OpenSSH client config instead of the inventory:
            // a block by name (the port) and one by address (user and key).
            std::fs::write(
                d.join("ssh_config"),
                format!(
                    "Host {}\n  Port 2222\n\nHost {}\n  User kubeforge\n  IdentityFile w2.key\n",
                    names[1],
                    c.ip(2)
                ),
            )
            .unwrap();
            std::fs::write(
                d.join("hosts.ini"),
                format!(
                    "[kube_control_plane]\n{} ansible_host={}\n\n[kube_node]\n{} ansible_host={}\n{} ansible_host={}\n",
                    names[0], c.ip(0), names[1], c.ip(1), names[2], c.ip(2)
                ),
            )
            .unwrap();
            let yaml = std::fs::read_to_string(d.join("cluster.yaml")).unwrap();
            std::fs::write(
                d.join("cluster.yaml"),
                yaml.replace("connectTimeoutSeconds: 5}", "connectTimeoutSeconds: 5, configFile: ssh_config}"),
            )
            .unwrap();
            let out = kf()
                .args(["apply", "-f", "cluster.yaml", "--yes", "--phases", "connect"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "settings from ssh_config: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
    });
}

#[test]
fn the_bastion_group_of_a_kubespray_inventory_is_the_jump_host() {
    run(|| async {
        let roles = [
            MachineRole::Worker,
            MachineRole::ControlPlane,
            MachineRole::Worker,
        ];
        with_cluster("kft-sshjump", &roles, |c| async move {
            let names: Vec<String> = c.machines.iter().map(|m| m.name.clone()).collect();
            // The nodes refuse SSH from this machine (the docker bridge's address); only
            // the jump host reaches them.
            let ip0 = c.ip(0);
            let gateway = format!("{}.1", ip0.rsplit_once('.').unwrap().0);
            for n in &names[1..] {
                docker_exec(
                    n,
                    &format!("iptables -I INPUT -p tcp --dport 22 -s {gateway} -j DROP"),
                );
            }
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            let inventory = |with_bastion: bool| {
                format!(
                    "{}[kube_control_plane]\n{} ansible_host={}\n\n[kube_node]\n{} ansible_host={}\n",
                    if with_bastion {
                        format!("[bastion]\nbastion ansible_host={ip0} ansible_user=root\n\n")
                    } else {
                        String::new()
                    },
                    names[1],
                    c.ip(1),
                    names[2],
                    c.ip(2)
                )
            };
            std::fs::write(d.join("hosts.ini"), inventory(true)).unwrap();
            cluster_file(d, "kft-sshjump", &c.key_path, &c.ip(1));
            let kf = || kubeforge_in(d);
            let out = kf()
                .args(["validate", "-f", "cluster.yaml"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(text.contains("(2 hosts"), "the bastion is not a node: {text}");
            let out = kf()
                .args(["apply", "-f", "cluster.yaml", "--yes", "--phases", "machines,connect"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "through the bastion: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Without the group, the nodes cannot be reached from here (a plan tries
            // once per host).
            std::fs::write(d.join("hosts.ini"), inventory(false)).unwrap();
            let out = kf()
                .args(["plan", "-f", "cluster.yaml"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!out.status.success(), "direct SSH is blocked: {err}");
            assert!(err.contains(&c.ip(1)) || err.contains(&names[1]), "{err}");
            // The jump host from the ProxyJump of an OpenSSH client config (an alias,
            // with its HostName in a block of its own).
            std::fs::write(
                d.join("ssh_config"),
                format!("Host kft-sshjump-*\n  ProxyJump root@jump:22\n\nHost jump\n  HostName {ip0}\n"),
            )
            .unwrap();
            let yaml = std::fs::read_to_string(d.join("cluster.yaml")).unwrap();
            std::fs::write(
                d.join("cluster.yaml"),
                yaml.replace("connectTimeoutSeconds: 5}", "connectTimeoutSeconds: 5, configFile: ssh_config}"),
            )
            .unwrap();
            let out = kf()
                .args(["plan", "-f", "cluster.yaml"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "through the ProxyJump of ssh_config: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
    });
}

#[test]
fn a_proxyjump_chain_reaches_hosts_behind_two_jump_hosts() {
    run(|| async {
        let roles = [
            MachineRole::Worker,
            MachineRole::Worker,
            MachineRole::ControlPlane,
        ];
        with_cluster("kft-sshchain", &roles, |c| async move {
            let names: Vec<String> = c.machines.iter().map(|m| m.name.clone()).collect();
            let (ip0, ip1) = (c.ip(0), c.ip(1));
            let gateway = format!("{}.1", ip0.rsplit_once('.').unwrap().0);
            // The second jump host is reached only from the first; the node only from
            // the second.
            docker_exec(
                &names[1],
                &format!("iptables -I INPUT -p tcp --dport 22 -s {gateway} -j DROP"),
            );
            for src in [gateway.as_str(), ip0.as_str()] {
                docker_exec(
                    &names[2],
                    &format!("iptables -I INPUT -p tcp --dport 22 -s {src} -j DROP"),
                );
            }
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path();
            std::fs::write(
                d.join("hosts.ini"),
                format!("[kube_control_plane]\n{} ansible_host={}\n", names[2], c.ip(2)),
            )
            .unwrap();
            cluster_file(d, "kft-sshchain", &c.key_path, &c.ip(2));
            let yaml = std::fs::read_to_string(d.join("cluster.yaml")).unwrap();
            std::fs::write(
                d.join("cluster.yaml"),
                yaml.replace(
                    "connectTimeoutSeconds: 5}",
                    "connectTimeoutSeconds: 5, configFile: ssh_config}",
                ),
            )
            .unwrap();
            let plan = |config: String| {
                std::fs::write(d.join("ssh_config"), config).unwrap();
                let out = kubeforge_in(d)
                    .args([
                        "apply",
                        "-f",
                        "cluster.yaml",
                        "--yes",
                        "--phases",
                        "machines,connect",
                    ])
                    .timeout(std::time::Duration::from_secs(300))
                    .output()
                    .unwrap();
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stderr).to_string(),
                )
            };
            // `ProxyJump j1,j2` with both aliases in blocks of their own.
            let (ok, err) = plan(format!(
                "Host kft-sshchain-*\n  ProxyJump j1,root@j2:22\n\nHost j1\n  HostName {ip0}\n  User root\n\nHost j2\n  HostName {ip1}\n"
            ));
            assert!(ok, "through j1 then j2: {err}");
            // The same chain written as OpenSSH also reads it: the jump host's own
            // ProxyJump.
            let (ok, err) = plan(format!(
                "Host kft-sshchain-*\n  ProxyJump j2\n\nHost j2\n  HostName {ip1}\n  User root\n  ProxyJump root@{ip0}\n"
            ));
            assert!(ok, "through j2's own ProxyJump: {err}");
            // One hop is not enough: the node refuses the first jump host (a plan tries
            // once per host).
            std::fs::write(
                d.join("ssh_config"),
                format!("Host kft-sshchain-*\n  ProxyJump root@{ip0}\n"),
            )
            .unwrap();
            let out = kubeforge_in(d)
                .args(["plan", "-f", "cluster.yaml"])
                .timeout(std::time::Duration::from_secs(300))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "the node is not reachable from j1 alone: {err}");
        })
        .await;
    });
}
