//! The docker provider against the real engine: machines boot systemd with sshd, keep
//! fixed addresses, get their own host keys, and ensure/delete are idempotent.

mod common_docker;

use common_docker::{run, with_cluster};
use kubeforge::provider::{MachineRole, MachineSpec, MachineState, Provider};
use kubeforge::transport::Transport;
use std::time::{Duration, Instant};

#[test]
fn machines_boot_systemd_with_fixed_addresses_and_own_host_keys() {
    run(|| async {
        with_cluster("kft-prov", &[MachineRole::ControlPlane, MachineRole::LoadBalancer], |c| async move {
            let p = &c.provider;
            // list: both machines, labelled, running, at their fixed addresses.
            let listed = p.list().await.unwrap();
            assert_eq!(listed.len(), 2);
            assert_eq!(listed[0].name, "kft-prov-cp-1");
            assert_eq!(listed[0].role, MachineRole::ControlPlane);
            assert_eq!(listed[1].name, "kft-prov-lb-1");
            assert_eq!(listed[1].role, MachineRole::LoadBalancer);
            assert!(listed.iter().all(|m| m.state == MachineState::Running));
            assert_eq!(listed[0].ip, c.machines[0].ip);

            // A second ensure changes nothing (same containers, still running).
            let specs: Vec<MachineSpec> = c
                .machines
                .iter()
                .map(|m| MachineSpec { name: m.name.clone(), role: m.role, ip: m.ip.unwrap(), extra_disks: vec![] })
                .collect();
            let again = p.ensure(&specs).await.unwrap();
            assert_eq!(
                again.iter().map(|m| &m.id).collect::<Vec<_>>(),
                c.machines.iter().map(|m| &m.id).collect::<Vec<_>>()
            );

            // A spec that moves a machine is refused, not applied.
            let mut moved = specs[0].clone();
            moved.ip = c.machines[1].ip.unwrap();
            let err = p.ensure(&[moved]).await.unwrap_err();
            assert!(err.to_string().contains("differs from the spec"), "{err}");

            // systemd is PID 1 and the system is up; the kubeadm flag set works:
            // haproxy needs SYS_ADMIN, containerd data is a volume (not overlayfs).
            let (pool, store) = c.pool("root");
            let s = pool.session(&c.ip(0)).await.unwrap();
            let pid1 = s.exec("cat /proc/1/comm").await.unwrap();
            assert_eq!(pid1.stdout.trim(), "systemd");
            let state = s
                .exec("systemctl is-system-running --wait")
                .await
                .unwrap();
            assert!(
                ["running", "degraded"].contains(&state.stdout.trim()),
                "system state: {state:?}; failed units: {:?}",
                s.exec("systemctl --failed --no-legend").await.unwrap().stdout
            );
            let haproxy = s.exec("systemctl start haproxy && systemctl is-active haproxy").await.unwrap();
            assert_eq!(haproxy.stdout.trim(), "active", "{haproxy:?}");
            let fs = s.exec("stat -f -c %T /var/lib/containerd; sysctl -n net.ipv4.ip_forward; test -c /dev/kmsg && echo kmsg").await.unwrap();
            let fs_lines: Vec<&str> = fs.stdout.lines().collect();
            assert_ne!(fs_lines[0], "overlayfs", "{fs:?}");
            assert_eq!(&fs_lines[1..], ["1", "kmsg"], "{fs:?}");
            let hostname = s.exec("hostname").await.unwrap();
            assert_eq!(hostname.stdout.trim(), "kft-prov-cp-1");

            // Every machine generated its own host key at boot.
            pool.session(&c.ip(1)).await.unwrap();
            let keys = store.snapshot();
            assert_eq!(keys.len(), 2);
            assert_ne!(keys[&c.ip(0)], keys[&c.ip(1)], "machines share a host key");

            // stop/start: the same fixed address comes back, sshd answers again.
            p.stop("kft-prov-lb-1").await.unwrap();
            assert_eq!(p.get("kft-prov-lb-1").await.unwrap().state, MachineState::Stopped);
            let t = Instant::now();
            p.start("kft-prov-lb-1").await.unwrap();
            let m = p.get("kft-prov-lb-1").await.unwrap();
            assert_eq!(m.state, MachineState::Running);
            assert_eq!(m.ip, c.machines[1].ip);
            p.wait_for_ssh(m.ip.unwrap(), 22, Duration::from_secs(30)).await.unwrap();
            eprintln!("restart to sshd: {:.1} s", t.elapsed().as_secs_f64());
            // Its host key survived the restart.
            pool.forget(&c.ip(1));
            pool.session(&c.ip(1)).await.unwrap();
            // ensure() starts a stopped machine.
            p.stop("kft-prov-lb-1").await.unwrap();
            let back = p.ensure(&specs[1..]).await.unwrap();
            assert_eq!(back[0].state, MachineState::Running);

            // delete is idempotent; the other machine is untouched.
            p.delete("kft-prov-lb-1").await.unwrap();
            p.delete("kft-prov-lb-1").await.unwrap();
            let left = p.list().await.unwrap();
            assert_eq!(left.len(), 1);
            assert_eq!(left[0].name, "kft-prov-cp-1");
            pool.close_all().await;
        })
        .await;
    });
}

#[test]
fn a_missing_image_and_foreign_machines_are_clear_errors() {
    run(|| async {
        let cfg = |cluster: &str, image: &str| kubeforge::provider::DockerConfig {
            cluster: cluster.into(),
            network: format!("{cluster}-net"),
            subnet: "10.251.254.0/24".parse().unwrap(),
            image: image.into(),
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest test".into(),
        };
        let p = kubeforge::provider::DockerProvider::connect(cfg(
            "kft-noimg",
            "kubeforge/node:does-not-exist",
        ))
        .await
        .expect("dockerd must run (scripts/testbed/30-docker.sh)");
        let spec = MachineSpec {
            name: "kft-noimg-cp-1".into(),
            role: MachineRole::ControlPlane,
            ip: "10.251.254.10".parse().unwrap(),
            extra_disks: vec![],
        };
        let err = p.ensure(std::slice::from_ref(&spec)).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("kubeforge/node:does-not-exist") && msg.contains("image build"),
            "{msg}"
        );
        assert!(p.list().await.unwrap().is_empty());
        // An address outside the subnet is refused before anything is created.
        let mut outside = spec.clone();
        outside.ip = "10.9.9.9".parse().unwrap();
        let real = kubeforge::provider::DockerProvider::connect(cfg(
            "kft-noimg",
            &common_docker::node_image(),
        ))
        .await
        .unwrap();
        let err = real.ensure(&[outside]).await.unwrap_err();
        assert!(
            err.to_string().contains("outside the cluster subnet"),
            "{err}"
        );
        // Deleting a machine that does not exist is success.
        real.delete("kft-noimg-cp-9").await.unwrap();
        // A machine of this cluster cannot be deleted through another cluster's provider.
        let m = real.ensure(std::slice::from_ref(&spec)).await.unwrap();
        assert_eq!(m.len(), 1);
        let other = kubeforge::provider::DockerProvider::connect(cfg(
            "kft-other",
            &common_docker::node_image(),
        ))
        .await
        .unwrap();
        let err = other.delete("kft-noimg-cp-1").await.unwrap_err();
        assert!(
            err.to_string().contains("not part of cluster kft-other"),
            "{err}"
        );
        real.destroy().await.unwrap();
        other.destroy().await.unwrap();
        assert!(real.list().await.unwrap().is_empty());
    });
}

#[test]
fn workers_get_loop_backed_extra_disks_released_with_the_machine() {
    run(|| async {
        let disk_dir = tempfile::tempdir().unwrap();
        std::env::set_var("KUBEFORGE_DISK_DIR", disk_dir.path());
        let cfg = kubeforge::provider::DockerConfig {
            cluster: "kft-disk".into(),
            network: "kft-disk-net".into(),
            subnet: "10.251.253.0/24".parse().unwrap(),
            image: common_docker::node_image(),
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTheTest test".into(),
        };
        let p = kubeforge::provider::DockerProvider::connect(cfg)
            .await
            .expect("dockerd must run (scripts/testbed/30-docker.sh)");
        let spec = MachineSpec {
            name: "kft-disk-worker-1".into(),
            role: MachineRole::Worker,
            ip: "10.251.253.20".parse().unwrap(),
            extra_disks: vec![64 << 20, 32 << 20],
        };
        let m = p.ensure(std::slice::from_ref(&spec)).await.unwrap();
        let inspect = |fmt: &str| {
            let out = std::process::Command::new("docker")
                .args(["inspect", "-f", fmt, "kft-disk-worker-1"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let devices = inspect("{{index .Config.Labels \"dev.kubeforge.disks\"}}");
        let devs: Vec<&str> = devices.split(',').collect();
        assert_eq!(devs.len(), 2, "{devices}");
        // Inside the machine: block devices of the asked sizes under the same names.
        for (dev, size) in devs.iter().zip([64u64 << 20, 32 << 20]) {
            let out = std::process::Command::new("docker")
                .args(["exec", "kft-disk-worker-1", "blockdev", "--getsize64", dev])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                size.to_string()
            );
        }
        // Re-ensuring keeps the machine and its disks.
        let again = p.ensure(std::slice::from_ref(&spec)).await.unwrap();
        assert_eq!(again[0].id, m[0].id);
        assert_eq!(
            inspect("{{index .Config.Labels \"dev.kubeforge.disks\"}}"),
            devices
        );
        // Deleting the machine detaches and removes its disks.
        p.destroy().await.unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--noheadings", "--output", "BACK-FILE", "--list"])
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(!list.contains("kft-disk-worker-1-disk"), "{list}");
        assert_eq!(std::fs::read_dir(disk_dir.path()).unwrap().count(), 0);
        std::env::remove_var("KUBEFORGE_DISK_DIR");
    });
}
