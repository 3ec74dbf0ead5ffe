//! MetalLB's BGP configuration against a real router: BIRD 2 (Debian, installed by
//! scripts/testbed/10-packages.sh) runs in a network namespace of this test as the
//! top-of-rack router, configured the way a network administrator would from the
//! cluster file (its ASN, the nodes as neighbours with the cluster's ASN, port,
//! password, hold time). MetalLB's images cannot run here, so a second BIRD in another
//! namespace stands in for the speaker on node `t-worker-1`, configured only from the
//! objects kubeforge renders (BGPPeer: myASN, peerASN, peerAddress, peerPort,
//! passwordSecret, holdTime, nodeSelectors; IPAddressPool addresses; BGPAdvertisement
//! communities). The router must accept the session (Established, so ASNs, port and
//! TCP-MD5 password agree) and receive the pool's prefix with the community; a router
//! that expects another ASN refuses it ("Bad peer AS").
//!
//! Needs root (network namespaces) and `bird`/`birdc`; fails, never skips, without them.

use kubeforge::addons::catalogue::{self, AddonId, MetallbFlavour};
use kubeforge::addons::manifest;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ROUTER_NS: &str = "kfbgp-router";
const SPEAKER_NS: &str = "kfbgp-speaker";
const NET: &str = "10.253.7";
const PASSWORD: &str = "s3cret-bgp";

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn run_ok(args: &[&str]) -> String {
    let (ok, out) = run(args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// The two namespaces, a veth between them, and the BIRDs this test started: removed
/// when dropped (the daemons by the pids in their own pid files).
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let (ok, v) = run(&["bird", "--version"]);
        assert!(
            ok,
            "BIRD is missing: run scripts/testbed/10-packages.sh ({v})"
        );
        Lab::cleanup();
        for ns in [ROUTER_NS, SPEAKER_NS] {
            run_ok(&["ip", "netns", "add", ns]);
            run_ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        run_ok(&[
            "ip", "link", "add", "kfbgp-r", "netns", ROUTER_NS, "type", "veth", "peer", "name",
            "kfbgp-s", "netns", SPEAKER_NS,
        ]);
        for (ns, dev, addrs) in [
            (
                ROUTER_NS,
                "kfbgp-r",
                vec![format!("{NET}.5/24"), format!("{NET}.6/24")],
            ),
            (SPEAKER_NS, "kfbgp-s", vec![format!("{NET}.20/24")]),
        ] {
            for a in addrs {
                run_ok(&["ip", "-n", ns, "addr", "add", &a, "dev", dev]);
            }
            run_ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        Lab {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn cleanup() {
        for ns in [ROUTER_NS, SPEAKER_NS] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start BIRD in `ns` with `config`; returns its control socket.
    fn bird(&self, ns: &str, name: &str, config: &str) -> PathBuf {
        let conf = self.path(&format!("{name}.conf"));
        std::fs::write(&conf, config).unwrap();
        let sock = self.path(&format!("{name}.ctl"));
        let pid = self.path(&format!("{name}.pid"));
        let (ok, out) = run(&["bird", "-p", "-c", conf.to_str().unwrap()]);
        assert!(ok, "BIRD refuses the {name} configuration: {out}\n{config}");
        run_ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "bird",
            "-c",
            conf.to_str().unwrap(),
            "-s",
            sock.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ]);
        sock
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in ["router", "router2", "speaker"] {
            if let Ok(pid) = std::fs::read_to_string(self.path(&format!("{name}.pid"))) {
                let _ = run(&["kill", pid.trim()]);
            }
        }
        Lab::cleanup();
    }
}

fn birdc(sock: &Path, cmd: &str) -> String {
    let mut args = vec!["birdc", "-s", sock.to_str().unwrap()];
    args.extend(cmd.split(' '));
    run_ok(&args)
}

/// Ask `birdc` until `want` accepts the answer, or panic after `limit` with it.
fn wait_birdc(
    sock: &Path,
    cmd: &str,
    what: &str,
    want: impl Fn(&str) -> bool,
    limit: Duration,
) -> String {
    let start = Instant::now();
    loop {
        let out = birdc(sock, cmd);
        if want(&out) {
            return out;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; `{cmd}`:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

const CLUSTER: &str = "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: t
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker:
      subnet: 10.253.7.0/24
  nodePools:
    controlPlane: {count: 1}
    workers: {count: 1}
  addons:
    metallb:
      mode: bgp
      pools:
        - name: public
          addresses: [10.253.8.0/27]
      bgp:
        myASN: 64512
        communities: [\"64512:100\"]
        peers:
          - address: 10.253.7.5
            asn: 64513
            port: 1179
            holdTime: 90s
            passwordSecret: bgp-auth
            nodes: [t-worker-1]
          - address: 10.253.7.6
            asn: 64514
            port: 1180
            nodes: [t-worker-1]
";

fn seconds(hold: &str) -> u64 {
    hold.trim_end_matches('s').parse().unwrap()
}

/// The speaker's BIRD configuration, from the rendered objects only: what MetalLB's
/// speaker on `node` would do with them.
fn speaker_config(
    objects: &[Value],
    node: &str,
    node_ip: &str,
    secrets: &[(&str, &str)],
) -> String {
    fn kind<'a>(objects: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        objects.iter().filter(move |o| o["kind"] == k)
    }
    let pools: Vec<(String, Vec<String>)> = kind(objects, "IPAddressPool")
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["addresses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    let adv = kind(objects, "BGPAdvertisement")
        .next()
        .expect("a BGPAdvertisement");
    let advertised: Vec<&str> = adv["spec"]["ipAddressPools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let mut communities = String::new();
    for c in adv["spec"]["communities"].as_array().into_iter().flatten() {
        let (a, b) = c.as_str().unwrap().split_once(':').unwrap();
        communities.push_str(&format!("    bgp_community.add(({a}, {b}));\n"));
    }
    let mut conf =
        format!("router id {node_ip};\nprotocol device {{}}\nprotocol static pools {{\n  ipv4;\n");
    for (name, addrs) in &pools {
        if advertised.contains(&name.as_str()) {
            for a in addrs {
                conf.push_str(&format!("  route {a} blackhole;\n"));
            }
        }
    }
    conf.push_str("}\n");
    conf.push_str(&format!(
        "filter metallb_export {{\n  if proto = \"pools\" then {{\n{communities}    accept;\n  }}\n  reject;\n}}\n"
    ));
    for (i, peer) in kind(objects, "BGPPeer").enumerate() {
        let s = &peer["spec"];
        // nodeSelectors: this node must be among the hostnames, when there are any.
        if let Some(sel) = s["nodeSelectors"].as_array() {
            let names: Vec<String> = sel
                .iter()
                .flat_map(|t| {
                    t["matchExpressions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .filter(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In")
                .flat_map(|e| e["values"].as_array().cloned().unwrap_or_default())
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if !names.iter().any(|n| n == node) {
                continue;
            }
        }
        conf.push_str(&format!(
            "protocol bgp peer{i} {{\n  local {node_ip} as {};\n  neighbor {} port {} as {};\n",
            s["myASN"],
            s["peerAddress"].as_str().unwrap(),
            s["peerPort"].as_u64().unwrap_or(179),
            s["peerASN"],
        ));
        if let Some(h) = s["holdTime"].as_str() {
            conf.push_str(&format!("  hold time {};\n", seconds(h)));
        }
        if let Some(name) = s["passwordSecret"]["name"].as_str() {
            let pw = secrets
                .iter()
                .find(|(n, _)| *n == name)
                .unwrap_or_else(|| panic!("no Secret {name}"))
                .1;
            conf.push_str(&format!("  password \"{pw}\";\n"));
        }
        conf.push_str("  ipv4 { import none; export filter metallb_export; };\n}\n");
    }
    conf
}

#[test]
fn the_router_accepts_the_rendered_bgp_peers_and_receives_the_pool() {
    let c = kubeforge::spec::load_str(CLUSTER, Path::new("cluster.yaml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let worker = c.topology.workers()[0].clone();
    assert_eq!(worker.name, "t-worker-1");
    let node_ip = worker.internal_address.to_string();
    assert_eq!(node_ip, format!("{NET}.20"));
    let pinned = catalogue::select(AddonId::Metallb, None, &c.version()).unwrap();
    let release =
        catalogue::release(AddonId::Metallb, pinned.version, MetallbFlavour::Frr).unwrap();
    let bundle = manifest::complete(&c, &release, Vec::new()).unwrap();
    let objects: Vec<Value> = bundle.objects.iter().map(|o| o.value.clone()).collect();

    let lab = Lab::new();
    // The router as the network administrator configures it from the cluster's plan:
    // the node as neighbour with the cluster's ASN; the second address expects another
    // ASN than the cluster's (a mismatch the session must refuse).
    let router = lab.bird(
        ROUTER_NS,
        "router",
        &format!(
            "router id {NET}.5;\nlog \"{}\" all;\nprotocol device {{}}\n\
             protocol bgp tor1 {{\n  local {NET}.5 port 1179 as 64513;\n  neighbor {node_ip} as 64512;\n  passive on;\n  hold time 90;\n  password \"{PASSWORD}\";\n  ipv4 {{ import all; export none; }};\n}}\n\
",
            lab.path("router.log").display()
        ),
    );
    let _router2 = lab.bird(
        ROUTER_NS,
        "router2",
        &format!(
            "router id {NET}.6;\nprotocol device {{}}\n\
             protocol bgp tor2 {{\n  local {NET}.6 port 1180 as 64514;\n  neighbor {node_ip} as 64599;\n  passive on;\n  ipv4 {{ import all; export none; }};\n}}\n"
        ),
    );
    let speaker_conf = speaker_config(&objects, &worker.name, &node_ip, &[("bgp-auth", PASSWORD)]);
    let speaker = lab.bird(SPEAKER_NS, "speaker", &speaker_conf);

    // ASNs, port, password and hold time agree: the session comes up.
    let t = Instant::now();
    let state = wait_birdc(
        &router,
        "show protocols all tor1",
        "the router's session with the speaker",
        |o| o.contains("Established"),
        Duration::from_secs(60),
    );
    eprintln!("BGP session Established after {:?}", t.elapsed());
    let neighbor_as = state
        .lines()
        .find(|l| l.contains("Neighbor AS:"))
        .unwrap_or_default();
    assert!(neighbor_as.contains("64512"), "{state}");
    // The pool's prefix arrives with the community.
    let routes = wait_birdc(
        &router,
        "show route all protocol tor1",
        "the pool's prefix at the router",
        |o| o.contains("10.253.8.0/27"),
        Duration::from_secs(30),
    );
    assert!(routes.contains("(64512,100)"), "{routes}");
    assert!(routes.contains("BGP.as_path: 64512"), "{routes}");
    // A router expecting another ASN refuses the rendered peer: the speaker's session
    // to it ends with the router's notification.
    let refused = wait_birdc(
        &speaker,
        "show protocols all peer1",
        "the router's refusal of an ASN it does not expect",
        |o| o.contains("Bad peer AS"),
        Duration::from_secs(60),
    );
    assert!(!refused.contains("Established"), "{refused}");
}
