//! Rendered files: golden files for every template and kubeadm API version, the real
//! `haproxy -c` and `keepalived -t` on every load-balancer config, and every kubeadm,
//! containerd and CNI file parsed back and checked field by field.
//!
//! `KUBEFORGE_UPDATE_GOLDEN=1 cargo test --test templates` rewrites the golden files;
//! review the diff before committing it.

use kubeforge::render::{self, FileGroup, RenderedFile, Secrets};
use kubeforge::spec::{self, LoadedCluster, Role};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const TOKEN: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "0011223344556677889900aabbccddeeff0011223344556677889900aabbccdd";
const CA_HASH: &str = "sha256:8f1f2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn secrets() -> Secrets {
    Secrets {
        bootstrap_token: TOKEN.into(),
        certificate_key: CERT_KEY.into(),
        ca_cert_hash: Some(CA_HASH.into()),
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(example: &str) -> LoadedCluster {
    let path = root().join("examples").join(example);
    spec::load_file(&path).unwrap_or_else(|e| panic!("{example}: {e}"))
}

fn all_examples() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 7, "examples: {v:?}");
    v
}

fn rendered(example: &str) -> (LoadedCluster, Vec<(FileGroup, RenderedFile)>) {
    let c = load(example);
    let files = render::render_all(&c, &secrets()).unwrap();
    (c, files)
}

/// One host per role worth checking: the init node, a joining control-plane node, a
/// worker, a load balancer.
fn golden_hosts(c: &LoadedCluster) -> Vec<String> {
    let t = &c.topology;
    let mut v = Vec::new();
    let cps = t.control_planes();
    v.extend(cps.iter().take(2).map(|h| h.name.clone()));
    v.extend(t.workers().iter().take(1).map(|h| h.name.clone()));
    v.extend(t.lb_hosts().iter().take(1).map(|h| h.name.clone()));
    v.dedup();
    v
}

#[test]
fn golden_files_for_every_template_and_api_version() {
    let update = std::env::var("KUBEFORGE_UPDATE_GOLDEN").is_ok();
    let mut seen_templates = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    // v1beta2 (1.20, docker), v1beta3 (1.28), v1beta4 (1.31 static, 1.33 HAProxy on
    // the control-plane nodes).
    for (example, api) in [
        ("local.yaml", "v1beta2"),
        ("metallb-bgp.yaml", "v1beta3"),
        ("baremetal.yaml", "v1beta4"),
        ("rook-ceph.yaml", "v1beta4"),
    ] {
        let (c, files) = rendered(example);
        assert_eq!(render::kubeadm_api_version(&c.version()), api, "{example}");
        let case = example.trim_end_matches(".yaml");
        let hosts = golden_hosts(&c);
        for (_, f) in files.iter().filter(|(_, f)| hosts.contains(&f.host)) {
            seen_templates.insert(f.template.clone());
            let golden = root()
                .join("tests/golden")
                .join(case)
                .join(&f.host)
                .join(f.path.trim_start_matches('/'));
            if update {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &f.content).unwrap();
                continue;
            }
            match std::fs::read_to_string(&golden) {
                Ok(want) if want == f.content => {}
                Ok(want) => failures.push(format!(
                    "{} differs:\n{}",
                    golden.display(),
                    similar::TextDiff::from_lines(&want, &f.content)
                        .unified_diff()
                        .header("golden", "rendered")
                )),
                Err(e) => failures.push(format!("{}: {e}", golden.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(KUBEFORGE_UPDATE_GOLDEN=1 rewrites them)",
        failures.join("\n")
    );
    // Every embedded template is covered by a golden file.
    for (name, _) in render::TEMPLATES {
        assert!(
            seen_templates.contains(*name),
            "no golden file covers template {name}"
        );
    }
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("`{name}` is not installed: run scripts/testbed/10-packages.sh (or scripts/test.sh)");
}

/// A scratch directory only root can write to (keepalived refuses scripts in
/// world-writable places such as /tmp).
fn private_dir() -> tempfile::TempDir {
    let base = root().join("target/kubeforge-test");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn existing_interface() -> String {
    let names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    if names.iter().any(|n| n == "eth0") {
        return "eth0".into();
    }
    names
        .into_iter()
        .find(|n| n != "lo")
        .unwrap_or_else(|| "lo".into())
}

#[test]
fn every_haproxy_config_passes_haproxy_check() {
    let haproxy = tool("haproxy");
    let dir = private_dir();
    let mut checked = 0;
    for example in all_examples() {
        let (_, files) = rendered(&example);
        for (_, f) in files
            .iter()
            .filter(|(_, f)| f.path == "/etc/haproxy/haproxy.cfg")
        {
            let path = dir.path().join(format!("{}-{}.cfg", example, f.host));
            std::fs::write(&path, &f.content).unwrap();
            let out = Command::new(&haproxy)
                .arg("-c")
                .arg("-f")
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "haproxy -c rejected {example} {}:\n{}{}",
                f.host,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "checked {checked} configs");
}

#[test]
fn a_broken_haproxy_config_is_caught_by_the_check() {
    // The check above can fail: haproxy really rejects a bad file.
    let haproxy = tool("haproxy");
    let dir = private_dir();
    let (_, files) = rendered("local.yaml");
    let (_, f) = files
        .iter()
        .find(|(_, f)| f.path == "/etc/haproxy/haproxy.cfg")
        .unwrap();
    let path = dir.path().join("broken.cfg");
    std::fs::write(
        &path,
        f.content.replace("balance roundrobin", "balance sometimes"),
    )
    .unwrap();
    let out = Command::new(&haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

fn keepalived_check(conf: &str, script_dir: &Path, name: &str) -> std::process::Output {
    let keepalived = tool("keepalived");
    let script = script_dir.join("check_haproxy.sh");
    let conf = conf
        .replace(
            kubeforge::render::views::CHECK_SCRIPT,
            script.to_str().unwrap(),
        )
        .replace("eth0", &existing_interface());
    let path = script_dir.join(name);
    std::fs::write(&path, conf).unwrap();
    Command::new(keepalived)
        .arg("-t")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn every_keepalived_config_passes_keepalived_check() {
    use std::os::unix::fs::PermissionsExt;
    let dir = private_dir();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut checked = 0;
    for example in all_examples() {
        let (c, files) = rendered(&example);
        for h in c.topology.lb_hosts() {
            let get = |p: &str| {
                files
                    .iter()
                    .find(|(_, f)| f.host == h.name && f.path == p)
                    .map(|(_, f)| f.content.clone())
                    .unwrap_or_else(|| panic!("{example} {}: no {p}", h.name))
            };
            let script = dir.path().join("check_haproxy.sh");
            std::fs::write(&script, get(kubeforge::render::views::CHECK_SCRIPT)).unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            let name = format!("{example}-{}.conf", h.name);
            // Cloud examples name their cloud's interface (ens5, enp7s0, eth1): check
            // against one this machine has.
            let conf = get("/etc/keepalived/keepalived.conf")
                .replace(&c.cluster.spec.load_balancer.interface, "eth0");
            let out = keepalived_check(&conf, dir.path(), &name);
            assert!(
                out.status.success(),
                "keepalived -t rejected {example} {} (rc {:?}):\n{}{}",
                h.name,
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "checked {checked} configs");
    // And the check can fail.
    let (c, files) = rendered("local.yaml");
    let h = &c.topology.lb_hosts()[0].name;
    let (_, conf) = files
        .iter()
        .find(|(_, f)| &f.host == h && f.path == "/etc/keepalived/keepalived.conf")
        .unwrap();
    let out = keepalived_check(
        &conf.content.replace("priority 150", "priority banana"),
        dir.path(),
        "broken.conf",
    );
    assert!(
        !out.status.success(),
        "keepalived -t accepted an invalid priority"
    );
}

#[test]
fn keepalived_peers_and_priorities() {
    let (c, files) = rendered("baremetal.yaml");
    let lbs = c.topology.lb_hosts();
    assert_eq!(lbs.len(), 3);
    for (i, h) in lbs.iter().enumerate() {
        let conf = &files
            .iter()
            .find(|(_, f)| f.host == h.name && f.path == "/etc/keepalived/keepalived.conf")
            .unwrap()
            .1
            .content;
        assert!(
            conf.contains(&format!("priority {}", 150 - 10 * i)),
            "{conf}"
        );
        assert!(conf.contains(&format!("unicast_src_ip {}", h.internal_address)));
        for other in lbs.iter().filter(|o| o.name != h.name) {
            assert!(
                conf.contains(&format!("        {}\n", other.internal_address)),
                "{conf}"
            );
        }
        assert!(conf.contains("10.10.0.10/24 dev eth0"));
    }
}

#[test]
fn haproxy_backends_are_the_control_plane_nodes() {
    let (c, files) = rendered("baremetal.yaml");
    let cfg = &files
        .iter()
        .find(|(_, f)| f.path == "/etc/haproxy/haproxy.cfg")
        .unwrap()
        .1
        .content;
    assert!(cfg.contains("bind *:6443"));
    for cp in c.topology.control_planes() {
        assert!(
            cfg.contains(&format!(
                "server {} {}:6443 check check-ssl verify none",
                cp.name, cp.internal_address
            )),
            "{cfg}"
        );
    }
    assert!(cfg.contains("http-check send meth GET uri /readyz"));
    assert!(cfg.contains("stats socket /run/haproxy/admin.sock"));
    // HAProxy on the control-plane nodes listens on its own port.
    let (_, files) = rendered("rook-ceph.yaml");
    let cfg = &files
        .iter()
        .find(|(_, f)| f.path == "/etc/haproxy/haproxy.cfg")
        .unwrap()
        .1
        .content;
    assert!(cfg.contains("bind *:8443"));
    assert!(cfg.contains(":6443 check"));
}

fn docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

/// kubeletExtraArgs is a map before v1beta4 and a list of {name, value} from it on.
fn extra_arg(v: &Value, path: &str, api: &str, name: &str) -> String {
    let args = get(v, path);
    if api == "v1beta4" {
        let list = args.as_sequence().expect("a list in v1beta4");
        list.iter()
            .find(|a| a["name"].as_str() == Some(name))
            .and_then(|a| a["value"].as_str())
            .unwrap_or_else(|| panic!("no {name} in {args:?}"))
            .to_string()
    } else {
        args[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {args:?}"))
            .to_string()
    }
}

#[test]
fn kubeadm_configs_parse_back_field_by_field() {
    for example in all_examples() {
        let (c, files) = rendered(&example);
        let api = render::kubeadm_api_version(&c.version());
        let group = format!("kubeadm.k8s.io/{api}");
        let endpoint = c.topology.endpoint.address();
        let first = c.topology.first_control_plane().unwrap().name.clone();
        let spec = &c.cluster.spec;
        for h in c.topology.kubernetes_nodes() {
            let is_first = h.name == first;
            let path = if is_first {
                "/etc/kubeforge/kubeadm-init.yaml"
            } else {
                "/etc/kubeforge/kubeadm-join.yaml"
            };
            let f = &files
                .iter()
                .find(|(g, f)| *g == FileGroup::Kubeadm && f.host == h.name && f.path == path)
                .unwrap_or_else(|| panic!("{example} {}: no {path}", h.name))
                .1;
            assert!(f.sensitive && f.mode == 0o600, "kubeadm files hold secrets");
            let d = docs(&f.content);
            let cri = s(&d[0], "nodeRegistration.criSocket");
            if api == "v1beta2" {
                assert_eq!(cri, "/run/containerd/containerd.sock");
            } else {
                assert_eq!(cri, "unix:///run/containerd/containerd.sock");
            }
            assert_eq!(s(&d[0], "nodeRegistration.name"), h.name);
            assert_eq!(
                extra_arg(&d[0], "nodeRegistration.kubeletExtraArgs", api, "node-ip"),
                h.internal_address.to_string()
            );
            // The node's pool (and inventory) labels, set by kubelet at registration.
            let want: Vec<String> = h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let args = get(&d[0], "nodeRegistration.kubeletExtraArgs");
            let has_labels = if api == "v1beta4" {
                args.as_sequence()
                    .unwrap()
                    .iter()
                    .any(|a| a["name"].as_str() == Some("node-labels"))
            } else {
                !args["node-labels"].is_null()
            };
            if want.is_empty() {
                assert!(!has_labels, "{example} {}: no labels, no flag", h.name);
            } else {
                assert_eq!(
                    extra_arg(
                        &d[0],
                        "nodeRegistration.kubeletExtraArgs",
                        api,
                        "node-labels"
                    ),
                    want.join(","),
                    "{example} {}",
                    h.name
                );
            }
            if is_first {
                assert_eq!(d.len(), 4, "{example}: init, cluster, kubelet, kube-proxy");
                assert_eq!(s(&d[0], "apiVersion"), group);
                assert_eq!(s(&d[0], "kind"), "InitConfiguration");
                assert_eq!(s(&d[0], "bootstrapTokens.0.token"), TOKEN);
                assert_eq!(s(&d[0], "certificateKey"), CERT_KEY);
                assert_eq!(
                    s(&d[0], "localAPIEndpoint.advertiseAddress"),
                    h.internal_address.to_string()
                );
                assert_eq!(
                    get(&d[0], "localAPIEndpoint.bindPort").as_u64(),
                    Some(spec.networking.api_server_port.into())
                );
                assert_eq!(s(&d[1], "apiVersion"), group);
                assert_eq!(s(&d[1], "kind"), "ClusterConfiguration");
                assert_eq!(s(&d[1], "kubernetesVersion"), format!("v{}", c.version()));
                assert_eq!(s(&d[1], "controlPlaneEndpoint"), endpoint);
                assert_eq!(s(&d[1], "clusterName"), c.name());
                assert_eq!(s(&d[1], "networking.podSubnet"), spec.networking.pod_subnet);
                assert_eq!(
                    s(&d[1], "networking.serviceSubnet"),
                    spec.networking.service_subnet
                );
                assert_eq!(s(&d[1], "networking.dnsDomain"), spec.networking.dns_domain);
                let sans: Vec<&str> = get(&d[1], "apiServer.certSANs")
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                assert!(
                    sans.contains(&c.topology.endpoint.host().as_str()),
                    "{sans:?}"
                );
                for cp in c.topology.control_planes() {
                    assert!(sans.contains(&cp.internal_address.to_string().as_str()));
                }
                for extra in &spec.load_balancer.cert_sans {
                    assert!(sans.contains(&extra.as_str()));
                }
                let repo = s(&d[1], "imageRepository");
                assert_eq!(
                    repo,
                    if c.version().minor < 25 {
                        "k8s.gcr.io"
                    } else {
                        "registry.k8s.io"
                    }
                );
                assert_eq!(s(&d[1], "etcd.local.dataDir"), "/var/lib/etcd");
                // kubeforge's bridge CNI hands out pod CIDRs itself.
                let cm = get(&d[1], "controllerManager.extraArgs");
                let allocate = if api == "v1beta4" {
                    cm[0]["value"].as_str().map(str::to_string)
                } else {
                    cm["allocate-node-cidrs"].as_str().map(str::to_string)
                };
                assert_eq!(allocate.as_deref(), Some("false"), "{example}");
                assert_eq!(s(&d[2], "kind"), "KubeletConfiguration");
                let container = matches!(spec.provider, spec::Provider::Docker(_));
                assert_eq!(
                    s(&d[2], "cgroupDriver"),
                    if container { "cgroupfs" } else { "systemd" }
                );
                assert_eq!(get(&d[2], "failSwapOn").as_bool(), Some(!container));
                assert_eq!(s(&d[3], "kind"), "KubeProxyConfiguration");
                assert_eq!(s(&d[3], "clusterCIDR"), spec.networking.pod_subnet);
                assert_eq!(
                    get(&d[3], "conntrack.maxPerCore").as_u64(),
                    container.then_some(0)
                );
            } else {
                assert_eq!(d.len(), 1);
                assert_eq!(s(&d[0], "apiVersion"), group);
                assert_eq!(s(&d[0], "kind"), "JoinConfiguration");
                assert_eq!(
                    s(&d[0], "discovery.bootstrapToken.apiServerEndpoint"),
                    endpoint
                );
                assert_eq!(s(&d[0], "discovery.bootstrapToken.token"), TOKEN);
                assert_eq!(s(&d[0], "discovery.bootstrapToken.caCertHashes.0"), CA_HASH);
                if h.has(Role::ControlPlane) {
                    assert_eq!(s(&d[0], "controlPlane.certificateKey"), CERT_KEY);
                    assert_eq!(
                        s(&d[0], "controlPlane.localAPIEndpoint.advertiseAddress"),
                        h.internal_address.to_string()
                    );
                } else {
                    assert!(
                        get(&d[0], "controlPlane").is_null(),
                        "workers join without controlPlane"
                    );
                    assert!(
                        !f.content.contains(CERT_KEY),
                        "workers never get the certificate key"
                    );
                }
            }
        }
    }
}

#[test]
fn containerd_config_is_valid_toml_with_the_expected_settings() {
    for example in all_examples() {
        let (c, files) = rendered(&example);
        let container = matches!(c.cluster.spec.provider, spec::Provider::Docker(_));
        for (_, f) in files
            .iter()
            .filter(|(_, f)| f.path == "/etc/containerd/config.toml")
        {
            let t: toml::Table =
                toml::from_str(&f.content).unwrap_or_else(|e| panic!("{example}: {e}"));
            assert_eq!(t["version"].as_integer(), Some(2));
            let cri = &t["plugins"]["io.containerd.grpc.v1.cri"];
            let sandbox = cri["sandbox_image"].as_str().unwrap();
            if c.version().minor == 20 {
                assert_eq!(sandbox, "k8s.gcr.io/pause:3.2");
            }
            assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(container));
            let runc = &cri["containerd"]["runtimes"]["runc"];
            assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
            assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(!container));
            assert_eq!(
                cri["cni"]["bin_dir"].as_str(),
                Some(if container {
                    "/usr/lib/cni"
                } else {
                    "/opt/cni/bin"
                })
            );
        }
    }
}

#[test]
fn cni_config_gives_each_node_its_own_pod_cidr() {
    let (c, files) = rendered("local.yaml");
    let mut cidrs = Vec::new();
    for h in c.topology.kubernetes_nodes() {
        let f = &files
            .iter()
            .find(|(_, f)| {
                f.host == h.name && f.path == "/etc/kubeforge/podnet/10-kubeforge.conflist.in"
            })
            .unwrap()
            .1;
        // The pod network script fills in the MTU it derives from the node's interface.
        assert!(f.content.contains(r#""mtu": @MTU@,"#), "{}", f.content);
        let v: serde_json::Value =
            serde_json::from_str(&f.content.replace("@MTU@", "1450")).unwrap();
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][0]["mtu"], 1450);
        // Pod addresses stay visible to other nodes' pods: the script masquerades only
        // traffic leaving the pod subnet.
        assert_eq!(v["plugins"][0]["ipMasq"], false);
        let subnet = v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
            .as_str()
            .unwrap()
            .to_string();
        cidrs.push(subnet);
    }
    assert_eq!(
        cidrs,
        [
            "10.244.0.0/24",
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.3.0/24",
            "10.244.4.0/24"
        ]
    );
    // Every node's overlay script knows every other node: its address, its /24, and its
    // VTEP address and MAC (distinct per node), and not itself.
    let nodes = c.topology.kubernetes_nodes();
    for h in &nodes {
        let script = &files
            .iter()
            .find(|(_, f)| f.host == h.name && f.path == "/usr/local/lib/kubeforge/podnet.sh")
            .unwrap()
            .1;
        assert_eq!(script.mode, 0o755);
        let own = cidrs[nodes.iter().position(|n| n.name == h.name).unwrap()].clone();
        assert!(script
            .content
            .contains(&format!("NODE_IP={}\n", h.internal_address)));
        assert!(script
            .content
            .contains(&format!("VTEP={}\n", own.trim_end_matches("/24"))));
        let peers: Vec<&str> = script
            .content
            .split("PEERS='\n")
            .nth(1)
            .unwrap()
            .split("\n'")
            .next()
            .unwrap()
            .lines()
            .collect();
        assert_eq!(peers.len(), nodes.len() - 1, "{peers:?}");
        for (o, cidr) in nodes.iter().zip(&cidrs) {
            if o.name == h.name {
                assert!(peers
                    .iter()
                    .all(|p| !p.starts_with(&format!("{} ", o.name))));
                continue;
            }
            let net = cidr.trim_end_matches("/24");
            let octets: Vec<u8> = net.split('.').map(|x| x.parse().unwrap()).collect();
            let mac = format!(
                "0e:6b:{:02x}:{:02x}:{:02x}:{:02x}",
                octets[0], octets[1], octets[2], octets[3]
            );
            let want = format!("{} {} {cidr} {net} {mac}", o.name, o.internal_address);
            assert!(peers.contains(&want.as_str()), "{want} not in {peers:?}");
        }
        let unit = &files
            .iter()
            .find(|(_, f)| {
                f.host == h.name && f.path == "/etc/systemd/system/kubeforge-podnet.service"
            })
            .unwrap()
            .1;
        assert!(unit
            .content
            .contains("ExecStart=/usr/local/lib/kubeforge/podnet.sh\n"));
    }
    // Load-balancer nodes run no kubelet and get no node files.
    for h in c.topology.lb_hosts() {
        assert!(files
            .iter()
            .all(|(g, f)| f.host != h.name || *g == FileGroup::LoadBalancer));
    }
}

#[test]
fn the_etcd_patch_is_rendered_only_where_it_is_needed() {
    let (_, files) = rendered("local.yaml");
    let patches: Vec<_> = files
        .iter()
        .filter(|(_, f)| f.path.ends_with("etcd+json.yaml"))
        .collect();
    assert_eq!(
        patches.len(),
        3,
        "one per control-plane node on 1.20 in container machines"
    );
    let ops: Value = serde_yaml_ng::from_str(&patches[0].1.content).unwrap();
    assert_eq!(ops[0]["op"], "remove");
    assert_eq!(
        ops[0]["path"],
        "/spec/containers/0/resources/requests/ephemeral-storage"
    );
    for example in ["baremetal.yaml", "metallb-bgp.yaml"] {
        let (_, files) = rendered(example);
        assert!(
            files
                .iter()
                .all(|(_, f)| !f.path.ends_with("etcd+json.yaml")),
            "{example}"
        );
    }
}

#[test]
fn kubeadm_api_version_follows_the_kubernetes_version() {
    let v = |s: &str| semver::Version::parse(s).unwrap();
    assert_eq!(render::kubeadm_api_version(&v("1.20.2")), "v1beta2");
    assert_eq!(render::kubeadm_api_version(&v("1.21.14")), "v1beta2");
    assert_eq!(render::kubeadm_api_version(&v("1.22.0")), "v1beta3");
    assert_eq!(render::kubeadm_api_version(&v("1.30.9")), "v1beta3");
    assert_eq!(render::kubeadm_api_version(&v("1.31.0")), "v1beta4");
    assert_eq!(render::kubeadm_api_version(&v("1.34.1")), "v1beta4");
}

/// Pool labels reach every node of the pool through kubelet's --node-labels, in init
/// and join configs of every API version (issue 15, item 12).
#[test]
fn pool_labels_become_node_labels() {
    let mut versions = std::collections::BTreeSet::new();
    for (example, label) in [
        ("local.yaml", "kubeforge.dev/pool=workers"),
        ("metallb-bgp.yaml", "kubeforge.dev/pool=workers"),
        ("rook-ceph.yaml", "kubeforge.dev/storage=ceph"),
        ("baremetal.yaml", "kubeforge.dev/storage=ceph"),
    ] {
        let (c, files) = rendered(example);
        versions.insert(render::kubeadm_api_version(&c.version()));
        let workers = c.topology.workers();
        assert!(!workers.is_empty(), "{example}");
        for w in workers {
            let f = files
                .iter()
                .find(|(_, f)| f.host == w.name && f.path == "/etc/kubeforge/kubeadm-join.yaml")
                .unwrap();
            assert!(
                f.1.content.contains(label),
                "{example} {}:\n{}",
                w.name,
                f.1.content
            );
        }
        for cp in c.topology.control_planes() {
            let f = files
                .iter()
                .find(|(g, f)| *g == FileGroup::Kubeadm && f.host == cp.name)
                .unwrap();
            assert!(
                !f.1.content.contains("node-labels"),
                "{example} {}",
                cp.name
            );
        }
    }
    assert_eq!(versions.len(), 3, "{versions:?}");
}

/// Labels of the control-plane pool reach `kubeadm init` too, for every API version.
#[test]
fn control_plane_labels_reach_the_init_config_of_every_api_version() {
    for (version, api) in [
        ("v1.20.2", "v1beta2"),
        ("v1.28.4", "v1beta3"),
        ("v1.31.4", "v1beta4"),
    ] {
        let text = format!(
            "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {{name: lab}}\nspec:\n  kubernetesVersion: {version}\n  provider: {{docker: {{}}}}\n  nodePools:\n    controlPlane: {{count: 1, labels: {{example.com/tier: cp, node.kubernetes.io/exclude-from-external-load-balancers: ''}}}}\n    workers: {{count: 1}}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let c = spec::load_str(&text, Path::new("c.yaml"), dir.path()).unwrap();
        let files = render::render_all(&c, &secrets()).unwrap();
        let init = &files
            .iter()
            .find(|(_, f)| f.path == "/etc/kubeforge/kubeadm-init.yaml")
            .unwrap()
            .1;
        let d = docs(&init.content);
        assert_eq!(
            extra_arg(
                &d[0],
                "nodeRegistration.kubeletExtraArgs",
                api,
                "node-labels"
            ),
            "example.com/tier=cp,node.kubernetes.io/exclude-from-external-load-balancers=",
            "{version}"
        );
        let join = &files
            .iter()
            .find(|(_, f)| f.path == "/etc/kubeforge/kubeadm-join.yaml")
            .unwrap()
            .1;
        assert!(
            !join.content.contains("node-labels"),
            "the worker pool has none"
        );
    }
}
