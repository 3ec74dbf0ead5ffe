//! The AWS provider against a real EC2 API emulator: moto's server, started by the tests
//! on a free loopback port. moto's instance addresses are fake: nothing here connects
//! to them (the SSH phases are covered on the docker provider).

mod common;

use common::moto;
use kubeforge::provider::aws::{AwsCredentials, AwsProvider, AwsSpec, Ec2Client};
use kubeforge::provider::cloud::{ApiLb, CloudContext, Retry, Secret};
use kubeforge::provider::{MachineRole, MachineSpec, Provider};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn creds() -> AwsCredentials {
    AwsCredentials {
        access_key_id: "testing".into(),
        secret_access_key: Secret::new("testing"),
        session_token: None,
    }
}

fn spec(endpoint: &str) -> AwsSpec {
    serde_json::from_value(serde_json::json!({
        "image": "ami-12c6146b",
        "endpoint": endpoint,
        "allowHttp": true,
        "region": "us-east-1",
    }))
    .unwrap()
}

fn ctx(cluster: &str) -> CloudContext {
    CloudContext {
        cluster: cluster.into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        ssh_public_key:
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl6ZmFrZWtleWZvcnRlc3RzMDAwMDAwMDAwMDAwMDAw test"
                .into(),
        ssh_port: 22,
        api_ports: vec![6443],
        vip: None,
        vip_holder: None,
        api_lb: None,
    }
}

fn provider(cluster: &str, endpoint: &str) -> AwsProvider {
    AwsProvider::with_credentials(&spec(endpoint), ctx(cluster), Ok(creds())).unwrap()
}

fn specs(cluster: &str) -> Vec<MachineSpec> {
    vec![
        MachineSpec {
            name: format!("{cluster}-cp-1"),
            role: MachineRole::ControlPlane,
            ip: "10.42.0.10".parse().unwrap(),
            extra_disks: vec![],
        },
        MachineSpec {
            name: format!("{cluster}-worker-1"),
            role: MachineRole::Worker,
            ip: "10.42.0.20".parse().unwrap(),
            extra_disks: vec![50 << 30],
        },
    ]
}

/// A raw EC2 client on moto, for looking behind the provider's back.
fn raw(endpoint: &str) -> Ec2Client {
    Ec2Client::new(endpoint.into(), "us-east-1".into(), Ok(creds())).unwrap()
}

/// Ids of the live (not terminated) instances whose tag `key` is `value`.
async fn live_instances(endpoint: &str, key: &str, value: &str) -> Vec<String> {
    let params = vec![
        ("Filter.1.Name".to_string(), format!("tag:{key}")),
        ("Filter.1.Value.1".to_string(), value.to_string()),
        (
            "Filter.2.Name".to_string(),
            "instance-state-name".to_string(),
        ),
        ("Filter.2.Value.1".to_string(), "pending".to_string()),
        ("Filter.2.Value.2".to_string(), "running".to_string()),
    ];
    let xml = raw(endpoint)
        .call("DescribeInstances", "test", &params)
        .await
        .unwrap();
    xml.split("<instanceId>")
        .skip(1)
        .filter_map(|s| s.split("</instanceId>").next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn ensure_twice_makes_each_machine_once() {
    let m = moto::shared();
    let p = provider("ens", &m.endpoint());
    let first = p.ensure(&specs("ens")).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].ip, Some("10.42.0.10".parse().unwrap()));
    assert_eq!(first[1].role, MachineRole::Worker);
    assert!(first[0].public_ip.is_some(), "{first:?}");
    let again = p.ensure(&specs("ens")).await.unwrap();
    assert_eq!(
        first.iter().map(|m| &m.id).collect::<Vec<_>>(),
        again.iter().map(|m| &m.id).collect::<Vec<_>>()
    );
    assert_eq!(
        live_instances(&m.endpoint(), "kubeforge:cluster", "ens")
            .await
            .len(),
        2
    );
    let resources = p.resources().await.unwrap();
    let kinds: Vec<&str> = resources.iter().map(|r| r.kind.as_str()).collect();
    for k in [
        "instance",
        "volume",
        "security-group",
        "subnet",
        "internet-gateway",
        "vpc",
        "key-pair",
    ] {
        assert!(kinds.contains(&k), "{k} missing from {resources:?}");
    }
    // The nodes reach each other's pods over VXLAN (UDP 8472 within the group).
    let xml = raw(&m.endpoint())
        .call(
            "DescribeSecurityGroups",
            "test",
            &[
                ("Filter.1.Name".to_string(), "group-name".to_string()),
                ("Filter.1.Value.1".to_string(), "ens-nodes".to_string()),
            ],
        )
        .await
        .unwrap();
    assert!(
        xml.split("<item>")
            .any(|r| r.contains("<ipProtocol>udp</ipProtocol>")
                && r.contains("<fromPort>8472</fromPort>")
                && r.contains("<toPort>8472</toPort>")),
        "{xml}"
    );
    // The worker's extra disk is there, with the machine's tags.
    assert!(resources
        .iter()
        .any(|r| r.kind == "volume" && r.name == "ens-worker-1:/dev/sdf"));
    // A second provider object (a new run) finds the same things.
    let p2 = provider("ens", &m.endpoint());
    assert_eq!(p2.list().await.unwrap().len(), 2);
    // Delete one machine; deleting it again is success.
    p.delete("ens-worker-1").await.unwrap();
    p.delete("ens-worker-1").await.unwrap();
    assert_eq!(
        live_instances(&m.endpoint(), "kubeforge:cluster", "ens")
            .await
            .len(),
        1
    );
    let gone = p.destroy_all().await.unwrap();
    assert!(gone.iter().any(|r| r.kind == "vpc"));
    assert!(p.resources().await.unwrap().is_empty());
    // Destroying what is gone is success.
    assert!(p.destroy_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_machine_whose_address_drifted_is_an_error_not_a_new_machine() {
    let m = moto::shared();
    let p = provider("drift", &m.endpoint());
    let mut s = specs("drift");
    s.truncate(1);
    p.ensure(&s).await.unwrap();
    s[0].ip = "10.42.0.11".parse().unwrap();
    let err = p.ensure(&s).await.unwrap_err().to_string();
    assert!(
        err.contains("address is 10.42.0.10, spec says 10.42.0.11"),
        "{err}"
    );
    assert_eq!(
        live_instances(&m.endpoint(), "kubeforge:cluster", "drift")
            .await
            .len(),
        1
    );
    p.destroy_all().await.unwrap();
}

#[tokio::test]
async fn delete_removes_only_what_carries_the_cluster_tag() {
    let m = moto::shared();
    let e = m.endpoint();
    // Someone else's instance without any tag, and one of another cluster.
    let run = |tags: Option<&str>| {
        let mut params = vec![
            ("ImageId".to_string(), "ami-12c6146b".to_string()),
            ("MinCount".to_string(), "1".to_string()),
            ("MaxCount".to_string(), "1".to_string()),
            ("InstanceType".to_string(), "t3.micro".to_string()),
        ];
        if let Some(c) = tags {
            params.push(("TagSpecification.1.ResourceType".into(), "instance".into()));
            params.push((
                "TagSpecification.1.Tag.1.Key".into(),
                "kubeforge:cluster".into(),
            ));
            params.push(("TagSpecification.1.Tag.1.Value".into(), c.into()));
            params.push(("TagSpecification.1.Tag.2.Key".into(), "Name".into()));
            params.push(("TagSpecification.1.Tag.2.Value".into(), "tagd-cp-1".into()));
        }
        let e = e.clone();
        async move { raw(&e).call("RunInstances", "test", &params).await.unwrap() }
    };
    let untagged = run(None).await;
    let untagged_id = untagged
        .split("<instanceId>")
        .nth(1)
        .and_then(|s| s.split("</instanceId>").next())
        .unwrap()
        .to_string();
    run(Some("someone-else")).await;
    let p = provider("tagd", &e);
    p.ensure(&specs("tagd")).await.unwrap();
    // A second tagged VPC, as a create repeated after a lost answer would leave: both go.
    raw(&e)
        .call(
            "CreateVpc",
            "test",
            &[
                ("CidrBlock".to_string(), "10.43.0.0/16".to_string()),
                (
                    "TagSpecification.1.ResourceType".to_string(),
                    "vpc".to_string(),
                ),
                (
                    "TagSpecification.1.Tag.1.Key".to_string(),
                    "kubeforge:cluster".to_string(),
                ),
                (
                    "TagSpecification.1.Tag.1.Value".to_string(),
                    "tagd".to_string(),
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        p.resources()
            .await
            .unwrap()
            .iter()
            .filter(|r| r.kind == "vpc")
            .count(),
        2
    );
    // Same machine name in another cluster: not ours, not touched.
    let deleted = p.destroy_all().await.unwrap();
    assert!(deleted
        .iter()
        .all(|r| r.id.as_deref().is_none_or(|i| i != untagged_id)));
    assert_eq!(
        live_instances(&e, "kubeforge:cluster", "tagd").await.len(),
        0
    );
    assert_eq!(deleted.iter().filter(|r| r.kind == "vpc").count(), 2);
    assert!(p.resources().await.unwrap().is_empty());
    assert_eq!(
        live_instances(&e, "kubeforge:cluster", "someone-else")
            .await
            .len(),
        1
    );
    let xml = raw(&e)
        .call(
            "DescribeInstances",
            "test",
            &[("InstanceId.1".to_string(), untagged_id.clone())],
        )
        .await
        .unwrap();
    assert!(
        xml.contains("<name>running</name>"),
        "the untagged instance must survive: {xml}"
    );
}

/// A loopback HTTP proxy in front of moto that answers the first `n` requests with
/// 503 RequestLimitExceeded (closing the connection), then forwards.
fn throttling_proxy(target: u16, n: usize) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let throttled = Arc::new(AtomicUsize::new(0));
    let count = throttled.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut inbound) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || {
                if count.load(Ordering::SeqCst) < n {
                    // Read the request head and body, then refuse it.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(k) = inbound.read(&mut chunk) else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..k]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let len = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if buf.len() >= head_end + 4 + len {
                                break;
                            }
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>t</RequestID></Response>";
                    let _ = write!(
                        inbound,
                        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                let Ok(mut outbound) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                let mut in2 = inbound.try_clone().unwrap();
                let mut out2 = outbound.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut in2, &mut out2);
                    let _ = out2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut outbound, &mut inbound);
                let _ = inbound.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    (port, throttled)
}

#[tokio::test]
async fn throttling_is_retried_with_backoff() {
    let m = moto::shared();
    let (port, throttled) = throttling_proxy(m.port, 3);
    let p = provider("thr", &format!("http://127.0.0.1:{port}"));
    let machines = p.ensure(&specs("thr")[..1]).await.unwrap();
    assert_eq!(machines.len(), 1);
    assert_eq!(throttled.load(Ordering::SeqCst), 3);
    p.destroy_all().await.unwrap();

    // Throttled for longer than the retries last: the error names the operation, the
    // resource and AWS's code and message.
    let (port, throttled) = throttling_proxy(m.port, 1000);
    let mut p = provider("thr2", &format!("http://127.0.0.1:{port}"));
    p.set_retry(Retry {
        attempts: 3,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(50),
    });
    let err = p.ensure(&specs("thr2")[..1]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "aws DescribeVpcs thr2: RequestLimitExceeded: Request limit exceeded. (HTTP 503)"
    );
    assert_eq!(throttled.load(Ordering::SeqCst), 3);
}

// ---- the binary, as a user runs it ----

fn write_cluster(dir: &Path, name: &str, endpoint: &str) -> std::path::PathBuf {
    let key = dir.join("state.key");
    let out = Command::new(common::bin())
        .args(["state", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let file = dir.join("cluster.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: {name}
spec:
  kubernetesVersion: v1.30.2
  provider:
    aws:
      image: ami-12c6146b
      endpoint: {endpoint}
      allowHttp: true
      region: us-east-1
  state:
    url: file://state
    encryption: {{keyFile: state.key}}
  nodePools:
    controlPlane: {{count: 3}}
    workers: {{count: 1, extraDisks: [20G]}}
    loadBalancers: {{count: 2}}
"
        ),
    )
    .unwrap();
    file
}

fn kubeforge(dir: &Path) -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(dir)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_EC2")
        .env_remove("KUBEFORGE_FAULT")
        .env("HOME", dir)
        .stdin(std::process::Stdio::null());
    c
}

fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test]
async fn apply_machines_then_destroy_end_to_end() {
    let m = moto::shared();
    let dir = tempfile::tempdir().unwrap();
    write_cluster(dir.path(), "e2e", &m.endpoint());

    // plan: every cloud resource is to be created.
    let (plan, _) = run_ok(kubeforge(dir.path()).args(["plan", "-f", "cluster.yaml"]));
    assert!(
        plan.contains("Cloud resources on aws (12 to create, 0 existing)"),
        "{plan}"
    );
    assert!(plan.contains("create  instance `e2e-cp-1`"), "{plan}");

    let (out, err) = run_ok(kubeforge(dir.path()).args([
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]));
    assert!(out.contains("cluster `e2e` applied (1 phases"), "{out}");
    assert!(err.contains("create  vpc `e2e`"), "{err}");
    let ids = live_instances(&m.endpoint(), "kubeforge:cluster", "e2e").await;
    assert_eq!(ids.len(), 6);
    // The VIP is a secondary address of the first load balancer's interface.
    let lb1 = raw(&m.endpoint())
        .call(
            "DescribeInstances",
            "test",
            &[
                ("Filter.1.Name".to_string(), "tag:Name".to_string()),
                ("Filter.1.Value.1".to_string(), "e2e-lb-1".to_string()),
            ],
        )
        .await
        .unwrap();
    assert!(
        lb1.contains("<privateIpAddress>10.42.0.254</privateIpAddress>"),
        "{lb1}"
    );

    // The state records the machines with their fixed and public addresses.
    let (show, _) =
        run_ok(kubeforge(dir.path()).args(["state", "show", "-f", "cluster.yaml", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    let machines = &v["state"]["machines"];
    assert_eq!(machines.as_object().map(|m| m.len()), Some(6), "{show}");
    let cp1 = &machines["e2e-cp-1"];
    assert_eq!(cp1["addresses"][0], "10.42.0.10", "{show}");
    assert!(
        cp1["providerId"].as_str().unwrap().starts_with("i-"),
        "{show}"
    );

    // A second apply changes nothing: everything exists, no new instance.
    let (_, err) = run_ok(kubeforge(dir.path()).args([
        "apply",
        "--phases",
        "provision",
        "--yes",
        "-f",
        "cluster.yaml",
    ]));
    assert!(err.contains("(0 to create, 12 existing)"), "{err}");
    let mut again = live_instances(&m.endpoint(), "kubeforge:cluster", "e2e").await;
    let mut before = ids.clone();
    again.sort();
    before.sort();
    assert_eq!(again, before);

    // destroy without --yes and without a terminal: refused, nothing deleted.
    let out = kubeforge(dir.path())
        .args(["destroy", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delete  instance `e2e-cp-1`"), "{err}");
    assert!(err.contains("delete  vpc `e2e`"), "{err}");
    assert!(err.contains("pass --yes"), "{err}");
    assert_eq!(
        live_instances(&m.endpoint(), "kubeforge:cluster", "e2e")
            .await
            .len(),
        6
    );

    let (json, _) = run_ok(kubeforge(dir.path()).args([
        "destroy",
        "--yes",
        "-f",
        "cluster.yaml",
        "-o",
        "json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let kinds: Vec<&str> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "instance").count(),
        6,
        "{json}"
    );
    for k in [
        "security-group",
        "subnet",
        "internet-gateway",
        "vpc",
        "key-pair",
    ] {
        assert!(kinds.contains(&k), "{k} not deleted: {json}");
    }
    assert!(live_instances(&m.endpoint(), "kubeforge:cluster", "e2e")
        .await
        .is_empty());
    let (show, _) =
        run_ok(kubeforge(dir.path()).args(["state", "show", "-f", "cluster.yaml", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert!(
        v["state"]["machines"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{show}"
    );
    // Again: nothing left, success.
    let (json, _) = run_ok(kubeforge(dir.path()).args([
        "destroy",
        "--yes",
        "-f",
        "cluster.yaml",
        "-o",
        "json",
    ]));
    assert!(json.contains("\"deleted\": []"), "{json}");
}

#[tokio::test]
async fn a_crash_right_after_run_instances_makes_no_duplicate() {
    let m = moto::shared();
    let dir = tempfile::tempdir().unwrap();
    write_cluster(dir.path(), "crash", &m.endpoint());
    // The process exits right after the first RunInstances answered, before anything
    // is recorded in the state.
    let out = kubeforge(dir.path())
        .env("KUBEFORGE_FAULT", "aws-after-run-instances")
        .args([
            "apply",
            "--phases",
            "machines",
            "--yes",
            "-f",
            "cluster.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(86), "{out:?}");
    let first = live_instances(&m.endpoint(), "kubeforge:cluster", "crash").await;
    assert_eq!(first.len(), 1, "one instance made before the crash");
    // The crashed run left its lock, as a killed process does; break it on purpose.
    run_ok(kubeforge(dir.path()).args(["state", "unlock", "--force", "-f", "cluster.yaml"]));
    run_ok(kubeforge(dir.path()).args([
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]));
    let after = live_instances(&m.endpoint(), "kubeforge:cluster", "crash").await;
    assert_eq!(after.len(), 6, "{after:?}");
    assert!(
        after.contains(&first[0]),
        "the instance of the crashed run is reused"
    );
    run_ok(kubeforge(dir.path()).args(["destroy", "--yes", "-f", "cluster.yaml"]));
}

#[tokio::test]
async fn missing_and_rejected_credentials_are_clear_errors() {
    let m = moto::shared();
    let dir = tempfile::tempdir().unwrap();
    write_cluster(dir.path(), "creds", &m.endpoint());
    // No credentials at all (no variables, no ~/.aws/credentials).
    let out = kubeforge(dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args([
            "apply",
            "--phases",
            "machines",
            "--yes",
            "-f",
            "cluster.yaml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("aws credentials: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile `default` in"),
        "{err}"
    );

    // A profile file is read when the variables are unset.
    std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
    std::fs::write(
        dir.path().join(".aws/credentials"),
        "[ops]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    run_ok(
        kubeforge(dir.path())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_PROFILE", "ops")
            .args(["plan", "-f", "cluster.yaml"]),
    );

    // moto checking credentials (INITIAL_NO_AUTH_ACTION_COUNT=0): unknown keys are
    // rejected with AWS's code, not retried, and the secret is never printed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut child, port) = moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
        tx.send(port).unwrap();
        let _ = child.wait();
    });
    let port = rx.recv().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    write_cluster(dir2.path(), "badcreds", &format!("http://127.0.0.1:{port}"));
    let out = kubeforge(dir2.path())
        .env("AWS_ACCESS_KEY_ID", "AKIANOTAREALKEY00000")
        .env("AWS_SECRET_ACCESS_KEY", "very-secret-value-0123456789")
        .args([
            "apply",
            "--phases",
            "machines",
            "--yes",
            "-f",
            "cluster.yaml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains("aws DescribeInstances badcreds: AuthFailure: AWS was not able to validate the provided access credentials (HTTP 401)"),
        "{err}"
    );
    assert!(!err.contains("very-secret-value"), "{err}");
}

#[test]
fn unknown_phases_and_offline_plans_need_no_cloud() {
    let dir = tempfile::tempdir().unwrap();
    // An endpoint nothing listens on: none of these may call it.
    write_cluster(dir.path(), "offl", "http://127.0.0.1:9");
    let out = kubeforge(dir.path())
        .args([
            "apply",
            "--phases",
            "machines,nope",
            "--yes",
            "-f",
            "cluster.yaml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "--phases: no phase `nope` in playbook bootstrap (phases: provision, connect,"
        ),
        "{err}"
    );
    let (json, _) = run_ok(
        kubeforge(dir.path())
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .args(["plan", "--offline", "-o", "json", "-f", "cluster.yaml"]),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let res = v["cloudResources"].as_array().unwrap();
    assert_eq!(res.len(), 12, "{json}");
    assert!(res.iter().all(|r| r["action"] == "create"));
    assert_eq!(res[0]["kind"], "vpc");
    assert_eq!(v["machines"][0]["address"], "10.42.0.4");
    // Planned against an unreachable cloud: said, and everything listed as to create.
    let out = kubeforge(dir.path())
        .args(["plan", "-f", "cluster.yaml"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "note: aws DescribeInstances offl: cannot reach the API at http://127.0.0.1:9"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("(12 to create, 0 existing)"), "{stdout}");
}

// ---- the cloud load balancer in front of the apiservers (loadBalancer.type: cloud) ----

fn elb(endpoint: &str) -> Ec2Client {
    raw(endpoint).for_service("elasticloadbalancing", "2015-12-01", endpoint.into())
}

fn cp_specs(cluster: &str, n: usize) -> Vec<MachineSpec> {
    (1..=n)
        .map(|i| MachineSpec {
            name: format!("{cluster}-cp-{i}"),
            role: MachineRole::ControlPlane,
            ip: format!("10.42.0.{}", 9 + i).parse().unwrap(),
            extra_disks: vec![],
        })
        .collect()
}

fn lb_provider(cluster: &str, endpoint: &str) -> AwsProvider {
    let mut c = ctx(cluster);
    let mut spec = spec(endpoint);
    spec.elb_endpoint = Some(endpoint.into());
    c.api_lb = Some(ApiLb {
        address: "10.42.0.254".parse().unwrap(),
        port: 6443,
        target_port: 6443,
        https_check: true,
    });
    AwsProvider::with_credentials(&spec, c, Ok(creds())).unwrap()
}

/// Every `<tag>` value in an XML answer.
fn values(xml: &str, tag: &str) -> Vec<String> {
    xml.split(&format!("<{tag}>"))
        .skip(1)
        .filter_map(|s| s.split(&format!("</{tag}>")).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn the_cloud_load_balancer_follows_the_control_planes() {
    let m = moto::shared();
    let ep = m.endpoint();
    let p = lb_provider("nlb", &ep);
    let planned: Vec<String> = p
        .planned(&cp_specs("nlb", 3))
        .iter()
        .map(|r| format!("{}/{}", r.kind, r.name))
        .collect();
    assert!(
        planned.contains(&"load-balancer/nlb-api".to_string()),
        "{planned:?}"
    );
    assert!(
        planned.contains(&"target-group/nlb-api".to_string()),
        "{planned:?}"
    );

    p.ensure(&cp_specs("nlb", 3)).await.unwrap();
    let lbs = elb(&ep)
        .call(
            "DescribeLoadBalancers",
            "t",
            &[("Names.member.1".into(), "nlb-api".into())],
        )
        .await
        .unwrap();
    assert_eq!(values(&lbs, "LoadBalancerName"), ["nlb-api"], "{lbs}");
    assert_eq!(values(&lbs, "Scheme"), ["internal"], "{lbs}");
    assert_eq!(values(&lbs, "Type"), ["network"], "{lbs}");
    let lb_arn = values(&lbs, "LoadBalancerArn").remove(0);
    let tgs = elb(&ep)
        .call(
            "DescribeTargetGroups",
            "t",
            &[("Names.member.1".into(), "nlb-api".into())],
        )
        .await
        .unwrap();
    assert_eq!(values(&tgs, "TargetType"), ["ip"], "{tgs}");
    assert_eq!(values(&tgs, "HealthCheckPath"), ["/readyz"], "{tgs}");
    let listeners = elb(&ep)
        .call(
            "DescribeListeners",
            "t",
            &[("LoadBalancerArn".into(), lb_arn.clone())],
        )
        .await
        .unwrap();
    assert_eq!(values(&listeners, "Port"), ["6443"], "{listeners}");
    let health = p.endpoint_targets().await.unwrap().unwrap();
    let mut targets: Vec<&str> = health.iter().map(|t| t.target.as_str()).collect();
    targets.sort();
    assert_eq!(
        targets,
        ["10.42.0.10:6443", "10.42.0.11:6443", "10.42.0.12:6443"]
    );
    assert!(health.iter().all(|t| t.healthy()), "{health:?}");
    // The NLB's own addresses health-check the apiservers: allowed from the subnet.
    let groups = raw(&ep)
        .call(
            "DescribeSecurityGroups",
            "t",
            &[
                ("Filter.1.Name".into(), "group-name".into()),
                ("Filter.1.Value.1".into(), "nlb-nodes".into()),
            ],
        )
        .await
        .unwrap();
    assert!(groups.contains("<cidrIp>10.42.0.0/24</cidrIp>"), "{groups}");

    // A second run changes nothing: one load balancer, one listener, three targets.
    p.ensure(&cp_specs("nlb", 3)).await.unwrap();
    let again = elb(&ep)
        .call("DescribeLoadBalancers", "t", &[])
        .await
        .unwrap();
    assert_eq!(
        values(&again, "LoadBalancerName")
            .iter()
            .filter(|n| *n == "nlb-api")
            .count(),
        1
    );
    let listeners = elb(&ep)
        .call(
            "DescribeListeners",
            "t",
            &[("LoadBalancerArn".into(), lb_arn.clone())],
        )
        .await
        .unwrap();
    assert_eq!(values(&listeners, "Port").len(), 1, "{listeners}");
    assert_eq!(p.endpoint_targets().await.unwrap().unwrap().len(), 3);

    // Two control planes leave the file: they leave the target group.
    p.ensure(&cp_specs("nlb", 1)).await.unwrap();
    let health = p.endpoint_targets().await.unwrap().unwrap();
    assert_eq!(
        health.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(),
        ["10.42.0.10:6443"],
        "{health:?}"
    );

    // destroy removes the load balancer and its target group with the rest.
    let gone = p.destroy_all().await.unwrap();
    assert!(gone.iter().any(|r| r.kind == "load-balancer"), "{gone:?}");
    assert!(gone.iter().any(|r| r.kind == "target-group"), "{gone:?}");
    assert!(p.resources().await.unwrap().is_empty());
    let after = elb(&ep)
        .call("DescribeTargetGroups", "t", &[])
        .await
        .unwrap();
    assert!(
        !values(&after, "TargetGroupName").contains(&"nlb-api".to_string()),
        "{after}"
    );
    assert!(p.destroy_all().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_load_balancer_of_the_same_name_without_the_tag_is_not_used() {
    let m = moto::shared();
    let ep = m.endpoint();
    let p = lb_provider("alien", &ep);
    // The network exists (a run without the load balancer), then somebody else's
    // load balancer takes the name.
    provider("alien", &ep)
        .ensure(&cp_specs("alien", 1))
        .await
        .unwrap();
    let subnets = raw(&ep)
        .call(
            "DescribeSubnets",
            "t",
            &[
                ("Filter.1.Name".into(), "tag:kubeforge:cluster".into()),
                ("Filter.1.Value.1".into(), "alien".into()),
            ],
        )
        .await
        .unwrap();
    let subnet = values(&subnets, "subnetId").remove(0);
    elb(&ep)
        .call(
            "CreateLoadBalancer",
            "t",
            &[
                ("Name".into(), "alien-api".into()),
                ("Type".into(), "network".into()),
                ("Scheme".into(), "internal".into()),
                ("Subnets.member.1".into(), subnet),
            ],
        )
        .await
        .unwrap();
    let e = p
        .ensure(&cp_specs("alien", 1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("alien-api") && e.contains("not this cluster's"),
        "{e}"
    );
    // destroy leaves it alone.
    let gone = p.destroy_all().await;
    assert!(gone.is_err() || !gone.unwrap().iter().any(|r| r.kind == "load-balancer"));
    let still = elb(&ep)
        .call(
            "DescribeLoadBalancers",
            "t",
            &[("Names.member.1".into(), "alien-api".into())],
        )
        .await
        .unwrap();
    assert_eq!(values(&still, "LoadBalancerName"), ["alien-api"]);
}

// ---- keepalived's VIP failover through the EC2 API (loadBalancer.failover) ----

/// The primary addresses of the cluster's network interfaces (those in its VPC) that
/// list `address` (as primary or secondary).
async fn holders(endpoint: &str, cluster: &str, address: &str) -> Vec<String> {
    let vpcs = raw(endpoint)
        .call(
            "DescribeVpcs",
            "t",
            &[
                ("Filter.1.Name".into(), "tag:kubeforge:cluster".into()),
                ("Filter.1.Value.1".into(), cluster.into()),
            ],
        )
        .await
        .unwrap();
    let vpc = values(&vpcs, "vpcId").remove(0);
    let xml = raw(endpoint)
        .call(
            "DescribeNetworkInterfaces",
            "t",
            &[
                ("Filter.1.Name".into(), "vpc-id".into()),
                ("Filter.1.Value.1".into(), vpc),
            ],
        )
        .await
        .unwrap();
    // One chunk per interface; its first privateIpAddress is the primary.
    let mut out: Vec<String> = xml
        .split("<networkInterfaceId>")
        .skip(1)
        .filter(|c| c.contains(&format!("<privateIpAddress>{address}</privateIpAddress>")))
        .filter_map(|c| values(c, "privateIpAddress").first().cloned())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn the_rendered_failover_script_moves_the_vip_through_the_ec2_api() {
    let m = moto::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = write_cluster(dir.path(), "fo", &m.endpoint());
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "    loadBalancers: {count: 2}\n",
        "    controlPlane: {count: 1}\n    loadBalancers: {count: 2}\n  loadBalancer:\n    interface: ens5\n    failover: {accessKeyIdEnv: KF_FO_ID, secretAccessKeyEnv: KF_FO_SECRET}\n",
    ).replace("    controlPlane: {count: 3}\n", "").replace("    workers: {count: 1, extraDisks: [20G]}\n", "");
    // The load balancers' role for the failover without keys: an instance profile.
    let text = text.replace(
        "      region: us-east-1\n",
        "      region: us-east-1\n      loadBalancerInstanceProfile: kf-fo-lb\n",
    );
    std::fs::write(&file, text).unwrap();
    raw(&m.endpoint())
        .for_service("iam", "2010-05-08", m.endpoint())
        .call(
            "CreateInstanceProfile",
            "t",
            &[("InstanceProfileName".into(), "kf-fo-lb".into())],
        )
        .await
        .unwrap();
    let with_keys = |c: &mut Command| {
        c.env("KF_FO_ID", "failover-key-id")
            .env("KF_FO_SECRET", "failover-secret-0123456789");
    };
    let mut apply = kubeforge(dir.path());
    with_keys(&mut apply);
    run_ok(apply.args([
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]));
    let vip = "10.42.0.254";
    assert_eq!(
        holders(&m.endpoint(), "fo", vip).await,
        ["10.42.0.4"],
        "lb-1 holds the VIP first"
    );
    // The load balancers carry the instance profile, the control plane does not.
    for (name, has) in [("fo-lb-1", true), ("fo-lb-2", true), ("fo-cp-1", false)] {
        let xml = raw(&m.endpoint())
            .call(
                "DescribeInstances",
                "t",
                &[
                    ("Filter.1.Name".into(), "tag:Name".into()),
                    ("Filter.1.Value.1".into(), name.into()),
                    ("Filter.2.Name".into(), "instance-state-name".into()),
                    ("Filter.2.Value.1".into(), "running".into()),
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            xml.contains("instance-profile/kf-fo-lb"),
            has,
            "{name}: {xml}"
        );
    }

    // Without the key's variables there is nothing to render: the error names them.
    let out = kubeforge(dir.path())
        .args(["render", "-f", "cluster.yaml", "--out", "rendered"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("KF_FO_ID"),
        "{out:?}"
    );
    let mut render = kubeforge(dir.path());
    with_keys(&mut render);
    let (stdout, stderr) =
        run_ok(render.args(["render", "-f", "cluster.yaml", "--out", "rendered"]));
    assert!(!format!("{stdout}{stderr}").contains("failover-secret"));
    let rendered = dir.path().join("rendered");
    let conf =
        std::fs::read_to_string(rendered.join("fo-lb-1/etc/keepalived/keepalived.conf")).unwrap();
    assert!(conf.contains("notify_master \"/usr/local/lib/kubeforge/vip-failover /etc/kubeforge/vip-failover.json\""), "{conf}");
    assert!(conf.contains("unicast_peer"), "{conf}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rendered.join("fo-lb-2/etc/kubeforge/vip-failover.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["self"], "10.42.0.5");
    assert_eq!(config["peers"], serde_json::json!(["10.42.0.4"]));
    assert_eq!(config["region"], "us-east-1");
    assert_eq!(config["credentials"]["accessKeyId"], "failover-key-id");
    // `render` shows the secret redacted; the load balancers get it (put back here).
    assert_eq!(config["credentials"]["secretAccessKey"], "<redacted>");
    for lb in ["fo-lb-1", "fo-lb-2"] {
        let cfg = rendered.join(lb).join("etc/kubeforge/vip-failover.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        v["credentials"]["secretAccessKey"] = serde_json::json!("failover-secret-0123456789");
        std::fs::write(&cfg, v.to_string()).unwrap();
        // As rendered, the script acts only while keepalived put the VIP on one of the
        // node's interfaces: this machine has none, so nothing is moved.
        let out = Command::new("python3")
            .arg(
                rendered
                    .join(lb)
                    .join("usr/local/lib/kubeforge/vip-failover"),
            )
            .arg(&cfg)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success() && log.contains("nothing done"),
            "{log}"
        );
        // The runs below stand in for a node that holds it.
        v["checkLocal"] = serde_json::json!(false);
        std::fs::write(&cfg, v.to_string()).unwrap();
    }
    assert_eq!(holders(&m.endpoint(), "fo", vip).await, ["10.42.0.4"]);

    let failover = |lb: &str, config: Option<&Path>| {
        let base = rendered.join(lb);
        let cfg = config
            .map(Path::to_path_buf)
            .unwrap_or_else(|| base.join("etc/kubeforge/vip-failover.json"));
        Command::new("python3")
            .arg(base.join("usr/local/lib/kubeforge/vip-failover"))
            .arg(cfg)
            .output()
            .unwrap()
    };
    // lb-2 takes over: the VIP leaves lb-1's interface for lb-2's.
    let out = failover("fo-lb-2", None);
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("failover-secret"), "{log}");
    assert_eq!(
        holders(&m.endpoint(), "fo", vip).await,
        ["10.42.0.5"],
        "{log}"
    );
    assert!(failover("fo-lb-2", None).status.success(), "idempotent");
    assert_eq!(holders(&m.endpoint(), "fo", vip).await, ["10.42.0.5"]);
    // The next apply leaves the VIP with the node keepalived gave it to.
    let mut again = kubeforge(dir.path());
    with_keys(&mut again);
    run_ok(again.args([
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]));
    assert_eq!(holders(&m.endpoint(), "fo", vip).await, ["10.42.0.5"]);

    // The instance role instead of a key: credentials through IMDSv2 (a local stand-in
    // answering the token PUT and the two credential GETs).
    let imds = common::http_mock::MockServer::start(std::sync::Arc::new(
        |r: &common::http_mock::Request| {
            use common::http_mock::Response;
            match (r.method.as_str(), r.route()) {
                ("PUT", "/latest/api/token")
                    if r.header("x-aws-ec2-metadata-token-ttl-seconds").is_some() =>
                {
                    Response {
                        status: 200,
                        body: "imds-token".into(),
                    }
                }
                (_, _) if r.header("x-aws-ec2-metadata-token") != Some("imds-token") => {
                    Response::empty(401)
                }
                ("GET", "/latest/meta-data/iam/security-credentials/") => Response {
                    status: 200,
                    body: "lb-role".into(),
                },
                ("GET", "/latest/meta-data/iam/security-credentials/lb-role") => Response::json(
                    200,
                    serde_json::json!({"Code": "Success", "AccessKeyId": "ASIAROLE", "SecretAccessKey": "role-secret", "Token": "role-session"}),
                ),
                _ => Response::empty(404),
            }
        },
    ));
    let mut role_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rendered.join("fo-lb-1/etc/kubeforge/vip-failover.json")).unwrap(),
    )
    .unwrap();
    role_cfg.as_object_mut().unwrap().remove("credentials");
    role_cfg["imds"] = serde_json::json!(imds.url());
    let role_file = dir.path().join("role.json");
    std::fs::write(&role_file, role_cfg.to_string()).unwrap();
    let out = failover("fo-lb-1", Some(&role_file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(holders(&m.endpoint(), "fo", vip).await, ["10.42.0.4"]);
    assert!(imds
        .take()
        .iter()
        .any(|r| r.route() == "/latest/meta-data/iam/security-credentials/lb-role"));

    // An API that does not answer: exit 1 after the retry budget, the VIP untouched.
    let mut down = role_cfg.clone();
    down["endpoint"] = serde_json::json!("http://127.0.0.1:9");
    down["timeoutSeconds"] = serde_json::json!(2);
    std::fs::write(&role_file, down.to_string()).unwrap();
    let out = failover("fo-lb-2", Some(&role_file));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(holders(&m.endpoint(), "fo", vip).await, ["10.42.0.4"]);

    let mut destroy = kubeforge(dir.path());
    run_ok(destroy.args(["destroy", "--yes", "-f", "cluster.yaml"]));
}
