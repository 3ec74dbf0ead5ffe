//! Fetching artifacts for real: from the test bed's v1.20.2 mirror as a directory and
//! over HTTP (a file server on 127.0.0.1 serving the same directory), from an
//! "upstream" with dl.k8s.io's layout, and the failures: a checksum mismatch aborts with
//! file, expected and actual digests and leaves nothing in the cache; a missing file
//! names its URL or path.

mod common_k8s;

use kubeforge::artifacts::{
    fetch_all, sha256_file, ArtifactKind, ArtifactsError, Cache, Catalogue, Source,
};
use sha2::Digest;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

fn v1_20_2() -> Catalogue {
    Catalogue::for_version(&semver::Version::new(1, 20, 2))
        .unwrap()
        .without_images(&["coredns"])
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn published(mirror: &Path, rel: &str) -> String {
    std::fs::read_to_string(mirror.join(format!("{rel}.sha256")))
        .unwrap()
        .trim()
        .to_string()
}

async fn check_fetched(mirror: &Path, cache: &Cache, source: &Source, expect_cached: bool) {
    let cat = v1_20_2();
    let t = Instant::now();
    let got = fetch_all(source, &cat, cache).await.unwrap_or_else(|e| {
        panic!(
            "fetch from {} failed: {}",
            source.describe(),
            kubeforge::error::render_chain(&e)
        )
    });
    eprintln!(
        "fetch_all from {} ({} files, cached: {expect_cached}) in {:.2} s",
        source.describe(),
        got.len(),
        t.elapsed().as_secs_f64()
    );
    let names: Vec<&str> = got.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kubeadm",
            "kubelet",
            "kubectl",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kube-proxy",
            "pause",
            "etcd"
        ]
    );
    for a in &got {
        let rel = match a.kind {
            ArtifactKind::Binary | ArtifactKind::Archive => {
                cat.binary(&a.name).unwrap().path.clone()
            }
            ArtifactKind::Image => cat.image(&a.name).unwrap().tarball.clone(),
        };
        assert_eq!(a.sha256, published(mirror, &rel), "{}", a.name);
        assert_eq!(a.path, cache.blob_path(&a.sha256));
        let (actual, size) = sha256_file(&a.path).await.unwrap();
        assert_eq!(
            actual, a.sha256,
            "cached blob of {} is not what was verified",
            a.name
        );
        assert_eq!(size, a.size);
        assert_eq!(a.cached, expect_cached, "{}", a.name);
        match a.kind {
            ArtifactKind::Binary | ArtifactKind::Archive => {
                assert_eq!(a.remote_path, format!("/usr/local/bin/{}", a.name));
                assert_eq!(a.mode, 0o755);
            }
            ArtifactKind::Image => {
                assert!(a.remote_path.starts_with("/var/lib/kubeforge/images/"));
                // The tarball carries exactly the reference kubeadm 1.20 asks for.
                assert_eq!(a.archive_ref, a.image_ref, "{}", a.name);
            }
        }
    }
    assert_eq!(
        got.iter()
            .find(|a| a.name == "etcd")
            .unwrap()
            .image_ref
            .as_deref(),
        Some("k8s.gcr.io/etcd:3.4.13-0")
    );
}

#[test]
fn directory_mirror_is_fetched_verified_and_then_served_from_the_cache() {
    let mirror = common_k8s::mirror_dir();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let source = Source::parse_mirror(mirror.to_str().unwrap(), Path::new("/")).unwrap();
    rt().block_on(async {
        check_fetched(&mirror, &cache, &source, false).await;
        check_fetched(&mirror, &cache, &source, true).await;
    });
    // No partial files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(cache_dir.path().join("sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn http_mirror_is_fetched_over_a_local_server_and_cached_by_digest() {
    let mirror = common_k8s::mirror_dir();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    rt().block_on(async {
        let server = common_k8s::serve_dir(mirror.clone()).await;
        let source = Source::parse_mirror(&format!("{}/", server.base), Path::new("/")).unwrap();
        check_fetched(&mirror, &cache, &source, false).await;
        // 9 checksums + 9 files.
        assert_eq!(server.requests.load(Ordering::SeqCst), 18);
        check_fetched(&mirror, &cache, &source, true).await;
        // The second run only read the 9 checksums.
        assert_eq!(server.requests.load(Ordering::SeqCst), 27);
    });
}

/// A mirror of small fake files: `bad` gets a wrong published checksum.
fn fake_release(root: &Path, prefix: &str, bad: Option<&str>) {
    let dir = root.join(prefix).join("v1.20.2/bin/linux/amd64");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["kubeadm", "kubelet", "kubectl"] {
        let body = format!("#!/bin/sh\necho fake {name}\n");
        std::fs::write(dir.join(name), &body).unwrap();
        let sum = if Some(name) == bad {
            hex::encode(sha2::Sha256::digest(b"something else"))
        } else {
            hex::encode(sha2::Sha256::digest(body.as_bytes()))
        };
        // Upstream writes the bare digest; sha256sum style must work too.
        let line = if name == "kubectl" {
            format!("{sum}  {name}\n")
        } else {
            sum
        };
        std::fs::write(dir.join(format!("{name}.sha256")), line).unwrap();
    }
}

fn blobs(cache: &Path) -> Vec<String> {
    match std::fs::read_dir(cache.join("sha256")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn upstream_layout_fetches_binaries_only_with_published_checksums() {
    let root = tempfile::tempdir().unwrap();
    fake_release(root.path(), "release", None);
    let cache_dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let server = common_k8s::serve_dir(root.path().to_path_buf()).await;
        // dl.k8s.io's layout under /release; images come from the registry on hosts.
        let source = Source::Upstream {
            base: format!("{}/release", server.base),
        };
        let got = fetch_all(&source, &v1_20_2(), &Cache::new(cache_dir.path()))
            .await
            .unwrap();
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|a| a.kind == ArtifactKind::Binary));
        assert_eq!(
            got[0].origin,
            format!("{}/release/v1.20.2/bin/linux/amd64/kubeadm", server.base)
        );
        assert_eq!(blobs(cache_dir.path()).len(), 3);
    });
}

#[test]
fn checksum_mismatch_aborts_naming_file_expected_and_actual() {
    let root = tempfile::tempdir().unwrap();
    fake_release(root.path(), "", Some("kubelet"));
    let body = "#!/bin/sh\necho fake kubelet\n";
    let actual = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let expected = hex::encode(sha2::Sha256::digest(b"something else"));
    let cat = Catalogue::for_version(&semver::Version::new(1, 20, 2)).unwrap();
    rt().block_on(async {
        // Directory mirror.
        let cache_dir = tempfile::tempdir().unwrap();
        let source = Source::Dir {
            root: root.path().to_path_buf(),
        };
        let bins_only = Catalogue {
            images: vec![],
            ..cat.clone()
        };
        let e = fetch_all(&source, &bins_only, &Cache::new(cache_dir.path()))
            .await
            .unwrap_err();
        let file = root.path().join("v1.20.2/bin/linux/amd64/kubelet");
        match &e {
            ArtifactsError::ChecksumMismatch {
                file: f,
                expected: x,
                actual: a,
            } => {
                assert_eq!(f, &file.display().to_string());
                assert_eq!(x, &expected);
                assert_eq!(a, &actual);
            }
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains(&expected) && text.contains(&actual) && text.contains("kubelet"),
            "{text}"
        );
        // Nothing of kubelet in the cache, verified or partial.
        assert!(
            blobs(cache_dir.path())
                .iter()
                .all(|b| !b.contains(&actual) && !b.ends_with(".part")),
            "{:?}",
            blobs(cache_dir.path())
        );

        // The same over HTTP names the URL.
        let server = common_k8s::serve_dir(root.path().to_path_buf()).await;
        let source = Source::Http {
            base: server.base.clone(),
        };
        let cache_dir = tempfile::tempdir().unwrap();
        let e = fetch_all(&source, &bins_only, &Cache::new(cache_dir.path()))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "checksum mismatch for {}/v1.20.2/bin/linux/amd64/kubelet: expected sha256 {expected}, got {actual}; nothing was installed",
                server.base
            )
        );

        // A mirror without the image tarballs: the missing file is named.
        let e = fetch_all(&source, &cat, &Cache::new(cache_dir.path()))
            .await
            .unwrap_err();
        // kubelet still comes first in catalogue order.
        assert!(matches!(e, ArtifactsError::ChecksumMismatch { .. }), "{e}");
        let no_bad = tempfile::tempdir().unwrap();
        fake_release(no_bad.path(), "", None);
        let server = common_k8s::serve_dir(no_bad.path().to_path_buf()).await;
        let e = fetch_all(
            &Source::Http {
                base: server.base.clone(),
            },
            &cat,
            &Cache::new(cache_dir.path()),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}/images/v1.20.2/kube-apiserver-v1.20.2.tar.sha256 answered HTTP 404",
                server.base
            )
        );
        let e = fetch_all(
            &Source::Dir {
                root: no_bad.path().to_path_buf(),
            },
            &cat,
            &Cache::new(cache_dir.path()),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "cannot read {}",
                no_bad
                    .path()
                    .join("images/v1.20.2/kube-apiserver-v1.20.2.tar.sha256")
                    .display()
            )),
            "{e}"
        );
    });
}

#[test]
fn a_corrupted_cache_entry_is_fetched_again() {
    let root = tempfile::tempdir().unwrap();
    fake_release(root.path(), "", None);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(cache_dir.path());
    let source = Source::Dir {
        root: root.path().to_path_buf(),
    };
    let cat = Catalogue {
        images: vec![],
        ..v1_20_2()
    };
    rt().block_on(async {
        let first = fetch_all(&source, &cat, &cache).await.unwrap();
        std::fs::write(&first[0].path, b"bit rot").unwrap();
        let second = fetch_all(&source, &cat, &cache).await.unwrap();
        assert!(!second[0].cached, "a corrupted blob was trusted");
        assert!(second[1].cached);
        assert_eq!(
            sha256_file(&second[0].path).await.unwrap().0,
            second[0].sha256
        );
    });
}
