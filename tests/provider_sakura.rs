//! Contract tests of the Sakura Cloud provider against a local server answering with
//! the shapes of the API 1.1 documentation (no live API here): the requests the client
//! sends (method, path, JSON query, body, Basic auth), `From`/`Count`/`Total` paging,
//! disk copies polled from `migrating` to `available` (or `failed`), power and
//! `Instance.Status`, and `error_code`/`error_msg` error bodies.

mod common;

use base64::Engine as _;
use common::http_mock::{MockServer, Request, Response};
use kubeforge::provider::cloud::{CloudContext, Retry};
use kubeforge::provider::sakura::{SakuraProvider, SakuraSpec};
use kubeforge::provider::{MachineRole, MachineSpec, Provider};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "0123abcd-token";
const SECRET: &str = "sakura-secret-value-42";

#[derive(Default)]
struct Fake {
    next_id: u64,
    servers: Vec<Value>,
    disks: Vec<Value>,
    notes: Vec<Value>,
    switches: Vec<Value>,
    filters: Vec<Value>,
    /// disk id -> GETs left answering `migrating`
    migrating: std::collections::BTreeMap<String, u32>,
    fail_next_disk: bool,
    busy: u32,
    page: usize,
}

fn err(status: u16, code: &str, msg: &str) -> Response {
    let text = match status {
        400 => "400 Bad Request",
        404 => "404 Not Found",
        503 => "503 Service Unavailable",
        _ => "500 Internal Server Error",
    };
    Response::json(
        status,
        json!({"is_fatal": true, "serial": "0123456789abcdef", "status": text, "error_code": code, "error_msg": msg}),
    )
}

impl Fake {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("1130000000{:02}", self.next_id)
    }

    fn coll(&mut self, name: &str) -> &mut Vec<Value> {
        match name {
            "server" => &mut self.servers,
            "disk" => &mut self.disks,
            "note" => &mut self.notes,
            "switch" => &mut self.switches,
            "packetfilter" => &mut self.filters,
            _ => panic!("{name}"),
        }
    }

    fn list(&mut self, name: &str, key: &str, r: &Request) -> Response {
        let q: Value = r
            .path
            .split_once('?')
            .map(|(_, q)| {
                let decoded: String = form_urlencoded::parse(format!("q={q}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                serde_json::from_str(&decoded).unwrap()
            })
            .unwrap_or(json!({}));
        let tags: Vec<Value> = q["Filter"]["Tags"].as_array().cloned().unwrap_or_default();
        let name_filter = q["Filter"]["Name"].as_str().map(str::to_string);
        let page = self.page.max(1);
        let items: Vec<Value> = self
            .coll(name)
            .iter()
            .filter(|o| {
                tags.iter()
                    .all(|t| o["Tags"].as_array().is_some_and(|a| a.contains(t)))
            })
            .filter(|o| {
                name_filter
                    .as_ref()
                    .is_none_or(|n| o["Name"].as_str().unwrap().contains(n.as_str()))
            })
            .cloned()
            .collect();
        let from = q["From"].as_u64().unwrap_or(0) as usize;
        let count = (q["Count"].as_u64().unwrap_or(100) as usize).min(page);
        let slice: Vec<Value> = items.iter().skip(from).take(count).cloned().collect();
        Response::json(
            200,
            json!({"From": from, "Count": slice.len(), "Total": items.len(), key: slice, "is_ok": true}),
        )
    }

    fn find(&mut self, coll: &str, id: &str) -> Option<&mut Value> {
        self.coll(coll).iter_mut().find(|o| o["ID"] == json!(id))
    }

    fn handle(&mut self, r: &Request) -> Response {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:{SECRET}"))
        );
        if r.header("authorization") != Some(&basic) {
            return Response::json(
                401,
                json!({"is_fatal": true, "status": "401 Unauthorized", "error_code": "unauthorized", "error_msg": "この操作は認証が必要です。"}),
            );
        }
        if self.busy > 0 {
            self.busy -= 1;
            return err(
                503,
                "busy",
                "サービスが混み合っています。しばらく時間をおいてから再度お試しください。",
            );
        }
        let route: Vec<&str> = r.route().trim_start_matches('/').split('/').collect();
        let body = r.json();
        match (r.method.as_str(), route.as_slice()) {
            ("GET", ["product", "server"]) => {
                // The documented plan list: several generations, one unavailable.
                let q = r
                    .path
                    .split_once('?')
                    .map(|(_, q)| q.to_string())
                    .unwrap_or_default();
                let q: Value = serde_json::from_str(
                    &form_urlencoded::parse(format!("q={q}").as_bytes())
                        .next()
                        .unwrap()
                        .1,
                )
                .unwrap();
                let (cpu, mem) = (q["Filter"]["CPU"].clone(), q["Filter"]["MemoryMB"].clone());
                Response::json(
                    200,
                    json!({"From": 0, "Count": 3, "Total": 3, "ServerPlans": [
                    {"ID": 100002004, "Name": "プラン/2Core-4GB", "CPU": cpu, "MemoryMB": mem, "Generation": 100, "Commitment": "standard", "Availability": "available"},
                    {"ID": 200002004, "Name": "プラン/2Core-4GB", "CPU": cpu, "MemoryMB": mem, "Generation": 200, "Commitment": "standard", "Availability": "available"},
                    {"ID": 300002004, "Name": "プラン/2Core-4GB", "CPU": cpu, "MemoryMB": mem, "Generation": 300, "Commitment": "standard", "Availability": "discontinued"}
                ], "is_ok": true}),
                )
            }
            ("GET", ["server"]) => self.list("server", "Servers", r),
            ("GET", ["disk"]) => self.list("disk", "Disks", r),
            ("GET", ["note"]) => self.list("note", "Notes", r),
            ("GET", ["switch"]) => self.list("switch", "Switches", r),
            ("GET", ["packetfilter"]) => self.list("packetfilter", "PacketFilters", r),
            ("POST", ["switch"]) => {
                let mut s = body["Switch"].clone();
                s["ID"] = json!(self.id());
                self.switches.push(s.clone());
                Response::json(201, json!({"Switch": s, "Success": true, "is_ok": true}))
            }
            ("POST", ["packetfilter"]) => {
                let mut f = body["PacketFilter"].clone();
                f["ID"] = json!(self.id());
                self.filters.push(f.clone());
                Response::json(
                    201,
                    json!({"PacketFilter": f, "Success": true, "is_ok": true}),
                )
            }
            ("POST", ["note"]) => {
                let mut n = body["Note"].clone();
                n["ID"] = json!(self.id());
                self.notes.push(n.clone());
                Response::json(201, json!({"Note": n, "Success": true, "is_ok": true}))
            }
            ("POST", ["server"]) => {
                if body["Server"]["Name"] == json!("sk-bad") {
                    return err(400, "bad_request", "パラメータが不正です。Name");
                }
                let id = self.id();
                let n = self.next_id;
                let s = json!({"ID": id, "Name": body["Server"]["Name"], "Tags": body["Server"]["Tags"],
                    "Instance": {"Status": "down"},
                    "Interfaces": [
                        {"ID": format!("{id}1"), "IPAddress": format!("203.0.113.{n}"), "Switch": {"Scope": "shared"}},
                        {"ID": format!("{id}2"), "IPAddress": null, "UserIPAddress": null, "Switch": {"ID": body["Server"]["ConnectedSwitches"][1]["ID"]}}
                    ],
                    "Disks": []});
                self.servers.push(s.clone());
                Response::json(201, json!({"Server": s, "Success": true, "is_ok": true}))
            }
            ("POST", ["disk"]) => {
                let id = self.id();
                let mut d = body["Disk"].clone();
                d["ID"] = json!(id);
                d["Availability"] = json!("migrating");
                if std::mem::take(&mut self.fail_next_disk) {
                    d["Fail"] = json!(true);
                }
                self.migrating.insert(id.clone(), 1);
                self.disks.push(d.clone());
                let server = d["Server"]["ID"].as_str().unwrap().to_string();
                let name = d["Name"].clone();
                if let Some(s) = self.find("server", &server) {
                    s["Disks"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"ID": id, "Name": name}));
                }
                Response::json(202, json!({"Disk": d, "Success": true, "is_ok": true}))
            }
            ("GET", ["disk", id]) => {
                let id = id.to_string();
                let left = self.migrating.get(&id).copied().unwrap_or(0);
                self.migrating.insert(id.clone(), left.saturating_sub(1));
                let Some(d) = self.find("disk", &id) else {
                    return err(404, "not_found", "対象が見つかりません。");
                };
                if left == 0 {
                    d["Availability"] = if d.get("Fail").is_some() {
                        json!("failed")
                    } else {
                        json!("available")
                    };
                }
                let d = d.clone();
                Response::json(200, json!({"Disk": d, "is_ok": true}))
            }
            ("GET", ["server", id]) => match self.find("server", id) {
                Some(s) => {
                    let s = s.clone();
                    Response::json(200, json!({"Server": s, "is_ok": true}))
                }
                None => err(404, "not_found", "対象が見つかりません。"),
            },
            ("PUT", ["interface", _, "to", "packetfilter", _]) => {
                Response::json(200, json!({"Success": true, "is_ok": true}))
            }
            ("PUT", ["server", id, "power"]) | ("DELETE", ["server", id, "power"]) => {
                let up = r.method == "PUT";
                match self.find("server", id) {
                    Some(s) => {
                        s["Instance"]["Status"] = json!(if up { "up" } else { "down" });
                        Response::json(200, json!({"Success": true, "is_ok": true}))
                    }
                    None => err(404, "not_found", "対象が見つかりません。"),
                }
            }
            ("DELETE", [coll, id]) => {
                let c = self.coll(coll);
                let before = c.len();
                c.retain(|o| o["ID"] != json!(id));
                if c.len() == before {
                    return err(404, "not_found", "対象が見つかりません。");
                }
                if *coll == "server" {
                    if let Some(ids) = body["WithDisk"].as_array() {
                        self.disks.retain(|d| !ids.contains(&d["ID"]));
                    }
                }
                Response::json(200, json!({"Success": true, "is_ok": true}))
            }
            _ => err(
                404,
                "not_found",
                &format!("no route {} {}", r.method, r.path),
            ),
        }
    }
}

fn start(fake: Fake) -> (MockServer, Arc<Mutex<Fake>>) {
    let fake = Arc::new(Mutex::new(fake));
    let f = fake.clone();
    let server = MockServer::start(Arc::new(move |r: &Request| f.lock().unwrap().handle(r)));
    (server, fake)
}

fn env() -> (&'static str, &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("KF_TEST_SAKURA_TOKEN", TOKEN);
        std::env::set_var("KF_TEST_SAKURA_SECRET", SECRET);
    });
    ("KF_TEST_SAKURA_TOKEN", "KF_TEST_SAKURA_SECRET")
}

fn provider(url: &str, extra: Value) -> SakuraProvider {
    let (t, s) = env();
    let mut spec = json!({"archive": "113000000001", "endpoint": url, "allowHttp": true, "accessTokenEnv": t, "accessTokenSecretEnv": s});
    if let (Some(o), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    let spec: SakuraSpec = serde_json::from_value(spec).unwrap();
    let ctx = CloudContext {
        cluster: "sk".into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl6ZmFrZWtleQ test".into(),
        ssh_port: 22,
        api_ports: vec![6443, 8443],
        vip: None,
        vip_holder: None,
        api_lb: None,
    };
    let mut p = SakuraProvider::new(&spec, ctx).unwrap();
    p.set_retry(Retry {
        attempts: 4,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    });
    p
}

fn specs() -> Vec<MachineSpec> {
    vec![
        MachineSpec {
            name: "sk-cp-1".into(),
            role: MachineRole::ControlPlane,
            ip: "10.42.0.10".parse().unwrap(),
            extra_disks: vec![],
        },
        MachineSpec {
            name: "sk-worker-1".into(),
            role: MachineRole::Worker,
            ip: "10.42.0.20".parse().unwrap(),
            extra_disks: vec![100 << 30],
        },
    ]
}

fn posts(reqs: &[Request], route: &str) -> Vec<Value> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.route() == route)
        .map(Request::json)
        .collect()
}

#[tokio::test]
async fn ensure_sends_the_documented_requests_and_a_rerun_creates_nothing() {
    let (server, fake) = start(Fake {
        page: 1,
        ..Fake::default()
    });
    let p = provider(&server.url(), json!({}));
    let machines = p.ensure(&specs()).await.unwrap();
    assert_eq!(machines.len(), 2);
    assert_eq!(machines[0].ip, Some("10.42.0.10".parse().unwrap()));
    assert_eq!(machines[0].role, MachineRole::ControlPlane);
    assert!(machines[0].public_ip.is_some());
    let reqs = server.take();
    // Lists filter on the cluster tag with a JSON query.
    let first_list = reqs.iter().find(|r| r.method == "GET").unwrap();
    assert!(
        first_list.path.starts_with("/switch?%7B%22"),
        "{}",
        first_list.path
    );

    let sw = posts(&reqs, "/switch");
    assert_eq!(sw.len(), 1);
    assert_eq!(sw[0]["Switch"]["Name"], "sk");
    assert_eq!(sw[0]["Switch"]["Tags"], json!(["kubeforge-cluster=sk"]));
    let pf = &posts(&reqs, "/packetfilter")[0]["PacketFilter"];
    assert_eq!(pf["Name"], "kubeforge-sk");
    let expr = pf["Expression"].as_array().unwrap();
    assert_eq!(
        expr[0],
        json!({"Protocol": "tcp", "SourceNetwork": "0.0.0.0/0", "DestinationPort": "22", "Action": "allow"})
    );
    assert_eq!(expr[1]["DestinationPort"], "6443");
    assert_eq!(expr[2]["DestinationPort"], "8443");
    assert_eq!(
        expr.last().unwrap(),
        &json!({"Protocol": "ip", "Action": "deny"})
    );

    let servers = posts(&reqs, "/server");
    assert_eq!(servers.len(), 2);
    let s = &servers[0]["Server"];
    assert_eq!(s["Name"], "sk-cp-1");
    assert_eq!(
        s["ServerPlan"],
        json!({"ID": 200002004}),
        "the newest available generation of the plan with 2 CPU / 4 GiB"
    );
    assert!(reqs.iter().any(|r| r.route() == "/product/server"
        && r.query_json()["Filter"] == json!({"CPU": 2, "MemoryMB": 4096})));
    assert_eq!(s["ConnectedSwitches"][0], json!({"Scope": "shared"}));
    assert!(s["ConnectedSwitches"][1]["ID"].is_string());
    assert_eq!(
        s["Tags"],
        json!([
            "kubeforge-cluster=sk",
            "kubeforge-role=control-plane",
            "kubeforge-ip=10.42.0.10"
        ])
    );
    // The startup script gives eth1 the fixed address.
    let notes = posts(&reqs, "/note");
    assert_eq!(notes[0]["Note"]["Name"], "sk-cp-1-network");
    assert!(notes[0]["Note"]["Content"]
        .as_str()
        .unwrap()
        .contains("address 10.42.0.10/24"));
    // Boot disk copied from the archive and edited; the extra disk is blank.
    let disks = posts(&reqs, "/disk");
    assert_eq!(disks.len(), 3);
    let boot = &disks[0];
    assert_eq!(boot["Disk"]["SourceArchive"], json!({"ID": "113000000001"}));
    assert_eq!(boot["Disk"]["SizeMB"], 40960);
    assert_eq!(boot["Disk"]["Plan"], json!({"ID": 4}));
    assert_eq!(boot["Config"]["HostName"], "sk-cp-1");
    assert_eq!(boot["Config"]["DisablePWAuth"], true);
    assert!(boot["Config"]["SSHKeys"][0]["PublicKey"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));
    let note_id = fake.lock().unwrap().notes[0]["ID"].clone();
    assert_eq!(boot["Config"]["Notes"][0]["ID"], note_id);
    assert_eq!(disks[2]["Disk"]["Name"], "sk-worker-1-disk-1");
    assert_eq!(disks[2]["Disk"]["SizeMB"], 100 * 1024);
    assert!(disks[2]["Disk"].get("SourceArchive").is_none());
    // Disks were polled until available, then the servers powered on.
    assert!(
        reqs.iter()
            .filter(|r| r.method == "GET" && r.route().starts_with("/disk/"))
            .count()
            >= 6
    );
    assert_eq!(
        reqs.iter()
            .filter(|r| r.method == "PUT" && r.route().ends_with("/power"))
            .count(),
        2
    );
    assert_eq!(
        reqs.iter()
            .filter(|r| r.route().starts_with("/interface/"))
            .count(),
        2
    );
    // Basic auth on every request.
    assert!(reqs.iter().all(|r| r
        .header("authorization")
        .is_some_and(|a| a.starts_with("Basic "))));

    // Re-run: found by tag over several pages; nothing created, nothing powered.
    let again = p.ensure(&specs()).await.unwrap();
    assert_eq!(
        again.iter().map(|m| &m.id).collect::<Vec<_>>(),
        machines.iter().map(|m| &m.id).collect::<Vec<_>>()
    );
    let reqs = server.take();
    assert!(
        reqs.iter()
            .all(|r| r.method == "GET" || r.route().starts_with("/interface/")),
        "{:?}",
        reqs.iter()
            .map(|r| format!("{} {}", r.method, r.route()))
            .collect::<Vec<_>>()
    );
    assert!(
        reqs.iter().any(|r| r.path.contains("%22From%22%3A1")),
        "paged with From"
    );
}

#[tokio::test]
async fn a_server_made_before_a_crash_gets_its_disk_not_a_twin() {
    let (server, fake) = start(Fake {
        page: 50,
        ..Fake::default()
    });
    let p = provider(&server.url(), json!({}));
    {
        let mut f = fake.lock().unwrap();
        let id = f.id();
        f.servers.push(json!({"ID": id, "Name": "sk-cp-1", "Tags": ["kubeforge-cluster=sk", "kubeforge-role=control-plane", "kubeforge-ip=10.42.0.10"],
            "Instance": {"Status": "down"}, "Interfaces": [{"ID": "9001", "IPAddress": "203.0.113.7"}], "Disks": []}));
    }
    p.ensure(&specs()[..1]).await.unwrap();
    let reqs = server.take();
    assert!(posts(&reqs, "/server").is_empty(), "no second server");
    assert_eq!(posts(&reqs, "/disk").len(), 1);
    assert_eq!(fake.lock().unwrap().servers.len(), 1);
}

#[tokio::test]
async fn errors_carry_operation_resource_code_and_message() {
    let (server, fake) = start(Fake {
        page: 50,
        ..Fake::default()
    });
    let p = provider(&server.url(), json!({}));
    let mut bad = specs();
    bad[0].name = "sk-bad".into();
    let err = p.ensure(&bad[..1]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "sakura POST /server sk-bad: bad_request: パラメータが不正です。Name (HTTP 400)"
    );

    // A disk copy that ends `failed`.
    let p = provider(&server.url(), json!({}));
    fake.lock().unwrap().fail_next_disk = true;
    let err = p.ensure(&specs()[..1]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "sakura disk copy sk-cp-1 failed: failed: the disk's Availability is `failed`"
    );

    // 503 busy is retried, then given up with Sakura's code.
    fake.lock().unwrap().busy = 2;
    assert_eq!(p.list().await.unwrap().len(), 1);
    fake.lock().unwrap().busy = 100;
    let err = p.list().await.unwrap_err().to_string();
    assert!(err.starts_with("sakura GET /server sk: busy: "), "{err}");
    assert!(err.ends_with("(HTTP 503)"), "{err}");
    fake.lock().unwrap().busy = 0;

    // Missing key: a clear error naming the variable; the secret never printed.
    let spec: SakuraSpec = serde_json::from_value(
        json!({"archive": "1", "endpoint": server.url(), "allowHttp": true, "accessTokenEnv": "KF_TEST_SAKURA_UNSET"}),
    )
    .unwrap();
    let ctx = CloudContext {
        cluster: "sk".into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        ssh_public_key: String::new(),
        ssh_port: 22,
        api_ports: vec![],
        vip: None,
        vip_holder: None,
        api_lb: None,
    };
    let p2 = SakuraProvider::new(&spec, ctx).unwrap();
    let err = p2.list().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "sakura credentials: the environment variable KF_TEST_SAKURA_UNSET is not set"
    );
    assert!(!format!("{err} {:?}", p.list().await).contains(SECRET));
}

#[tokio::test]
async fn destroy_deletes_only_tagged_resources() {
    let (server, fake) = start(Fake {
        page: 2,
        ..Fake::default()
    });
    let p = provider(&server.url(), json!({}));
    p.ensure(&specs()).await.unwrap();
    {
        let mut f = fake.lock().unwrap();
        let id = f.id();
        f.servers.push(json!({"ID": id, "Name": "sk-cp-1-old", "Tags": ["team=web"], "Instance": {"Status": "up"}, "Interfaces": [], "Disks": []}));
        let id = f.id();
        f.filters
            .push(json!({"ID": id, "Name": "kubeforge-sk", "Description": "made by hand"}));
    }
    server.take();
    let deleted = p.destroy_all().await.unwrap();
    let kinds: Vec<&str> = deleted.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "server",
            "server",
            "disk",
            "disk",
            "disk",
            "note",
            "note",
            "switch",
            "packet-filter"
        ]
    );
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.servers.len(), 1);
        assert_eq!(f.servers[0]["Name"], "sk-cp-1-old");
        assert_eq!(
            f.filters.len(),
            1,
            "the hand-made filter of the same name stays"
        );
        assert!(f.disks.is_empty() && f.notes.is_empty() && f.switches.is_empty());
    }
    let reqs = server.take();
    assert_eq!(
        reqs.iter()
            .filter(|r| r.method == "DELETE" && r.route().ends_with("/power"))
            .count(),
        2
    );
    assert!(p.destroy_all().await.unwrap().is_empty());
}

/// The binary as a user runs it, against the fake: apply --phases machines, again (no
/// change), destroy.
#[test]
fn apply_machines_and_destroy_through_the_binary() {
    let (server, fake) = start(Fake {
        page: 50,
        ..Fake::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let bin = common::bin();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&bin)
            .current_dir(dir.path())
            .env("SAKURACLOUD_ACCESS_TOKEN", TOKEN)
            .env("SAKURACLOUD_ACCESS_TOKEN_SECRET", SECRET)
            .stdin(std::process::Stdio::null())
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{args:?}: {text}");
        assert!(!text.contains(SECRET), "the secret was printed");
        text
    };
    run(&["state", "keygen", "--out", "state.key"]);
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: skc
spec:
  kubernetesVersion: v1.30.2
  provider:
    sakura: {{archive: '113000000001', endpoint: '{}', allowHttp: true}}
  state: {{url: file://state, encryption: {{keyFile: state.key}}}}
  nodePools:
    controlPlane: {{count: 3}}
  loadBalancer: {{placement: control-plane, interface: eth1}}
",
            server.url()
        ),
    )
    .unwrap();
    let out = run(&[
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]);
    assert!(
        out.contains("Cloud resources on sakura (11 to create, 0 existing)"),
        "{out}"
    );
    assert_eq!(fake.lock().unwrap().servers.len(), 3);
    let out = run(&[
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]);
    assert!(out.contains("(0 to create, 11 existing)"), "{out}");
    let out = run(&["destroy", "--yes", "-f", "cluster.yaml"]);
    assert!(
        out.contains("cluster `skc` destroyed: 11 sakura resources deleted"),
        "{out}"
    );
    let f = fake.lock().unwrap();
    assert!(f.servers.is_empty() && f.disks.is_empty() && f.switches.is_empty());
}
