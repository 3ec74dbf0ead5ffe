//! A real Kubernetes API server for the addon tests: Debian's etcd and the
//! kube-apiserver v1.20.2 built by the test bed (scripts/testbed/50-k8s-mirror.sh), on
//! free 127.0.0.1 ports, with TLS from a throwaway CA and a static admin token. No
//! controllers run (no kube-controller-manager, no nodes): objects are stored and
//! served, workloads never become available. Uses `tests/support` (declare both).
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::support::addons_mirror;

/// The Kubernetes v1.20.2 mirror (kube-apiserver, kubectl) of the test bed.
pub fn k8s_mirror() -> PathBuf {
    let dir = PathBuf::from(crate::support::mirror());
    assert!(
        dir.join("v1.20.2/bin/linux/amd64/kube-apiserver").is_file(),
        "the Kubernetes mirror has no kube-apiserver: run scripts/testbed/50-k8s-mirror.sh ({})",
        dir.display()
    );
    dir
}

pub fn kubectl_bin() -> PathBuf {
    k8s_mirror().join("v1.20.2/bin/linux/amd64/kubectl")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct ApiServer {
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
    etcd: Child,
    apiserver: Child,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.apiserver.kill();
        let _ = self.apiserver.wait();
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

impl ApiServer {
    /// Start etcd + kube-apiserver with extra apiserver flags; returns when /readyz is
    /// ok.
    pub fn start(extra: &[&str]) -> ApiServer {
        let mirror = k8s_mirror();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let etcd_log = std::fs::File::create(d.join("etcd.log")).expect("log");
        let etcd = Command::new("etcd")
            .args([
                "--name=test",
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls=http://127.0.0.1:{client}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                &format!("--initial-cluster=test=http://127.0.0.1:{peer}"),
                "--log-level=warn",
            ])
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .expect("etcd is installed (scripts/testbed/60-addons.sh)");
        // TLS: a CA and a serving certificate for 127.0.0.1; service-account keys.
        let ossl = |args: &[&str]| run(Command::new("openssl").current_dir(d).args(args));
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
        ]);
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        ossl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ]);
        ossl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        ossl(&["genrsa", "-out", "sa.key", "2048"]);
        ossl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        let token = format!("test-{}", std::process::id());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,1,system:masters\n"),
        )
        .unwrap();
        let mut args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            "--insecure-port=0".into(),
            format!("--cert-dir={}", d.join("certs").display()),
            format!("--tls-cert-file={}", d.join("server.crt").display()),
            format!("--tls-private-key-file={}", d.join("server.key").display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", d.join("sa.pub").display()),
            format!(
                "--service-account-signing-key-file={}",
                d.join("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--logtostderr=true".into(),
            "--v=0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let api_log = std::fs::File::create(d.join("apiserver.log")).expect("log");
        let apiserver = Command::new(mirror.join("v1.20.2/bin/linux/amd64/kube-apiserver"))
            .args(&args)
            .stdout(Stdio::null())
            .stderr(api_log)
            .spawn()
            .expect("kube-apiserver runs");
        let url = format!("https://127.0.0.1:{secure}");
        let ca = std::fs::read(d.join("ca.crt")).unwrap();
        let kubeconfig = d.join("kubeconfig");
        use base64::Engine as _;
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
                base64::engine::general_purpose::STANDARD.encode(ca)
            ),
        )
        .unwrap();
        let mut s = ApiServer {
            dir,
            kubeconfig,
            url,
            etcd,
            apiserver,
        };
        s.wait_ready();
        s
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            if let Ok(Some(st)) = self.apiserver.try_wait() {
                panic!(
                    "kube-apiserver exited ({st}):\n{}",
                    self.log("apiserver.log")
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready after 90 s:\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log("apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn log(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(kubectl_bin())
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// `kubectl <args> -f <file holding yaml>`, which must succeed (what a person or
    /// another tool does to the cluster besides kubeforge).
    pub fn kubectl_file(&self, args: &[&str], name: &str, yaml: &str) {
        let path = self.dir.path().join(name);
        std::fs::write(&path, yaml).unwrap();
        let mut a = args.to_vec();
        a.extend_from_slice(&["-f", path.to_str().unwrap()]);
        let out = self.kubectl(&a);
        assert!(
            out.status.success(),
            "kubectl {a:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get ... -o json`, parsed; None when it does not exist.
    pub fn get(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl(&a);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("NotFound") || err.contains("not found"),
                "kubectl {a:?}: {err}"
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl prints JSON"))
    }
}

/// Write a cluster file in `dir` that takes its addons from the test bed's mirror.
pub fn cluster_file(dir: &Path, name: &str, addons: &str) -> PathBuf {
    cluster_file_for(dir, name, "v1.20.2", addons)
}

/// `cluster_file` claiming Kubernetes `version` (the addon releases follow it; the
/// server stays v1.20.2).
pub fn cluster_file_for(dir: &Path, name: &str, version: &str, addons: &str) -> PathBuf {
    let path = dir.join("cluster.yaml");
    let text = format!(
        "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {name}
spec:
  kubernetesVersion: {version}
  provider:
    docker:
      subnet: 172.31.250.0/24
  nodePools:
    controlPlane:
      count: 1
    workers:
      count: 2
  artifacts:
    mirror: {mirror}
  addons:
{addons}",
        mirror = addons_mirror().display()
    );
    std::fs::write(&path, text).unwrap();
    path
}
