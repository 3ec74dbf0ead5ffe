//! `kubeforge bench converge`: N local machines (docker provider, sshd only) brought to a
//! file set (small configuration files and one large binary per host) and a set of
//! checked steps, with the transport calls `apply` makes (every file of a host in one
//! round trip, only what differs sent; every check in one round trip, a step run only
//! when its check fails); then again with nothing to change, and the read-only `plan`
//! comparison. The same work with Ansible (`copy` and `shell` tasks; `--check` for the
//! plan) in the same run, reported as ratios.

use super::bench::{check, measurements, usage, which, write_file, BenchMachines, Measurement};
use crate::cli::ConvergeArgs;
use crate::error::Error;
use crate::transport::{
    fan_out, FanOutOptions, MemoryHostKeyStore, ProgressMode, SshAuth, SshConfig, SshPool,
    Transport, TransportError, UploadSource, UploadTarget,
};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct ConvergeReport {
    pub machines: usize,
    pub files_per_host: usize,
    pub binary_mib: u64,
    pub checks_per_host: usize,
    pub rounds: usize,
    pub boot_seconds: f64,
    /// The machine's load average (1, 5, 15 min) before and after the measurements.
    pub load_before: String,
    pub load_after: String,
    pub measurements: Vec<Measurement>,
    pub notes: Vec<String>,
}

pub fn print_text(r: &ConvergeReport) {
    println!(
        "converge benchmark: {} machines, {} files of 4 KiB + {} MiB per host, {} checked steps per host; no-op figures are the median of {} rounds (machines up in {:.1} s)",
        r.machines, r.files_per_host, r.binary_mib, r.checks_per_host, r.rounds, r.boot_seconds
    );
    println!(
        "load average before: {}; after: {}",
        r.load_before, r.load_after
    );
    println!(
        "{:<30} {:<34} {:>9} {:>12}",
        "work", "tool", "seconds", "x kubeforge"
    );
    for m in &r.measurements {
        println!(
            "{:<30} {:<34} {:>9.2} {:>12.2}",
            m.work, m.tool, m.seconds, m.ratio_to_kubeforge
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The checked steps: `(check, fix)`; a check passes once its fix ran.
fn steps(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("grep -qx 'step {i} done' /etc/kfbench/steps/{i} 2>/dev/null"),
                format!(
                    "mkdir -p /etc/kfbench/steps && echo 'step {i} done' > /etc/kfbench/steps/{i}"
                ),
            )
        })
        .collect()
}

/// A small configuration file's content: different per file, 4 KiB.
fn config(i: usize) -> String {
    let line = format!("# kfbench config {i}: key_{i} = value_{i}\n");
    line.repeat(4096 / line.len() + 1)[..4096].to_string()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(a: &ConvergeArgs) -> Result<ConvergeReport, Error> {
    if a.machines == 0 || a.machines > 200 {
        return Err(usage("--machines must be between 1 and 200"));
    }
    if a.rounds == 0 {
        return Err(usage("--rounds must be at least 1"));
    }
    // Every systemd machine holds several inotify instances (systemd, journald, ...),
    // counted against the host's per-user limit (128 by default: about 30 machines);
    // past it, machines boot without sshd.
    let needed = 8 * a.machines as u64 + 64;
    if let Some(limit) = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|l| *l < needed)
    {
        return Err(usage(format!(
            "{} machines need about {needed} inotify instances and this host allows {limit}: raise it first (sysctl -w fs.inotify.max_user_instances={})",
            a.machines,
            needed.next_power_of_two()
        )));
    }
    let m = BenchMachines::start("kfconv", a.subnet, a.image.clone(), a.machines).await?;
    let result = measure(a, &m).await;
    m.stop(a.keep).await;
    result
}

async fn measure(a: &ConvergeArgs, m: &BenchMachines) -> Result<ConvergeReport, Error> {
    let load_before = load_average();
    let binary = m.dir.join("kubelet.bin");
    write_file(&binary, a.binary_mib * 1024 * 1024)?;
    let configs: Vec<(String, String)> = (0..a.files)
        .map(|i| (format!("/etc/kfbench/conf.d/{i:02}.conf"), config(i)))
        .collect();
    let steps = steps(a.checks);
    let mut notes = Vec::new();
    let mut rows: Vec<(String, String, f64)> = Vec::new();

    // --- kubeforge: the calls `apply` and `plan` make ---------------------------------
    let store = Arc::new(MemoryHostKeyStore::new());
    let mut cfg = SshConfig::new("root", SshAuth::Key(m.key.clone()));
    cfg.retry.window = Duration::from_secs(30);
    let pool = Arc::new(SshPool::new(cfg, store.clone()));
    let opts = FanOutOptions {
        concurrency: a.concurrency,
        progress: ProgressMode::Hidden,
        label: "bench".into(),
        cancel_on_ctrl_c: true,
    };
    // Connections first (a run opens one per host at its start, in `connect`).
    check(
        fan_out(&m.hosts, &opts, |h| {
            let pool = pool.clone();
            async move { pool.session(&h).await.map(|_| ()) }
        })
        .await,
    )?;
    // apply: files in one round trip per host, then the steps whose check fails.
    let converge = || {
        let pool = pool.clone();
        let (binary, configs, steps, opts) = (&binary, &configs, &steps, &opts);
        async move {
            let t = Instant::now();
            let results = fan_out(&m.hosts, opts, |h| {
                let pool = pool.clone();
                async move {
                    let s = pool.session(&h).await?;
                    let mut items: Vec<(UploadSource, UploadTarget)> = configs
                        .iter()
                        .map(|(p, c)| {
                            (
                                UploadSource::from(c.as_str()),
                                UploadTarget::new(p.clone(), 0o644),
                            )
                        })
                        .collect();
                    items.push((
                        UploadSource::File(binary.clone()),
                        UploadTarget::new("/usr/local/bin/kfbench-kubelet", 0o755),
                    ));
                    let sent = s
                        .upload_all(items)
                        .await?
                        .iter()
                        .filter(|o| o.sent || o.metadata_fixed)
                        .count();
                    let checks: Vec<String> = steps.iter().map(|(c, _)| c.clone()).collect();
                    let answers = s.checks(&checks).await?;
                    let mut ran = 0;
                    for ((_, fix), done) in steps.iter().zip(answers) {
                        if !done {
                            s.exec_checked(fix).await?;
                            ran += 1;
                        }
                    }
                    Ok::<_, TransportError>(sent + ran)
                }
            })
            .await;
            let took = t.elapsed().as_secs_f64();
            check(results).map(|changes| (took, changes.iter().sum::<usize>()))
        }
    };
    // plan: every file's sha256 and every check in one round trip per host, as the
    // preview asks them; nothing changed.
    let plan = || {
        let pool = pool.clone();
        let (configs, steps, opts) = (&configs, &steps, &opts);
        async move {
            let t = Instant::now();
            let results = fan_out(&m.hosts, opts, |h| {
                let pool = pool.clone();
                async move {
                    let s = pool.session(&h).await?;
                    let paths: Vec<&str> = configs.iter().map(|(p, _)| p.as_str()).collect();
                    let checks: Vec<String> = steps.iter().map(|(c, _)| c.clone()).collect();
                    let script = format!(
                        "sha256sum -- {} 2>/dev/null; {}",
                        paths.join(" "),
                        crate::transport::ssh::checks_script(&checks)
                    );
                    let out = s.exec_checked(&script).await?;
                    crate::transport::ssh::parse_checks(&h, &out, checks.len()).map(|_| ())
                }
            })
            .await;
            let took = t.elapsed().as_secs_f64();
            check(results).map(|_| took)
        }
    };
    let (took, changes) = converge().await?;
    rows.push(("first converge".into(), "kubeforge".into(), took));
    let expected = m.hosts.len() * (a.files + 1 + a.checks);
    if changes != expected {
        notes.push(format!(
            "kubeforge's first converge made {changes} changes, {expected} expected"
        ));
    }
    let mut noop = Vec::new();
    for _ in 0..a.rounds {
        let (took, changes) = converge().await?;
        if changes != 0 {
            notes.push(format!(
                "kubeforge changed {changes} things in a no-op round"
            ));
        }
        noop.push(took);
    }
    rows.push((
        "no-op converge (apply)".into(),
        "kubeforge".into(),
        median(noop),
    ));
    let mut plans = Vec::new();
    for _ in 0..a.rounds {
        plans.push(plan().await?);
    }
    rows.push(("no-op plan".into(), "kubeforge".into(), median(plans)));
    pool.close_all().await;

    // --- Ansible: the same files and steps ----------------------------------------------
    if a.no_ansible {
        notes.push("Ansible skipped (--no-ansible)".into());
    } else if which("ansible-playbook").is_none() {
        notes.push("Ansible skipped: ansible-playbook not found (pip install ansible-core)".into());
    } else {
        ansible(
            a, m, &binary, &configs, &steps, &store, &mut rows, &mut notes,
        )
        .await?;
    }

    let measurements = measurements(&rows);
    Ok(ConvergeReport {
        machines: m.hosts.len(),
        files_per_host: a.files,
        binary_mib: a.binary_mib,
        checks_per_host: a.checks,
        rounds: a.rounds,
        boot_seconds: m.boot.as_secs_f64(),
        load_before,
        load_after: load_average(),
        measurements,
        notes,
    })
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The playbook doing what the converge does: `copy` every file (Ansible compares
/// checksums itself), `shell: check || fix` per step; with `plan`, the read-only
/// version run under `--check` (the checks themselves run, changing nothing).
fn playbook(
    dir: &Path,
    binary: &Path,
    configs: &[(String, String)],
    steps: &[(String, String)],
) -> Result<String, Error> {
    let mut text = String::from("- hosts: bench\n  gather_facts: false\n  tasks:\n");
    // kubeforge's upload makes the parent directory; `copy` needs it made first.
    let mut dirs: Vec<&str> = configs
        .iter()
        .filter_map(|(p, _)| Path::new(p).parent()?.to_str())
        .collect();
    dirs.dedup();
    for d in dirs {
        text.push_str(&format!("    - file: {{path: {d}, state: directory}}\n"));
    }
    for (i, (path, content)) in configs.iter().enumerate() {
        let local = dir.join(format!("conf-{i:02}.conf"));
        write(&local, content)?;
        text.push_str(&format!(
            "    - copy: {{src: {}, dest: {path}, mode: '0644'}}\n",
            local.display()
        ));
    }
    text.push_str(&format!(
        "    - copy: {{src: {}, dest: /usr/local/bin/kfbench-ansible-kubelet, mode: '0755'}}\n",
        binary.display()
    ));
    for (chk, fix) in steps {
        text.push_str(&format!(
            "    - shell: {}\n      register: r\n      changed_when: r.stdout == 'fixed'\n      check_mode: false\n      when: not ansible_check_mode\n",
            serde_json::to_string(&format!("{chk} || {{ {fix} && echo fixed; }}"))?
        ));
        text.push_str(&format!(
            "    - shell: {}\n      changed_when: false\n      failed_when: false\n      check_mode: false\n      when: ansible_check_mode\n",
            serde_json::to_string(chk)?
        ));
    }
    Ok(text)
}

#[allow(clippy::too_many_arguments)]
async fn ansible(
    a: &ConvergeArgs,
    m: &BenchMachines,
    binary: &Path,
    configs: &[(String, String)],
    steps: &[(String, String)],
    store: &MemoryHostKeyStore,
    rows: &mut Vec<(String, String, f64)>,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    // Its own paths: Ansible starts from hosts without its files or steps done too.
    let configs: Vec<(String, String)> = configs
        .iter()
        .map(|(p, c)| {
            (
                p.replace("/etc/kfbench/", "/etc/kfbench-ansible/"),
                c.clone(),
            )
        })
        .collect();
    let steps: Vec<(String, String)> = steps
        .iter()
        .map(|(c, f)| {
            (
                c.replace("/etc/kfbench/", "/etc/kfbench-ansible/"),
                f.replace("/etc/kfbench/", "/etc/kfbench-ansible/"),
            )
        })
        .collect();
    let known_hosts = m.dir.join("known_hosts");
    let lines: String = store
        .snapshot()
        .iter()
        .map(|(h, k)| format!("{h} {k}\n"))
        .collect();
    write(&known_hosts, &lines)?;
    let inv = m.dir.join("inventory.ini");
    let mut text = String::from("[bench]\n");
    for h in &m.hosts {
        text.push_str(&format!("{h}\n"));
    }
    text.push_str(&format!(
        "[bench:vars]\nansible_user=root\nansible_ssh_private_key_file={}\nansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o ControlMaster=auto -o ControlPersist=120'\nansible_python_interpreter=/usr/bin/python3\n",
        m.key_path.display(),
        known_hosts.display()
    ));
    write(&inv, &text)?;
    let book = m.dir.join("converge.yaml");
    write(&book, &playbook(&m.dir, binary, &configs, &steps)?)?;
    // Pipelining on: Ansible's fastest documented setting, with a persistent control
    // connection per host.
    let play = |extra: &'static [&'static str]| {
        let (inv, book) = (inv.clone(), book.clone());
        let forks = a.concurrency.to_string();
        async move {
            let t = Instant::now();
            let out = tokio::process::Command::new("ansible-playbook")
                .arg("-i")
                .arg(&inv)
                .arg("-f")
                .arg(&forks)
                .args(extra)
                .arg(&book)
                .env("ANSIBLE_HOST_KEY_CHECKING", "True")
                .env("ANSIBLE_PIPELINING", "True")
                .env("ANSIBLE_NOCOLOR", "1")
                .env("ANSIBLE_CONTROL_PATH_DIR", m.dir.join("cp"))
                .output()
                .await
                .map_err(|e| usage(format!("cannot run ansible-playbook: {e}")))?;
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() {
                return Err(usage(format!(
                    "ansible-playbook failed: {}",
                    stdout.lines().rev().take(15).collect::<Vec<_>>().join("\n")
                )));
            }
            Ok::<_, Error>((t.elapsed().as_secs_f64(), stdout))
        }
    };
    let (took, _) = play(&[]).await?;
    rows.push(("first converge".into(), "ansible".into(), took));
    let mut noop = Vec::new();
    for _ in 0..a.rounds {
        let (took, out) = play(&[]).await?;
        let changed: usize = out
            .split("changed=")
            .skip(1)
            .filter_map(|r| r.split_whitespace().next()?.parse::<usize>().ok())
            .sum();
        if changed > 0 {
            notes.push(format!("Ansible changed {changed} things in a no-op round"));
        }
        noop.push(took);
    }
    rows.push((
        "no-op converge (apply)".into(),
        "ansible".into(),
        median(noop),
    ));
    let mut plans = Vec::new();
    for _ in 0..a.rounds {
        plans.push(play(&["--check"]).await?.0);
    }
    rows.push(("no-op plan".into(), "ansible --check".into(), median(plans)));
    Ok(())
}
