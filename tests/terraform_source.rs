//! Hosts from a Terraform state (issue 17): the binary as a user runs it, on state files
//! in the formats the providers write (tests/fixtures/tfstate, see its README), from a
//! local file and from a real S3 API (moto) the way Terraform's S3 backend keeps them;
//! broken states and selectors give clear errors.

mod common;

use assert_cmd::Command;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tfstate")
        .join(name)
}

fn kubeforge(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("kubeforge").unwrap();
    c.current_dir(dir)
        .env_remove("KUBEFORGE_STATE_KEY_FILE")
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .env_remove("KUBEFORGE_STATE_KEY");
    c
}

/// A cluster file whose hosts come from `terraform` (the block's body, indented).
fn cluster(dir: &Path, terraform: &str, extra: &str) -> PathBuf {
    let f = dir.join("cluster.yaml");
    std::fs::write(
        &f,
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata: {{name: prd}}
spec:
  kubernetesVersion: v1.20.2
  ssh: {{user: ubuntu, keyFile: id_ed25519}}
  provider:
    static:
      terraform:
{terraform}
{extra}"
        ),
    )
    .unwrap();
    f
}

const EXTERNAL_LB: &str = "  loadBalancer: {type: external, endpoint: 'api.example.com:6443'}\n";

/// `plan --offline` lines `use host ...`, and `inventory --list`'s (ansible_host, ip).
fn hosts(dir: &Path) -> (Vec<String>, Vec<(String, String, String)>) {
    let out = kubeforge(dir)
        .args(["plan", "--offline", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uses = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("* use host "))
        .map(String::from)
        .collect();
    let out = kubeforge(dir)
        .args(["inventory", "-f", "cluster.yaml", "--list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vars = inv["_meta"]["hostvars"].as_object().unwrap();
    let addrs = vars
        .iter()
        .map(|(h, v)| {
            (
                h.clone(),
                v["ansible_host"].as_str().unwrap_or_default().to_string(),
                v["ip"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (uses, addrs)
}

fn triple(h: &str, a: &str, i: &str) -> (String, String, String) {
    (h.into(), a.into(), i.into())
}

#[test]
fn sakura_cloud_servers_by_tag_with_public_and_switch_addresses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("sakuracloud.tfstate"),
        dir.path().join("terraform.tfstate"),
    )
    .unwrap();
    cluster(
        dir.path(),
        "        state: terraform.tfstate
        controlPlane: {tag: control-plane}
        workers: {tag: worker}
        loadBalancers: {tag: lb}",
        "  loadBalancer: {vip: 192.168.100.250, interface: eth1}
  networking: {nodeSubnet: 192.168.100.0/24}
",
    );
    let (uses, addrs) = hosts(dir.path());
    assert_eq!(
        uses.len(),
        7,
        "the bastion in module.bastion is not a host: {uses:#?}"
    );
    assert!(
        uses.contains(&"`k8s-cp-01` at 203.0.113.11 (control-plane) from sakuracloud_server.cp[0] in Terraform state terraform.tfstate".to_string()),
        "{uses:#?}"
    );
    assert!(
        uses.iter().any(|u| u.starts_with("`k8s-worker-02` at ")
            && u.contains("from sakuracloud_server.worker[\"worker-02\"]")),
        "{uses:#?}"
    );
    // SSH to the shared-segment address, the cluster on the switch.
    assert!(
        addrs.contains(&triple("k8s-cp-01", "203.0.113.11", "192.168.100.11")),
        "{addrs:#?}"
    );
    assert!(addrs.iter().all(|(h, _, _)| h != "bastion"), "{addrs:#?}");
    // sshAddress: private takes the switch addresses for SSH too.
    cluster(
        dir.path(),
        "        state: terraform.tfstate
        sshAddress: private
        controlPlane: {tag: control-plane}
        workers: {tag: worker}
        loadBalancers: {tag: lb}",
        "  loadBalancer: {vip: 192.168.100.250, interface: eth1}
  networking: {nodeSubnet: 192.168.100.0/24}
",
    );
    let (_, addrs) = hosts(dir.path());
    assert!(
        addrs.contains(&triple("k8s-cp-01", "192.168.100.11", "192.168.100.11")),
        "{addrs:#?}"
    );
}

#[test]
fn aws_hcloud_and_openstack_instances_by_label_name_and_module() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["aws", "hcloud", "openstack"] {
        std::fs::copy(
            fixture(&format!("{f}.tfstate")),
            dir.path().join(format!("{f}.tfstate")),
        )
        .unwrap();
    }
    // AWS: the Role tag; the Name tag is the host name; a worker without a public IP is
    // reached on its private one.
    cluster(
        dir.path(),
        "        state: aws.tfstate
        controlPlane: {label: Role=control-plane}
        workers: {label: Role=worker}",
        EXTERNAL_LB,
    );
    let (uses, addrs) = hosts(dir.path());
    assert_eq!(uses.len(), 5, "{uses:#?}");
    assert!(
        uses.iter().any(|u| u.starts_with(
            "`prd-cp-1` at 192.0.2.11 (control-plane) from aws_instance.control_plane[0]"
        )),
        "{uses:#?}"
    );
    assert!(
        addrs.contains(&triple("prd-cp-1", "192.0.2.11", "10.0.1.11")),
        "{addrs:#?}"
    );
    assert!(
        addrs.contains(&triple("prd-worker-1", "10.0.1.21", "10.0.1.21")),
        "{addrs:#?}"
    );
    // Hetzner: labels; private network addresses inside the cluster.
    cluster(
        dir.path(),
        "        state: hcloud.tfstate
        controlPlane: {label: role=control-plane}
        workers: {label: role=worker}",
        EXTERNAL_LB,
    );
    let (uses, addrs) = hosts(dir.path());
    assert_eq!(uses.len(), 5, "{uses:#?}");
    assert!(
        addrs.contains(&triple("dev-cp-2", "198.51.100.12", "10.0.0.12")),
        "{addrs:#?}"
    );
    assert!(
        addrs.contains(&triple("dev-worker-2", "10.0.0.22", "10.0.0.22")),
        "{addrs:#?}"
    );
    // OpenStack inside a module: metadata and a resource pattern; the floating address
    // from its association resource.
    cluster(
        dir.path(),
        "        state: openstack.tfstate
        controlPlane: {label: role=control-plane, resource: 'module.k8s.*'}
        workers: {name: '*worker*'}",
        EXTERNAL_LB,
    );
    let (uses, addrs) = hosts(dir.path());
    assert_eq!(uses.len(), 4, "{uses:#?}");
    assert!(
        uses.iter().any(|u| u.contains(
            "from module.k8s.openstack_compute_instance_v2.control_plane[2] in Terraform state openstack.tfstate"
        )),
        "{uses:#?}"
    );
    assert!(
        addrs.contains(&triple("k8s-cp-1", "203.0.113.101", "172.16.0.11")),
        "{addrs:#?}"
    );
    assert!(
        addrs.contains(&triple("k8s-worker-1", "172.16.0.21", "172.16.0.21")),
        "{addrs:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_in_s3_is_read_as_terraforms_backend_keeps_it() {
    use object_store::ObjectStoreExt;
    common::aws_env();
    let moto = common::moto::shared();
    let key = format!("env/prd-{}/terraform.tfstate", std::process::id());
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(&moto.bucket)
        .with_endpoint(moto.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    store
        .put(
            &object_store::path::Path::from(key.as_str()),
            std::fs::read(fixture("hcloud.tfstate")).unwrap().into(),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let block = |k: &str| {
        format!(
            "        state: s3://{}/{k}
        endpoint: {}
        pathStyle: true
        allowHttp: true
        accessKeyIdEnv: TF_S3_ID
        secretAccessKeyEnv: TF_S3_SECRET
        controlPlane: {{label: role=control-plane}}
        workers: {{label: role=worker}}",
            moto.bucket,
            moto.endpoint()
        )
    };
    cluster(dir.path(), &block(&key), EXTERNAL_LB);
    let out = kubeforge(dir.path())
        .env("TF_S3_ID", "testing")
        .env("TF_S3_SECRET", "testing")
        .args(["plan", "--offline", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "`dev-cp-1` at 198.51.100.11 (control-plane) from hcloud_server.control_plane[0] in Terraform state s3://{}/{key}",
            moto.bucket
        )),
        "{text}"
    );
    // The credential variables it names must be set; a missing key is named.
    let out = kubeforge(dir.path())
        .env_remove("TF_S3_ID")
        .args(["validate", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("accessKeyIdEnv names TF_S3_ID, which is not set"),
        "{err}"
    );
    cluster(
        dir.path(),
        &block("env/nope/terraform.tfstate"),
        EXTERNAL_LB,
    );
    let out = kubeforge(dir.path())
        .env("TF_S3_ID", "testing")
        .env("TF_S3_SECRET", "testing")
        .args(["validate", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cluster.yaml:")
            && err.contains("spec.provider.static.terraform.state")
            && err.contains("no such object"),
        "{err}"
    );
}

fn validate_err(dir: &Path) -> String {
    let out = kubeforge(dir)
        .args(["validate", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn broken_states_and_selectors_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let selectors = "        controlPlane: {label: role=control-plane}
        workers: {label: role=worker}";
    // Not JSON: the state file, line and column.
    std::fs::write(
        d.join("bad.tfstate"),
        "{\n  \"version\": 4,\n  \"resources\": [,]\n}\n",
    )
    .unwrap();
    cluster(
        d,
        &format!("        state: bad.tfstate\n{selectors}"),
        EXTERNAL_LB,
    );
    let err = validate_err(d);
    assert!(
        err.contains("bad.tfstate:3:") && err.contains("invalid JSON"),
        "{err}"
    );
    // An old format.
    std::fs::write(d.join("old.tfstate"), r#"{"version": 3, "modules": []}"#).unwrap();
    cluster(
        d,
        &format!("        state: old.tfstate\n{selectors}"),
        EXTERNAL_LB,
    );
    let err = validate_err(d);
    assert!(
        err.contains("format version 3") && err.contains("version 4"),
        "{err}"
    );
    // A missing file.
    cluster(
        d,
        &format!("        state: gone.tfstate\n{selectors}"),
        EXTERNAL_LB,
    );
    let err = validate_err(d);
    assert!(
        err.contains("spec.provider.static.terraform.state") && err.contains("gone.tfstate"),
        "{err}"
    );
    // Roles not chosen, a label that is not key=value, an empty selector.
    std::fs::copy(fixture("hcloud.tfstate"), d.join("hcloud.tfstate")).unwrap();
    cluster(
        d,
        "        state: hcloud.tfstate
        workers: {label: role}
        loadBalancers: {}",
        EXTERNAL_LB,
    );
    let err = validate_err(d);
    assert!(err.contains("`controlPlane` is missing"), "{err}");
    assert!(
        err.contains("spec.provider.static.terraform.workers.label")
            && err.contains("expected key=value"),
        "{err}"
    );
    assert!(
        err.contains("spec.provider.static.terraform.loadBalancers"),
        "{err}"
    );
    assert!(err.contains("cluster.yaml:"), "file and line: {err}");
    // Selectors that choose nothing say what was read.
    cluster(
        d,
        "        state: hcloud.tfstate
        controlPlane: {tag: no-such-tag}
        workers: {name: 'nothing-*'}",
        EXTERNAL_LB,
    );
    let err = validate_err(d);
    assert!(
        err.contains(
            "no instance of the state matches the role selectors (5 instance(s) of hcloud_server"
        ),
        "{err}"
    );
    // Both sources, or none.
    std::fs::write(
        d.join("cluster.yaml"),
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {name: prd}\nspec:\n  kubernetesVersion: v1.20.2\n  ssh: {keyFile: k}\n  provider:\n    static: {inventory: hosts.yaml, terraform: {state: hcloud.tfstate}}\n",
    )
    .unwrap();
    let err = validate_err(d);
    assert!(
        err.contains("`inventory: FILE` or `terraform: {state: ...}`"),
        "{err}"
    );
    // Values from the state reach shells and config files: checked like an inventory's.
    let mut evil: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("aws.tfstate")).unwrap()).unwrap();
    let cps = &mut evil["resources"][0]["instances"];
    cps[0]["attributes"]["tags"]["Name"] = "cp;rm -rf /".into();
    cps[1]["attributes"]["private_ip"] = "10.0.1.999\nx".into();
    std::fs::write(d.join("evil.tfstate"), evil.to_string()).unwrap();
    cluster(
        d,
        "        state: evil.tfstate
        controlPlane: {label: Role=control-plane}
        workers: {label: Role=worker}",
        EXTERNAL_LB,
    );
    let err = validate_err(d);
    assert!(
        err.contains("aws_instance.control_plane[0]") && err.contains("is not a valid host name"),
        "{err}"
    );
    assert!(
        err.contains("aws_instance.control_plane[1]") && err.contains("is not an IP address"),
        "{err}"
    );
    // A fuzzed state never panics the loader.
    let good = std::fs::read_to_string(fixture("aws.tfstate")).unwrap();
    for cut in (0..good.len()).step_by(good.len() / 40) {
        std::fs::write(d.join("cut.tfstate"), &good[..cut]).unwrap();
        cluster(
            d,
            &format!("        state: cut.tfstate\n{selectors}"),
            EXTERNAL_LB,
        );
        validate_err(d);
    }
}
