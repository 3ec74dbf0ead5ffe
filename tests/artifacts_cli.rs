//! `kubeforge artifacts list|fetch` as a user runs them.

mod common_k8s;

use assert_cmd::Command;
use sha2::Digest;

fn kubeforge() -> Command {
    Command::cargo_bin("kubeforge").unwrap()
}

#[test]
fn list_by_version_prints_upstream_urls_images_and_host_packages() {
    let out = kubeforge()
        .args(["artifacts", "list", "--version", "v1.20.2"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for want in [
        "Kubernetes v1.20.2 (linux/amd64) from upstream https://dl.k8s.io/release",
        "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubeadm",
        "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubelet",
        "https://dl.k8s.io/release/v1.20.2/bin/linux/amd64/kubectl",
        "k8s.gcr.io/kube-apiserver:v1.20.2",
        "k8s.gcr.io/kube-controller-manager:v1.20.2",
        "k8s.gcr.io/kube-scheduler:v1.20.2",
        "k8s.gcr.io/kube-proxy:v1.20.2",
        "k8s.gcr.io/pause:3.2",
        "k8s.gcr.io/etcd:3.4.13-0",
        "k8s.gcr.io/coredns:1.7.0",
        "pulled by containerd on each host from k8s.gcr.io",
        "containerd >= 1.4.0 (Debian: containerd)",
        "CNI plugins >= 0.8.6 (Debian: containernetworking-plugins)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn list_json_from_a_cluster_file_uses_its_mirror_and_image_repository() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(
        &file,
        "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: air
spec:
  kubernetesVersion: v1.28.4
  provider:
    docker:
      subnet: 172.29.40.0/24
  nodePools:
    controlPlane:
      count: 1
  loadBalancer:
    type: external
    endpoint: 172.29.40.10:6443
  artifacts:
    mirror: mirror
    imageRepository: registry.example.com/k8s
",
    )
    .unwrap();
    let out = kubeforge()
        .args(["artifacts", "list", "-o", "json", "-f"])
        .arg(&file)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let mirror = dir.path().join("mirror");
    assert_eq!(v["version"], "v1.28.4");
    assert_eq!(v["source"], format!("mirror {}", mirror.display()));
    assert_eq!(v["imageRepository"], "registry.example.com/k8s");
    assert_eq!(
        v["binaries"][0]["from"],
        mirror
            .join("v1.28.4/bin/linux/amd64/kubeadm")
            .display()
            .to_string()
    );
    assert_eq!(
        v["binaries"][0]["checksum"],
        mirror
            .join("v1.28.4/bin/linux/amd64/kubeadm.sha256")
            .display()
            .to_string()
    );
    assert_eq!(v["binaries"][1]["remotePath"], "/usr/local/bin/kubelet");
    let images: Vec<&str> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            "registry.example.com/k8s/kube-apiserver:v1.28.4",
            "registry.example.com/k8s/kube-controller-manager:v1.28.4",
            "registry.example.com/k8s/kube-scheduler:v1.28.4",
            "registry.example.com/k8s/kube-proxy:v1.28.4",
            "registry.example.com/k8s/pause:3.9",
            "registry.example.com/k8s/etcd:3.5.9-0",
            "registry.example.com/k8s/coredns/coredns:v1.10.1",
        ]
    );
    assert_eq!(
        v["images"][4]["tarball"],
        mirror
            .join("images/v1.28.4/pause-3.9.tar")
            .display()
            .to_string()
    );
}

#[test]
fn unsupported_version_and_bad_mirror_are_input_errors() {
    let out = kubeforge()
        .args(["artifacts", "list", "--version", "v1.19.16"])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.contains("no artifact catalogue for Kubernetes v1.19.16"),
        "{err}"
    );
    let out = kubeforge()
        .args([
            "artifacts",
            "list",
            "--version",
            "v1.20.2",
            "--mirror",
            "ftp://x/y",
        ])
        .assert()
        .code(2);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("unsupported scheme"), "{err}");
}

#[test]
fn fetch_with_a_bad_checksum_fails_naming_file_and_both_digests() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("v1.20.2/bin/linux/amd64");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["kubeadm", "kubelet", "kubectl"] {
        std::fs::write(dir.join(name), name).unwrap();
        std::fs::write(
            dir.join(format!("{name}.sha256")),
            hex::encode(sha2::Sha256::digest(name.as_bytes())),
        )
        .unwrap();
    }
    // Tamper with kubeadm after its checksum was published.
    std::fs::write(dir.join("kubeadm"), "tampered").unwrap();
    let cache = tempfile::tempdir().unwrap();
    let mut args = vec!["artifacts", "fetch", "--version", "v1.20.2", "--mirror"];
    let root_s = root.path().display().to_string();
    args.push(&root_s);
    for i in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
        "pause",
        "etcd",
        "coredns",
    ] {
        args.extend(["--skip-image", i]);
    }
    let out = kubeforge()
        .args(&args)
        .env("KUBEFORGE_CACHE", cache.path())
        .assert()
        .failure();
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let expected = hex::encode(sha2::Sha256::digest(b"kubeadm"));
    let actual = hex::encode(sha2::Sha256::digest(b"tampered"));
    assert!(
        err.contains(&format!(
            "checksum mismatch for {}: expected sha256 {expected}, got {actual}",
            dir.join("kubeadm").display()
        )),
        "{err}"
    );
}

#[test]
fn fetch_from_the_test_bed_mirror_into_kubeforge_cache() {
    let mirror = common_k8s::mirror_dir();
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        let out = kubeforge()
            .args(["artifacts", "fetch", "--version", "v1.20.2", "-o", "json"])
            .args(["--skip-image", "coredns", "--mirror"])
            .arg(&mirror)
            .env("KUBEFORGE_CACHE", cache.path())
            .assert()
            .success();
        serde_json::from_slice::<serde_json::Value>(&out.get_output().stdout).unwrap()
    };
    let first = run();
    let arts = first["artifacts"].as_array().unwrap();
    assert_eq!(arts.len(), 9);
    for a in arts {
        let sum = a["sha256"].as_str().unwrap();
        assert_eq!(
            a["path"].as_str().unwrap(),
            cache.path().join("sha256").join(sum).display().to_string()
        );
        assert_eq!(a["cached"], false);
    }
    let second = run();
    assert!(second["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["cached"] == true));
}
