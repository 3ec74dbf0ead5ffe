//! Property tests over the whole cluster file and inventory (issue 15, item 2): an
//! arbitrary string in any string field (or label key) is either refused with a
//! positioned error, or, when accepted, never reaches a planned command outside shell
//! quoting and never breaks out of a line of a rendered config file. The loader never
//! panics on arbitrary bytes.

use kubeforge::render::{self, Secrets};
use kubeforge::spec::{load_str, SpecErrors};
use kubeforge::transport::shell::quote;
use proptest::prelude::*;
use serde_yaml_ng::{Mapping, Value};
use std::path::Path;

const DOCKER: &str = r#"
apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {name: fz}
spec:
  kubernetesVersion: v1.32.4
  provider: {docker: {subnet: 172.29.20.0/24, image: "kubeforge/node:1", network: fz}}
  nodePools:
    controlPlane: {count: 3, labels: {example.com/cp: "yes"}}
    workers: {count: 2, labels: {example.com/tier: web}, extraDisks: [10G]}
    loadBalancers: {count: 2}
  networking: {podSubnet: 10.244.0.0/16, serviceSubnet: 10.96.0.0/12, dnsDomain: cluster.local}
  loadBalancer: {vip: 172.29.20.254, interface: eth0, certSans: [api.example.com]}
  ssh: {user: root, bastion: {host: jump.example.com, user: jump}}
  artifacts: {imageRepository: registry.example.com/k8s, mirror: /srv/mirror}
  kubeadm: {skipPhases: [preflight, addon/coredns], ignorePreflightErrors: [Swap]}
  addons:
    metallb:
      pools: [{name: p, addresses: [192.168.50.0/28]}]
      interfaces: [eth0]
    ingress: {pool: p, loadBalancerIp: 192.168.50.5}
    rookCeph:
      deviceFilter: "^sd[b-d]"
      dataDirHostPath: /var/lib/rook
      nodes: [{name: fz-worker-1, devices: [sdb]}]
"#;

const STATIC: &str = r#"
apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {name: fs}
spec:
  kubernetesVersion: v1.31.4
  provider: {static: {inventory: hosts.yaml}}
  ssh: {user: debian, keyFile: id}
  networking: {nodeSubnet: 10.0.0.0/24}
  loadBalancer: {type: external, endpoint: "api.example.com:6443", certSans: [10.0.0.200]}
"#;

const INVENTORY: &str = r#"
apiVersion: kubeforge.dev/v1alpha1
kind: Inventory
hosts:
  - {name: m1, address: 10.0.0.11, roles: [controlPlane], sshUser: debian}
  - {name: m2, address: 10.0.0.12, internalAddress: 10.0.0.112, roles: [controlPlane]}
  - {name: m3, address: 10.0.0.13, roles: [controlPlane]}
  - {name: w1, address: 10.0.0.21, roles: [worker], labels: {example.com/disk: ssd}}
"#;

/// Where an arbitrary string goes: a value at a path, or the key of a mapping entry.
#[derive(Debug, Clone, Copy)]
enum Target {
    Docker(&'static str),
    DockerKey(&'static str),
    Static(&'static str),
    Inventory(&'static str),
    InventoryKey(&'static str),
}

/// Every string field of the two clusters and the inventory.
const TARGETS: &[Target] = &[
    Target::Docker("metadata.name"),
    Target::Docker("spec.kubernetesVersion"),
    Target::Docker("spec.provider.docker.subnet"),
    Target::Docker("spec.provider.docker.image"),
    Target::Docker("spec.provider.docker.network"),
    Target::Docker("spec.nodePools.controlPlane.labels.example.com/cp"),
    Target::DockerKey("spec.nodePools.controlPlane.labels.example.com/cp"),
    Target::Docker("spec.nodePools.workers.labels.example.com/tier"),
    Target::DockerKey("spec.nodePools.workers.labels.example.com/tier"),
    Target::Docker("spec.nodePools.workers.extraDisks.0"),
    Target::Docker("spec.networking.podSubnet"),
    Target::Docker("spec.networking.serviceSubnet"),
    Target::Docker("spec.networking.dnsDomain"),
    Target::Docker("spec.loadBalancer.vip"),
    Target::Docker("spec.loadBalancer.interface"),
    Target::Docker("spec.loadBalancer.certSans.0"),
    Target::Docker("spec.ssh.user"),
    Target::Docker("spec.ssh.bastion.host"),
    Target::Docker("spec.ssh.bastion.user"),
    Target::Docker("spec.artifacts.imageRepository"),
    Target::Docker("spec.artifacts.mirror"),
    Target::Docker("spec.kubeadm.skipPhases.0"),
    Target::Docker("spec.kubeadm.skipPhases.1"),
    Target::Docker("spec.kubeadm.ignorePreflightErrors.0"),
    Target::Docker("spec.addons.metallb.pools.0.name"),
    Target::Docker("spec.addons.metallb.pools.0.addresses.0"),
    Target::Docker("spec.addons.metallb.interfaces.0"),
    Target::Docker("spec.addons.ingress.pool"),
    Target::Docker("spec.addons.ingress.loadBalancerIp"),
    Target::Docker("spec.addons.rookCeph.deviceFilter"),
    Target::Docker("spec.addons.rookCeph.dataDirHostPath"),
    Target::Docker("spec.addons.rookCeph.nodes.0.name"),
    Target::Docker("spec.addons.rookCeph.nodes.0.devices.0"),
    Target::Static("spec.kubernetesVersion"),
    Target::Static("spec.networking.nodeSubnet"),
    Target::Static("spec.loadBalancer.endpoint"),
    Target::Static("spec.loadBalancer.certSans.0"),
    Target::Static("spec.ssh.user"),
    Target::Inventory("hosts.0.name"),
    Target::Inventory("hosts.0.address"),
    Target::Inventory("hosts.0.sshUser"),
    Target::Inventory("hosts.1.internalAddress"),
    Target::Inventory("hosts.3.name"),
    Target::Inventory("hosts.3.labels.example.com/disk"),
    Target::InventoryKey("hosts.3.labels.example.com/disk"),
];

/// The node at `path` (`a.b.0.c`; a key may hold dots after the first segment that
/// names an existing key, e.g. `labels.example.com/cp`).
fn node<'a>(v: &'a mut Value, path: &str) -> (&'a mut Value, String) {
    let mut cur = v;
    let mut rest = path;
    loop {
        let (seg, tail) = match cur {
            Value::Mapping(m) => {
                // The longest key of this mapping that `rest` starts with.
                let key = m
                    .keys()
                    .filter_map(Value::as_str)
                    .filter(|k| rest == *k || rest.starts_with(&format!("{k}.")))
                    .max_by_key(|k| k.len())
                    .unwrap_or_else(|| panic!("no key for {rest}"))
                    .to_string();
                let tail = rest[key.len()..].trim_start_matches('.').to_string();
                (key, tail)
            }
            _ => {
                let (i, t) = rest.split_once('.').unwrap_or((rest, ""));
                (i.to_string(), t.to_string())
            }
        };
        if tail.is_empty() {
            return (cur, seg);
        }
        cur = match cur {
            Value::Mapping(m) => m.get_mut(seg.as_str()).unwrap(),
            Value::Sequence(s) => &mut s[seg.parse::<usize>().unwrap()],
            _ => panic!("{path}"),
        };
        rest = Box::leak(tail.into_boxed_str());
    }
}

fn set(doc: &mut Value, path: &str, s: &str, key: bool) {
    let (parent, last) = node(doc, path);
    match parent {
        Value::Mapping(m) if key => {
            let v = m.remove(last.as_str()).unwrap();
            let mut out = Mapping::new();
            out.insert(Value::String(s.to_string()), v);
            // keep the other entries
            for (k, v) in m.iter() {
                out.insert(k.clone(), v.clone());
            }
            *m = out;
        }
        Value::Mapping(m) => {
            m.insert(Value::String(last), Value::String(s.to_string()));
        }
        Value::Sequence(q) => q[last.parse::<usize>().unwrap()] = Value::String(s.to_string()),
        _ => panic!("{path}"),
    }
}

fn secrets() -> Secrets {
    Secrets {
        bootstrap_token: "abcdef.0123456789abcdef".into(),
        certificate_key: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
        ca_cert_hash: Some(
            "sha256:8f1f2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
        ),
    }
}

/// Characters that mean nothing special to `sh` (what `quote` leaves bare).
fn shell_inert(s: &str) -> bool {
    quote(s) == s
}

/// Characters that cannot end a token or a line in the config formats rendered
/// (YAML, TOML, JSON, keepalived, HAProxy, systemd units).
fn config_inert(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@+,=*-".contains(&b))
}

/// Byte ranges of `cmd` inside single quotes.
fn single_quoted(cmd: &str) -> Vec<bool> {
    let mut out = vec![false; cmd.len()];
    let (mut in_sq, mut in_dq, mut esc) = (false, false, false);
    for (i, b) in cmd.bytes().enumerate() {
        if in_sq {
            if b == b'\'' {
                in_sq = false;
            } else {
                out[i] = true;
            }
            continue;
        }
        if esc {
            esc = false;
            continue;
        }
        match b {
            b'\\' => esc = true,
            b'"' => in_dq = !in_dq,
            b'\'' if !in_dq => in_sq = true,
            _ => {}
        }
    }
    out
}

/// Where `value` stands in `cmd` outside single quotes, when it is not inert there.
fn unquoted_use(cmd: &str, value: &str) -> bool {
    if value.is_empty() || shell_inert(value) {
        return false;
    }
    let sq = single_quoted(cmd);
    cmd.match_indices(value)
        .any(|(i, m)| (i..i + m.len()).any(|j| !sq[j]))
}

/// Every command and file of the unchanged documents: a value found there already
/// (`" "`, `-a`, `eth0`) cannot be told apart from the text around it, and is not
/// looked for.
fn baseline() -> &'static (Vec<String>, Vec<String>) {
    static B: std::sync::OnceLock<(Vec<String>, Vec<String>)> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let mut cmds = Vec::new();
        let mut files = Vec::new();
        for (c, i) in [
            mutate(Target::Docker("spec.ssh.user"), "root"),
            mutate(Target::Static("spec.ssh.user"), "debian"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("hosts.yaml"), &i).unwrap();
            let l = load_str(&c, Path::new("cluster.yaml"), dir.path()).unwrap();
            let plan = kubeforge::ops::plan::build(&l, &secrets(), None).unwrap();
            for p in &plan.phases {
                for st in p
                    .operator
                    .iter()
                    .chain(p.hosts.iter().flat_map(|h| h.commands.iter()))
                {
                    cmds.extend(st.run.iter().chain(st.check.iter()).cloned());
                }
            }
            files.extend(
                render::render_all(&l, &secrets())
                    .unwrap()
                    .into_iter()
                    .map(|(_, f)| f.content),
            );
        }
        (cmds, files)
    })
}

/// Load the cluster text (and inventory) and either check every error is positioned,
/// or plan and render and check where `value` went.
fn check(cluster: &str, inventory: &str, value: &str) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yaml"), inventory).unwrap();
    let loaded = match load_str(cluster, Path::new("cluster.yaml"), dir.path()) {
        Err(SpecErrors { errors }) => {
            prop_assert!(!errors.is_empty());
            for e in &errors {
                prop_assert!(
                    e.line.is_some() && e.column.is_some(),
                    "an error without a position for {value:?}: {e}"
                );
            }
            return Ok(());
        }
        Ok(l) => l,
    };
    let plan = kubeforge::ops::plan::build(&loaded, &secrets(), None)
        .map_err(|e| TestCaseError::fail(format!("plan of {value:?}: {e}")))?;
    let (base_cmds, base_files) = baseline();
    let in_base_cmds = base_cmds.iter().any(|c| c.contains(value));
    let in_base_files = base_files.iter().any(|c| c.contains(value));
    for phase in plan.phases.iter().filter(|_| !in_base_cmds) {
        let steps = phase
            .operator
            .iter()
            .chain(phase.hosts.iter().flat_map(|h| h.commands.iter()));
        for step in steps {
            for cmd in [&step.run, &step.check].into_iter().flatten() {
                prop_assert!(
                    !unquoted_use(cmd, value),
                    "accepted value {value:?} stands unquoted in the command `{cmd}`"
                );
            }
        }
    }
    let files = render::render_all(&loaded, &secrets()).unwrap();
    let json = serde_json::to_string(value).unwrap();
    for (_, f) in &files {
        if in_base_files || value.is_empty() || config_inert(value) || !f.content.contains(value) {
            continue;
        }
        // Where a value with special characters appears, it is a JSON/YAML string.
        for (i, _) in f.content.match_indices(value) {
            let encoded = f.content.match_indices(&json).any(|(j, _)| j + 1 == i);
            prop_assert!(
                encoded,
                "accepted value {value:?} stands raw in {} of {}:\n{}",
                f.path,
                f.host,
                f.content
            );
        }
    }
    Ok(())
}

fn mutate(target: Target, s: &str) -> (String, String) {
    let mut docker: Value = serde_yaml_ng::from_str(DOCKER).unwrap();
    let mut static_: Value = serde_yaml_ng::from_str(STATIC).unwrap();
    let mut inv: Value = serde_yaml_ng::from_str(INVENTORY).unwrap();
    let cluster = match target {
        Target::Docker(p) => {
            set(&mut docker, p, s, false);
            &docker
        }
        Target::DockerKey(p) => {
            set(&mut docker, p, s, true);
            &docker
        }
        Target::Static(p) => {
            set(&mut static_, p, s, false);
            &static_
        }
        Target::Inventory(p) => {
            set(&mut inv, p, s, false);
            &static_
        }
        Target::InventoryKey(p) => {
            set(&mut inv, p, s, true);
            &static_
        }
    };
    (
        serde_yaml_ng::to_string(cluster).unwrap(),
        serde_yaml_ng::to_string(&inv).unwrap(),
    )
}

/// The value (or key) the target holds in the unchanged documents.
fn base_value(target: Target) -> String {
    let (doc, path, key) = match target {
        Target::Docker(p) => (DOCKER, p, false),
        Target::DockerKey(p) => (DOCKER, p, true),
        Target::Static(p) => (STATIC, p, false),
        Target::Inventory(p) => (INVENTORY, p, false),
        Target::InventoryKey(p) => (INVENTORY, p, true),
    };
    let mut v: Value = serde_yaml_ng::from_str(doc).unwrap();
    let (parent, last) = node(&mut v, path);
    if key {
        return last;
    }
    match parent {
        Value::Mapping(m) => m[last.as_str()].as_str().unwrap_or_default().to_string(),
        Value::Sequence(q) => q[last.parse::<usize>().unwrap()]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

/// The target's own value with a few characters changed or added: mostly still valid,
/// so that the accepted side of the property is exercised too.
fn near(target: Target) -> impl Strategy<Value = String> {
    let base = base_value(target);
    (
        0..=base.len(),
        "[a-z0-9./_:-]{0,3}",
        "[ ;|&$`'\"\\\n#{}a-z0-9.-]{0,1}",
    )
        .prop_map(move |(cut, add, meta)| {
            let cut = (0..=cut)
                .rev()
                .find(|i| base.is_char_boundary(*i))
                .unwrap_or(0);
            format!("{}{add}{meta}{}", &base[..cut], &base[cut..])
        })
}

/// Strings worth trying: shell and config metacharacters around plausible values,
/// and anything at all.
fn hostile() -> impl Strategy<Value = String> {
    let plausible = prop::sample::select(vec![
        "eth0",
        "preflight",
        "addon/coredns",
        "registry.k8s.io",
        "10.0.0.1",
        "api.example.com",
        "root",
        "example.com/x",
        "/var/lib/rook",
        "sdb",
        "Swap",
        "",
    ]);
    let meta = "[ ;|&$`'\"\\\\\\n\\r\\t#{}()<>*?!=,.:/_@%+a-z0-9A-Z-]{0,12}";
    prop_oneof![
        4 => (plausible.clone(), meta, plausible).prop_map(|(a, m, b)| format!("{a}{m}{b}")),
        2 => meta.prop_map(String::from),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_string_in_any_field_is_refused_or_inert(
        (target, s) in prop::sample::select(TARGETS.to_vec()).prop_flat_map(|t| {
            (Just(t), prop_oneof![1 => hostile(), 1 => near(t)])
        }),
    ) {
        let (cluster, inventory) = mutate(target, &s);
        check(&cluster, &inventory, &s)?;
    }

    #[test]
    fn the_loader_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let dir = tempfile::tempdir().unwrap();
        let _ = load_str(&text, Path::new("cluster.yaml"), dir.path());
        let _ = kubeforge::spec::inventory::parse(&text, Path::new("hosts.yaml"), &Default::default());
        let _ = kubeforge::spec::inventory::parse(&text, Path::new("hosts.ini"), &Default::default());
    }

    #[test]
    fn the_loader_never_panics_on_yaml_shaped_noise(
        lines in prop::collection::vec(
            "( {0,6})(apiVersion|kind|spec|provider|docker|static|nodePools|workers|count|labels|loadBalancer|- |&a |\\*a|!!str |\\? |[a-z]{1,5})(: |:|)([\\[\\]{}\"',0-9a-z.:/-]{0,10})",
            0..30,
        )
    ) {
        let text = format!("apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\n{}", lines.join("\n"));
        let dir = tempfile::tempdir().unwrap();
        let _ = load_str(&text, Path::new("cluster.yaml"), dir.path());
    }
}

/// The checker itself: a value standing raw in a command or a config line is caught.
#[test]
fn the_checks_catch_what_they_look_for() {
    assert!(unquoted_use("kubeadm init --skip-phases=a;b", "a;b"));
    assert!(!unquoted_use("kubeadm init --skip-phases='a;b'", "a;b"));
    assert!(unquoted_use("echo \"$(x)\"", "$(x)"));
    assert!(!unquoted_use("kubeadm init", "preflight"));
    // Base documents are valid, so the property tests accepted inputs too.
    for (c, i) in [
        mutate(Target::Docker("spec.ssh.user"), "root"),
        mutate(Target::Static("spec.ssh.user"), "debian"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts.yaml"), &i).unwrap();
        if let Err(e) = load_str(&c, Path::new("cluster.yaml"), dir.path()) {
            panic!("{e}\n{c}");
        }
    }
}
