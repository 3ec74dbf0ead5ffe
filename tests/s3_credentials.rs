//! S3 credentials and TLS as Terraform's S3 backend takes them (issue 17): a state store
//! on an https endpoint signed by a CA of its own (moto behind a certificate made here,
//! as a MinIO with its own CA), keys from a profile in a shared credentials file and no
//! AWS variables at all; a missing CA bundle and an unknown profile are clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Std;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Std::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test MinIO CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// The kubeforge binary with no AWS variables: only the profile file gives keys.
fn kf(dir: &Path, home: &Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(common::bin());
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("KUBEFORGE_STATE_KEY_FILE", dir.join("state.key"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("RUST_LOG", "warn");
    c
}

fn cluster(dir: &Path, port: u16, extra: &str) {
    std::fs::write(
        dir.join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {{name: demo}}
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker: {{}}
  state:
    url: s3://tfstate/clusters/demo
    endpoint: https://127.0.0.1:{port}
    pathStyle: true
    region: us-east-1
{extra}"
        ),
    )
    .unwrap();
}

#[test]
fn https_store_with_its_own_ca_and_keys_from_a_profile() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let home = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(d);
    let (mut moto, port) = common::moto::start_tls(&cert, &key);
    let bucket = Std::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-X", "PUT", &format!("https://127.0.0.1:{port}/tfstate")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&bucket.stdout),
        "200",
        "create the bucket over https: {}",
        String::from_utf8_lossy(&bucket.stderr)
    );
    // Keys only in a profile of the shared credentials file (as `aws configure
    // --profile minio` writes it); the region in the config file.
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        "[default]\naws_access_key_id = wrong\n[minio]\naws_access_key_id = minio-user\naws_secret_access_key = minio-secret-0123456789\n",
    )
    .unwrap();
    std::fs::copy(&ca, d.join("minio-ca.pem")).unwrap();
    kf(d, home.path())
        .args(["state", "keygen", "--out", "state.key"])
        .assert()
        .success();

    // Profile and CA bundle (relative to the cluster file): a lock taken and released
    // (conditional writes and a delete) and a read, over https.
    cluster(d, port, "    profile: minio\n    caBundle: minio-ca.pem\n");
    let out = kf(d, home.path())
        .args([
            "state",
            "lock-probe",
            "--hold-ms",
            "0",
            "-f",
            "cluster.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a lock (conditional write) over https: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kf(d, home.path())
        .args(["state", "show", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!(
            "there is no state at s3://tfstate/clusters/demo (endpoint https://127.0.0.1:{port}) yet"
        )),
        "read over https: {err}"
    );
    assert!(!err.contains("minio-secret"), "{err}");

    // The same without the CA bundle: the endpoint's certificate is not trusted.
    cluster(d, port, "    profile: minio\n");
    let out = kf(d, home.path())
        .args([
            "state",
            "lock-probe",
            "--hold-ms",
            "0",
            "-f",
            "cluster.yaml",
        ])
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // A profile that is not there, and a CA bundle that is not PEM.
    cluster(d, port, "    profile: nope\n    caBundle: minio-ca.pem\n");
    let out = kf(d, home.path())
        .args(["state", "show", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("profile `nope` has no keys in") && err.contains(".aws/credentials"),
        "{err}"
    );
    std::fs::write(d.join("not-a-ca.pem"), "hello").unwrap();
    cluster(d, port, "    profile: minio\n    caBundle: not-a-ca.pem\n");
    let out = kf(d, home.path())
        .args(["state", "show", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("CA bundle") && err.contains("not-a-ca.pem"),
        "{err}"
    );
    let _ = moto.kill();
    let _ = moto.wait();
}
