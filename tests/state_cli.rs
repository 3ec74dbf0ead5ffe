//! `kubeforge state` found through a cluster file: relative store URLs and key files
//! resolve against the cluster file's directory, the default store, key generation,
//! and the input errors a user can make.

mod common;

use kubeforge::state::{EncryptionSpec, StateSpec};
use predicates::prelude::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

fn cmd(cwd: &std::path::Path) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(common::bin());
    c.current_dir(cwd);
    common::base_env(&mut c);
    c
}

const CLUSTER: &str = r#"apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: demo
spec:
  kubernetesVersion: v1.20.2
  provider:
    docker: {}
  state:
    url: file://state-store
    encryption:
      keyFile: keys/state.key
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_file_locates_store_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, CLUSTER).unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();

    // A key file, 0600, never overwritten.
    cmd(dir.path())
        .args(["state", "keygen", "--out", "keys/state.key"])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r"^wrote keys/state.key \(mode 0600\), public key age1[0-9a-z]+; ",
            )
            .unwrap(),
        );
    let key = dir.path().join("keys/state.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("AGE-SECRET-KEY-1"));
    cmd(dir.path())
        .args(["state", "keygen", "--out", "keys/state.key"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: keys/state.key exists; refusing to overwrite a key",
        ));

    // The library opens the same store from the spec, relative to the cluster file.
    let spec = StateSpec {
        url: Some("file://state-store".into()),
        encryption: EncryptionSpec {
            key_file: Some(PathBuf::from("keys/state.key")),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = kubeforge::state::open(&spec, "demo", dir.path()).unwrap();
    assert!(store.has_key());
    let (mut doc, v0) = store.load_or_new().await.unwrap();
    doc.secrets.admin_kubeconfig = Some("kc".into());
    store.save(&mut doc, &v0).await.unwrap();
    assert!(dir.path().join("state-store/state.json").is_file());
    assert!(dir.path().join("state-store/history/1.json").is_file());

    // The CLI, run from another directory, finds it through -f.
    let f = cluster.to_str().unwrap();
    cmd(elsewhere.path())
        .args(["state", "show", "-f", f])
        .assert()
        .success()
        .stdout(predicate::str::contains("cluster:     demo"))
        .stdout(predicate::str::contains(format!(
            "store:       file://{}",
            dir.path().join("state-store").display()
        )))
        .stdout(predicate::str::contains(
            "secrets:     adminKubeconfig (encrypted",
        ));
    // -f before the subcommand works too.
    cmd(elsewhere.path())
        .args(["state", "-f", f, "history"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^1\s+\d{4}-").unwrap());
    // pull/push use the key file named in the cluster file (push checks it decrypts).
    cmd(elsewhere.path())
        .args(["state", "pull", "-f", f])
        .assert()
        .success()
        .stdout(predicate::str::contains("to demo.state.json (mode 0600"));
    let copy = elsewhere.path().join("demo.state.json");
    assert_eq!(
        std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    cmd(elsewhere.path())
        .args([
            "state",
            "push",
            "demo.state.json",
            "--generation",
            "1",
            "-f",
            f,
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("as generation 2 (was 1)"));
    // JSON output.
    let out = cmd(elsewhere.path())
        .args(["state", "show", "-f", f, "--output", "json"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["state"]["generation"], 2);
    assert_eq!(v["state"]["cluster"], "demo");
    assert_eq!(v["lock"], serde_json::Value::Null);

    // A store that belongs to another cluster is refused.
    let other = dir.path().join("other.yaml");
    std::fs::write(&other, CLUSTER.replace("name: demo", "name: other")).unwrap();
    cmd(elsewhere.path())
        .args(["state", "show", "-f", other.to_str().unwrap()])
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "belongs to cluster \"demo\", not \"other\"",
        ));
}

#[test]
fn default_store_and_input_errors() {
    assert_eq!(
        kubeforge::state::default_url("demo"),
        "file://.kubeforge/demo"
    );
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.yaml");
    std::fs::write(
        &plain,
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata:\n  name: demo2\nspec:\n  kubernetesVersion: v1.20.2\n",
    )
    .unwrap();
    cmd(dir.path())
        .args(["state", "show", "-f", "plain.yaml"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains(format!(
            "error: there is no state at file://{}/.kubeforge/demo2 yet\n",
            dir.path().display()
        )));
    cmd(dir.path())
        .args(["state", "lock-probe", "--hold-ms", "0", "-f", "plain.yaml"])
        .assert()
        .success();
    assert!(dir.path().join(".kubeforge/demo2").is_dir());

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "metadata:\n  name: x\nspec:\n  state:\n    url: file://s\n    bucket: nope\n",
    )
    .unwrap();
    cmd(dir.path())
        .args(["state", "show", "-f", "bad.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "bad.yaml: cannot read metadata.name and spec.state",
        ))
        .stderr(predicate::str::contains("unknown field `bucket`"));

    cmd(dir.path())
        .args(["state", "show"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: no cluster file: pass -f cluster.yaml or --state-url URL",
        ));
    cmd(dir.path())
        .args(["state", "show", "--state-url", "ftp://host/x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: invalid state store URL \"ftp://host/x\": unknown scheme \"ftp\"",
        ));
    cmd(dir.path())
        .args(["state", "show", "--state-url", "s3:///prefix"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("the bucket name is missing"));
    cmd(dir.path())
        .args([
            "state",
            "push",
            "nofile.json",
            "--generation",
            "1",
            "--state-url",
            "file://s",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("error: cannot read nofile.json"));
}
