//! Day-2 commands as a user runs them (issue 16): completion, man pages, schema,
//! inventory (real `ansible-inventory`), clusters, kubeconfig (real kubectl), plan's
//! detailed exit code, and the examples in every command's help.

mod support;

use assert_cmd::Command;
use clap::Parser as _;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubeforge() -> Command {
    let mut c = Command::cargo_bin("kubeforge").unwrap();
    c.current_dir(root())
        .env_remove("KUBEFORGE_STATE_KEY_FILE")
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .env_remove("KUBEFORGE_STATE_KEY");
    c
}

fn stdout_of(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn run_tool(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

// ------------------------------------------------------------------ completion, man

/// man's bold and underline for a pipe: `X\bX`, `_\bX` -> `X`.
fn strip_overstrike(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
            continue;
        }
        out.push(c);
    }
    out.into_iter().collect()
}

#[test]
fn bash_completion_is_valid_bash_and_knows_the_subcommands() {
    let script = stdout_of(kubeforge().args(["completion", "bash"]));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("kubeforge.bash");
    std::fs::write(&f, &script).unwrap();
    run_tool(std::process::Command::new("bash").arg("-n").arg(&f));
    for sub in [
        "apply",
        "plan",
        "upgrade",
        "state",
        "kubeconfig",
        "completion",
        "man",
    ] {
        assert!(
            script.contains(&format!("kubeforge__{sub}")) || script.contains(sub),
            "the bash completion does not mention `{sub}`"
        );
    }
    // It completes `kubeforge st<TAB>` to `state` when sourced.
    let probe = format!(
        "source {}\nCOMP_WORDS=(kubeforge st)\nCOMP_CWORD=1\nCOMP_LINE='kubeforge st'\nCOMP_POINT=12\n_kubeforge kubeforge st kubeforge\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        f.display()
    );
    let replies = run_tool(std::process::Command::new("bash").arg("-c").arg(probe));
    assert!(
        replies.lines().any(|l| l == "state"),
        "`kubeforge st<TAB>` offers {replies:?}"
    );
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let s = stdout_of(kubeforge().args(["completion", shell]));
        assert!(s.contains("kubeforge"), "{shell}: {s}");
    }
    kubeforge().args(["completion", "tcsh"]).assert().code(2);
}

#[test]
fn man_pages_render_for_the_command_and_its_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let report = stdout_of(kubeforge().args(["man", "-o", "json", "--out"]).arg(&out));
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    let pages: Vec<&str> = v["pages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "kubeforge.1",
        "kubeforge-apply.1",
        "kubeforge-state.1",
        "kubeforge-state-show.1",
        "kubeforge-kubeconfig.1",
    ] {
        assert!(pages.contains(&p), "{p} missing from {pages:?}");
        let text = std::fs::read_to_string(out.join(p)).unwrap();
        assert!(text.contains(".TH "), "{p} has no roff header");
    }
    // The page on stdout is the top-level one.
    let top = stdout_of(kubeforge().arg("man"));
    assert!(top.contains(".TH kubeforge 1"), "{top}");
    // Rendered by man itself when it is installed.
    if std::process::Command::new("man")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let rendered = strip_overstrike(&run_tool(
            std::process::Command::new("man")
                .env("MANWIDTH", "100")
                .arg("-l")
                .arg(out.join("kubeforge-state-show.1")),
        ));
        assert!(rendered.contains("NAME"), "{rendered}");
        assert!(rendered.contains("--generation"), "{rendered}");
    }
}

// ------------------------------------------------------------------ plan --detailed-exitcode

#[test]
fn plan_detailed_exitcode_tells_changes_from_errors() {
    // A plan for fresh hosts has changes: 2 with the flag, 0 without.
    kubeforge()
        .args([
            "plan",
            "--offline",
            "--detailed-exitcode",
            "-f",
            "examples/baremetal.yaml",
        ])
        .assert()
        .code(2);
    kubeforge()
        .args(["plan", "--offline", "-f", "examples/baremetal.yaml"])
        .assert()
        .code(0);
    let out = kubeforge()
        .args([
            "plan",
            "--offline",
            "--detailed-exitcode",
            "-o",
            "json",
            "-f",
            "examples/local.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["phases"].as_array().is_some_and(|p| !p.is_empty()));
    // Bad input is exit 2 normally, 1 with the flag (2 would read as "changes").
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\n").unwrap();
    kubeforge()
        .args(["plan", "--offline", "-f"])
        .arg(&bad)
        .assert()
        .code(2);
    kubeforge()
        .args(["plan", "--offline", "--detailed-exitcode", "-f"])
        .arg(&bad)
        .assert()
        .code(1);
}

// ------------------------------------------------------------------ schema

fn schema() -> serde_json::Value {
    serde_json::from_str(&stdout_of(kubeforge().arg("schema"))).unwrap()
}

fn yaml_to_json(text: &str) -> serde_json::Value {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
    serde_json::to_value(v).unwrap()
}

/// The schema's complaints about `instance` (`path: message`), none when it is valid.
fn schema_errors(validator: &jsonschema::Validator, instance: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn schema_is_checked_in_as_docs_cluster_schema_json() {
    let generated = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
    let path = root().join("docs/cluster.schema.json");
    if std::env::var_os("KUBEFORGE_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/cluster.schema.json differs from `kubeforge schema` (the spec types changed): \
         KUBEFORGE_UPDATE_SCHEMA=1 cargo test --test day2_cli schema rewrites it; review the diff"
    );
}

#[test]
fn every_example_validates_against_the_schema_and_unknown_fields_do_not() {
    let schema = schema();
    assert_eq!(schema["additionalProperties"], false);
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 5, "{examples:?}");
    for ex in &examples {
        let doc = yaml_to_json(&std::fs::read_to_string(ex).unwrap());
        let errors = schema_errors(&validator, &doc);
        assert!(errors.is_empty(), "{}: {errors:#?}", ex.display());
    }
    // What kubeforge refuses, the schema refuses too (and the other way round is
    // checked by the examples): unknown fields at every depth, no provider, two
    // providers, a wrong kind.
    let base = std::fs::read_to_string(root().join("examples/baremetal.yaml")).unwrap();
    let cases: [(&str, &str, &str); 5] = [
        ("spec:\n", "spec:\n  colour: blue\n", "/spec"),
        (
            "    pathStyle: true\n",
            "    pathStyle: true\n    bucket: x\n",
            "/spec/state",
        ),
        (
            "          - {address: 10.10.0.1, asn: 64513}\n",
            "          - {address: 10.10.0.1, asn: 64513, password: x}\n",
            "/spec/addons/metallb/bgp/peers/0",
        ),
        (
            "    static:\n",
            "    docker: {}\n    static:\n",
            "/spec/provider",
        ),
        ("kind: Cluster\n", "kind: Inventory\n", "/kind"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (from, to, at) in cases {
        assert!(base.contains(from), "{from:?}");
        let text = base.replacen(from, to, 1);
        // The base file validates, so any error comes from the change; under an
        // optional section (`anyOf: [{$ref}, null]`) it is reported at that section.
        let errors: Vec<(String, String)> = validator
            .iter_errors(&yaml_to_json(&text))
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect();
        assert!(
            errors
                .iter()
                .any(|(path, _)| !path.is_empty() && at.starts_with(path.as_str())),
            "{to:?}: expected a schema error at {at} (or a section above it), got {errors:#?}"
        );
        let f = dir.path().join("bad.yaml");
        std::fs::write(
            &f,
            text.replace("../inventory/", &format!("{}/inventory/", root().display())),
        )
        .unwrap();
        kubeforge()
            .args(["validate", "-f"])
            .arg(&f)
            .assert()
            .code(2);
    }
}

// ------------------------------------------------------------------ inventory

/// `ansible-inventory` from ansible-core (scripts/testbed/10-packages.sh installs it).
fn ansible_inventory() -> std::process::Command {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("ansible-inventory"))
            .find(|p| p.is_file())
    });
    let Some(bin) = found else {
        panic!("ansible-inventory is not on PATH: run scripts/testbed/10-packages.sh (pip install ansible-core)");
    };
    std::process::Command::new(bin)
}

/// An inventory script calling the built binary, as a user would write it.
fn inventory_script(dir: &std::path::Path, cluster: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("kubeforge-inventory.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec '{}' inventory -f '{}' \"$@\"\n",
            assert_cmd::cargo::cargo_bin("kubeforge").display(),
            cluster.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn run_ansible_inventory(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let mut cmd = ansible_inventory();
    cmd.current_dir(root())
        .env("ANSIBLE_HOME", dir.join("ansible-home"))
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        // Only the script plugin, and a script that fails fails the command (Ansible
        // would otherwise warn and go on with an empty inventory).
        .env("ANSIBLE_INVENTORY_ENABLED", "script")
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .args(args);
    serde_json::from_str(&run_tool(&mut cmd)).unwrap()
}

fn hosts_of(inv: &serde_json::Value, group: &str) -> Vec<String> {
    let mut v: Vec<String> = inv[group]["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no group {group} in {inv:#}"))
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn ansible_reads_the_static_inventory_with_kubespray_groups() {
    let dir = tempfile::tempdir().unwrap();
    let script = inventory_script(dir.path(), &root().join("examples/baremetal.yaml"));
    let s = script.to_str().unwrap();
    let inv = run_ansible_inventory(dir.path(), &["-i", s, "--list"]);
    let masters = ["master-1", "master-2", "master-3"];
    assert_eq!(hosts_of(&inv, "kube_control_plane"), masters);
    assert_eq!(hosts_of(&inv, "etcd"), masters);
    assert_eq!(
        hosts_of(&inv, "kube_node"),
        ["worker-1", "worker-2", "worker-3"]
    );
    assert_eq!(hosts_of(&inv, "lb"), ["lb-1", "lb-2", "lb-3"]);
    let children: Vec<&str> = inv["k8s_cluster"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        children.contains(&"kube_control_plane") && children.contains(&"kube_node"),
        "{children:?}"
    );
    let m2 = &inv["_meta"]["hostvars"]["master-2"];
    assert_eq!(m2["ansible_host"], "10.10.0.12", "{m2:#}");
    assert_eq!(m2["ansible_user"], "debian");
    assert_eq!(m2["ansible_port"], 22);
    assert_eq!(m2["ip"], "10.10.0.12");
    assert_eq!(m2["access_ip"], "10.10.0.12");
    assert_eq!(
        m2["ansible_ssh_common_args"],
        "-o ProxyJump=jump@10.10.0.5:22"
    );
    // --host: that host's variables, through Ansible.
    let w3 = run_ansible_inventory(dir.path(), &["-i", s, "--host", "worker-3"]);
    assert_eq!(w3["ansible_host"], "10.10.0.23", "{w3:#}");
    assert_eq!(w3["ansible_user"], "debian");
    // Round trip: Ansible writes the inventory as YAML, kubeforge's static provider
    // reads it back (the `lb` group is one of the names it reads) with the same
    // hosts, roles and addresses.
    let yaml = dir.path().join("exported.yaml");
    let mut export = ansible_inventory();
    export
        .current_dir(root())
        .env("ANSIBLE_HOME", dir.path().join("ansible-home"))
        .env("ANSIBLE_INVENTORY_ENABLED", "script")
        .env("ANSIBLE_INVENTORY_UNPARSED_FAILED", "true")
        .args(["-i", s, "--list", "--yaml", "--output"])
        .arg(&yaml);
    run_tool(&mut export);
    let original = std::fs::read_to_string(root().join("examples/baremetal.yaml")).unwrap();
    let copy = dir.path().join("cluster.yaml");
    std::fs::write(
        &copy,
        original.replace("../inventory/baremetal.ini", "exported.yaml"),
    )
    .unwrap();
    let again: serde_json::Value = serde_json::from_str(&stdout_of(
        kubeforge()
            .args(["inventory", "-f"])
            .arg(&copy)
            .arg("--list"),
    ))
    .unwrap();
    let direct: serde_json::Value = serde_json::from_str(&stdout_of(kubeforge().args([
        "inventory",
        "-f",
        "examples/baremetal.yaml",
        "--list",
    ])))
    .unwrap();
    assert_eq!(again, direct);
    // An unknown host is an input error naming the hosts there are.
    kubeforge()
        .args([
            "inventory",
            "-f",
            "examples/baremetal.yaml",
            "--host",
            "nope",
        ])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no host `nope`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_takes_provider_made_machines_from_the_state_without_its_key() {
    use kubeforge::state::{Machine, StateDocument, StateStore, StoreOptions, Version};
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(
        &cluster,
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {name: inv}\nspec:\n  kubernetesVersion: v1.20.2\n  provider: {docker: {subnet: 10.77.0.0/24}}\n  state: {url: file://store}\n  ssh: {user: ops, port: 2222}\n",
    )
    .unwrap();
    // The state as `apply` leaves it: machines with provider ids and addresses; the
    // secrets encrypted with a key this command is not given.
    let store = StateStore::open_url(
        &format!("file://{}", dir.path().join("store").display()),
        &StoreOptions::default(),
        dir.path(),
    )
    .unwrap()
    .with_cluster(Some("inv".into()))
    .with_seen_dir(None);
    let mut doc = StateDocument::new("inv");
    doc.machines.insert(
        "inv-cp-1".into(),
        Machine {
            name: "inv-cp-1".into(),
            provider_id: Some("c0ffee".into()),
            addresses: vec!["10.77.0.10".into(), "203.0.113.7".into()],
            roles: vec!["control-plane".into()],
            ..Default::default()
        },
    );
    store.save(&mut doc, &Version::absent()).await.unwrap();

    let out = stdout_of(kubeforge().current_dir(dir.path()).args([
        "inventory",
        "-f",
        "cluster.yaml",
        "--list",
    ]));
    let inv: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hosts_of(&inv, "kube_control_plane").len(), 3, "{inv:#}");
    // No dedicated load balancers: HAProxy runs on the control-plane nodes.
    assert_eq!(
        hosts_of(&inv, "lb"),
        hosts_of(&inv, "kube_control_plane"),
        "{inv:#}"
    );
    assert!(hosts_of(&inv, "kube_node").is_empty());
    let cp1 = &inv["_meta"]["hostvars"]["inv-cp-1"];
    assert_eq!(cp1["ansible_host"], "10.77.0.10", "{cp1:#}");
    assert_eq!(cp1["ansible_user"], "ops");
    assert_eq!(cp1["ansible_port"], 2222);
    assert_eq!(cp1["public_ip"], "203.0.113.7");
    assert_eq!(cp1["kubeforge_provider_id"], "c0ffee");
    // A machine not made yet has its planned address and no provider id.
    let cp2 = &inv["_meta"]["hostvars"]["inv-cp-2"];
    assert_eq!(cp2["ansible_host"], "10.77.0.11", "{cp2:#}");
    assert!(cp2.get("kubeforge_provider_id").is_none());
    let host = stdout_of(kubeforge().current_dir(dir.path()).args([
        "inventory",
        "-f",
        "cluster.yaml",
        "--host",
        "inv-cp-1",
    ]));
    let host: serde_json::Value = serde_json::from_str(&host).unwrap();
    assert_eq!(&host, cp1);
}

// ------------------------------------------------------------------ clusters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_lists_every_state_under_a_prefix_with_its_lock() {
    use kubeforge::state::{StateDocument, StateStore, StoreOptions, Version};
    let dir = tempfile::tempdir().unwrap();
    let root_url = format!("file://{}", dir.path().join("bucket").display());
    let open = |prefix: &str, name: &str| {
        StateStore::open_url(
            &format!("{root_url}/{prefix}"),
            &StoreOptions::default(),
            dir.path(),
        )
        .unwrap()
        .with_cluster(Some(name.to_string()))
        .with_seen_dir(None)
    };
    // prd saved three times, dev once, wsp one level deeper.
    let prd = open("prd", "prd");
    let mut doc = StateDocument::new("prd");
    let mut v = Version::absent();
    for _ in 0..3 {
        v = prd.save(&mut doc, &v).await.unwrap();
    }
    let dev = open("dev", "dev");
    dev.save(&mut StateDocument::new("dev"), &Version::absent())
        .await
        .unwrap();
    let wsp = open("teams/wsp", "wsp");
    wsp.save(&mut StateDocument::new("wsp"), &Version::absent())
        .await
        .unwrap();
    // Someone is applying to dev right now.
    let guard = dev.lock("kubeforge apply -f dev.yaml").await.unwrap();

    let out = stdout_of(kubeforge().args(["clusters", "-o", "json", "--state-url", &root_url]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let clusters = v["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev", "prd", "wsp"], "{v:#}");
    let by = |n: &str| clusters.iter().find(|c| c["name"] == n).unwrap();
    assert_eq!(by("prd")["generation"], 3, "{v:#}");
    assert_eq!(by("dev")["generation"], 1);
    assert_eq!(by("wsp")["prefix"], "teams/wsp");
    assert_eq!(by("wsp")["url"], format!("{root_url}/teams/wsp"));
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    assert!(
        by("prd")["updatedBy"]
            .as_str()
            .is_some_and(|w| w.starts_with(&format!("{user}@"))),
        "{v:#}"
    );
    assert!(by("prd")["updated"].is_string());
    assert!(by("prd").get("lock").is_none(), "{v:#}");
    let lock = &by("dev")["lock"];
    assert_eq!(lock["command"], "kubeforge apply -f dev.yaml", "{v:#}");
    assert_eq!(lock["pid"], std::process::id());
    assert_eq!(by("dev")["lockExpired"], false);
    // The text table names the holder; listing took no lock of its own.
    let text = stdout_of(kubeforge().args(["clusters", "--state-url", &root_url]));
    assert!(text.contains("NAME"), "{text}");
    let dev_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("dev"))
        .unwrap();
    assert!(dev_line.contains("kubeforge apply -f dev.yaml"), "{text}");
    assert!(prd.lock_status().await.unwrap().is_none());
    guard.release().await.unwrap();
    // The URL of one cluster lists that cluster; an empty prefix lists none.
    let one = stdout_of(kubeforge().args([
        "clusters",
        "-o",
        "json",
        "--state-url",
        &format!("{root_url}/prd"),
    ]));
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["clusters"][0]["name"], "prd");
    assert_eq!(one["clusters"][0]["prefix"], "");
    let empty = dir.path().join("empty");
    let none = stdout_of(
        kubeforge()
            .args(["clusters", "--state-url"])
            .arg(format!("file://{}", empty.display())),
    );
    assert!(none.starts_with("No clusters under"), "{none}");
    kubeforge()
        .args(["clusters", "--state-url", "ftp://x/y"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown scheme"));
}

// ------------------------------------------------------------------ kubeconfig

/// kubeadm's admin.conf shape.
const ADMIN_CONF: &str = "apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EtREFUQQ==
    server: https://10.77.0.254:8443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
";

/// A cluster `demo` whose encrypted state holds ADMIN_CONF; returns the key file.
async fn cluster_with_admin_conf(dir: &std::path::Path) -> PathBuf {
    use kubeforge::state::{Keyring, StateStore, StoreOptions};
    std::fs::write(
        dir.join("cluster.yaml"),
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {name: demo}\nspec:\n  kubernetesVersion: v1.20.2\n  provider: {docker: {subnet: 10.77.0.0/24}}\n  state: {url: file://store}\n",
    )
    .unwrap();
    let (keyring, text) = Keyring::generate();
    let key = dir.join("state.agekey");
    std::fs::write(&key, text + "\n").unwrap();
    let store = StateStore::open_url(
        &format!("file://{}", dir.join("store").display()),
        &StoreOptions::default(),
        dir,
    )
    .unwrap()
    .with_cluster(Some("demo".into()))
    .with_keyring(Some(keyring))
    .with_seen_dir(None);
    let (mut doc, v) = store.load_or_new().await.unwrap();
    doc.secrets.admin_kubeconfig = Some(ADMIN_CONF.into());
    store.save(&mut doc, &v).await.unwrap();
    key
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let bin = PathBuf::from(support::mirror()).join("v1.20.2/bin/linux/amd64/kubectl");
    assert!(bin.is_file(), "no kubectl at {}", bin.display());
    run_tool(
        std::process::Command::new(bin)
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args),
    )
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_merges_into_the_users_kubeconfig_as_kubectl_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = cluster_with_admin_conf(d).await;
    let kf = |env_kubeconfig: Option<&str>, home: &std::path::Path| {
        let mut c = kubeforge();
        c.current_dir(d)
            .env("KUBEFORGE_STATE_KEY_FILE", &key)
            .env("HOME", home)
            .env_remove("KUBECONFIG");
        if let Some(k) = env_kubeconfig {
            c.env("KUBECONFIG", k);
        }
        c
    };
    // The user's kubeconfig: another cluster (current), and a stale `demo`.
    let first = d.join("kube/main");
    std::fs::create_dir_all(first.parent().unwrap()).unwrap();
    std::fs::write(
        &first,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: 'https://192.0.2.1:6443'}\n- name: demo\n  cluster: {server: 'https://198.51.100.9:6443'}\nusers:\n- name: other\n  user: {token: abc}\n- name: demo\n  user: {token: stale}\ncontexts:\n- name: other\n  context: {cluster: other, user: other}\n- name: demo\n  context: {cluster: demo, user: demo}\ncurrent-context: other\n",
    )
    .unwrap();
    let second = d.join("kube/second");
    let list = format!("{}:{}", first.display(), second.display());
    let out = stdout_of(kf(Some(&list), d).args([
        "kubeconfig",
        "-f",
        "cluster.yaml",
        "--merge",
        "-o",
        "json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["file"], first.display().to_string(), "{report}");
    assert_eq!(report["context"], "demo");
    assert_eq!(report["replaced"], true);
    assert!(!second.exists(), "only $KUBECONFIG's first file is written");
    assert_eq!(mode(&first), 0o600);
    let contexts = kubectl(&first, &["config", "get-contexts", "-o", "name"]);
    let mut contexts: Vec<&str> = contexts.lines().collect();
    contexts.sort_unstable();
    assert_eq!(contexts, ["demo", "other"]);
    let view: serde_json::Value =
        serde_json::from_str(&kubectl(&first, &["config", "view", "--raw", "-o", "json"])).unwrap();
    assert_eq!(
        view["current-context"], "other",
        "the current context is kept"
    );
    let named = |list: &str, name: &str| {
        view[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let demo = named("clusters", "demo");
    assert_eq!(demo.len(), 1, "{view:#}");
    assert_eq!(demo[0]["cluster"]["server"], "https://10.77.0.254:8443");
    assert_eq!(
        demo[0]["cluster"]["certificate-authority-data"],
        "Q0EtREFUQQ=="
    );
    let user = named("users", "demo");
    assert_eq!(user[0]["user"]["client-key-data"], "S0VZ", "{view:#}");
    assert!(
        user[0]["user"].get("token").is_none(),
        "the stale user was replaced"
    );
    assert_eq!(named("contexts", "demo")[0]["context"]["user"], "demo");
    assert_eq!(named("users", "other")[0]["user"]["token"], "abc");
    // The merged context works for kubectl: --minify resolves it.
    let minified = kubectl(
        &first,
        &[
            "config",
            "view",
            "--minify",
            "--context",
            "demo",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    assert_eq!(minified, "https://10.77.0.254:8443");

    // --context and --server: a second entry next to the first.
    stdout_of(kf(Some(&list), d).args([
        "kubeconfig",
        "-f",
        "cluster.yaml",
        "--merge",
        "--context",
        "demo-dns",
        "--server",
        "https://api.demo.example:6443",
    ]));
    let server = kubectl(
        &first,
        &[
            "config",
            "view",
            "--minify",
            "--context",
            "demo-dns",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ],
    );
    assert_eq!(server, "https://api.demo.example:6443");
    let contexts = kubectl(&first, &["config", "get-contexts", "-o", "name"]);
    assert_eq!(contexts.lines().count(), 3, "{contexts}");

    // No $KUBECONFIG, no ~/.kube/config: created 0600 with the context current.
    let home = d.join("home");
    std::fs::create_dir(&home).unwrap();
    stdout_of(kf(None, &home).args(["kubeconfig", "-f", "cluster.yaml", "--merge"]));
    let created = home.join(".kube/config");
    assert_eq!(mode(&created), 0o600);
    assert_eq!(
        kubectl(&created, &["config", "current-context"]).trim(),
        "demo"
    );

    // --out: 0600, never overwritten without --force.
    let out_file = d.join("admin.conf");
    stdout_of(
        kf(None, &home)
            .args(["kubeconfig", "-f", "cluster.yaml", "--out"])
            .arg(&out_file),
    );
    assert_eq!(mode(&out_file), 0o600);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), ADMIN_CONF);
    assert_eq!(
        kubectl(&out_file, &["config", "current-context"]).trim(),
        "kubernetes-admin@kubernetes"
    );
    std::fs::write(&out_file, "mine").unwrap();
    kf(None, &home)
        .args(["kubeconfig", "-f", "cluster.yaml", "--out"])
        .arg(&out_file)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("pass --force"));
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "mine");
    stdout_of(
        kf(None, &home)
            .args([
                "kubeconfig",
                "-f",
                "cluster.yaml",
                "--force",
                "--server",
                "https://203.0.113.5:6443",
                "--out",
            ])
            .arg(&out_file),
    );
    assert_eq!(
        kubectl(
            &out_file,
            &[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}"
            ]
        ),
        "https://203.0.113.5:6443"
    );
    kf(None, &home)
        .args([
            "kubeconfig",
            "-f",
            "cluster.yaml",
            "--server",
            "api.example:6443",
        ])
        .assert()
        .code(2);
}

// ------------------------------------------------------------------ examples in --help

/// The subcommands `--help` lists (the `Commands:` section), `help` itself left out.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// The example lines under `Examples:`.
fn examples_in(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Examples:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// The kubeforge invocations in an example line (`a && b | c > f # note`).
fn invocations(line: &str) -> Vec<Vec<String>> {
    let line = line.split(" #").next().unwrap_or_default();
    line.split("&&")
        .flat_map(|part| part.split('|'))
        .filter_map(|part| {
            let part = part.split('>').next().unwrap_or_default();
            let words: Vec<String> = part
                .split_whitespace()
                .map(|w| w.trim_matches('"').to_string())
                .collect();
            (words.first().map(String::as_str) == Some("kubeforge")).then_some(words)
        })
        .collect()
}

#[test]
fn every_command_help_carries_examples_that_parse() {
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    let mut checked = Vec::new();
    let mut problems = Vec::new();
    while let Some(path) = queue.pop() {
        let help = stdout_of(kubeforge().args(&path).arg("--help"));
        for sub in subcommands(&help) {
            let mut p = path.clone();
            p.push(sub);
            queue.push(p);
        }
        let name = format!("kubeforge {}", path.join(" "));
        let examples = examples_in(&help);
        if examples.is_empty() {
            problems.push(format!("`{name} --help` has no Examples: section"));
        }
        let mut runs = 0;
        for ex in &examples {
            for words in invocations(ex) {
                runs += 1;
                if let Err(e) = kubeforge::cli::Cli::try_parse_from(&words) {
                    problems.push(format!("`{name} --help`: `{ex}` does not parse: {e}"));
                }
            }
        }
        if !examples.is_empty() && runs == 0 {
            problems.push(format!("`{name} --help`: no example runs kubeforge"));
        }
        checked.push(name);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Nested commands were reached (state show, addons plan, ...).
    for c in [
        "kubeforge state show",
        "kubeforge addons plan",
        "kubeforge inventory",
    ] {
        assert!(
            checked.iter().any(|n| n.trim() == c),
            "{c} not checked: {checked:?}"
        );
    }
    assert!(checked.len() >= 30, "{checked:?}");
}

// ------------------------------------------------------------------ proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_refuses_a_public_listener_and_a_cluster_without_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let key = cluster_with_admin_conf(dir.path()).await;
    // Anyone who reaches a non-loopback port reaches the API: only on purpose.
    let out = kubeforge()
        .current_dir(dir.path())
        .env("KUBEFORGE_STATE_KEY_FILE", &key)
        .args(["proxy", "-f", "cluster.yaml", "--address", "0.0.0.0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    // An existing kubeconfig file is not overwritten without --force.
    std::fs::write(dir.path().join("mine.conf"), "keep me").unwrap();
    let out = kubeforge()
        .current_dir(dir.path())
        .env("KUBEFORGE_STATE_KEY_FILE", &key)
        .args(["proxy", "-f", "cluster.yaml", "--port", "0"])
        .args(["--kubeconfig-out", "mine.conf"])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not overwritten"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("mine.conf")).unwrap(),
        "keep me"
    );
    // A cluster that was never applied: said plainly.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(
        fresh.path().join("cluster.yaml"),
        "apiVersion: kubeforge.dev/v1alpha1\nkind: Cluster\nmetadata: {name: fresh}\nspec:\n  kubernetesVersion: v1.20.2\n  provider: {docker: {subnet: 10.78.0.0/24}}\n  state: {url: file://store}\n",
    )
    .unwrap();
    let out = kubeforge()
        .current_dir(fresh.path())
        .args(["proxy", "-f", "cluster.yaml", "--port", "0"])
        .timeout(std::time::Duration::from_secs(30))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no admin kubeconfig yet"), "{stderr}");
}
