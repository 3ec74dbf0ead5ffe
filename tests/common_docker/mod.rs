//! Shared harness for the docker/SSH integration tests: real systemd machines with sshd,
//! created through the docker provider on an `--internal` network of their own.
//!
//! Docker and the node image are REQUIRED: when either is missing the tests fail with a
//! message naming the script that provides it (never skip).
#![allow(dead_code)]

use kubeforge::provider::{
    DockerConfig, DockerProvider, Machine, MachineRole, MachineSpec, Provider,
};
use kubeforge::transport::ssh::{encode_key, generate_ed25519_key};
use kubeforge::transport::{MemoryHostKeyStore, SshAuth, SshConfig, SshPool};
use russh::keys::PrivateKey;
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tests in one binary run one at a time: at most one cluster (3-5 machines) exists at
/// once per test binary, and cargo runs test binaries one after the other.
static SERIAL: Mutex<()> = Mutex::new(());

/// Run an async test body on its own runtime, serialised with the other tests.
pub fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f());
}

/// The node image the tests use: $KUBEFORGE_NODE_IMAGE or the current recipe's tag.
pub fn node_image() -> String {
    std::env::var("KUBEFORGE_NODE_IMAGE")
        .unwrap_or_else(|_| kubeforge::provider::image::node_image_tag())
}

pub struct TestCluster {
    pub name: String,
    pub provider: DockerProvider,
    pub machines: Vec<Machine>,
    pub key: Arc<PrivateKey>,
    pub key_path: PathBuf,
    _dir: tempfile::TempDir,
    pub boot_time: Duration,
}

fn subnet_candidates(name: &str) -> Vec<ipnet::IpNet> {
    // Deterministic per test name, so parallel test binaries rarely collide; on an
    // overlap the next candidate is tried.
    let h = name
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..16)
        .map(|i| {
            let third = (h.wrapping_add(i * 37) % 250) as u8;
            format!("10.251.{third}.0/24").parse().unwrap()
        })
        .collect()
}

impl TestCluster {
    /// Create `roles.len()` machines named `<name>-<role>-<n>`, wait for their sshd.
    pub async fn start(name: &str, roles: &[MachineRole]) -> TestCluster {
        let docker = bollard::Docker::connect_with_local_defaults()
            .expect("cannot configure the Docker client");
        if let Err(e) = docker.ping().await {
            panic!(
                "Docker engine not reachable ({e}). These tests need a running dockerd: \
                 run `bash scripts/testbed/30-docker.sh` first."
            );
        }
        let image = node_image();
        if docker.inspect_image(&image).await.is_err() {
            panic!(
                "node image {image} is missing. Build it with `bash scripts/testbed/40-node-image.sh` \
                 (or `kubeforge image build`)."
            );
        }
        let key = generate_ed25519_key();
        let (private, public) = encode_key(&key).expect("encode key");
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("id_ed25519");
        std::fs::write(&key_path, private).expect("write key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }

        let mut last_err = None;
        for subnet in subnet_candidates(name) {
            let cfg = DockerConfig {
                cluster: name.to_string(),
                network: format!("{name}-net"),
                subnet,
                image: image.clone(),
                ssh_public_key: public.clone(),
            };
            let provider = DockerProvider::connect(cfg).await.expect("docker provider");
            // Leftovers of an earlier, killed run of this very test.
            provider.destroy().await.expect("clean up leftovers");
            let mut counts = std::collections::HashMap::new();
            let specs: Vec<MachineSpec> = roles
                .iter()
                .enumerate()
                .map(|(i, role)| {
                    let n = counts.entry(*role).or_insert(0);
                    *n += 1;
                    let short = match role {
                        MachineRole::ControlPlane => "cp",
                        MachineRole::Worker => "worker",
                        MachineRole::LoadBalancer => "lb",
                    };
                    let ip: IpAddr = match subnet.network() {
                        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + 10 + i as u32).into()),
                        IpAddr::V6(_) => unreachable!(),
                    };
                    MachineSpec {
                        name: format!("{name}-{short}-{n}"),
                        role: *role,
                        ip,
                        extra_disks: vec![],
                    }
                })
                .collect();
            let start = Instant::now();
            match provider.ensure(&specs).await {
                Ok(machines) => {
                    for m in &machines {
                        provider
                            .wait_for_ssh(
                                m.ip.expect("machine address"),
                                22,
                                Duration::from_secs(60),
                            )
                            .await
                            .unwrap_or_else(|e| panic!("sshd on {} never answered: {e}", m.name));
                    }
                    let boot_time = start.elapsed();
                    eprintln!(
                        "test cluster {name}: {} machine(s) on {subnet} up with sshd in {:.1} s",
                        machines.len(),
                        boot_time.as_secs_f64()
                    );
                    return TestCluster {
                        name: name.to_string(),
                        provider,
                        machines,
                        key: Arc::new(key),
                        key_path,
                        _dir: dir,
                        boot_time,
                    };
                }
                Err(e) => {
                    let text = kubeforge::error::render_chain(&e);
                    let _ = provider.destroy().await;
                    if text.contains("overlap") {
                        last_err = Some(text);
                        continue;
                    }
                    panic!("cannot create the test machines: {text}");
                }
            }
        }
        panic!("no free subnet for {name}: {last_err:?}");
    }

    pub fn ip(&self, i: usize) -> String {
        self.machines[i].ip.expect("address").to_string()
    }

    pub fn ips(&self) -> Vec<String> {
        (0..self.machines.len()).map(|i| self.ip(i)).collect()
    }

    /// SSH settings for this cluster with quick test timeouts.
    pub fn ssh_config(&self, user: &str) -> SshConfig {
        let mut cfg = SshConfig::new(user, SshAuth::Key(self.key.clone()));
        cfg.connect_timeout = Duration::from_secs(5);
        cfg.retry.window = Duration::from_secs(20);
        cfg
    }

    pub fn pool(&self, user: &str) -> (SshPool, Arc<MemoryHostKeyStore>) {
        let store = Arc::new(MemoryHostKeyStore::new());
        (SshPool::new(self.ssh_config(user), store.clone()), store)
    }

    pub async fn destroy(self) {
        if let Err(e) = self.provider.destroy().await {
            eprintln!(
                "warning: cleanup of {} failed: {}",
                self.name,
                kubeforge::error::render_chain(&e)
            );
        }
    }
}

/// Start a cluster, run `body` on it, and always remove it (also when `body` panics).
pub async fn with_cluster<F, Fut>(name: &str, roles: &[MachineRole], body: F)
where
    F: FnOnce(Arc<TestCluster>) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures::FutureExt;
    let cluster = Arc::new(TestCluster::start(name, roles).await);
    let outcome = std::panic::AssertUnwindSafe(body(cluster.clone()))
        .catch_unwind()
        .await;
    match Arc::try_unwrap(cluster) {
        Ok(c) => c.destroy().await,
        Err(c) => {
            if let Err(e) = c.provider.destroy().await {
                eprintln!("warning: cleanup failed: {e}");
            }
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
