//! Loop-backed disks on this host (root, /dev/loop-control): attach, find again,
//! refuse a resize, release.

use kubeforge::provider::loopdisk;

fn size_of(dev: &str) -> u64 {
    let out = std::process::Command::new("blockdev")
        .args(["--getsize64", dev])
        .output()
        .expect("blockdev runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test]
async fn disks_attach_once_keep_their_size_and_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = loopdisk::ensure(d, "ld-worker-1", 0, 64 << 20)
        .await
        .unwrap();
    let b = loopdisk::ensure(d, "ld-worker-1", 1, 32 << 20)
        .await
        .unwrap();
    // A machine whose name extends this one's keeps its disks on release.
    let other = loopdisk::ensure(d, "ld-worker-10", 0, 16 << 20)
        .await
        .unwrap();
    assert!(a.device.starts_with("/dev/loop"), "{a:?}");
    assert_ne!(a.device, b.device);
    assert_eq!(size_of(&a.device), 64 << 20);
    assert_eq!(size_of(&b.device), 32 << 20);
    // Sparse: nothing written, (almost) nothing used.
    let used = std::fs::metadata(&a.file).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(used.unwrap() < 1 << 20);

    let again = loopdisk::ensure(d, "ld-worker-1", 0, 64 << 20)
        .await
        .unwrap();
    assert_eq!(again, a, "re-running finds the same attachment");
    let e = loopdisk::ensure(d, "ld-worker-1", 0, 128 << 20)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("exists with 67108864 bytes, the cluster file asks for 134217728"),
        "{e}"
    );

    assert_eq!(loopdisk::release(d, "ld-worker-1").await.unwrap(), 2);
    assert!(!a.file.exists() && !b.file.exists());
    let out = std::process::Command::new("losetup")
        .args(["--noheadings", "--output", "BACK-FILE", "--list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(!list.contains("ld-worker-1-disk"), "{list}");
    assert!(list.contains("ld-worker-10-disk1.img"), "{list}");
    assert_eq!(loopdisk::release(d, "ld-worker-10").await.unwrap(), 1);
    assert_eq!(loopdisk::release(d, "ld-worker-1").await.unwrap(), 0);
    let _ = other;
}
