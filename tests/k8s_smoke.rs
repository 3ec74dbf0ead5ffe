//! Real Kubernetes on one docker machine: kubeforge fetches v1.20.2 from the test bed's
//! mirror (sha256-verified), installs binaries and control-plane images over SSH
//! (`artifacts::install_on`), writes the rendered node files for a 1-control-plane
//! cluster, runs `kubeadm init --skip-phases=preflight,addon/coredns`, and the cluster
//! must answer /readyz and report its node Ready with the bridge CNI, with every
//! kube-system pod (etcd, apiserver, controller-manager, scheduler, kube-proxy) Running.
//!
//! Docker, the node image and the mirror are REQUIRED (the test fails naming the script
//! that provides each). kubelet changes a few host-wide sysctls (the machines share the
//! VM's kernel); they are saved before and restored after.

mod common_docker;
mod common_k8s;

use common_docker::{run, with_cluster};
use kubeforge::artifacts::{self, Cache, Catalogue, Source};
use kubeforge::provider::MachineRole;
use kubeforge::render::{render_all, FileGroup, Secrets};
use kubeforge::transport::{SshSession, Transport, UploadTarget};
use std::path::Path;
use std::time::{Duration, Instant};

/// Host-wide sysctls kubelet sets (TESTBED.md), restored on drop (also on panic).
struct SavedSysctls(Vec<(String, String)>);

const HOST_SYSCTLS: [&str; 3] = [
    "vm/overcommit_memory",
    "kernel/panic",
    "kernel/panic_on_oops",
];

impl SavedSysctls {
    fn save() -> SavedSysctls {
        SavedSysctls(
            HOST_SYSCTLS
                .iter()
                .map(|k| {
                    let v = std::fs::read_to_string(format!("/proc/sys/{k}"))
                        .unwrap_or_else(|e| panic!("cannot read /proc/sys/{k}: {e}"));
                    (k.to_string(), v.trim().to_string())
                })
                .collect(),
        )
    }
}

impl Drop for SavedSysctls {
    fn drop(&mut self) {
        for (k, v) in &self.0 {
            let path = format!("/proc/sys/{k}");
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != v {
                eprintln!("restoring host sysctl {k}: {} -> {v}", now.trim());
                if let Err(e) = std::fs::write(&path, v) {
                    eprintln!("warning: cannot restore {path}: {e}");
                }
            }
        }
    }
}

async fn sh(s: &SshSession, cmd: &str) -> String {
    let out = s
        .exec_checked(cmd)
        .await
        .unwrap_or_else(|e| panic!("{}", kubeforge::error::render_chain(&e)));
    out.stdout
}

/// Print what a failed cluster looks like before the assertion fires.
async fn diagnose(s: &SshSession) {
    for cmd in [
        "systemctl status kubelet --no-pager -l | tail -n 20",
        r"journalctl -u kubelet --no-pager -o cat | grep -v -E '^\s|^goroutine |^created by |^[[:alnum:]_./-]+\.[^ ]*\(.*\)$|^$' | tail -n 40",
        "journalctl -u containerd --no-pager | tail -n 30",
        "ctr -n k8s.io containers ls",
        "KUBECONFIG=/etc/kubernetes/admin.conf kubectl get pods -A -o wide; KUBECONFIG=/etc/kubernetes/admin.conf kubectl describe nodes | tail -n 40",
    ] {
        if let Ok(out) = Transport::exec(s, cmd).await {
            eprintln!("--- {cmd}\n{}{}", out.stdout, out.stderr);
        }
    }
}

async fn wait_for(
    s: &SshSession,
    what: &str,
    cmd: &str,
    want: impl Fn(&str) -> bool,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        if let Ok(out) = Transport::exec(s, cmd).await {
            last = format!("{}{}", out.stdout, out.stderr);
            if out.success() && want(out.stdout.trim()) {
                return start.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    diagnose(s).await;
    panic!("{what}: not reached within {limit:?}; last output of `{cmd}`: {last}");
}

const NAME: &str = "kf-k8s-smoke";

/// Creates the `--cgroup-root` given in KUBELET_EXTRA_ARGS (from /etc/default/kubelet,
/// loaded by the rendered 10-kubeadm.conf) in every cgroup v1 hierarchy before kubelet
/// starts. `$$` is a literal `$` for the shell (systemd expands `$NAME` itself).
const CGROUP_ROOT_DROP_IN: &str = "# Managed by kubeforge: kubelet's cgroup root inside a container machine.
[Service]
ExecStartPre=/bin/sh -c 'for a in ${KUBELET_EXTRA_ARGS}; do case \"$$a\" in --cgroup-root=*) r=$${a#--cgroup-root=}; for d in /sys/fs/cgroup/*/; do [ -f \"$$d/cgroup.procs\" ] && mkdir -p \"$$d$$r\"; done;; esac; done; true'
";

fn cluster_yaml(subnet: &str, cp_ip: &str, mirror: &Path) -> String {
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
      count: 1
  networking:
    podSubnet: 10.244.0.0/16
    serviceSubnet: 10.96.0.0/12
    cni: bridge
  loadBalancer:
    type: external
    endpoint: {cp_ip}:6443
  artifacts:
    mirror: {}
",
        mirror.display()
    )
}

#[test]
fn kubeadm_init_from_the_mirror_gives_a_ready_single_control_plane() {
    let mirror = common_k8s::mirror_dir();
    let _sysctls = SavedSysctls::save();
    run(|| async move {
        with_cluster(NAME, &[MachineRole::ControlPlane], |cluster| async move {
            let t_all = Instant::now();
            let ip = cluster.ip(0);
            let subnet = cluster.provider.config().subnet.to_string();

            // --- the cluster file, as a user writes it --------------------------------
            let yaml = cluster_yaml(&subnet, &ip, &mirror);
            let loaded = kubeforge::spec::load_str(&yaml, Path::new("cluster.yaml"), Path::new("."))
                .unwrap_or_else(|e| panic!("{e}"));
            let host = loaded.topology.hosts[0].name.clone();
            assert_eq!(host, cluster.machines[0].name);

            // --- fetch: every file verified against the mirror's .sha256 ---------------
            let t = Instant::now();
            let source = Source::from_spec(
                loaded.cluster.spec.artifacts.mirror.as_deref(),
                Path::new("."),
            )
            .unwrap();
            let catalogue = Catalogue::for_version(&loaded.version())
                .unwrap()
                // addon/coredns is skipped: there is no CoreDNS image offline.
                .without_images(&["coredns"])
                .unwrap();
            let cache_dir = tempfile::tempdir().unwrap();
            let files = artifacts::fetch_all(&source, &catalogue, &Cache::new(cache_dir.path()))
                .await
                .unwrap_or_else(|e| panic!("{}", kubeforge::error::render_chain(&e)));
            let fetch_time = t.elapsed();

            let (pool, _store) = cluster.pool("root");
            let s = pool.session(&ip).await.expect("ssh session");

            // --- node files: kernel settings, containerd, kubelet unit, kubeadm, CNI ---
            let t = Instant::now();
            let rendered = render_all(&loaded, &Secrets::generate()).unwrap();
            let mut uploaded = Vec::new();
            for (group, f) in &rendered {
                if f.host != host
                    || !matches!(group, FileGroup::NodeBase | FileGroup::Kubeadm | FileGroup::Cni)
                {
                    continue;
                }
                s.upload(f.content.clone().into(), &UploadTarget::new(f.path.clone(), f.mode))
                    .await
                    .unwrap_or_else(|e| panic!("upload {}: {e}", f.path));
                uploaded.push(f.path.clone());
            }
            for want in [
                "/etc/containerd/config.toml",
                "/etc/systemd/system/kubelet.service",
                "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
                "/etc/kubeforge/kubeadm-init.yaml",
                "/etc/kubeforge/podnet/10-kubeforge.conflist.in",
                "/usr/local/lib/kubeforge/podnet.sh",
                "/etc/systemd/system/kubeforge-podnet.service",
            ] {
                assert!(uploaded.iter().any(|p| p == want), "{want} not rendered: {uploaded:?}");
            }
            // Only net.* (per network namespace) settings: never `sysctl --system`,
            // which would also apply Debian's kernel.* defaults to the shared kernel.
            sh(&s, "sysctl -p /etc/sysctl.d/90-kubeforge.conf").await;
            // kubelet's pods go below this machine's own cgroup, not the host's /kubepods
            // (TESTBED.md): --cgroup-root=<PID 1's cgroup>/kubelet. systemd in the machine
            // trims empty cgroups it does not manage (cpu and blkio) on every
            // `daemon-reload` (kubeadm runs one before restarting kubelet), and kubelet
            // refuses to start when its cgroup root is missing in any hierarchy: a drop-in
            // creates it in every v1 hierarchy right before each start.
            let own = sh(
                &s,
                "awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/1/cgroup | sed 's#/init.scope$##'",
            )
            .await;
            let own = own.trim();
            assert!(own.starts_with("/docker/"), "machine cgroup {own:?}");
            let root = format!("{own}/kubelet");
            s.upload(
                format!("KUBELET_EXTRA_ARGS=--cgroup-root={root}\n").into(),
                &UploadTarget::new("/etc/default/kubelet", 0o644),
            )
            .await
            .unwrap();
            s.upload(
                CGROUP_ROOT_DROP_IN.into(),
                &UploadTarget::new(
                    "/etc/systemd/system/kubelet.service.d/20-kubeforge-cgroup-root.conf",
                    0o644,
                ),
            )
            .await
            .unwrap();
            // The pod network unit writes the CNI config (with the MTU of this machine's
            // interface) as the cni phase has it do.
            sh(&s, "systemctl daemon-reload && systemctl enable containerd kubelet kubeforge-podnet && systemctl restart containerd kubeforge-podnet").await;
            let files_time = t.elapsed();

            // --- hosts download binaries themselves (installOn: hosts) -----------------
            // From an HTTP server on this test network's gateway (the host side of the
            // machine's own internal network), checked against the published checksums.
            let t = Instant::now();
            let gateway = match cluster.provider.config().subnet.network() {
                std::net::IpAddr::V4(n) => std::net::Ipv4Addr::from(u32::from(n) + 1).to_string(),
                std::net::IpAddr::V6(_) => unreachable!(),
            };
            let server = common_k8s::serve_dir_on(&gateway, mirror.clone()).await;
            let http = Source::parse_mirror(&server.base, Path::new("/")).unwrap();
            let sums = artifacts::published_checksums(&http, &Catalogue { images: vec![], ..catalogue.clone() })
                .await
                .unwrap();
            let downloads = artifacts::direct_downloads(&http, &catalogue, &sums).unwrap();
            // A tampered file aborts the download before anything is installed.
            let mut tampered: Vec<_> = downloads
                .iter()
                .map(|d| artifacts::DirectDownload {
                    remote_path: format!("/opt/kf-tampered/{}", d.name),
                    ..d.clone()
                })
                .collect();
            tampered[2].sha256 = "0".repeat(64);
            let e = artifacts::install_direct_on(s.as_ref(), &tampered).await.unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("checksum mismatch for")
                    && msg.contains("/v1.20.2/bin/linux/amd64/kubectl")
                    && msg.contains(&"0".repeat(64))
                    && msg.contains(&downloads[2].sha256),
                "{msg}"
            );
            assert_eq!(sh(&s, "ls /opt/kf-tampered 2>/dev/null | wc -l").await.trim(), "0");
            let direct = artifacts::install_direct_on(s.as_ref(), &downloads)
                .await
                .unwrap_or_else(|e| panic!("{}", kubeforge::error::render_chain(&e)));
            assert_eq!(
                direct.sent,
                ["/usr/local/bin/kubeadm", "/usr/local/bin/kubelet", "/usr/local/bin/kubectl"]
            );
            let direct_time = t.elapsed();

            // --- install from the operator: images (binaries already match) -------------
            let t = Instant::now();
            let report = artifacts::install_on(s.as_ref(), &files)
                .await
                .unwrap_or_else(|e| panic!("{}", kubeforge::error::render_chain(&e)));
            let install_time = t.elapsed();
            // The binaries the host downloaded are byte-identical to the verified ones.
            assert_eq!(report.unchanged.len(), 3, "{report:?}");
            assert_eq!(report.sent.len(), 6, "{report:?}");
            assert_eq!(
                report.imported,
                [
                    "k8s.gcr.io/kube-apiserver:v1.20.2",
                    "k8s.gcr.io/kube-controller-manager:v1.20.2",
                    "k8s.gcr.io/kube-scheduler:v1.20.2",
                    "k8s.gcr.io/kube-proxy:v1.20.2",
                    "k8s.gcr.io/pause:3.2",
                    "k8s.gcr.io/etcd:3.4.13-0",
                ]
            );
            let t = Instant::now();
            let again = artifacts::install_on(s.as_ref(), &files).await.unwrap();
            let reinstall_time = t.elapsed();
            assert!(again.sent.is_empty() && again.imported.is_empty(), "{again:?}");
            assert_eq!(again.unchanged.len(), 9);
            // imageRepository set: the tarball (named k8s.gcr.io/...) is imported and
            // re-tagged to what kubeadm will ask for, with real ctr.
            let renamed: Vec<_> = files
                .iter()
                .filter(|a| a.name == "pause")
                .map(|a| artifacts::LocalArtifact {
                    image_ref: Some("registry.example.com/k8s/pause:3.2".into()),
                    ..a.clone()
                })
                .collect();
            let retag = artifacts::install_on(s.as_ref(), &renamed).await.unwrap();
            assert_eq!(retag.imported, ["registry.example.com/k8s/pause:3.2"], "{retag:?}");
            assert!(sh(&s, "ctr -n k8s.io images ls -q")
                .await
                .lines()
                .any(|l| l == "registry.example.com/k8s/pause:3.2"));
            assert_eq!(sh(&s, "kubeadm version -o short").await.trim(), "v1.20.2");
            assert!(sh(&s, "kubelet --version").await.contains("v1.20.2"));

            // --- kubeadm init, skipping only what cannot work offline -------------------
            let t = Instant::now();
            let init = s
                .exec_timeout(
                    "kubeadm init --config /etc/kubeforge/kubeadm-init.yaml --skip-phases=preflight,addon/coredns",
                    Some(Duration::from_secs(420)),
                )
                .await
                .expect("kubeadm init ran");
            let init_time = t.elapsed();
            if !init.success() {
                diagnose(&s).await;
                panic!(
                    "kubeadm init failed (exit {}):\n{}\n{}",
                    init.exit_code, init.stdout, init.stderr
                );
            }
            let readyz = wait_for(
                &s,
                "apiserver /readyz",
                "curl -sk --max-time 5 https://127.0.0.1:6443/readyz",
                |o| o == "ok",
                Duration::from_secs(120),
            )
            .await;
            let kubectl = "kubectl --kubeconfig /etc/kubernetes/admin.conf";
            let ready = wait_for(
                &s,
                "node Ready",
                &format!(
                    "{kubectl} get node {host} -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}'"
                ),
                |o| o == "True",
                Duration::from_secs(240),
            )
            .await;
            let pods = wait_for(
                &s,
                "kube-system pods Running",
                &format!(
                    "{kubectl} -n kube-system get pods -o jsonpath='{{range .items[*]}}{{.metadata.name}}={{.status.phase}} {{end}}'"
                ),
                |o| {
                    let all: Vec<&str> = o.split_whitespace().collect();
                    ["etcd-", "kube-apiserver-", "kube-controller-manager-", "kube-scheduler-", "kube-proxy-"]
                        .iter()
                        .all(|p| all.iter().any(|x| x.starts_with(p) && x.ends_with("=Running")))
                        && all.iter().all(|x| x.ends_with("=Running"))
                },
                Duration::from_secs(180),
            )
            .await;
            // No restarts: etcd (Debian's 3.4.23 in the 3.4.13-0 image) passes kubeadm's
            // liveness probe on :2381/health, the others theirs.
            let restarts = sh(
                &s,
                &format!(
                    "{kubectl} -n kube-system get pods -o jsonpath='{{range .items[*]}}{{.metadata.name}}={{.status.containerStatuses[0].restartCount}} {{end}}'"
                ),
            )
            .await;
            for entry in restarts.split_whitespace() {
                if entry.starts_with("etcd-") || entry.starts_with("kube-apiserver-") {
                    assert!(entry.ends_with("=0"), "restarted: {entry} ({restarts})");
                }
            }
            // A pod on the pod network (the pause image is there already): the bridge
            // CNI gives it an address from the node's range, the node reaches it over cni0.
            let t = Instant::now();
            sh(&s, &format!("{kubectl} taint nodes --all node-role.kubernetes.io/master- >/dev/null 2>&1; {kubectl} run cni-probe --image=k8s.gcr.io/pause:3.2 --image-pull-policy=Never --restart=Never")).await;
            wait_for(
                &s,
                "cni-probe pod Running",
                &format!("{kubectl} get pod cni-probe -o jsonpath='{{.status.phase}} {{.status.podIP}}'"),
                |o| o.starts_with("Running 10.244."),
                Duration::from_secs(120),
            )
            .await;
            let pod_ip = sh(&s, &format!("{kubectl} get pod cni-probe -o jsonpath='{{.status.podIP}}'")).await;
            sh(&s, &format!("ping -c 1 -W 5 {}", pod_ip.trim())).await;
            let cni = sh(&s, "ip -o -4 addr show cni0").await;
            assert!(cni.contains("10.244."), "cni0: {cni}");
            let pod_time = t.elapsed();
            // kube-proxy programmed the Service rules (iptables in the image works).
            let nat = sh(&s, "iptables-save -t nat | grep -c KUBE-SERVICES || true").await;
            assert!(
                nat.trim().parse::<u32>().unwrap_or(0) > 0,
                "kube-proxy wrote no KUBE-SERVICES rules"
            );
            let versions = sh(
                &s,
                &format!("{kubectl} version --short 2>/dev/null || {kubectl} version"),
            )
            .await;
            assert!(versions.contains("Server Version: v1.20.2"), "{versions}");
            eprintln!(
                "k8s smoke: boot {:.1} s, fetch {:.1} s, node files {:.1} s, host downloads {:.1} s, install {:.1} s \
                 (re-install {:.1} s, {} MiB sent), kubeadm init {:.1} s, /readyz after {:.1} s, \
                 node Ready after {:.1} s more, kube-system Running after {:.1} s more, \
                 pod on the bridge CNI in {:.1} s, total {:.1} s\ncni0: {}\nrestarts: {}",
                cluster.boot_time.as_secs_f64(),
                fetch_time.as_secs_f64(),
                files_time.as_secs_f64(),
                direct_time.as_secs_f64(),
                install_time.as_secs_f64(),
                reinstall_time.as_secs_f64(),
                report.bytes_sent / (1 << 20),
                init_time.as_secs_f64(),
                readyz.as_secs_f64(),
                ready.as_secs_f64(),
                pods.as_secs_f64(),
                pod_time.as_secs_f64(),
                t_all.elapsed().as_secs_f64(),
                cni.trim(),
                restarts.trim()
            );
            // Stop kubelet before the machine goes, so nothing restarts pods meanwhile.
            let _ = Transport::exec(s.as_ref(), "systemctl stop kubelet").await;
            pool.close_all().await;
        })
        .await;
    });
}
