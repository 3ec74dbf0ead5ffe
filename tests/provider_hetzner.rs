//! Contract tests of the Hetzner Cloud provider against a local server that answers
//! with the shapes of the API's documented examples (no live API here): the requests
//! the client sends (method, path, body, auth), pagination, actions polled until
//! done or failed, error bodies and rate limiting.

mod common;

use common::http_mock::{MockServer, Request, Response};
use kubeforge::provider::cloud::{ApiLb, CloudContext, Retry};
use kubeforge::provider::hetzner::{HetznerProvider, HetznerSpec};
use kubeforge::provider::{MachineRole, MachineSpec, Provider};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "hcloud-test-token-0123456789";

/// The fake: objects per collection, actions that report `running` once, then their
/// final status. Answers follow the documented examples' shapes.
#[derive(Default)]
struct Fake {
    next_id: u64,
    servers: Vec<Value>,
    networks: Vec<Value>,
    firewalls: Vec<Value>,
    ssh_keys: Vec<Value>,
    volumes: Vec<Value>,
    load_balancers: Vec<Value>,
    /// action id -> (polls left before done, final status, error, command)
    actions: std::collections::BTreeMap<u64, (u32, &'static str, Option<Value>, String)>,
    /// Answer the next N requests with 429 rate_limit_exceeded.
    throttle: u32,
    /// Make the next server-create action fail.
    fail_next_create: bool,
    /// Page size of every list (small, to exercise pagination).
    per_page: usize,
    /// Make the next server, then answer 500 as if the answer was lost.
    lose_next_create_answer: bool,
}

impl Fake {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn action(&mut self, command: &str, status: &'static str, error: Option<Value>) -> Value {
        let id = self.id();
        self.actions
            .insert(id, (1, status, error, command.to_string()));
        json!({"id": id, "command": command, "status": "running", "progress": 0,
               "started": "2016-01-30T23:50:00+00:00", "finished": null,
               "resources": [], "error": null})
    }

    fn collection(&mut self, name: &str) -> &mut Vec<Value> {
        match name {
            "servers" => &mut self.servers,
            "networks" => &mut self.networks,
            "firewalls" => &mut self.firewalls,
            "ssh_keys" => &mut self.ssh_keys,
            "volumes" => &mut self.volumes,
            "load_balancers" => &mut self.load_balancers,
            _ => panic!("no collection {name}"),
        }
    }

    /// A label-selector target lists the servers it selects, each healthy on every
    /// service port (as the API shows resolved targets).
    fn resolve_targets(&mut self) {
        let servers = self.servers.clone();
        for lb in &mut self.load_balancers {
            let ports: Vec<Value> = lb["services"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["listen_port"].clone())
                .collect();
            for t in lb["targets"].as_array_mut().unwrap() {
                let sel = t["label_selector"]["selector"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let chosen: Vec<Value> = servers
                    .iter()
                    .filter(|s| {
                        sel.split(',').all(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            s["labels"][k] == json!(v)
                        })
                    })
                    .map(|s| {
                        json!({"type": "server", "server": {"id": s["id"]}, "use_private_ip": true,
                               "health_status": ports.iter().map(|p| json!({"listen_port": p, "status": "healthy"})).collect::<Vec<_>>()})
                    })
                    .collect();
                t["targets"] = json!(chosen);
            }
        }
    }

    fn list(&mut self, name: &str, r: &Request) -> Response {
        if name == "load_balancers" {
            self.resolve_targets();
        }
        let per_page = self.per_page.max(1);
        let page: usize = r.query("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        let selector = r.query("label_selector");
        let by_name = r.query("name");
        let items: Vec<Value> = self
            .collection(name)
            .iter()
            .filter(|o| match &selector {
                Some(sel) => {
                    let (k, v) = sel.split_once('=').unwrap();
                    o["labels"][k] == json!(v)
                }
                None => true,
            })
            .filter(|o| by_name.as_ref().is_none_or(|n| o["name"] == json!(n)))
            .cloned()
            .collect();
        let last = items.len().div_ceil(per_page).max(1);
        let slice: Vec<Value> = items
            .iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .cloned()
            .collect();
        Response::json(
            200,
            json!({
                name: slice,
                "meta": {"pagination": {
                    "page": page, "per_page": per_page,
                    "previous_page": if page > 1 { json!(page - 1) } else { Value::Null },
                    "next_page": if page < last { json!(page + 1) } else { Value::Null },
                    "last_page": last, "total_entries": items.len()
                }}
            }),
        )
    }

    fn handle(&mut self, r: &Request) -> Response {
        if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            return Response::json(
                401,
                json!({"error": {"code": "unauthorized", "message": "unable to authenticate"}}),
            );
        }
        if self.throttle > 0 {
            self.throttle -= 1;
            return Response::json(
                429,
                json!({"error": {"code": "rate_limit_exceeded", "message": "limit of 3600 requests per hour reached", "details": {}}}),
            );
        }
        let route: Vec<&str> = r.route().trim_start_matches('/').split('/').collect();
        let body = r.json();
        match (r.method.as_str(), route.as_slice()) {
            ("GET", ["actions", id]) => {
                let id: u64 = id.parse().unwrap();
                let (left, status, error, command) = self.actions.get(&id).cloned().unwrap();
                let now = if left > 0 { "running" } else { status };
                self.actions.insert(
                    id,
                    (
                        left.saturating_sub(1),
                        status,
                        error.clone(),
                        command.clone(),
                    ),
                );
                Response::json(
                    200,
                    json!({"action": {"id": id, "command": command, "status": now,
                    "progress": if now == "running" { 50 } else { 100 },
                    "error": if now == "error" { error.unwrap_or(Value::Null) } else { Value::Null }}}),
                )
            }
            ("GET", [name]) => self.list(name, r),
            ("POST", ["networks"]) => {
                let id = self.id();
                let n = json!({"id": id, "name": body["name"], "ip_range": body["ip_range"],
                    "subnets": body["subnets"], "labels": body["labels"], "servers": []});
                self.networks.push(n.clone());
                Response::json(201, json!({"network": n}))
            }
            ("POST", ["firewalls"]) => {
                let id = self.id();
                let f = json!({"id": id, "name": body["name"], "labels": body["labels"], "rules": body["rules"], "applied_to": body["apply_to"]});
                self.firewalls.push(f.clone());
                let a = self.action("apply_firewall", "success", None);
                Response::json(201, json!({"firewall": f, "actions": [a]}))
            }
            ("POST", ["ssh_keys"]) => {
                if self.ssh_keys.iter().any(|k| k["name"] == body["name"]) {
                    return Response::json(
                        409,
                        json!({"error": {"code": "uniqueness_error", "message": "SSH key with the same name already exists"}}),
                    );
                }
                let id = self.id();
                let k = json!({"id": id, "name": body["name"], "public_key": body["public_key"],
                    "fingerprint": "b7:2f:30:a0:2f:6c:58:6c:21:04:58:61:ba:06:3b:2f", "labels": body["labels"]});
                self.ssh_keys.push(k.clone());
                Response::json(201, json!({"ssh_key": k}))
            }
            ("POST", ["servers"]) => {
                if body["image"] == json!("no-such-image") {
                    return Response::json(
                        422,
                        json!({"error": {"code": "invalid_input", "message": "invalid input in field 'image'", "details": {"fields": [{"name": "image"}]}}}),
                    );
                }
                if self.servers.iter().any(|s| s["name"] == body["name"]) {
                    return Response::json(
                        409,
                        json!({"error": {"code": "uniqueness_error", "message": "server name is already used"}}),
                    );
                }
                let id = self.id();
                let s = json!({"id": id, "name": body["name"], "status": "running",
                    "labels": body["labels"], "server_type": {"name": body["server_type"]},
                    "public_net": {"ipv4": {"ip": format!("203.0.113.{}", id % 250)}, "ipv6": null},
                    "private_net": []});
                self.servers.push(s.clone());
                if std::mem::take(&mut self.lose_next_create_answer) {
                    return Response::json(
                        500,
                        json!({"error": {"code": "server_error", "message": "internal error"}}),
                    );
                }
                let (status, error) = if std::mem::take(&mut self.fail_next_create) {
                    (
                        "error",
                        Some(json!({"code": "action_failed", "message": "Action failed"})),
                    )
                } else {
                    ("success", None)
                };
                let a = self.action("create_server", status, error);
                let next = self.action("start_server", "success", None);
                Response::json(
                    201,
                    json!({"server": s, "action": a, "next_actions": [next], "root_password": null}),
                )
            }
            ("POST", ["servers", id, "actions", "attach_to_network"]) => {
                let id: u64 = id.parse().unwrap();
                let entry = json!({"network": body["network"], "ip": body["ip"],
                    "alias_ips": body.get("alias_ips").cloned().unwrap_or(json!([])), "mac_address": "86:00:ff:2a:7d:e1"});
                if let Some(s) = self.servers.iter_mut().find(|s| s["id"] == json!(id)) {
                    s["private_net"].as_array_mut().unwrap().push(entry);
                }
                let a = self.action("attach_to_network", "success", None);
                Response::json(201, json!({"action": a}))
            }
            ("POST", ["load_balancers"]) => {
                let id = self.id();
                let lb = json!({"id": id, "name": body["name"], "labels": body["labels"],
                    "load_balancer_type": {"name": body["load_balancer_type"]},
                    "location": {"name": body["location"]}, "algorithm": body["algorithm"],
                    "public_net": {"enabled": true, "ipv4": {"ip": "203.0.113.200"}},
                    "private_net": [], "services": [], "targets": []});
                self.load_balancers.push(lb.clone());
                let a = self.action("create_load_balancer", "success", None);
                Response::json(201, json!({"load_balancer": lb, "action": a}))
            }
            ("POST", ["load_balancers", id, "actions", action]) => {
                let id: u64 = id.parse().unwrap();
                let Some(lb) = self
                    .load_balancers
                    .iter_mut()
                    .find(|l| l["id"] == json!(id))
                else {
                    return Response::json(
                        404,
                        json!({"error": {"code": "not_found", "message": "load balancer not found"}}),
                    );
                };
                match *action {
                    "attach_to_network" => lb["private_net"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"network": body["network"], "ip": body["ip"]})),
                    "disable_public_interface" => lb["public_net"]["enabled"] = json!(false),
                    "add_service" => lb["services"].as_array_mut().unwrap().push(body.clone()),
                    "add_target" => {
                        let mut t = body.clone();
                        t["targets"] = json!([]);
                        lb["targets"].as_array_mut().unwrap().push(t)
                    }
                    _ => {
                        return Response::json(
                            404,
                            json!({"error": {"code": "not_found", "message": "no such action"}}),
                        )
                    }
                }
                let a = self.action(action, "success", None);
                Response::json(201, json!({"action": a}))
            }
            ("POST", ["servers", id, "actions", "change_alias_ips"]) => {
                let id: u64 = id.parse().unwrap();
                let net = body["network"].clone();
                let wanted: Vec<Value> = body["alias_ips"].as_array().cloned().unwrap_or_default();
                // An alias another server holds on the network is refused.
                for other in self.servers.iter().filter(|s| s["id"] != json!(id)) {
                    for pn in other["private_net"].as_array().unwrap() {
                        if pn["network"] == net
                            && pn["alias_ips"]
                                .as_array()
                                .is_some_and(|a| wanted.iter().any(|w| a.contains(w)))
                        {
                            return Response::json(
                                422,
                                json!({"error": {"code": "ip_not_available", "message": "the IP is not available"}}),
                            );
                        }
                    }
                }
                if let Some(s) = self.servers.iter_mut().find(|s| s["id"] == json!(id)) {
                    for pn in s["private_net"].as_array_mut().unwrap() {
                        if pn["network"] == net {
                            pn["alias_ips"] = json!(wanted);
                        }
                    }
                }
                let a = self.action("change_alias_ips", "success", None);
                Response::json(201, json!({"action": a}))
            }
            ("POST", ["volumes"]) => {
                let id = self.id();
                let v = json!({"id": id, "name": body["name"], "size": body["size"], "server": body["server"],
                    "labels": body["labels"], "linux_device": format!("/dev/disk/by-id/scsi-0HC_Volume_{id}")});
                self.volumes.push(v.clone());
                let a = self.action("create_volume", "success", None);
                let n = self.action("attach_volume", "success", None);
                Response::json(201, json!({"volume": v, "action": a, "next_actions": [n]}))
            }
            ("POST", ["volumes", id, "actions", "detach"]) => {
                let id: u64 = id.parse().unwrap();
                if let Some(v) = self.volumes.iter_mut().find(|v| v["id"] == json!(id)) {
                    v["server"] = Value::Null;
                }
                let a = self.action("detach_volume", "success", None);
                Response::json(201, json!({"action": a}))
            }
            ("POST", ["firewalls", _, "actions", "remove_from_resources"]) => {
                let a = self.action("remove_firewall", "success", None);
                Response::json(201, json!({"actions": [a]}))
            }
            ("DELETE", [name, id]) => {
                let id: u64 = id.parse().unwrap();
                let coll = self.collection(name);
                let before = coll.len();
                coll.retain(|o| o["id"] != json!(id));
                if coll.len() == before {
                    return Response::json(
                        404,
                        json!({"error": {"code": "not_found", "message": "not found"}}),
                    );
                }
                if *name == "servers" {
                    let a = self.action("delete_server", "success", None);
                    Response::json(200, json!({"action": a}))
                } else {
                    Response::empty(204)
                }
            }
            _ => Response::json(
                404,
                json!({"error": {"code": "not_found", "message": format!("no route {} {}", r.method, r.path)}}),
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

fn provider(url: &str, token_env: &str) -> HetznerProvider {
    let spec: HetznerSpec =
        serde_json::from_value(json!({"endpoint": url, "allowHttp": true, "tokenEnv": token_env}))
            .unwrap();
    let ctx = CloudContext {
        cluster: "hz".into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl6ZmFrZWtleQ test".into(),
        ssh_port: 22,
        api_ports: vec![6443],
        vip: Some("10.42.0.254".parse().unwrap()),
        vip_holder: Some("hz-lb-1".into()),
        api_lb: None,
    };
    let mut p = HetznerProvider::new(&spec, ctx).unwrap();
    p.set_retry(Retry {
        attempts: 4,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    });
    p
}

fn token_env() -> &'static str {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var("KF_TEST_HCLOUD_TOKEN", TOKEN));
    "KF_TEST_HCLOUD_TOKEN"
}

fn specs() -> Vec<MachineSpec> {
    vec![
        MachineSpec {
            name: "hz-lb-1".into(),
            role: MachineRole::LoadBalancer,
            ip: "10.42.0.4".parse().unwrap(),
            extra_disks: vec![],
        },
        MachineSpec {
            name: "hz-worker-1".into(),
            role: MachineRole::Worker,
            ip: "10.42.0.20".parse().unwrap(),
            extra_disks: vec![5 << 30, 100 << 30],
        },
    ]
}

fn posts<'a>(reqs: &'a [Request], route: &str) -> Vec<&'a Request> {
    reqs.iter()
        .filter(|r| r.method == "POST" && r.route() == route)
        .collect()
}

#[tokio::test]
async fn ensure_sends_the_documented_requests_and_a_rerun_creates_nothing() {
    let (server, fake) = start(Fake {
        per_page: 1,
        ..Fake::default()
    });
    let p = provider(&server.url(), token_env());
    let machines = p.ensure(&specs()).await.unwrap();
    assert_eq!(machines.len(), 2);
    assert_eq!(machines[0].ip, Some("10.42.0.4".parse().unwrap()));
    assert_eq!(machines[1].role, MachineRole::Worker);
    assert!(machines[0].public_ip.is_some());
    let reqs = server.take();
    assert!(reqs
        .iter()
        .all(|r| r.header("authorization") == Some(&*format!("Bearer {TOKEN}"))));
    // Lists ask by label, page by page.
    assert!(
        reqs.iter().any(|r| r
            .path
            .starts_with("/servers?label_selector=kubeforge.dev%2Fcluster%3Dhz&page=1")),
        "{:?}",
        reqs.iter().map(|r| &r.path).collect::<Vec<_>>()
    );

    let net = posts(&reqs, "/networks");
    assert_eq!(net.len(), 1);
    assert_eq!(
        net[0].json(),
        json!({"name": "hz", "ip_range": "10.42.0.0/16",
               "subnets": [{"type": "cloud", "ip_range": "10.42.0.0/24", "network_zone": "eu-central"}],
               "labels": {"kubeforge.dev/cluster": "hz"}})
    );
    let fw = posts(&reqs, "/firewalls")[0].json();
    assert_eq!(
        fw["apply_to"],
        json!([{"type": "label_selector", "label_selector": {"selector": "kubeforge.dev/cluster=hz"}}])
    );
    let ports: Vec<&str> = fw["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["port"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["22", "6443"]);
    assert_eq!(fw["rules"][0]["source_ips"], json!(["0.0.0.0/0", "::/0"]));
    let key = posts(&reqs, "/ssh_keys")[0].json();
    assert_eq!(key["name"], "kubeforge-hz");
    assert!(key["public_key"]
        .as_str()
        .unwrap()
        .starts_with("ssh-ed25519 "));

    let servers = posts(&reqs, "/servers");
    assert_eq!(servers.len(), 2);
    let s = servers[1].json();
    assert_eq!(s["name"], "hz-worker-1");
    assert_eq!(s["server_type"], "cx22");
    assert_eq!(s["image"], "debian-12");
    assert_eq!(s["location"], "fsn1");
    assert_eq!(
        s["labels"],
        json!({"kubeforge.dev/cluster": "hz", "kubeforge.dev/role": "worker"})
    );
    assert!(s["user_data"]
        .as_str()
        .unwrap()
        .starts_with("#cloud-config\nhostname: hz-worker-1\n"));
    assert!(s["ssh_keys"][0].is_u64());
    // Fixed addresses on attach; the VIP as an alias of its first holder.
    let attach: Vec<Value> = reqs
        .iter()
        .filter(|r| r.route().ends_with("/actions/attach_to_network"))
        .map(Request::json)
        .collect();
    assert_eq!(attach.len(), 2);
    assert_eq!(attach[0]["ip"], "10.42.0.4");
    assert_eq!(attach[0]["alias_ips"], json!(["10.42.0.254"]));
    assert_eq!(attach[1]["ip"], "10.42.0.20");
    assert!(attach[1].get("alias_ips").is_none());
    // Extra disks: volumes of at least 10 GB, attached, not mounted.
    let vols: Vec<Value> = posts(&reqs, "/volumes").iter().map(|r| r.json()).collect();
    assert_eq!(vols.len(), 2);
    assert_eq!(
        (vols[0]["name"].as_str(), vols[0]["size"].as_u64()),
        (Some("hz-worker-1-disk-1"), Some(10))
    );
    assert_eq!(vols[1]["size"], 100);
    assert_eq!(vols[1]["automount"], false);
    // Every action was polled until it succeeded.
    let polled = reqs
        .iter()
        .filter(|r| r.route().starts_with("/actions/"))
        .count();
    assert!(polled >= 8, "{polled} action polls");
    assert!(fake
        .lock()
        .unwrap()
        .actions
        .values()
        .all(|(left, _, _, _)| *left == 0));

    // Re-run: found by label (over several pages), nothing created.
    let again = p.ensure(&specs()).await.unwrap();
    assert_eq!(
        again.iter().map(|m| &m.id).collect::<Vec<_>>(),
        machines.iter().map(|m| &m.id).collect::<Vec<_>>()
    );
    let reqs = server.take();
    assert!(
        reqs.iter().all(|r| r.method == "GET"),
        "{:?}",
        reqs.iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
    assert!(reqs.iter().any(|r| r.path.contains("page=2")));
}

#[tokio::test]
async fn a_server_made_before_a_crash_is_finished_not_duplicated() {
    let (server, fake) = start(Fake {
        per_page: 50,
        ..Fake::default()
    });
    // A server created by a run that died before attaching it (and before any state
    // was written): it carries our labels, nothing else.
    {
        let mut f = fake.lock().unwrap();
        let id = f.id();
        f.servers
            .push(json!({"id": id, "name": "hz-lb-1", "status": "running",
            "labels": {"kubeforge.dev/cluster": "hz", "kubeforge.dev/role": "load-balancer"},
            "public_net": {"ipv4": {"ip": "203.0.113.9"}}, "private_net": []}));
    }
    let p = provider(&server.url(), token_env());
    p.ensure(&specs()[..1]).await.unwrap();
    let reqs = server.take();
    assert!(posts(&reqs, "/servers").is_empty(), "no second server");
    assert_eq!(
        reqs.iter()
            .filter(|r| r.route().ends_with("attach_to_network"))
            .count(),
        1
    );
    assert_eq!(fake.lock().unwrap().servers.len(), 1);
}

#[tokio::test]
async fn errors_carry_the_operation_resource_code_and_message() {
    let (server, fake) = start(Fake {
        per_page: 50,
        ..Fake::default()
    });
    let spec: HetznerSpec = serde_json::from_value(
        json!({"endpoint": server.url(), "allowHttp": true, "tokenEnv": token_env(), "image": "no-such-image"}),
    )
    .unwrap();
    let ctx = CloudContext {
        cluster: "hz".into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        ssh_public_key: "ssh-ed25519 AAAA test".into(),
        ssh_port: 22,
        api_ports: vec![6443],
        vip: None,
        vip_holder: None,
        api_lb: None,
    };
    let p = HetznerProvider::new(&spec, ctx).unwrap();
    let err = p.ensure(&specs()[..1]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "hetzner POST /servers hz-lb-1: invalid_input: invalid input in field 'image' (HTTP 422)"
    );

    // A failed action is the call's error, with the action's own code.
    let p = provider(&server.url(), token_env());
    fake.lock().unwrap().fail_next_create = true;
    let err = p.ensure(&specs()[1..]).await.unwrap_err().to_string();
    assert!(err.starts_with("hetzner action "), "{err}");
    assert!(
        err.ends_with("(create_server) hz-worker-1 failed: action_failed: Action failed"),
        "{err}"
    );

    // 429 rate_limit_exceeded is retried with backoff.
    server.take();
    fake.lock().unwrap().throttle = 3;
    let m = p.list().await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(
        server.take().len(),
        4,
        "three throttled answers, then the list"
    );
    // ... and given up after the attempts, with Hetzner's code.
    fake.lock().unwrap().throttle = 100;
    let err = p.list().await.unwrap_err().to_string();
    assert_eq!(err, "hetzner GET /servers hz: rate_limit_exceeded: limit of 3600 requests per hour reached (HTTP 429)");
    fake.lock().unwrap().throttle = 0;
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_a_clear_error_and_never_printed() {
    let (server, _fake) = start(Fake::default());
    let p = provider(&server.url(), "KF_TEST_HCLOUD_TOKEN_UNSET");
    let err = p.list().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "hetzner credentials: the environment variable KF_TEST_HCLOUD_TOKEN_UNSET is not set"
    );
    std::env::set_var("KF_TEST_HCLOUD_TOKEN_WRONG", "wrong-token-value");
    let p = provider(&server.url(), "KF_TEST_HCLOUD_TOKEN_WRONG");
    let err = p.list().await.unwrap_err().to_string();
    assert_eq!(
        err,
        "hetzner GET /servers hz: unauthorized: unable to authenticate (HTTP 401)"
    );
    assert!(!err.contains("wrong-token-value"));
}

#[tokio::test]
async fn destroy_deletes_only_labelled_resources() {
    let (server, fake) = start(Fake {
        per_page: 2,
        ..Fake::default()
    });
    let p = provider(&server.url(), token_env());
    p.ensure(&specs()).await.unwrap();
    {
        // Someone else's server and network in the same project.
        let mut f = fake.lock().unwrap();
        let id = f.id();
        f.servers.push(json!({"id": id, "name": "web-1", "status": "running", "labels": {"team": "web"}, "private_net": []}));
        let id = f.id();
        f.networks
            .push(json!({"id": id, "name": "web", "labels": {}}));
    }
    server.take();
    let deleted = p.destroy_all().await.unwrap();
    let kinds: Vec<&str> = deleted.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["server", "server", "volume", "volume", "firewall", "network", "ssh-key"]
    );
    {
        let f = fake.lock().unwrap();
        assert_eq!(f.servers.len(), 1);
        assert_eq!(f.servers[0]["name"], "web-1");
        assert_eq!(f.networks.len(), 1);
        assert!(f.volumes.is_empty() && f.firewalls.is_empty() && f.ssh_keys.is_empty());
    }
    let reqs = server.take();
    assert!(reqs
        .iter()
        .any(|r| r.route().ends_with("/actions/remove_from_resources")));
    assert!(reqs
        .iter()
        .filter(|r| r.method == "DELETE")
        .all(|r| !r.path.contains("web")));
    // Again: nothing left, success.
    assert!(p.destroy_all().await.unwrap().is_empty());
}

/// The binary as a user runs it, against the fake: apply --phases machines, again (no
/// change), destroy.
#[test]
fn apply_machines_and_destroy_through_the_binary() {
    let (server, fake) = start(Fake {
        per_page: 50,
        ..Fake::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let bin = common::bin();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&bin);
        // destroy needs no failover credential.
        if args[0] != "destroy" {
            cmd.env("KF_TEST_FAILOVER_TOKEN", TOKEN);
        }
        let out = cmd
            .current_dir(dir.path())
            .env("HCLOUD_TOKEN", TOKEN)
            .env_remove("HCLOUD_ENDPOINT")
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
        assert!(!text.contains(TOKEN), "the token was printed");
        text
    };
    run(&["state", "keygen", "--out", "state.key"]);
    std::fs::write(
        dir.path().join("cluster.yaml"),
        format!(
            "apiVersion: kubeforge.dev/v1alpha1
kind: Cluster
metadata:
  name: hzc
spec:
  kubernetesVersion: v1.30.2
  provider:
    hetzner: {{endpoint: '{}', allowHttp: true}}
  state: {{url: file://state, encryption: {{keyFile: state.key}}}}
  nodePools:
    controlPlane: {{count: 3}}
    loadBalancers: {{count: 2}}
  loadBalancer:
    interface: enp7s0
    failover: {{tokenEnv: KF_TEST_FAILOVER_TOKEN}}
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
        out.contains("Cloud resources on hetzner (8 to create, 0 existing)"),
        "{out}"
    );
    assert_eq!(fake.lock().unwrap().servers.len(), 5);
    // The VIP is an alias of the first load balancer.
    let lb1 = fake
        .lock()
        .unwrap()
        .servers
        .iter()
        .find(|s| s["name"] == "hzc-lb-1")
        .cloned()
        .unwrap();
    assert_eq!(lb1["private_net"][0]["alias_ips"], json!(["10.42.0.254"]));

    // keepalived's failover script, as kubeforge renders it for each load balancer,
    // moves the alias through the API (run here against the fake, as keepalived's
    // notify_master runs it on the node).
    let render = |env: Option<&str>| {
        let mut c = std::process::Command::new(&bin);
        c.current_dir(dir.path())
            .env("HCLOUD_TOKEN", TOKEN)
            .env_remove("KF_TEST_FAILOVER_TOKEN")
            .args(["render", "-f", "cluster.yaml", "--out", "rendered"]);
        if let Some(t) = env {
            c.env("KF_TEST_FAILOVER_TOKEN", t);
        }
        c.output().unwrap()
    };
    let missing = render(None);
    let text = String::from_utf8_lossy(&missing.stderr).to_string();
    assert!(!missing.status.success());
    assert!(text.contains("KF_TEST_FAILOVER_TOKEN"), "{text}");
    let ok = render(Some(TOKEN));
    assert!(ok.status.success(), "{ok:?}");
    assert!(!String::from_utf8_lossy(&ok.stdout).contains(TOKEN));
    let rendered = dir.path().join("rendered");
    let keepalived =
        std::fs::read_to_string(rendered.join("hzc-lb-2/etc/keepalived/keepalived.conf")).unwrap();
    assert!(
        keepalived.contains(
            "notify_master \"/usr/local/lib/kubeforge/vip-failover /etc/kubeforge/vip-failover.json\""
        ),
        "{keepalived}"
    );
    // `render` shows the token redacted; the load balancers get it (put back here).
    for lb in ["hzc-lb-1", "hzc-lb-2"] {
        let cfg = rendered.join(lb).join("etc/kubeforge/vip-failover.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        assert_eq!(v["token"], "<redacted>");
        assert_eq!(v["provider"], "hetzner");
        v["token"] = json!(TOKEN);
        std::fs::write(&cfg, v.to_string()).unwrap();
        // As rendered, the script acts only while keepalived put the VIP on one of the
        // node's interfaces: this machine has none, so nothing is moved.
        let out = std::process::Command::new("python3")
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
        assert_eq!(
            fake.lock()
                .unwrap()
                .servers
                .iter()
                .find(|s| s["name"] == "hzc-lb-1")
                .unwrap()["private_net"][0]["alias_ips"],
            json!(["10.42.0.254"])
        );
        // The runs below stand in for a node that holds it.
        v["checkLocal"] = json!(false);
        std::fs::write(&cfg, v.to_string()).unwrap();
    }
    let failover = |lb: &str| {
        let base = rendered.join(lb);
        std::process::Command::new("python3")
            .arg(base.join("usr/local/lib/kubeforge/vip-failover"))
            .arg(base.join("etc/kubeforge/vip-failover.json"))
            .output()
            .unwrap()
    };
    let aliases = |name: &str| {
        fake.lock()
            .unwrap()
            .servers
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["private_net"][0]["alias_ips"].clone())
            .unwrap()
    };
    let out = failover("hzc-lb-2");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
    assert_eq!(aliases("hzc-lb-2"), json!(["10.42.0.254"]), "{log}");
    assert_eq!(aliases("hzc-lb-1"), json!([]), "{log}");
    // Idempotent, and the next apply does not take the VIP back to lb-1.
    assert!(failover("hzc-lb-2").status.success());
    run(&[
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]);
    assert_eq!(aliases("hzc-lb-2"), json!(["10.42.0.254"]));
    let out = failover("hzc-lb-1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(aliases("hzc-lb-1"), json!(["10.42.0.254"]));
    assert_eq!(aliases("hzc-lb-2"), json!([]));
    // A token the API refuses: the script gives up with the API's code, exit 1.
    let cfg = rendered.join("hzc-lb-2/etc/kubeforge/vip-failover.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["token"] = json!("wrong-token");
    v["timeoutSeconds"] = json!(2);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let out = failover("hzc-lb-2");
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("unauthorized"), "{log}");
    assert_eq!(aliases("hzc-lb-1"), json!(["10.42.0.254"]));

    let out = run(&[
        "apply",
        "--phases",
        "machines",
        "--yes",
        "-f",
        "cluster.yaml",
    ]);
    assert!(out.contains("(0 to create, 8 existing)"), "{out}");
    assert_eq!(fake.lock().unwrap().servers.len(), 5);
    let out = run(&["destroy", "--yes", "-f", "cluster.yaml"]);
    assert!(out.contains("delete  server `hzc-cp-1`"), "{out}");
    assert!(
        out.contains("cluster `hzc` destroyed: 8 hetzner resources deleted"),
        "{out}"
    );
    assert!(fake.lock().unwrap().servers.is_empty());
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_not_repeated_and_found_next_run() {
    let (server, fake) = start(Fake {
        per_page: 50,
        lose_next_create_answer: true,
        ..Fake::default()
    });
    let p = provider(&server.url(), token_env());
    let err = p.ensure(&specs()[..1]).await.unwrap_err().to_string();
    assert_eq!(
        err,
        "hetzner POST /servers hz-lb-1: server_error: internal error (HTTP 500)"
    );
    let posts_after_error = posts(&server.take(), "/servers").len();
    assert_eq!(
        posts_after_error, 1,
        "a POST that may have created is not repeated"
    );
    // The next run finds the server by its label and finishes it.
    p.ensure(&specs()[..1]).await.unwrap();
    assert!(posts(&server.take(), "/servers").is_empty());
    assert_eq!(fake.lock().unwrap().servers.len(), 1);
}

fn lb_provider(url: &str) -> HetznerProvider {
    let spec: HetznerSpec = serde_json::from_value(
        json!({"endpoint": url, "allowHttp": true, "tokenEnv": token_env(), "location": "nbg1"}),
    )
    .unwrap();
    let ctx = CloudContext {
        cluster: "hz".into(),
        subnet: "10.42.0.0/24".parse().unwrap(),
        ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl6ZmFrZWtleQ test".into(),
        ssh_port: 22,
        api_ports: vec![6443],
        vip: None,
        vip_holder: None,
        api_lb: Some(ApiLb {
            address: "10.42.0.254".parse().unwrap(),
            port: 6443,
            target_port: 6443,
            https_check: true,
        }),
    };
    let mut p = HetznerProvider::new(&spec, ctx).unwrap();
    p.set_retry(Retry {
        attempts: 4,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    });
    p
}

#[tokio::test]
async fn the_cloud_load_balancer_sits_on_the_private_network_in_front_of_the_control_planes() {
    let (server, fake) = start(Fake {
        per_page: 50,
        ..Fake::default()
    });
    let p = lb_provider(&server.url());
    let cps: Vec<MachineSpec> = (1..=3)
        .map(|i| MachineSpec {
            name: format!("hz-cp-{i}"),
            role: MachineRole::ControlPlane,
            ip: format!("10.42.0.{}", 9 + i).parse().unwrap(),
            extra_disks: vec![],
        })
        .chain(std::iter::once(specs()[1].clone()))
        .collect();
    assert!(p
        .planned(&cps)
        .iter()
        .any(|r| r.kind == "load-balancer" && r.name == "hz-api"));
    p.ensure(&cps).await.unwrap();
    let reqs = server.take();
    let create = posts(&reqs, "/load_balancers");
    assert_eq!(create.len(), 1);
    let body = create[0].json();
    assert_eq!(body["name"], "hz-api");
    assert_eq!(body["load_balancer_type"], "lb11");
    assert_eq!(body["location"], "nbg1");
    assert_eq!(body["labels"]["kubeforge.dev/cluster"], "hz");
    let id = fake.lock().unwrap().load_balancers[0]["id"]
        .as_u64()
        .unwrap();
    let action = |a: &str| {
        let path = format!("/load_balancers/{id}/actions/{a}");
        let found = posts(&reqs, &path);
        assert_eq!(found.len(), 1, "{a}: {reqs:?}");
        found[0].json()
    };
    let attach = action("attach_to_network");
    assert_eq!(attach["ip"], "10.42.0.254");
    assert!(attach["network"].as_u64().is_some());
    action("disable_public_interface");
    let svc = action("add_service");
    assert_eq!(svc["protocol"], "tcp");
    assert_eq!(svc["listen_port"], 6443);
    assert_eq!(svc["destination_port"], 6443);
    assert_eq!(svc["health_check"]["http"]["path"], "/readyz");
    assert_eq!(svc["health_check"]["http"]["tls"], true);
    let target = action("add_target");
    assert_eq!(target["type"], "label_selector");
    assert_eq!(
        target["label_selector"]["selector"],
        "kubeforge.dev/cluster=hz,kubeforge.dev/role=control-plane"
    );
    assert_eq!(target["use_private_ip"], true);
    // The targets are the control planes (not the worker), healthy.
    let health = p.endpoint_targets().await.unwrap().unwrap();
    assert_eq!(
        health.iter().map(|t| t.target.as_str()).collect::<Vec<_>>(),
        ["10.42.0.10:6443", "10.42.0.11:6443", "10.42.0.12:6443"]
    );
    assert!(health.iter().all(|t| t.healthy()), "{health:?}");
    // A second run changes nothing about the load balancer.
    p.ensure(&cps).await.unwrap();
    let again = server.take();
    assert!(
        !again
            .iter()
            .any(|r| r.method == "POST" && r.route().starts_with("/load_balancers")),
        "{again:?}"
    );
    // A run that crashed after the create is finished: the parts are made one by one.
    fake.lock().unwrap().load_balancers[0]["private_net"] = json!([]);
    fake.lock().unwrap().load_balancers[0]["targets"] = json!([]);
    p.ensure(&cps).await.unwrap();
    let fixed = server.take();
    assert_eq!(posts(&fixed, "/load_balancers").len(), 0);
    assert_eq!(
        posts(
            &fixed,
            &format!("/load_balancers/{id}/actions/attach_to_network")
        )
        .len(),
        1
    );
    assert_eq!(
        posts(&fixed, &format!("/load_balancers/{id}/actions/add_target")).len(),
        1
    );
    assert_eq!(
        posts(&fixed, &format!("/load_balancers/{id}/actions/add_service")).len(),
        0
    );
    // destroy deletes it before the network it is attached to.
    let gone = p.destroy_all().await.unwrap();
    assert!(gone
        .iter()
        .any(|r| r.kind == "load-balancer" && r.name == "hz-api"));
    let deletes: Vec<String> = server
        .take()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.route().to_string())
        .collect();
    let lb_at = deletes
        .iter()
        .position(|d| d.starts_with("/load_balancers/"))
        .unwrap();
    let net_at = deletes
        .iter()
        .position(|d| d.starts_with("/networks/"))
        .unwrap();
    assert!(lb_at < net_at, "{deletes:?}");
    assert!(fake.lock().unwrap().load_balancers.is_empty());
}
