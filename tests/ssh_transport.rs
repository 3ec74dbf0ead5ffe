//! The SSH transport against real sshd in real systemd machines (docker provider).

mod common_docker;

use common_docker::{run, with_cluster};
use kubeforge::provider::MachineRole;
use kubeforge::transport::ssh::{generate_ed25519_key, BastionConfig};
use kubeforge::transport::{
    HostKeyStore, MemoryHostKeyStore, SshAuth, SshPool, SshSession, Transport, TransportError,
    UploadSource, UploadTarget,
};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

const THREE: [MachineRole; 3] = [
    MachineRole::ControlPlane,
    MachineRole::ControlPlane,
    MachineRole::Worker,
];

#[test]
fn exec_returns_exit_code_stdout_and_stderr_and_sudo_works_for_a_plain_user() {
    run(|| async {
        with_cluster("kft-exec", &THREE[..1], |c| async move {
            let (pool, _) = c.pool("root");
            let s = pool.session(&c.ip(0)).await.unwrap();
            let out = s
                .exec("echo out; echo err >&2; printf 'a b' | wc -c; exit 3")
                .await
                .unwrap();
            assert_eq!(out.exit_code, 3, "non-zero exit is a value");
            assert!(!out.success());
            assert_eq!(out.stdout, "out\n3\n");
            assert_eq!(out.stderr, "err\n");
            assert!(s.exec("true").await.unwrap().success());
            let failed = s.exec_checked("ls /nonexistent").await.unwrap_err();
            assert!(
                matches!(failed, TransportError::CommandFailed { exit_code: 2, .. }),
                "{failed}"
            );
            assert!(!failed.is_retryable());

            // A non-root user: exec() goes through sudo -n, exec_unprivileged() does not.
            let (upool, _) = c.pool("kubeforge");
            let u = upool.session(&c.ip(0)).await.unwrap();
            assert_eq!(u.user(), "kubeforge");
            assert_eq!(u.exec("id -u").await.unwrap().stdout.trim(), "0");
            assert_eq!(
                u.exec_unprivileged("id -u").await.unwrap().stdout.trim(),
                "1000"
            );
            // Quoting survives the sudo wrapping.
            let q = u
                .exec("echo \"it's $(whoami)\" | tr a-z A-Z")
                .await
                .unwrap();
            assert_eq!(q.stdout, "IT'S ROOT\n");
            // Uploads as the plain user land as root-owned files, atomically.
            let o = u
                .upload(
                    "hello\n".into(),
                    &UploadTarget::new("/etc/kubeforge/test.conf", 0o640),
                )
                .await
                .unwrap();
            assert!(o.sent);
            let st = s
                .exec("stat -c '%a %U' /etc/kubeforge/test.conf")
                .await
                .unwrap();
            assert_eq!(st.stdout.trim(), "640 root");
            pool.close_all().await;
            upool.close_all().await;
        })
        .await;
    });
}

#[test]
fn upload_is_atomic_and_skipped_when_the_checksum_matches_and_large_files_stream() {
    run(|| async {
        with_cluster("kft-upload", &THREE[..1], |c| async move {
            let (pool, _) = c.pool("root");
            let s = pool.session(&c.ip(0)).await.unwrap();
            let target =
                UploadTarget::new("/etc/demo/app.conf", 0o600).owner("kubeforge:kubeforge");
            let first = s.upload("key = 1\n".into(), &target).await.unwrap();
            assert!(first.sent);
            assert_eq!(first.bytes, 8);
            let second = s.upload("key = 1\n".into(), &target).await.unwrap();
            assert!(!second.sent, "same content must not be sent again");
            assert_eq!(second.bytes, 0);
            assert_eq!(second.sha256, first.sha256);
            // Only metadata differs: fixed without sending content.
            let loose = UploadTarget::new("/etc/demo/app.conf", 0o644).owner("root:root");
            let fixed = s.upload("key = 1\n".into(), &loose).await.unwrap();
            assert!(!fixed.sent && fixed.metadata_fixed);
            assert_eq!(
                s.exec("stat -c '%a %U:%G' /etc/demo/app.conf")
                    .await
                    .unwrap()
                    .stdout
                    .trim(),
                "644 root:root"
            );
            // Changed content replaces the file; no temp files are left behind.
            let third = s.upload("key = 2\n".into(), &loose).await.unwrap();
            assert!(third.sent);
            assert_eq!(
                s.download("/etc/demo/app.conf").await.unwrap(),
                b"key = 2\n"
            );
            let leftovers = s.exec("ls -A /etc/demo").await.unwrap();
            assert_eq!(leftovers.stdout, "app.conf\n");

            // Changed behind kubeforge's back with the same size: the digest cache does
            // not hide it (the file's ctime moved), the content is sent again.
            s.exec("printf 'key = 9\\n' > /etc/demo/app.conf")
                .await
                .unwrap();
            let back = s.upload("key = 2\n".into(), &loose).await.unwrap();
            assert!(back.sent, "a same-size change on the host must be noticed");
            assert_eq!(
                s.download("/etc/demo/app.conf").await.unwrap(),
                b"key = 2\n"
            );

            // Several files in one round trip: only what differs is sent.
            let batch = |b: &str| {
                vec![
                    (UploadSource::from("key = 2\n"), loose.clone()),
                    (
                        UploadSource::from(b),
                        UploadTarget::new("/etc/demo/b.conf", 0o644),
                    ),
                    (
                        UploadSource::from("c\n"),
                        UploadTarget::new("/etc/demo/c.conf", 0o600),
                    ),
                ]
            };
            let sent = |o: &[kubeforge::transport::UploadOutcome]| -> Vec<bool> {
                o.iter().map(|o| o.sent).collect()
            };
            let first = s.upload_all(batch("b1\n")).await.unwrap();
            assert_eq!(sent(&first), [false, true, true]);
            let again = s.upload_all(batch("b1\n")).await.unwrap();
            assert_eq!(sent(&again), [false, false, false]);
            let changed = s.upload_all(batch("b2\n")).await.unwrap();
            assert_eq!(sent(&changed), [false, true, false]);
            assert_eq!(s.download("/etc/demo/b.conf").await.unwrap(), b"b2\n");
            // Checks in one round trip, each in its own subshell (an `exit` ends only it).
            let answers = s
                .checks(&[
                    "true".into(),
                    "false".into(),
                    "exit 3".into(),
                    "test -f /etc/demo/b.conf && grep -q b2 /etc/demo/b.conf".into(),
                ])
                .await
                .unwrap();
            assert_eq!(answers, [true, false, false, true]);
            s.exec("rm -f /etc/demo/b.conf /etc/demo/c.conf")
                .await
                .unwrap();

            // 200 MiB from a local file, streamed; checksum verified remotely.
            let dir = tempfile::tempdir().unwrap();
            let big = dir.path().join("big.bin");
            let size = 200 * 1024 * 1024;
            write_pseudo_random(&big, size);
            let t = Instant::now();
            let up = s
                .upload(
                    UploadSource::File(big.clone()),
                    &UploadTarget::new("/var/tmp/big.bin", 0o644),
                )
                .await
                .unwrap();
            let took = t.elapsed();
            assert!(up.sent);
            assert_eq!(up.bytes, size as u64);
            let remote = s
                .exec("sha256sum /var/tmp/big.bin | cut -d' ' -f1; stat -c %s /var/tmp/big.bin")
                .await
                .unwrap();
            let lines: Vec<&str> = remote.stdout.lines().collect();
            assert_eq!(lines, [up.sha256.as_str(), &size.to_string()]);
            eprintln!(
                "200 MiB upload: {:.2} s ({:.0} MiB/s)",
                took.as_secs_f64(),
                200.0 / took.as_secs_f64()
            );
            let t = Instant::now();
            let again = s
                .upload(
                    UploadSource::File(big),
                    &UploadTarget::new("/var/tmp/big.bin", 0o644),
                )
                .await
                .unwrap();
            assert!(!again.sent);
            eprintln!(
                "200 MiB re-upload (checksum skip): {:.2} s",
                t.elapsed().as_secs_f64()
            );
            s.exec("rm -f /var/tmp/big.bin").await.unwrap();

            // A failed upload (target is a directory) is an error and leaves no temp file.
            s.exec("mkdir -p /etc/demo/adir/sub").await.unwrap();
            let err = s
                .upload("x".into(), &UploadTarget::new("/etc/demo/adir", 0o644))
                .await
                .unwrap_err();
            assert!(matches!(err, TransportError::Upload { .. }), "{err}");
            assert_eq!(
                s.exec("ls -A /etc/demo").await.unwrap().stdout,
                "adir\napp.conf\n"
            );
            pool.close_all().await;
        })
        .await;
    });
}

fn write_pseudo_random(path: &std::path::Path, size: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.flush().unwrap();
}

#[test]
fn fifty_parallel_commands_share_one_connection() {
    run(|| async {
        with_cluster("kft-par", &THREE[..1], |c| async move {
            let mut cfg = c.ssh_config("root");
            cfg.max_channels = 64;
            let pool = SshPool::new(cfg, Arc::new(MemoryHostKeyStore::new()));
            let s = pool.session(&c.ip(0)).await.unwrap();
            let t = Instant::now();
            let outs = futures::future::join_all((0..50).map(|i| {
                let s = s.clone();
                async move { s.exec(&format!("sleep 1; echo {i}")).await }
            }))
            .await;
            let took = t.elapsed();
            for (i, o) in outs.into_iter().enumerate() {
                assert_eq!(o.unwrap().stdout.trim(), i.to_string());
            }
            // Sequential would take 50 s: they really ran in parallel.
            assert!(took < Duration::from_secs(8), "50 x sleep 1 took {took:?}");
            // ... over a single TCP connection from us.
            let conns = s
                .exec("ss -Htn state established '( sport = :22 )' | wc -l")
                .await
                .unwrap();
            assert_eq!(conns.stdout.trim(), "1", "one SSH connection expected");
            eprintln!(
                "50 parallel `sleep 1` on one connection: {:.2} s",
                took.as_secs_f64()
            );

            // The default channel limit (8, under sshd's usual MaxSessions 10) queues.
            let (small, _) = c.pool("root");
            let s8 = small.session(&c.ip(0)).await.unwrap();
            let t = Instant::now();
            let outs = futures::future::join_all((0..16).map(|_| s8.exec("sleep 0.5"))).await;
            assert!(outs.iter().all(|o| o.as_ref().unwrap().success()));
            assert!(
                t.elapsed() >= Duration::from_millis(1000),
                "16 commands with 8 channels finished too fast"
            );
            pool.close_all().await;
            small.close_all().await;
        })
        .await;
    });
}

#[test]
fn host_keys_are_pinned_on_first_use_and_a_changed_key_aborts() {
    run(|| async {
        with_cluster("kft-hostkey", &THREE[..1], |c| async move {
            let host = c.ip(0);
            let store = Arc::new(MemoryHostKeyStore::new());
            let pool = SshPool::new(c.ssh_config("root"), store.clone());
            let s = pool.session(&host).await.unwrap();
            let pinned = store.pinned(&host).expect("pinned on first use");
            // The pinned key is the machine's real ed25519 host key.
            let real = s
                .exec("cat /etc/ssh/ssh_host_ed25519_key.pub")
                .await
                .unwrap();
            assert!(kubeforge::transport::hostkeys::same_key(
                &pinned,
                &real.stdout
            ));
            let old_fp = s
                .exec("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2")
                .await
                .unwrap();
            assert_eq!(
                kubeforge::transport::fingerprint(&pinned),
                old_fp.stdout.trim()
            );

            // The machine gets new host keys (as after a rebuild).
            s.exec(
                "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && systemctl restart ssh",
            )
            .await
            .unwrap();
            let new_fp = s
                .exec("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2")
                .await
                .unwrap();
            pool.close_all().await;

            let pool2 = SshPool::new(c.ssh_config("root"), store.clone());
            let t = Instant::now();
            let err = pool2.session(&host).await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, TransportError::HostKeyChanged { .. }),
                "{msg}"
            );
            assert!(
                msg.contains(old_fp.stdout.trim()),
                "old fingerprint missing: {msg}"
            );
            assert!(
                msg.contains(new_fp.stdout.trim()),
                "new fingerprint missing: {msg}"
            );
            assert!(msg.contains("--accept-new-host-key"), "{msg}");
            assert!(!err.is_retryable());
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "a host key mismatch must not be retried"
            );
            // Still pinned to the old key.
            assert_eq!(store.pinned(&host).unwrap(), pinned);

            // Re-pin on purpose.
            let mut cfg = c.ssh_config("root");
            cfg.accept_new_host_keys.insert(host.clone());
            let pool3 = SshPool::new(cfg, store.clone());
            let s3 = pool3.session(&host).await.unwrap();
            assert!(s3.exec("true").await.unwrap().success());
            assert_eq!(
                kubeforge::transport::fingerprint(&store.pinned(&host).unwrap()),
                new_fp.stdout.trim()
            );
            pool3.close_all().await;
            // And the new pin is now enforced without the flag.
            let pool4 = SshPool::new(c.ssh_config("root"), store.clone());
            pool4.session(&host).await.unwrap();
            pool4.close_all().await;
        })
        .await;
    });
}

#[test]
fn a_wrong_key_fails_fast_and_auth_retries_only_within_their_window() {
    run(|| async {
        with_cluster("kft-wrongkey", &THREE[..1], |c| async move {
            let host = c.ip(0);
            let mut cfg = c.ssh_config("root");
            cfg.auth = SshAuth::Key(Arc::new(generate_ed25519_key()));
            let t = Instant::now();
            let err = SshSession::connect(&host, &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                .await
                .unwrap_err();
            match &err {
                TransportError::Auth { attempts, user, .. } => {
                    assert_eq!(*attempts, 1, "a rejected key is not retried by default");
                    assert_eq!(user, "root");
                }
                other => panic!("expected an auth error, got {other}"),
            }
            assert!(!err.is_retryable());
            assert!(t.elapsed() < Duration::from_secs(3));

            // With an auth window (fresh machines), rejections are retried until it ends.
            cfg.retry.auth_window = Duration::from_secs(2);
            let t = Instant::now();
            let err = SshSession::connect(&host, &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                .await
                .unwrap_err();
            let TransportError::Auth { attempts, .. } = err else {
                panic!("{err}")
            };
            assert!(attempts >= 2, "attempts: {attempts}");
            assert!(t.elapsed() < Duration::from_secs(5));

            // A key file that is not a key is a clear local error.
            let bad = c.key_path.with_file_name("not-a-key");
            std::fs::write(&bad, "hello").unwrap();
            let e = SshAuth::key_file(&bad).unwrap_err();
            assert!(e.to_string().contains("not-a-key"), "{e}");
            // The real key file works.
            let mut ok = c.ssh_config("root");
            ok.auth = SshAuth::key_file(&c.key_path).unwrap();
            let s = SshSession::connect(&host, &ok, Arc::new(MemoryHostKeyStore::new()), None)
                .await
                .unwrap();
            assert!(s.exec("true").await.unwrap().success());
        })
        .await;
    });
}

#[test]
fn connection_refused_is_retried_until_sshd_comes_up() {
    run(|| async {
        with_cluster("kft-refused", &THREE[..1], |c| async move {
            let host = c.ip(0);
            let (pool, _) = c.pool("root");
            let s = pool.session(&host).await.unwrap();
            // sshd goes away for ~2 s (as on a machine still booting), then returns.
            let down = s
                .exec("systemd-run --quiet --on-active=2 --timer-property=AccuracySec=100ms --unit=kf-ssh-back-1 systemctl start ssh.service && systemctl stop ssh.service")
                .await
                .unwrap();
            assert!(down.success(), "{down:?}");
            pool.close_all().await;
            let t = Instant::now();
            let mut cfg = c.ssh_config("root");
            cfg.retry.window = Duration::from_secs(20);
            let s2 = SshSession::connect(&host, &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                .await
                .unwrap();
            assert!(t.elapsed() >= Duration::from_millis(500), "sshd was not really down");
            assert!(s2.exec("true").await.unwrap().success());

            // With a short window the refusal surfaces as a retryable connect error.
            let down = s2
                .exec("systemd-run --quiet --on-active=3 --timer-property=AccuracySec=100ms --unit=kf-ssh-back-2 systemctl start ssh.service && systemctl stop ssh.service")
                .await
                .unwrap();
            assert!(down.success(), "{down:?}");
            cfg.retry.window = Duration::from_millis(800);
            let err = SshSession::connect(&host, &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                .await
                .unwrap_err();
            assert!(matches!(err, TransportError::Connect { .. }), "{err}");
            assert!(err.is_retryable());
            let chain = kubeforge::error::render_chain(&err);
            assert!(chain.contains("refused"), "{chain}");
        })
        .await;
    });
}

#[test]
fn a_bastion_tunnels_connections_to_the_targets() {
    run(|| async {
        with_cluster("kft-bastion", &THREE[..2], |c| async move {
            let bastion = c.ip(0);
            let target = c.ip(1);
            let mut cfg = c.ssh_config("root");
            cfg.bastion = Some(BastionConfig {
                host: bastion.clone(),
                port: 22,
                user: "kubeforge".into(),
                auth: None,
                via: Vec::new(),
            });
            let store = Arc::new(MemoryHostKeyStore::new());
            let pool = SshPool::new(cfg, store.clone());
            let s = pool.session(&target).await.unwrap();
            // sshd on the target sees the bastion as the client.
            let client = s.exec("echo $SSH_CLIENT | cut -d' ' -f1").await.unwrap();
            assert_eq!(client.stdout.trim(), bastion);
            let o = s
                .upload(
                    "via bastion\n".into(),
                    &UploadTarget::new("/root/b.txt", 0o600),
                )
                .await
                .unwrap();
            assert!(o.sent);
            // Both host keys are pinned, each under its own name.
            let keys = store.snapshot();
            assert!(
                keys.contains_key(&bastion) && keys.contains_key(&target),
                "{keys:?}"
            );
            pool.close_all().await;
        })
        .await;
    });
}

#[test]
fn ssh_agent_authentication() {
    run(|| async {
        with_cluster("kft-agent", &THREE[..1], |c| async move {
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("agent.sock");
            let mut agent = std::process::Command::new("ssh-agent")
                .arg("-D")
                .arg("-a")
                .arg(&sock)
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("ssh-agent (openssh-client) is needed for this test");
            for _ in 0..50 {
                if sock.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // A key the machine does not accept first (comment `other-key`), then its own.
            let other = dir.path().join("other");
            let gen = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "other-key", "-f"])
                .arg(&other)
                .output()
                .unwrap();
            assert!(gen.status.success(), "{gen:?}");
            for key in [other.as_path(), c.key_path.as_path()] {
                let add = std::process::Command::new("ssh-add")
                    .arg(key)
                    .env("SSH_AUTH_SOCK", &sock)
                    .output()
                    .unwrap();
                assert!(add.status.success(), "{add:?}");
            }
            let right = russh::keys::load_secret_key(&c.key_path, None)
                .unwrap()
                .public_key()
                .fingerprint(russh::keys::HashAlg::Sha256)
                .to_string();
            // The tests of this binary run one at a time: setting the variable is safe.
            std::env::set_var("SSH_AUTH_SOCK", &sock);
            let mut cfg = c.ssh_config("kubeforge");
            cfg.auth = SshAuth::Agent(None);
            let result =
                SshSession::connect(&c.ip(0), &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                    .await;
            // Only the chosen key is offered: the right one works, a name the agent does
            // not hold is refused with what it holds.
            let mut chosen = c.ssh_config("kubeforge");
            chosen.auth = SshAuth::Agent(Some(right.clone()));
            let picked =
                SshSession::connect(&c.ip(0), &chosen, Arc::new(MemoryHostKeyStore::new()), None)
                    .await;
            chosen.auth = SshAuth::Agent(Some("SHA256:not-held".into()));
            let missing =
                SshSession::connect(&c.ip(0), &chosen, Arc::new(MemoryHostKeyStore::new()), None)
                    .await;
            chosen.auth = SshAuth::Agent(Some("other-key".into()));
            let wrong =
                SshSession::connect(&c.ip(0), &chosen, Arc::new(MemoryHostKeyStore::new()), None)
                    .await;
            // An agent without the right key is rejected (not retried).
            let _ = std::process::Command::new("ssh-add")
                .arg("-D")
                .env("SSH_AUTH_SOCK", &sock)
                .output();
            let empty =
                SshSession::connect(&c.ip(0), &cfg, Arc::new(MemoryHostKeyStore::new()), None)
                    .await;
            std::env::remove_var("SSH_AUTH_SOCK");
            let _ = agent.kill();
            let _ = agent.wait();
            let s = result.unwrap();
            assert_eq!(s.exec("id -un").await.unwrap().stdout.trim(), "root");
            assert!(picked.is_ok(), "{picked:?}");
            match missing {
                Err(TransportError::AgentNoKey { held, .. }) => {
                    assert!(
                        held.contains("other-key") && held.contains(&right),
                        "{held}"
                    )
                }
                other => panic!("{other:?}"),
            }
            assert!(wrong.is_err(), "the other key alone is rejected");
            assert!(
                matches!(empty, Err(TransportError::AgentEmpty)),
                "{empty:?}"
            );
        })
        .await;
    });
}
