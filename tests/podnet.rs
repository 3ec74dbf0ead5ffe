//! The built-in pod network across nodes, without Kubernetes: three docker machines get
//! the rendered pod-network files (the VXLAN script, its systemd unit and the CNI config
//! template) exactly as the cni phase sends them, the unit runs, and each machine gets a
//! "pod": a network namespace wired by the real CNI bridge plugin (containernetworking-
//! plugins, /usr/lib/cni/bridge) from the config the script wrote. Then:
//! - every pod pings every pod on the other nodes, and every node the pods of the others
//!   (the docker network drops packets that carry pod addresses between machines, so
//!   this only works through the overlay between node addresses);
//! - a TCP peer on another node sees the pod's own address (no masquerade inside the
//!   pod subnet);
//! - the VXLAN device's and the pods' MTU is the node interface's less 50;
//! - re-running the unit changes nothing, stale peer entries are removed, and after a
//!   machine restarts the unit builds the overlay again by itself.
//!
//! Docker and the node image are REQUIRED (the test fails naming the script for each).

mod common_docker;

use common_docker::{run, with_cluster, TestCluster};
use kubeforge::provider::MachineRole;
use kubeforge::render::{render_all, FileGroup, Secrets};
use kubeforge::transport::{SshSession, Transport, UploadTarget};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "kf-podnet";
const UNIT: &str = "kubeforge-podnet";

async fn sh(s: &SshSession, cmd: &str) -> String {
    let out = s
        .exec_checked(cmd)
        .await
        .unwrap_or_else(|e| panic!("{}", kubeforge::error::render_chain(&e)));
    out.stdout
}

/// Run `cmd` until it succeeds with output `want` accepts, or panic after `limit`.
async fn wait_for(
    s: &SshSession,
    what: &str,
    cmd: &str,
    want: impl Fn(&str) -> bool,
    limit: Duration,
) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Ok(out) = Transport::exec(s, cmd).await {
            last = format!("{}{}", out.stdout, out.stderr);
            if out.success() && want(out.stdout.trim()) {
                return out.stdout.trim().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what}: not reached within {limit:?}; last output of `{cmd}`: {last}");
}

fn cluster_yaml(subnet: &str, cp_ip: &str) -> String {
    format!(
        "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {NAME}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker:
      subnet: {subnet}
  nodePools:
    controlPlane:
      count: 3
  networking:
    podSubnet: 10.244.0.0/16
    cni: bridge
  loadBalancer:
    type: external
    endpoint: {cp_ip}:6443
"
    )
}

/// A "pod" on this machine: a network namespace wired by the real bridge plugin with
/// the first plugin of the CNI config the pod-network script wrote. Returns its address.
async fn add_pod(s: &SshSession, id: &str) -> String {
    let conflist = sh(s, "cat /etc/cni/net.d/10-kubeforge.conflist").await;
    let list: serde_json::Value = serde_json::from_str(&conflist)
        .unwrap_or_else(|e| panic!("the written CNI config is not JSON ({e}): {conflist}"));
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    s.upload(
        serde_json::to_vec(&conf).unwrap().into(),
        &UploadTarget::new(format!("/tmp/{id}.json"), 0o644),
    )
    .await
    .unwrap();
    let out = sh(
        s,
        &format!(
            "ip netns add {id} && CNI_COMMAND=ADD CNI_CONTAINERID={id} CNI_NETNS=/run/netns/{id} \
             CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge < /tmp/{id}.json"
        ),
    )
    .await;
    let result: serde_json::Value = serde_json::from_str(&out).unwrap();
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{out}"));
    addr.split('/').next().unwrap().to_string()
}

/// (Re)start the pod network unit as the cni phase does; print its log if it fails.
async fn start_unit(s: &SshSession) {
    let cmd =
        format!("systemctl daemon-reload && systemctl enable {UNIT} && systemctl restart {UNIT}");
    let out = Transport::exec(s, &cmd).await.unwrap();
    if !out.success() {
        let log = Transport::exec(
            s,
            &format!("journalctl -u {UNIT} --no-pager -o cat | tail -n 30"),
        )
        .await
        .map(|o| o.stdout)
        .unwrap_or_default();
        panic!("`{cmd}` failed: {}{}\n{log}", out.stdout, out.stderr);
    }
}

/// The overlay's state on a machine, for comparing runs.
async fn overlay_state(s: &SshSession) -> String {
    sh(
        s,
        "ip -d -o link show kubeforge.vxlan | sed 's/^[0-9]*: //; s/ qdisc.*vxlan/ vxlan/' | cut -c1-200; \
         ip -o -4 addr show dev kubeforge.vxlan | awk '{print $4}'; \
         ip -o -4 route show dev kubeforge.vxlan; ip -4 neigh show dev kubeforge.vxlan; \
         bridge fdb show dev kubeforge.vxlan; iptables-save -t nat | grep KUBEFORGE-PODNET; \
         stat -c '%Y %s' /etc/cni/net.d/10-kubeforge.conflist",
    )
    .await
}

async fn sessions(cluster: &TestCluster) -> Vec<Arc<SshSession>> {
    let (pool, _store) = cluster.pool("root");
    let mut out = Vec::new();
    for ip in cluster.ips() {
        out.push(pool.session(&ip).await.expect("ssh session"));
    }
    out
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_the_vxlan_overlay() {
    run(|| async move {
        let roles = [MachineRole::ControlPlane; 3];
        with_cluster(NAME, &roles, |cluster| async move {
            let subnet = cluster.provider.config().subnet.to_string();
            let yaml = cluster_yaml(&subnet, &cluster.ip(0));
            let loaded = kubeforge::spec::load_str(&yaml, Path::new("cluster.yaml"), Path::new("."))
                .unwrap_or_else(|e| panic!("{e}"));
            let names: Vec<_> = loaded.topology.kubernetes_nodes().iter().map(|h| h.name.clone()).collect();
            let machines: Vec<_> = cluster.machines.iter().map(|m| m.name.clone()).collect();
            assert_eq!(names, machines);
            let rendered = render_all(&loaded, &Secrets::generate()).unwrap();
            let ss = sessions(&cluster).await;

            // --- the cni phase's files and unit, on every node -------------------------
            let t = Instant::now();
            for (name, s) in names.iter().zip(&ss) {
                let mut sent = 0;
                for (group, f) in &rendered {
                    if f.host == *name && *group == FileGroup::Cni {
                        s.upload(f.content.clone().into(), &UploadTarget::new(f.path.clone(), f.mode))
                            .await
                            .unwrap_or_else(|e| panic!("upload {}: {e}", f.path));
                        sent += 1;
                    }
                }
                assert_eq!(sent, 3, "{name}: script, unit and CNI config template");
                sh(s, "sh -n /usr/local/lib/kubeforge/podnet.sh").await;
                start_unit(s).await;
            }
            let setup = t.elapsed();

            // --- MTU: the node interface's less the VXLAN overhead ---------------------
            for s in &ss {
                let under: u32 = sh(s, "cat /sys/class/net/eth0/mtu").await.trim().parse().unwrap();
                let vx: u32 = sh(s, "cat /sys/class/net/kubeforge.vxlan/mtu").await.trim().parse().unwrap();
                assert_eq!(vx, under - 50);
                let conf: serde_json::Value =
                    serde_json::from_str(&sh(s, "cat /etc/cni/net.d/10-kubeforge.conflist").await).unwrap();
                assert_eq!(conf["plugins"][0]["mtu"], under - 50);
                let link = sh(s, "ip -d -o link show kubeforge.vxlan").await;
                assert!(
                    link.contains("vxlan id 4242 local ") && link.contains(" dstport 8472 ") && link.contains("nolearning"),
                    "{link}"
                );
            }

            // --- one pod per node --------------------------------------------------------
            let mut pods = Vec::new();
            for s in &ss {
                pods.push(add_pod(s, "pod").await);
            }
            eprintln!("pods: {pods:?}");
            for (i, p) in pods.iter().enumerate() {
                assert!(p.starts_with(&format!("10.244.{i}.")), "pod {i}: {p}");
                let mtu = sh(&ss[i], "ip netns exec pod cat /sys/class/net/eth0/mtu").await;
                let vx = sh(&ss[i], "cat /sys/class/net/kubeforge.vxlan/mtu").await;
                assert_eq!(mtu.trim(), vx.trim(), "the pod's MTU is the overlay's");
            }

            // --- pod to pod and node to pod, across nodes ---------------------------------
            let t = Instant::now();
            for (i, s) in ss.iter().enumerate() {
                for (j, p) in pods.iter().enumerate() {
                    if i == j {
                        continue;
                    }
                    sh(s, &format!("ip netns exec pod ping -c 2 -W 5 {p} >/dev/null")).await;
                    sh(s, &format!("ping -c 2 -W 5 {p} >/dev/null")).await;
                }
            }
            // Full-size packets fit: the largest unfragmented ICMP echo at the pod MTU.
            let mtu: u32 = sh(&ss[0], "ip netns exec pod cat /sys/class/net/eth0/mtu").await.trim().parse().unwrap();
            sh(&ss[0], &format!("ip netns exec pod ping -c 1 -W 5 -M do -s {} {} >/dev/null", mtu - 28, pods[1])).await;
            let reach = t.elapsed();

            // --- the peer sees the pod's own address ---------------------------------------
            sh(
                &ss[1],
                "systemd-run --unit kf-podnet-listen ip netns exec pod \
                 socat -T 10 TCP-LISTEN:9999,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR'",
            )
            .await;
            let seen = wait_for(
                &ss[0],
                "an answer from the listener in the pod on node 2",
                &format!("ip netns exec pod socat -T 5 - TCP:{}:9999 </dev/null", pods[1]),
                |o| !o.is_empty(),
                Duration::from_secs(30),
            )
            .await;
            assert_eq!(seen, pods[0], "the pod on node 2 saw {seen}, not the pod's address");
            // Leaving the pod subnet (here: to a node address) is masqueraded.
            sh(
                &ss[1],
                "systemd-run --unit kf-podnet-listen2 socat -T 10 TCP-LISTEN:9998,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR'",
            )
            .await;
            let seen = wait_for(
                &ss[0],
                "an answer from the listener on node 2",
                &format!("ip netns exec pod socat -T 5 - TCP:{}:9998 </dev/null", cluster.ip(1)),
                |o| !o.is_empty(),
                Duration::from_secs(30),
            )
            .await;
            assert_eq!(seen, cluster.ip(0), "traffic leaving the pod subnet carries the node's address");

            // --- a Service address, as kube-proxy (iptables mode) programs it -------------
            // A node reaching a virtual address DNATed to a pod on another node, marked
            // for masquerade as kube-proxy does for sources outside the cluster CIDR.
            sh(
                &ss[1],
                "systemd-run --unit kf-podnet-listen3 ip netns exec pod \
                 socat -T 10 TCP-LISTEN:9997,reuseaddr SYSTEM:'echo $SOCAT_PEERADDR'",
            )
            .await;
            sh(
                &ss[0],
                &format!(
                    "iptables -w -t nat -A OUTPUT -d 10.96.77.77/32 -p tcp --dport 9997 -j MARK --set-xmark 0x4000/0x4000 && \
                     iptables -w -t nat -A OUTPUT -d 10.96.77.77/32 -p tcp --dport 9997 -j DNAT --to-destination {}:9997 && \
                     iptables -w -t nat -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully",
                    pods[1]
                ),
            )
            .await;
            let seen = wait_for(
                &ss[0],
                "an answer through the Service-like address",
                "socat -T 5 - TCP:10.96.77.77:9997 </dev/null",
                |o| !o.is_empty(),
                Duration::from_secs(30),
            )
            .await;
            assert_eq!(seen, "10.244.0.0", "masqueraded to the node's VTEP address");

            // --- re-running changes nothing; stale entries go -----------------------------
            // Stale peers point at unused addresses of this test's own subnet.
            let ip0 = cluster.ip(0);
            let prefix = ip0.rsplit_once('.').unwrap().0;
            let before = overlay_state(&ss[0]).await;
            start_unit(&ss[0]).await;
            assert_eq!(overlay_state(&ss[0]).await, before, "a re-run changed the overlay");
            sh(
                &ss[0],
                &format!(
                    "ip neigh replace 10.244.99.0 lladdr 0e:6b:0a:f4:63:00 dev kubeforge.vxlan nud permanent && \
                     bridge fdb append 0e:6b:0a:f4:63:00 dev kubeforge.vxlan dst {prefix}.99 self permanent && \
                     bridge fdb append 00:00:00:00:00:00 dev kubeforge.vxlan dst {prefix}.98 self permanent && \
                     ip route replace 10.244.99.0/24 via 10.244.99.0 dev kubeforge.vxlan onlink"
                ),
            )
            .await;
            assert_ne!(overlay_state(&ss[0]).await, before);
            start_unit(&ss[0]).await;
            assert_eq!(overlay_state(&ss[0]).await, before, "stale peer entries were left");

            // --- a restarted machine builds its overlay again at boot ----------------------
            let m = &cluster.machines[2].name;
            let out = std::process::Command::new("docker").args(["restart", "-t", "2", m]).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            cluster
                .provider
                .wait_for_ssh(cluster.ip(2).parse().unwrap(), 22, Duration::from_secs(60))
                .await
                .unwrap();
            let ss = sessions(&cluster).await;
            wait_for(
                &ss[2],
                "the pod network unit after the restart",
                &format!("systemctl is-active {UNIT}"),
                |o| o == "active",
                Duration::from_secs(60),
            )
            .await;
            let again = add_pod(&ss[2], "pod2").await;
            assert!(again.starts_with("10.244.2."), "{again}");
            sh(&ss[0], &format!("ip netns exec pod ping -c 2 -W 5 {again} >/dev/null")).await;
            sh(&ss[2], &format!("ip netns exec pod2 ping -c 2 -W 5 {} >/dev/null", pods[1])).await;

            eprintln!(
                "podnet: files + unit on 3 nodes {:.1} s, all cross-node pings {:.1} s",
                setup.as_secs_f64(),
                reach.as_secs_f64()
            );
        })
        .await;
    });
}
