//! Addons against a real kube-apiserver v1.20.2 + etcd (tests/common_api): every addon
//! in every mode, idempotent re-apply, conflicts, unserved kinds, checksum mismatch,
//! webhook and readiness timeouts, removal of what kubeforge applied and only that.
//! A v1.20 cluster file gets the releases the compatibility matrix matches to 1.20
//! (MetalLB v0.13.12, Contour v1.19.1, ingress-nginx controller-v1.3.1, Rook-Ceph
//! v1.10.13): they apply without any CRD fitting; a pinned release outside its range
//! is refused before anything is applied.
//!
//! Needs scripts/testbed/50-k8s-mirror.sh (kube-apiserver, kubectl) and
//! scripts/testbed/60-addons.sh (etcd, the addons mirror).

mod common_api;
mod support;

use common_api::{cluster_file, cluster_file_for, ApiServer};
use predicates::prelude::*;
use std::path::Path;

/// The apiserver without admission webhooks: nothing serves MetalLB's webhook here
/// (its controller image cannot be pulled), so pools could never be admitted.
const NO_WEBHOOKS: &str =
    "--disable-admission-plugins=ValidatingAdmissionWebhook,MutatingAdmissionWebhook";

fn kubeforge(dir: &Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::cargo_bin("kubeforge").unwrap();
    cmd.current_dir(dir)
        .env("KUBEFORGE_CACHE", dir.join("cache"))
        .env_remove("KUBEFORGE_STATE_KEY_FILE")
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .timeout(std::time::Duration::from_secs(240));
    cmd
}

fn addons(dir: &Path, api: &ApiServer, args: &[&str]) -> assert_cmd::assert::Assert {
    let mut cmd = kubeforge(dir);
    cmd.arg("addons")
        .args(args)
        .arg("-f")
        .arg(dir.join("cluster.yaml"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig);
    cmd.assert()
}

const L2_CONTOUR_ROOK: &str = "    metallb:
      mode: l2
      pools:
        - name: default
          addresses: [172.31.251.200-172.31.251.229]
        - name: reserved
          addresses: [172.31.251.240/29]
          autoAssign: false
      interfaces: [eth0]
    ingress:
      controller: contour
      pool: reserved
      loadBalancerIp: 172.31.251.241
    rookCeph:
      nodes:
        - name: t-worker-1
          devices: [/dev/loop7, vdb]
        - name: t-worker-2
          deviceFilter: ^vd[b-c]
      monCount: 3
";

const BGP_NGINX: &str = "    metallb:
      mode: bgp
      pools:
        - name: default
          addresses: [172.31.251.200-172.31.251.229]
      bgp:
        myASN: 64512
        communities: [\"64512:100\"]
        peers:
          - address: 172.31.250.1
            asn: 64513
            holdTime: 90s
            nodes: [t-worker-1]
          - address: 172.31.250.2
            asn: 64514
            port: 1179
    ingress:
      controller: ingress-nginx
";

fn json_out(a: &assert_cmd::assert::Assert) -> serde_json::Value {
    serde_json::from_slice(&a.get_output().stdout).expect("JSON output")
}

#[test]
fn every_addon_applies_with_the_expected_fields_and_a_second_apply_changes_nothing() {
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file(d, "t", L2_CONTOUR_ROOK);

    // Plan first: everything is to be created, nothing is applied by planning.
    addons(d, &api, &["plan"])
        .success()
        .stdout(predicate::str::contains(
            "+ create metallb: metallb.io/v1beta1 IPAddressPool metallb-system/default",
        ))
        .stdout(predicate::str::contains(
            "0 to update, 0 to delete, 0 unchanged",
        ));
    assert!(api.get(&["namespace", "metallb-system"]).is_none());

    let t = std::time::Instant::now();
    let first = addons(d, &api, &["apply", "--yes", "-o", "json"]).success();
    eprintln!(
        "first apply of MetalLB + Contour + Rook-Ceph: {:?}",
        t.elapsed()
    );
    let report = json_out(&first);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(
        outcomes
            .iter()
            .map(|o| o["addon"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["metallb", "contour", "rook-ceph"]
    );
    // The releases matched to Kubernetes 1.20.
    assert_eq!(
        outcomes
            .iter()
            .map(|o| o["version"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["v0.13.12", "v1.19.1", "v1.10.13"]
    );
    for o in outcomes {
        assert!(o["created"].as_u64().unwrap() > 0, "{o}");
        assert_eq!(o["changed"], 0, "{o}");
    }
    // Nothing runs here: no workload is available, and status says so.
    assert!(report["status"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["ready"] == false));

    // MetalLB: native manifest, two pools, an L2Advertisement over both.
    assert!(api
        .get(&["daemonset", "-n", "metallb-system", "speaker"])
        .is_some());
    let pool = api
        .get(&[
            "ipaddresspools.metallb.io",
            "-n",
            "metallb-system",
            "reserved",
        ])
        .unwrap();
    assert_eq!(
        pool["spec"]["addresses"],
        serde_json::json!(["172.31.251.240/29"])
    );
    assert_eq!(pool["spec"]["autoAssign"], false);
    assert_eq!(pool["metadata"]["labels"]["kubeforge.dev/addon"], "metallb");
    let l2 = api
        .get(&[
            "l2advertisements.metallb.io",
            "-n",
            "metallb-system",
            "kubeforge",
        ])
        .unwrap();
    assert_eq!(
        l2["spec"]["ipAddressPools"],
        serde_json::json!(["default", "reserved"])
    );
    assert_eq!(l2["spec"]["interfaces"], serde_json::json!(["eth0"]));
    let managers: Vec<String> = pool["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(managers, ["kubeforge/Apply"]);

    // Contour: Envoy exposed by a MetalLB LoadBalancer from the chosen pool and address.
    let envoy = api
        .get(&["service", "-n", "projectcontour", "envoy"])
        .unwrap();
    assert_eq!(envoy["spec"]["type"], "LoadBalancer");
    assert_eq!(
        envoy["metadata"]["annotations"]["metallb.io/address-pool"],
        "reserved"
    );
    assert_eq!(
        envoy["metadata"]["annotations"]["metallb.io/loadBalancerIPs"],
        "172.31.251.241"
    );
    assert!(api.get(&["crd", "httpproxies.projectcontour.io"]).is_some());

    // Rook-Ceph: CRDs, operator, and the CephCluster from the cluster file.
    assert!(api
        .get(&["deployment", "-n", "rook-ceph", "rook-ceph-operator"])
        .is_some());
    let ceph = api
        .get(&["cephclusters.ceph.rook.io", "-n", "rook-ceph", "rook-ceph"])
        .unwrap();
    assert_eq!(ceph["spec"]["mon"]["count"], 3);
    assert_eq!(ceph["spec"]["storage"]["useAllNodes"], false);
    assert_eq!(
        ceph["spec"]["storage"]["nodes"],
        serde_json::json!([
            {"name": "t-worker-1", "devices": [{"name": "loop7"}, {"name": "vdb"}]},
            {"name": "t-worker-2", "deviceFilter": "^vd[b-c]"}
        ])
    );
    // Rook v1.10 takes the OSD store type as a config setting (no `store` in its CRD).
    assert_eq!(ceph["spec"]["storage"]["config"]["storeType"], "bluestore");
    assert_eq!(
        ceph["spec"]["cephVersion"]["image"],
        "quay.io/ceph/ceph:v17.2.5"
    );

    let rv_before = pool["metadata"]["resourceVersion"].clone();
    // Re-running: the plan shows nothing to change and apply changes nothing.
    addons(d, &api, &["plan"])
        .success()
        .stdout(predicate::str::contains(
            "addons: 0 to create, 0 to update, 0 to delete",
        ));
    let t = std::time::Instant::now();
    let second = json_out(&addons(d, &api, &["apply", "--yes", "-o", "json"]).success());
    eprintln!("second apply (no change): {:?}", t.elapsed());
    for o in second["outcomes"].as_array().unwrap() {
        assert_eq!(
            (o["created"].as_u64(), o["changed"].as_u64()),
            (Some(0), Some(0)),
            "{o}"
        );
        assert!(o["unchanged"].as_u64().unwrap() > 0);
    }
    let pool = api
        .get(&[
            "ipaddresspools.metallb.io",
            "-n",
            "metallb-system",
            "reserved",
        ])
        .unwrap();
    assert_eq!(pool["metadata"]["resourceVersion"], rv_before);

    // A pool changed in the cluster file shows as a diff, then is applied.
    let text = std::fs::read_to_string(d.join("cluster.yaml")).unwrap();
    let text = text.replace("172.31.251.240/29", "172.31.251.248/29");
    std::fs::write(
        d.join("cluster.yaml"),
        text.replace("172.31.251.241", "172.31.251.249"),
    )
    .unwrap();
    addons(d, &api, &["plan"])
        .success()
        .stdout(predicate::str::contains(
            "~ update metallb: metallb.io/v1beta1 IPAddressPool metallb-system/reserved",
        ))
        .stdout(predicate::str::contains("-  - 172.31.251.240/29"))
        .stdout(predicate::str::contains("+  - 172.31.251.248/29"))
        .stdout(predicate::str::contains(
            "~ update contour: v1 Service projectcontour/envoy",
        ))
        .stdout(predicate::str::contains(
            "+    metallb.io/loadBalancerIPs: 172.31.251.249",
        ))
        .stdout(predicate::str::contains("2 to update"));
    let third = json_out(&addons(d, &api, &["apply", "--yes", "-o", "json"]).success());
    assert_eq!(
        third["outcomes"][0]["changed_objects"],
        serde_json::json!(["metallb.io/v1beta1 IPAddressPool metallb-system/reserved"])
    );
    assert_eq!(
        third["outcomes"][1]["changed_objects"],
        serde_json::json!(["v1 Service projectcontour/envoy"])
    );
}

#[test]
fn switching_modes_prunes_and_removing_an_addon_deletes_only_what_kubeforge_applied() {
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file(d, "t", L2_CONTOUR_ROOK);
    // The 1.20-matched releases need no CRD fitting (no CEL rules, no selectableFields
    // left out), except one: Contour v1.19.1's ContourConfiguration CRD defaults an
    // object holding `connectionBalancer: ""` (in two CRDs), which this v1.20.2 server
    // rejects even on a plain `kubectl create`; those defaults are left out, and the
    // note says so.
    addons(d, &api, &["apply", "--yes"])
        .success()
        .stderr(predicate::str::contains("predates CEL").not())
        .stderr(predicate::str::contains("selectableFields").not())
        .stderr(predicate::str::contains("left out of MetalLB").not())
        .stderr(predicate::str::contains("left out of Rook-Ceph").not())
        .stderr(predicate::str::contains(
            "2 empty-string default(s) left out of Contour v1.19.1's CRDs",
        ));
    // Someone else's pool in MetalLB's namespace: never touched.
    api.kubectl_file(
        &["apply"],
        "user-pool.yaml",
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: user, namespace: metallb-system}\nspec: {addresses: [10.9.9.0/29]}\n",
    );

    // BGP with FRR, ingress-nginx instead of Contour, Rook-Ceph dropped.
    cluster_file(d, "t", BGP_NGINX);
    // Deleting needs a yes: without a terminal and without --yes nothing happens.
    addons(d, &api, &["apply"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "- delete contour: v1 Namespace projectcontour",
        ))
        .stderr(predicate::str::contains(
            "- delete rook-ceph: ceph.rook.io/v1 CephCluster rook-ceph/rook-ceph",
        ))
        .stderr(predicate::str::contains("pass --yes"));
    assert!(api
        .get(&["deployment", "-n", "projectcontour", "contour"])
        .is_some());

    addons(d, &api, &["apply", "--yes"])
        .success()
        .stderr(predicate::str::contains("left out of").not())
        .stderr(predicate::str::contains("retired upstream in March 2026"))
        .stdout(predicate::str::contains("contour removed"))
        .stdout(predicate::str::contains("rook-ceph removed"));
    // MetalLB now BGP: peers and advertisement rendered, the L2 one pruned.
    let peer = api
        .get(&[
            "bgppeers.metallb.io",
            "-n",
            "metallb-system",
            "peer-172-31-250-1",
        ])
        .unwrap();
    assert_eq!(peer["apiVersion"], "metallb.io/v1beta2");
    assert_eq!(peer["spec"]["myASN"], 64512);
    assert_eq!(peer["spec"]["peerASN"], 64513);
    assert_eq!(peer["spec"]["holdTime"], "90s");
    assert_eq!(
        peer["spec"]["nodeSelectors"][0]["matchExpressions"][0]["values"],
        serde_json::json!(["t-worker-1"])
    );
    let peer2 = api
        .get(&[
            "bgppeers.metallb.io",
            "-n",
            "metallb-system",
            "peer-172-31-250-2",
        ])
        .unwrap();
    assert_eq!(peer2["spec"]["peerPort"], 1179);
    let adv = api
        .get(&[
            "bgpadvertisements.metallb.io",
            "-n",
            "metallb-system",
            "kubeforge",
        ])
        .unwrap();
    assert_eq!(adv["spec"]["communities"], serde_json::json!(["64512:100"]));
    assert!(api
        .get(&[
            "l2advertisements.metallb.io",
            "-n",
            "metallb-system",
            "kubeforge"
        ])
        .is_none());
    assert!(api
        .get(&[
            "ipaddresspools.metallb.io",
            "-n",
            "metallb-system",
            "reserved"
        ])
        .is_none());
    assert!(api
        .get(&["ipaddresspools.metallb.io", "-n", "metallb-system", "user"])
        .is_some());
    // The FRR speaker carries its frr container.
    let speaker = api
        .get(&["daemonset", "-n", "metallb-system", "speaker"])
        .unwrap();
    let containers: Vec<&str> = speaker["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(containers.contains(&"frr"), "{containers:?}");
    // ingress-nginx exposed through MetalLB.
    let svc = api
        .get(&["service", "-n", "ingress-nginx", "ingress-nginx-controller"])
        .unwrap();
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    // Contour and Rook-Ceph are gone (namespaces terminate: no namespace controller runs
    // here, so they may still be listed with a deletion timestamp).
    assert!(api.get(&["crd", "httpproxies.projectcontour.io"]).is_none());
    assert!(api.get(&["crd", "cephclusters.ceph.rook.io"]).is_none());
    assert!(api.get(&["clusterrole", "contour"]).is_none());
    if let Some(ns) = api.get(&["namespace", "projectcontour"]) {
        assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns}");
    }
}

#[test]
fn a_field_owned_by_another_manager_is_reported_and_only_forced_on_request() {
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file(d, "t", L2_CONTOUR_ROOK);
    addons(d, &api, &["apply", "--yes"]).success();
    api.kubectl_file(
        &["apply", "--server-side", "--force-conflicts", "--field-manager=ops-team"],
        "theirs.yaml",
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: default, namespace: metallb-system}\nspec: {addresses: [10.1.1.0/28]}\n",
    );

    addons(d, &api, &["apply", "--yes"])
        .failure()
        .code(5)
        .stderr(predicate::str::contains("server-side apply conflicts"))
        .stderr(predicate::str::contains(
            "IPAddressPool metallb-system/default",
        ))
        .stderr(predicate::str::contains("ops-team"))
        .stderr(predicate::str::contains(".spec.addresses"))
        .stderr(predicate::str::contains("--force-conflicts"));
    let pool = api
        .get(&[
            "ipaddresspools.metallb.io",
            "-n",
            "metallb-system",
            "default",
        ])
        .unwrap();
    assert_eq!(
        pool["spec"]["addresses"],
        serde_json::json!(["10.1.1.0/28"])
    );

    addons(d, &api, &["apply", "--yes", "--force-conflicts"]).success();
    let pool = api
        .get(&[
            "ipaddresspools.metallb.io",
            "-n",
            "metallb-system",
            "default",
        ])
        .unwrap();
    assert_eq!(
        pool["spec"]["addresses"],
        serde_json::json!(["172.31.251.200-172.31.251.229"])
    );
}

#[test]
fn unserved_kinds_are_reported_before_anything_is_applied() {
    // A server without batch/v1: Contour's certgen Job cannot be created there. The
    // cluster file claims Kubernetes 1.33 (so the matrix picks the newest releases) while
    // the server is 1.20: what the server lacks is found before anything is applied.
    let api = ApiServer::start(&[NO_WEBHOOKS, "--runtime-config=batch/v1=false"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file_for(d, "t", "v1.33.2", L2_CONTOUR_ROOK);
    addons(d, &api, &["apply", "--yes"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "does not serve what these addons need; nothing of them was applied",
        ))
        .stderr(predicate::str::contains("Contour v1.33.6: batch/v1 Job"))
        .stderr(predicate::str::contains(
            "is not served by Kubernetes v1.20.2",
        ))
        // Rook v1.20.6's csi-operator.yaml brings the csi.ceph.io CRDs its operator.yaml
        // uses (Driver, OperatorConfig): nothing of Rook is missing.
        .stderr(predicate::str::contains("csi.ceph.io").not())
        .stderr(predicate::str::contains("Rook-Ceph v1.20.6:").not());
    for ns in ["metallb-system", "projectcontour", "rook-ceph"] {
        assert!(api.get(&["namespace", ns]).is_none(), "{ns} was created");
    }
}

#[test]
fn the_newest_releases_apply_to_an_older_server_only_with_their_crds_fitted() {
    // The contrast to the 1.20-matched releases: MetalLB v0.16.1, Contour v1.33.6 and
    // Rook-Ceph v1.20.6 (with its csi-operator.yaml before operator.yaml) load into a
    // 1.20 server only with CEL rules and empty-string defaults left out, and say so.
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file_for(d, "t", "v1.33.2", L2_CONTOUR_ROOK);
    addons(d, &api, &["apply", "--yes"])
        .success()
        .stderr(predicate::str::contains(
            "left out of MetalLB v0.16.1's CRDs",
        ))
        .stderr(predicate::str::contains(
            "left out of Contour v1.33.6's CRDs",
        ))
        .stderr(predicate::str::contains(
            "left out of Rook-Ceph v1.20.6's CRDs",
        ));
    assert!(api.get(&["crd", "drivers.csi.ceph.io"]).is_some());
    assert!(api.get(&["crd", "operatorconfigs.csi.ceph.io"]).is_some());
    assert!(api
        .get(&["deployment", "-n", "rook-ceph", "rook-ceph-operator"])
        .is_some());
}

#[test]
fn the_matrix_refuses_a_release_pinned_outside_its_range() {
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file(
        d,
        "t",
        "    metallb:\n      version: v0.16.1\n      pools: [{name: a, addresses: [10.0.0.0/30]}]\n",
    );
    addons(d, &api, &["apply", "--yes"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "spec.addons.metallb.version: MetalLB v0.16.1 supports Kubernetes >= 1.21, not 1.20; v0.13.12 supports it",
        ))
        .stderr(predicate::str::contains("cluster.yaml:"));
    assert!(api.get(&["namespace", "metallb-system"]).is_none());
    // `addons versions` shows the matrix for this cluster file.
    let out = kubeforge(d)
        .args(["addons", "versions", "-o", "json"])
        .assert()
        .success();
    let m = json_out(&out);
    let metallb = m["addons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["addon"] == "metallb")
        .unwrap();
    assert_eq!(metallb["releases"][0]["version"], "v0.13.12");
    assert_eq!(metallb["releases"][1]["kubernetes"], ">= 1.21");
}

#[test]
fn a_tampered_mirror_file_aborts_before_anything_is_applied() {
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A mirror whose MetalLB manifest differs from the pinned release by one line.
    let mirror = d.join("mirror");
    let src = common_api::addons_mirror();
    let copy = |rel: &str| {
        let to = mirror.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src.join(rel), &to).unwrap();
        to
    };
    let m = copy("addons/metallb/v0.13.12/metallb-native.yaml");
    copy("addons/contour/v1.19.1/contour.yaml");
    let mut text = std::fs::read_to_string(&m).unwrap();
    text.push_str("# one more line\n");
    std::fs::write(&m, text).unwrap();
    let f = cluster_file(
        d,
        "t",
        "    metallb: {pools: [{name: a, addresses: [10.0.0.0/30]}]}\n    ingress: {}\n",
    );
    let t = std::fs::read_to_string(&f).unwrap();
    let t = t.replace(
        &format!("mirror: {}", src.display()),
        &format!("mirror: {}", mirror.display()),
    );
    std::fs::write(&f, t).unwrap();
    addons(d, &api, &["apply", "--yes"])
        .failure()
        .stderr(predicate::str::contains("metallb manifests"))
        .stderr(predicate::str::contains("metallb-native.yaml"))
        .stderr(predicate::str::contains(
            "a5e3b65e073ba8236cc36c283fb33260e764977c7e460d6a462347ccaa91683d",
        ));
    assert!(api.get(&["namespace", "metallb-system"]).is_none());
    assert!(api.get(&["namespace", "projectcontour"]).is_none());
}

#[test]
fn waits_end_with_a_clear_timeout_and_leave_a_consistent_state() {
    // Admission webhooks enabled (the default): MetalLB's never answers here.
    let api = ApiServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    cluster_file(
        d,
        "t",
        "    metallb: {pools: [{name: a, addresses: [10.0.0.0/30]}]}\n",
    );
    let started = std::time::Instant::now();
    addons(d, &api, &["apply", "--yes", "--timeout", "6s"])
        .failure()
        .code(5)
        .stderr(predicate::str::contains(
            "timed out after 6s waiting for the admission webhook of MetalLB v0.13.12 to answer",
        ))
        .stderr(predicate::str::contains(
            "IPAddressPool metallb-system/a was not admitted",
        ))
        .stderr(predicate::str::contains("webhook-service"));
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    // The upstream part is there, the pool is not; the state tracks all of it.
    assert!(api
        .get(&["deployment", "-n", "metallb-system", "controller"])
        .is_some());
    assert!(api
        .get(&["ipaddresspools.metallb.io", "-n", "metallb-system", "a"])
        .is_none());
    let state = kubeforge(d)
        .args(["state", "show", "-o", "json", "-f"])
        .arg(d.join("cluster.yaml"))
        .assert()
        .success();
    let doc: serde_json::Value = serde_json::from_slice(&state.get_output().stdout).unwrap();
    let objs = doc["state"]["addons"]["metallb"]["objects"]
        .as_array()
        .expect("recorded");
    assert!(objs
        .iter()
        .any(|o| o["kind"] == "IPAddressPool" && o["name"] == "a"));
    assert!(objs
        .iter()
        .any(|o| o["kind"] == "Deployment" && o["name"] == "controller"));

    // Readiness: nothing runs here, so --wait ends at its timeout listing what is not
    // available.
    addons(d, &api, &["status", "--wait", "--timeout", "3s"])
        .failure()
        .code(5)
        .stderr(predicate::str::contains(
            "timed out after 3s waiting for the addons to become ready",
        ))
        .stderr(predicate::str::contains(
            "Deployment metallb-system/controller",
        ));
    addons(d, &api, &["status"])
        .success()
        .stdout(predicate::str::contains("metallb v0.13.12: not ready"))
        .stdout(predicate::str::contains("DaemonSet metallb-system/speaker"));
}

#[test]
fn flannel_renders_the_pod_subnet_and_applies_calico_is_refused_on_1_20() {
    let api = ApiServer::start(&[NO_WEBHOOKS]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // networking.cni: flannel with a pod subnet of its own.
    let f = cluster_file(d, "t", "    rookCeph: {deviceFilter: ^vdb}\n");
    let text = std::fs::read_to_string(&f).unwrap().replace(
        "  artifacts:",
        "  networking:\n    podSubnet: 10.200.0.0/16\n    cni: flannel\n  artifacts:",
    );
    std::fs::write(&f, &text).unwrap();
    let report = json_out(&addons(d, &api, &["apply", "--yes", "-o", "json"]).success());
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(
        outcomes[0]["addon"], "flannel",
        "the pod network first: {report}"
    );
    assert_eq!(outcomes[0]["version"], "v0.28.9");
    let cm = api
        .get(&["configmap", "-n", "kube-flannel", "kube-flannel-cfg"])
        .unwrap();
    let net: serde_json::Value =
        serde_json::from_str(cm["data"]["net-conf.json"].as_str().unwrap()).unwrap();
    assert_eq!(net["Network"], "10.200.0.0/16");
    assert_eq!(net["Backend"]["Type"], "vxlan");
    assert_eq!(cm["metadata"]["labels"]["kubeforge.dev/addon"], "flannel");
    assert!(api
        .get(&["daemonset", "-n", "kube-flannel", "kube-flannel-ds"])
        .is_some());
    // Re-applying changes nothing.
    let again = json_out(&addons(d, &api, &["apply", "--yes", "-o", "json"]).success());
    assert_eq!(again["outcomes"][0]["changed"], 0, "{again}");

    // Calico v3.32.1 supports Kubernetes 1.34-1.36 only: refused on this 1.20 file.
    std::fs::write(&f, text.replace("cni: flannel", "cni: calico")).unwrap();
    addons(d, &api, &["apply", "--yes"])
        .failure()
        .code(2)
        .stderr(predicate::str::contains(
            "spec.networking.cni: no release of Calico that kubeforge knows supports Kubernetes 1.20 (known: v3.32.1 (1.34-1.36))",
        ));
    assert!(api.get(&["namespace", "calico-system"]).is_none());
    assert!(api
        .get(&["daemonset", "-n", "kube-system", "calico-node"])
        .is_none());
}
