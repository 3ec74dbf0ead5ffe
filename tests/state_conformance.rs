//! One conformance suite for the state store, run against file:// and against s3://
//! (a real S3 API: moto, started by the tests). Library calls check the guarantees;
//! the binary is run as a user runs it for the CLI and its exact messages.

mod common;

use common::Ctx;
use kubeforge::state::{Keyring, LockOptions, Machine, StateError, StateStore, Version};
use predicates::prelude::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Ctx::file()).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Ctx::s3()).await
                }
            )*
        }
    };
}

conformance!(
    roundtrip_history_and_show,
    save_race_one_winner,
    lock_race_16_processes,
    held_lock_is_named_and_force_unlock_breaks_it,
    refresh_keeps_a_short_lease_live,
    kill9_leaves_a_lock_that_expires,
    ctrl_c_releases_the_lock,
    wrong_key_changes_nothing,
    passphrase_encryption,
    corrupted_object_reported_with_last_good_generation,
    pull_and_push,
    snapshots_are_encrypted_and_never_overwritten,
    two_processes_pushing_one_wins,
    forged_tampered_and_rolled_back_states_are_refused,
    legacy_state_is_adopted_once_with_migrate,
);

const SECRET: &str = "SUPER-SECRET-KUBECONFIG-9f8e7d";

fn key() -> (Keyring, String) {
    Keyring::generate()
}

/// Save a first generation with one of everything.
async fn seed(store: &StateStore) -> (kubeforge::state::StateDocument, Version) {
    let (mut doc, v0) = store.load_or_new().await.unwrap();
    assert_eq!(v0, Version::absent());
    doc.machines.insert(
        "cp-1".into(),
        Machine {
            name: "cp-1".into(),
            provider_id: Some("docker:0123abcd".into()),
            addresses: vec!["172.20.0.2".into()],
            roles: vec!["control-plane".into()],
            ..Default::default()
        },
    );
    doc.host_keys.insert(
        "cp-1".into(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITEST".into(),
    );
    doc.versions.kubernetes = Some("v1.20.2".into());
    let i = doc.journal_start("provision", "sha256:abc", None);
    doc.journal_finish(i, None);
    doc.secrets.admin_kubeconfig = Some(SECRET.into());
    doc.secrets
        .pki
        .insert("ca.key".into(), "-----BEGIN RSA PRIVATE KEY-----x".into());
    let v1 = store.save(&mut doc, &v0).await.unwrap();
    assert_eq!(v1.generation, 1);
    (doc, v1)
}

async fn raw_state(store: &StateStore) -> Vec<u8> {
    store
        .backend()
        .get("state.json")
        .await
        .unwrap()
        .expect("state.json exists")
        .0
        .to_vec()
}

async fn roundtrip_history_and_show(ctx: Ctx) {
    let (k, _) = key();
    let store = ctx.store(Some(k));
    let (mut doc, v1) = seed(&store).await;
    let (loaded, lv) = store.load().await.unwrap().unwrap();
    assert_eq!(lv, v1);
    assert_eq!(loaded.machines, doc.machines);
    assert_eq!(loaded.host_keys, doc.host_keys);
    assert_eq!(loaded.secrets, doc.secrets);
    assert_eq!(loaded.journal.len(), 1);
    assert!(
        !String::from_utf8_lossy(&raw_state(&store).await).contains(SECRET),
        "secret stored in clear"
    );

    doc.versions.kubernetes = Some("v1.20.3".into());
    let v2 = store.save(&mut doc, &v1).await.unwrap();
    assert_eq!(v2.generation, 2);
    let h = store.history().await.unwrap();
    assert_eq!(
        h.iter().map(|e| e.generation).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(h
        .iter()
        .all(|e| e.problem.is_none() && e.updated_by.is_some()));
    let g1 = store.load_generation(1).await.unwrap();
    assert_eq!(g1.versions.kubernetes.as_deref(), Some("v1.20.2"));

    // The CLI, as a user runs it.
    ctx.cli(&["history"])
        .assert()
        .success()
        .stdout(predicate::str::contains("GENERATION"))
        .stdout(predicate::str::is_match(r"(?m)^1\s+\d{4}-").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^2\s+\d{4}-").unwrap());
    let out = ctx.cli(&["show"]).assert().success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("cluster:     demo"), "{text}");
    assert!(text.contains("generation:  2 (saved "), "{text}");
    assert!(text.contains("lock:        free"), "{text}");
    assert!(
        text.contains("pki/ca.key, adminKubeconfig (encrypted with age-x25519 for age1"),
        "{text}"
    );
    assert!(text.contains("kubernetes v1.20.3"), "{text}");
    assert!(
        !text.contains(SECRET) && !text.contains("PRIVATE KEY"),
        "{text}"
    );

    let out = ctx.cli(&["show", "--output", "json"]).assert().success();
    let stdout = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(
        !stdout.contains(SECRET) && !stdout.contains("BEGIN AGE"),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["state"]["generation"], 2);
    assert_eq!(v["state"]["secrets"]["values"], "<redacted>");
    assert_eq!(
        v["state"]["machines"]["cp-1"]["providerId"],
        "docker:0123abcd"
    );

    ctx.cli(&["show", "--generation", "1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("generation:  1 (saved "))
        .stdout(predicate::str::contains("kubernetes v1.20.2"));
    ctx.cli(&["show", "--generation", "9"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "error: generation 9 is not in the history at ",
        ));
    let out = ctx.cli(&["history", "-o", "json"]).assert().success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["generations"].as_array().unwrap().len(), 2);
}

async fn save_race_one_winner(ctx: Ctx) {
    let (k, text) = key();
    let store = ctx.store(Some(k));
    let (_, mut version) = seed(&store).await;
    for trial in 0..5u64 {
        // Two independent writers read the same generation...
        let a = ctx.store(Some(Keyring::X25519 {
            identity: text.parse().unwrap(),
            source: "a".into(),
        }));
        let b = ctx.store(Some(Keyring::X25519 {
            identity: text.parse().unwrap(),
            source: "b".into(),
        }));
        let (mut da, va) = a.load().await.unwrap().unwrap();
        let (mut db, vb) = b.load().await.unwrap().unwrap();
        assert_eq!(va, vb);
        assert_eq!(va.generation, version.generation);
        da.host_keys
            .insert(format!("a-{trial}"), "ssh-ed25519 A".into());
        db.host_keys
            .insert(format!("b-{trial}"), "ssh-ed25519 B".into());
        // ...and save at the same time: exactly one wins, the other gets a conflict.
        let (ra, rb) = tokio::join!(a.save(&mut da, &va), b.save(&mut db, &vb));
        let (winner, loser) = match (ra, rb) {
            (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
            (Ok(_), Ok(_)) => panic!("trial {trial}: both writers won"),
            (Err(x), Err(y)) => panic!("trial {trial}: both lost: {x} / {y}"),
        };
        assert_eq!(winner.generation, va.generation + 1);
        match &loser {
            StateError::Conflict { base, .. } => assert_eq!(*base, va.generation),
            other => panic!("expected a conflict, got {other}"),
        }
        let msg = loser.to_string();
        assert!(
            msg.contains(&format!(
                "changed since it was read at generation {}",
                va.generation
            )) && msg.contains("nothing was written"),
            "{msg}"
        );
        let (now, nv) = store.load().await.unwrap().unwrap();
        assert_eq!(nv, winner);
        // The winner's change is there, the loser's is not (no silent overwrite).
        let a_won = now.host_keys.contains_key(&format!("a-{trial}"));
        let b_won = now.host_keys.contains_key(&format!("b-{trial}"));
        assert!(a_won ^ b_won, "trial {trial}: a={a_won} b={b_won}");
        version = nv;
    }
    let h = store.history().await.unwrap();
    assert_eq!(
        h.iter().map(|e| e.generation).collect::<Vec<_>>(),
        (1..=6).collect::<Vec<_>>()
    );
    // The state object removed under a writer: a conflict too, never a blind create.
    let (mut doc, v) = store.load().await.unwrap().unwrap();
    store.backend().delete("state.json").await.unwrap();
    let err = store.save(&mut doc, &v).await.unwrap_err();
    assert!(
        matches!(err, StateError::Conflict { current: None, .. }),
        "{err}"
    );
    assert!(store.backend().get("state.json").await.unwrap().is_none());
}

fn wait_for_line(child: &mut Child, needle: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("process ended before printing {needle:?}");
        }
        if line.contains(needle) {
            return line;
        }
    }
    panic!("no {needle:?} within 30 s");
}

async fn lock_race_16_processes(ctx: Ctx) {
    let trials: usize = std::env::var("KUBEFORGE_LOCK_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let store = ctx.store(None);
    for trial in 0..trials {
        let started = Instant::now();
        let release = ctx.work.path().join(format!("release-{trial}"));
        let release_arg = release.display().to_string();
        let mut children: Vec<Child> = (0..16)
            .map(|_| {
                ctx.spawn_cmd(&[
                    "lock-probe",
                    "--hold-until-file",
                    &release_arg,
                    "--hold-ms",
                    "120000",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn kubeforge")
            })
            .collect();
        // The losers fail at once; the winner holds until we create the release file.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let exited = children
                .iter_mut()
                .map(|c| c.try_wait().unwrap())
                .filter(Option::is_some)
                .count();
            if exited >= 15 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "trial {trial}: only {exited} of 16 racers finished: more than one holds the lock?"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        let losers_done = started.elapsed();
        std::fs::write(&release, b"go").unwrap();
        let mut winners = 0;
        let mut losers = 0;
        for c in children {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            match out.status.code() {
                Some(0) => {
                    assert!(stdout.contains("acquired lock"), "{stdout}");
                    assert!(stdout.contains("released the lock"), "{stdout}");
                    winners += 1;
                }
                Some(3) => {
                    assert!(
                        stderr.contains("is locked by"),
                        "loser without a lock message: {stderr}"
                    );
                    assert!(!stdout.contains("acquired"), "{stdout}");
                    losers += 1;
                }
                other => panic!("trial {trial}: exit {other:?}: {stdout} {stderr}"),
            }
        }
        assert_eq!(
            (winners, losers),
            (1, 15),
            "trial {trial}: exactly one of 16 must win"
        );
        assert!(store.lock_status().await.unwrap().is_none());
        eprintln!(
            "[{}] lock race trial {trial}: 1 winner / 15 losers; losers done after {:?}, trial {:?}",
            ctx.kind,
            losers_done,
            started.elapsed()
        );
    }
}

async fn held_lock_is_named_and_force_unlock_breaks_it(ctx: Ctx) {
    let store = ctx.store(None);
    let guard = store
        .lock_with(LockOptions {
            command: "kubeforge apply -f cluster.yaml".into(),
            lease: Duration::from_secs(30),
            refresh_every: Some(Duration::from_millis(200)),
            break_stale_lock: false,
        })
        .await
        .unwrap();
    let info = guard.info();
    let since = info
        .started
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let holder = format!(
        "is locked by {} (pid {}, `kubeforge apply -f cluster.yaml`) since {since}",
        info.holder, info.pid
    );
    // A second command fails at once, naming the holder and since when.
    let t = Instant::now();
    ctx.cli(&["lock-probe", "--hold-ms", "0"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(&holder))
        .stderr(predicate::str::contains("the lease runs until"));
    eprintln!("[{}] second taker failed after {:?}", ctx.kind, t.elapsed());
    match ctx.store(None).lock("kubeforge apply").await {
        Err(StateError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    // unlock without --force refuses a live lease.
    ctx.cli(&["unlock"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(&holder));
    assert!(store.lock_status().await.unwrap().is_some());
    // --force breaks it and says what it broke.
    ctx.cli(&["unlock", "--force"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
        "broke a LIVE lock held by {} (pid {}, `kubeforge apply -f cluster.yaml`) since {since}",
        info.holder, info.pid
    )));
    assert!(store.lock_status().await.unwrap().is_none());
    // The old holder notices at its next refresh.
    let deadline = Instant::now() + Duration::from_secs(5);
    while guard.check().is_ok() {
        assert!(
            Instant::now() < deadline,
            "holder did not notice the broken lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(guard.check(), Err(StateError::LockLost { .. })));
    // Someone else takes it; the old holder's release must not remove theirs.
    let other = ctx.store(None).lock("kubeforge upgrade").await.unwrap();
    guard.release().await.unwrap();
    let now = store.lock_status().await.unwrap().expect("still locked");
    assert_eq!(now.id, other.info().id);
    other.release().await.unwrap();
    assert!(store.lock_status().await.unwrap().is_none());
    ctx.cli(&["unlock"])
        .assert()
        .success()
        .stdout(predicate::str::contains("no lock at "));
}

async fn refresh_keeps_a_short_lease_live(ctx: Ctx) {
    let store = ctx.store(None);
    let guard = store
        .lock_with(LockOptions {
            command: "kubeforge apply".into(),
            lease: Duration::from_millis(1500),
            refresh_every: Some(Duration::from_millis(200)),
            break_stale_lock: false,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    guard.check().unwrap();
    let held = store.lock_status().await.unwrap().unwrap();
    assert!(
        !held.is_expired(chrono::Utc::now()),
        "lease was not refreshed"
    );
    assert!(held.refreshed > held.started);
    match ctx.store(None).lock("other").await {
        Err(StateError::Locked { .. }) => {}
        other => panic!("expected a live lock, got {other:?}"),
    }
    guard.release().await.unwrap();
    assert!(store.lock_status().await.unwrap().is_none());
}

fn spawn_holder_and_kill9(ctx: &Ctx) -> u32 {
    let mut child = ctx
        .spawn_cmd(&["lock-probe", "--hold-ms", "120000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_line(&mut child, "acquired lock");
    child.kill().unwrap(); // SIGKILL: no chance to release
    child.wait().unwrap();
    child.id()
}

async fn kill9_leaves_a_lock_that_expires(ctx: Ctx) {
    let store = ctx.store(None);
    let pid = spawn_holder_and_kill9(&ctx);
    let held = store
        .lock_status()
        .await
        .unwrap()
        .expect("lock left behind");
    assert_eq!(held.pid, pid);
    assert!(held.host.is_some(), "{held:?}");
    assert!(!held.is_expired(chrono::Utc::now()), "the lease is 60 s");
    // The holder ran here and its process is gone: the next command says so and
    // offers to break the lock, although the lease is live.
    ctx.cli(&["lock-probe", "--hold-ms", "0"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(format!(
            "is locked by {} (pid {pid}",
            held.holder
        )))
        .stderr(predicate::str::contains(format!(
            "but that process is dead: pid {pid} no longer exists on this host"
        )))
        .stderr(predicate::str::contains(
            "remove the lock with `kubeforge state unlock` (no --force needed)",
        ));
    // `unlock` without --force removes a provably dead local holder's lock.
    ctx.cli(&["unlock"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "removed the lock held by {} (pid {pid}",
            held.holder
        )))
        .stdout(predicate::str::contains(format!(
            "its process is dead (pid {pid} no longer exists on this host"
        )));
    ctx.cli(&["lock-probe", "--hold-ms", "0"])
        .assert()
        .success()
        .stdout(predicate::str::contains("acquired lock"));
    assert!(store.lock_status().await.unwrap().is_none());

    // Again, broken in one step with --break-stale-lock.
    let pid = spawn_holder_and_kill9(&ctx);
    assert_eq!(store.lock_status().await.unwrap().unwrap().pid, pid);
    ctx.cli(&["lock-probe", "--hold-ms", "0", "--break-stale-lock"])
        .assert()
        .success()
        .stdout(predicate::str::contains("acquired lock"));
    assert!(store.lock_status().await.unwrap().is_none());

    // A holder on another host is never judged dead (same dead pid): its live lease
    // is respected, --break-stale-lock and `unlock` without --force do not break it.
    let mut foreign = held.clone();
    let mut host = held.host.clone().unwrap();
    host.hostname = "another-host".into();
    foreign.host = Some(host);
    foreign.expires = chrono::Utc::now() + chrono::Duration::seconds(60);
    let put_lock = |info: kubeforge::state::LockInfo| {
        let backend = store.backend().clone();
        async move {
            backend
                .put(
                    "lock",
                    bytes::Bytes::from(serde_json::to_vec(&info).unwrap()),
                    kubeforge::state::backend::WriteMode::Overwrite,
                )
                .await
                .unwrap();
        }
    };
    put_lock(foreign.clone()).await;
    ctx.cli(&["lock-probe", "--hold-ms", "0", "--break-stale-lock"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("the lease runs until"));
    ctx.cli(&["unlock"]).assert().code(3);
    // Its lease expired: still NOT taken over silently; `unlock` removes it.
    foreign.expires = chrono::Utc::now() - chrono::Duration::seconds(1);
    put_lock(foreign.clone()).await;
    let since = held
        .started
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    ctx.cli(&["lock-probe", "--hold-ms", "0"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains(format!(
            "is locked by {} (pid {}",
            held.holder, held.pid
        )))
        .stderr(predicate::str::contains(format!(
            ") since {since}; its lease expired at "
        )))
        .stderr(predicate::str::contains("`kubeforge state unlock --force`"));
    ctx.cli(&["show"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains("there is no state at"));
    ctx.cli(&["unlock"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "removed the lock held by {} (pid {}",
            held.holder, held.pid
        )))
        .stdout(predicate::str::contains("(lease expired at "));
    ctx.cli(&["lock-probe", "--hold-ms", "0"])
        .assert()
        .success()
        .stdout(predicate::str::contains("acquired lock"));
    assert!(store.lock_status().await.unwrap().is_none());
}

async fn ctrl_c_releases_the_lock(ctx: Ctx) {
    let store = ctx.store(None);
    let mut child = ctx
        .spawn_cmd(&["lock-probe", "--hold-ms", "120000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("acquired lock"), "{line}");
    assert!(store.lock_status().await.unwrap().is_some());
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert!(rest.contains("interrupted; released the lock"), "{rest}");
    assert_eq!(status.code(), Some(1));
    assert!(
        store.lock_status().await.unwrap().is_none(),
        "Ctrl-C left the lock behind"
    );
}

async fn wrong_key_changes_nothing(ctx: Ctx) {
    let (ka, _) = key();
    let (kb, kb_text) = key();
    let a_public = ka.recipient().unwrap();
    let b_public = kb.recipient().unwrap();
    let store = ctx.store(Some(ka));
    seed(&store).await;
    let before = raw_state(&store).await;

    let wrong = ctx.store(Some(kb));
    let err = wrong.load().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::WrongKey(_)), "{msg}");
    assert!(
        msg.contains(&format!(
            "wrong state encryption key: the secrets are encrypted for {a_public}, but the key from a generated key is {b_public}; nothing was changed"
        )),
        "{msg}"
    );
    // No key at all: refused, and the message says how to give one.
    let err = ctx.store(None).load().await.unwrap_err();
    assert!(matches!(err, StateError::NoKey { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("holds encrypted secrets (pki/ca.key, adminKubeconfig) but no key was given"),
        "{err}"
    );
    // A doc with secrets cannot be saved without a key either.
    let nokey = ctx.store(None);
    let (mut sealed, v) = nokey.load_sealed().await.unwrap().unwrap();
    sealed.secrets.certificate_key = Some("x".into());
    assert!(matches!(
        nokey.save(&mut sealed, &v).await,
        Err(StateError::NoKey { .. })
    ));

    // The CLI push with the wrong key: clear error, exit 7, nothing changed.
    let pulled = ctx.work.path().join("pulled.json");
    ctx.cli(&["pull", "--out", pulled.to_str().unwrap()])
        .assert()
        .success();
    ctx.cli(&["push", pulled.to_str().unwrap(), "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &kb_text)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(format!(
            "error: wrong state encryption key: the secrets are encrypted for {a_public}, but the key from $KUBEFORGE_STATE_KEY is {b_public}; nothing was changed"
        )));
    // A key file that is not a key.
    let bad = ctx.work.path().join("bad.key");
    std::fs::write(&bad, "not a key\n").unwrap();
    ctx.cli(&["push", pulled.to_str().unwrap(), "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY_FILE", &bad)
        .assert()
        .code(7)
        .stderr(predicate::str::contains("is not an age X25519 secret key"));

    assert_eq!(raw_state(&store).await, before, "state changed");
    assert_eq!(store.history().await.unwrap().len(), 1);
    let (doc, _) = store.load().await.unwrap().unwrap();
    assert_eq!(doc.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
}

async fn passphrase_encryption(ctx: Ctx) {
    // scrypt at the production work factor takes seconds in an unoptimized test
    // build; the code path is the same with a smaller factor (read from the file).
    let right = Keyring::from_passphrase(
        "correct horse battery staple",
        "$KUBEFORGE_STATE_PASSPHRASE",
    )
    .with_work_factor(10);
    let store = ctx.store(Some(right));
    let t = Instant::now();
    let (_, _) = seed(&store).await;
    let (doc, _) = store.load().await.unwrap().unwrap();
    eprintln!("[{}] passphrase save+load: {:?}", ctx.kind, t.elapsed());
    assert_eq!(doc.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
    assert_eq!(doc.sealed_secrets().unwrap().scheme, "age-scrypt");
    let before = raw_state(&store).await;
    let wrong = ctx.store(Some(Keyring::from_passphrase(
        "wrong",
        "$KUBEFORGE_STATE_PASSPHRASE",
    )));
    let err = wrong.load().await.unwrap_err();
    assert!(
        err.to_string().contains(
            "wrong state encryption key: the key from $KUBEFORGE_STATE_PASSPHRASE does not decrypt the state's secrets; nothing was changed"
        ),
        "{err}"
    );
    let (x, _) = key();
    let err = ctx.store(Some(x)).load().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("the secrets are encrypted with a passphrase, but an X25519 key was given"),
        "{err}"
    );
    assert_eq!(raw_state(&store).await, before);
}

async fn corrupted_object_reported_with_last_good_generation(ctx: Ctx) {
    let (k, ktext) = key();
    let store = ctx.store(Some(k));
    let (mut doc, mut v) = seed(&store).await;
    for _ in 0..2 {
        doc.journal_start("noop", "sha256:0", None);
        v = store.save(&mut doc, &v).await.unwrap();
    }
    assert_eq!(v.generation, 3);
    let good = raw_state(&store).await;

    // Truncated object.
    let truncated = bytes::Bytes::copy_from_slice(&good[..good.len() / 2]);
    store
        .backend()
        .put(
            "state.json",
            truncated.clone(),
            kubeforge::state::backend::WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StateError::Corrupted {
                last_good: Some(3),
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("state.json at ") && msg.contains(" is corrupted: truncated"),
        "{msg}"
    );
    assert!(
        msg.contains("nothing was changed, and the last good generation in history is 3: restore it with `kubeforge state pull --generation 3 --out FILE` and `kubeforge state push FILE --generation 3 --replace-corrupted`"),
        "{msg}"
    );
    // A save against the old version does not overwrite it.
    assert!(store.save(&mut doc, &v).await.is_err());
    assert_eq!(raw_state(&store).await, truncated.to_vec());
    ctx.cli(&["show"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains(" is corrupted: truncated"))
        .stderr(predicate::str::contains(
            "the last good generation in history is 3",
        ));
    ctx.cli(&["lock-probe", "--hold-ms", "0"])
        .assert()
        .success();

    // One changed byte: checksum mismatch.
    let text = String::from_utf8(good.clone()).unwrap();
    let flipped = text.replace("172.20.0.2", "172.20.0.9");
    assert_ne!(flipped, text);
    store
        .backend()
        .put(
            "state.json",
            bytes::Bytes::from(flipped.clone()),
            kubeforge::state::backend::WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    assert!(
        err.to_string().contains("is corrupted: checksum mismatch"),
        "{err}"
    );
    // The history copy of 3 damaged too: the last good one is 2.
    store
        .backend()
        .put(
            "history/3.json",
            bytes::Bytes::from(flipped.clone()),
            kubeforge::state::backend::WriteMode::Overwrite,
        )
        .await
        .unwrap();
    let err = store.load().await.unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Corrupted {
                last_good: Some(2),
                ..
            }
        ),
        "{err}"
    );
    ctx.cli(&["history"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^3 .*DAMAGED: checksum mismatch").unwrap());
    // The good generation can still be pulled.
    let out = ctx.work.path().join("g2.json");
    ctx.cli(&["pull", "--generation", "2", "--out", out.to_str().unwrap()])
        .assert()
        .success()
        .stdout(predicate::str::contains("wrote generation 2 of "));
    assert_eq!(
        raw_state(&store).await,
        flipped.clone().into_bytes(),
        "nothing overwritten"
    );
    // A plain push is refused on a corrupted state; --replace-corrupted restores it.
    let g2 = out.to_str().unwrap();
    ctx.cli(&["push", g2, "--generation", "2"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(" is corrupted: checksum mismatch"));
    assert_eq!(raw_state(&store).await, flipped.into_bytes());
    ctx.cli(&["push", g2, "--generation", "2", "--replace-corrupted"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "replaced the corrupted state at {} with {g2} (pulled at generation 2) as generation 4",
            store.url()
        )));
    let (restored, v4) = store.load().await.unwrap().unwrap();
    assert_eq!(v4.generation, 4);
    assert_eq!(
        restored.journal.len(),
        2,
        "generation 2 had two journal entries"
    );
    assert_eq!(restored.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
    // Refused on an intact state.
    ctx.cli(&["push", g2, "--generation", "2", "--replace-corrupted"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "is not corrupted: push without --replace-corrupted",
        ));
}

async fn pull_and_push(ctx: Ctx) {
    use std::os::unix::fs::PermissionsExt;
    let (k, ktext) = key();
    let store = ctx.store(Some(k));
    let (mut doc, v1) = seed(&store).await;
    let file = ctx.work.path().join("copy.json");
    let fname = file.to_str().unwrap().to_string();
    ctx.cli(&["pull", "--out", &fname])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "wrote generation 1 of {} to {fname} (mode 0600; secrets stay encrypted)",
            store.url()
        )));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pulled = std::fs::read_to_string(&file).unwrap();
    assert!(!pulled.contains(SECRET) && pulled.contains("BEGIN AGE ENCRYPTED FILE"));

    // Someone saves meanwhile: pushing the copy pulled at 1 is refused.
    doc.versions.kubernetes = Some("v1.20.9".into());
    store.save(&mut doc, &v1).await.unwrap();
    let mut edited: serde_json::Value = serde_json::from_str(&pulled).unwrap();
    edited["state"]["hostKeys"]["cp-2"] = "ssh-ed25519 AAAAEDITED".into();
    std::fs::write(&file, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    // Without the key, an authenticated state cannot be replaced at all.
    ctx.cli(&["push", &fname, "--generation", "1"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "comes from an authenticated state: pushing it to",
        ));
    ctx.cli(&["push", &fname, "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "changed since it was read at generation 1 (it is now at generation 2): nothing was written",
        ));
    ctx.cli(&["push", &fname, "--generation", "2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "error: the file holds generation 1 but --generation is 2",
        ));
    assert_eq!(store.load().await.unwrap().unwrap().1.generation, 2);

    // Pull again at 2, edit, push: saved as 3, secrets carried over untouched.
    ctx.cli(&["pull", "--out", &fname]).assert().success();
    let mut edited: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    edited["state"]["hostKeys"]["cp-2"] = "ssh-ed25519 AAAAEDITED".into();
    std::fs::write(&file, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    ctx.cli(&["push", &fname, "--generation", "2"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "pushed {fname} to {} as generation 3 (was 2)",
            store.url()
        )));
    let (now, v3) = store.load().await.unwrap().unwrap();
    assert_eq!(v3.generation, 3);
    assert_eq!(now.host_keys["cp-2"], "ssh-ed25519 AAAAEDITED");
    assert_eq!(now.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
    assert_eq!(now.versions.kubernetes.as_deref(), Some("v1.20.9"));
    // The same copy again: it is stale now.
    ctx.cli(&["push", &fname, "--generation", "2"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains("(it is now at generation 3)"));
    assert_eq!(
        store
            .history()
            .await
            .unwrap()
            .iter()
            .map(|e| e.generation)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

async fn snapshots_are_encrypted_and_never_overwritten(ctx: Ctx) {
    let marker = b"ETCD-SNAPSHOT-PLAINTEXT-MARKER";
    let mut data = Vec::with_capacity(1 << 20);
    while data.len() < (1 << 20) {
        data.extend_from_slice(marker);
        data.extend_from_slice(&(data.len() as u64).to_le_bytes());
    }
    let err = ctx
        .store(None)
        .put_snapshot("etcd-1", &data)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("give the state an encryption key"),
        "{err}"
    );

    let (k, _) = key();
    let store = ctx.store(Some(k));
    let info = store
        .put_snapshot("etcd-20261122T070000Z", &data)
        .await
        .unwrap();
    assert!(info.size > data.len() as u64);
    let raw = store
        .backend()
        .get("snapshots/etcd-20261122T070000Z.age")
        .await
        .unwrap()
        .unwrap()
        .0;
    assert!(
        !raw.windows(marker.len()).any(|w| w == marker),
        "stored in clear"
    );
    assert_eq!(
        store.get_snapshot("etcd-20261122T070000Z").await.unwrap(),
        data
    );
    let err = store
        .put_snapshot("etcd-20261122T070000Z", b"other")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("a snapshot with this name exists already"),
        "{err}"
    );
    assert_eq!(
        store.get_snapshot("etcd-20261122T070000Z").await.unwrap(),
        data
    );
    assert!(store.put_snapshot("../x", b"x").await.is_err());
    let err = ctx
        .store(Some(key().0))
        .get_snapshot("etcd-20261122T070000Z")
        .await
        .unwrap_err();
    assert!(matches!(err, StateError::WrongKey(_)), "{err}");

    // A damaged snapshot is reported as such.
    let mut bad = raw.to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    store
        .backend()
        .put(
            "snapshots/etcd-damaged.age",
            bytes::Bytes::from(bad),
            kubeforge::state::backend::WriteMode::Create,
        )
        .await
        .unwrap();
    let err = store.get_snapshot("etcd-damaged").await.unwrap_err();
    assert!(err.to_string().contains("corrupted or truncated"), "{err}");

    ctx.cli(&["snapshots"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^etcd-20261122T070000Z\s+\d{4}-").unwrap())
        .stdout(predicate::str::contains("etcd-damaged"));
    let names: Vec<String> = store
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["etcd-20261122T070000Z", "etcd-damaged"]);
}

async fn two_processes_pushing_one_wins(ctx: Ctx) {
    let (k, ktext) = key();
    let store = ctx.store(Some(k));
    seed(&store).await;
    for trial in 0..5u64 {
        let generation = 1 + trial;
        let file = ctx.work.path().join(format!("pulled-{trial}.json"));
        let fname = file.to_str().unwrap().to_string();
        ctx.cli(&["pull", "--out", &fname]).assert().success();
        let mut copies = Vec::new();
        for who in ["a", "b"] {
            let mut v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            v["state"]["hostKeys"][format!("{who}-{trial}")] = "ssh-ed25519 X".into();
            let p = ctx.work.path().join(format!("{who}-{trial}.json"));
            std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
            copies.push(p);
        }
        let gen_arg = generation.to_string();
        let children: Vec<Child> = copies
            .iter()
            .map(|p| {
                ctx.spawn_cmd(&["push", p.to_str().unwrap(), "--generation", &gen_arg])
                    .env("KUBEFORGE_STATE_KEY", &ktext)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let codes: Vec<_> = outs.iter().map(|o| o.status.code()).collect();
        let wins = codes.iter().filter(|c| **c == Some(0)).count();
        // push takes the lock: the loser finds it held (3) or, once the winner is
        // done, finds the state moved on (7).
        let losers: Vec<_> = outs
            .iter()
            .filter(|o| matches!(o.status.code(), Some(3) | Some(7)))
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect();
        assert_eq!(
            (wins, losers.len()),
            (1, 1),
            "trial {trial}: {codes:?} {losers:?}"
        );
        assert!(
            losers[0].contains(&format!(
                "changed since it was read at generation {generation}"
            )) || losers[0].contains("is locked by"),
            "{}",
            losers[0]
        );
        let (now, v) = store.load().await.unwrap().unwrap();
        assert_eq!(v.generation, generation + 1);
        let a = now.host_keys.contains_key(&format!("a-{trial}"));
        let b = now.host_keys.contains_key(&format!("b-{trial}"));
        assert!(a ^ b, "trial {trial}: a={a} b={b}");
    }
}

// ------------------------------------------------------------------ authentication

fn keyring_from(text: &str, source: &str) -> Keyring {
    Keyring::X25519 {
        identity: text.parse().unwrap(),
        source: source.into(),
    }
}

/// Recompute the (unkeyed) checksum of an edited envelope, as an attacker would.
fn rechecksum(env: &mut serde_json::Value) -> Vec<u8> {
    use sha2::Digest;
    let canon = serde_json::to_vec(&env["state"]).unwrap();
    env["checksum"] = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&canon))).into();
    serde_json::to_vec_pretty(env).unwrap()
}

/// age-encrypt to a public recipient: all an attacker with write access has.
fn age_encrypt_to(recipient: &str, plain: &[u8]) -> String {
    use std::io::Write;
    let r: age::x25519::Recipient = recipient.parse().unwrap();
    let e = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut out = Vec::new();
    let armored =
        age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor).unwrap();
    let mut w = e.wrap_output(armored).unwrap();
    w.write_all(plain).unwrap();
    w.finish().and_then(|a| a.finish()).unwrap();
    String::from_utf8(out).unwrap()
}

async fn put_raw(store: &StateStore, key: &str, bytes: Vec<u8>) {
    store
        .backend()
        .put(
            key,
            bytes::Bytes::from(bytes),
            kubeforge::state::backend::WriteMode::Overwrite,
        )
        .await
        .unwrap();
}

async fn forged_tampered_and_rolled_back_states_are_refused(ctx: Ctx) {
    let (k, ktext) = key();
    let store = ctx.store(Some(k));
    seed(&store).await;
    let genuine1 = raw_state(&store).await;
    let url = store.url();

    // 1. A forged state: secrets sealed to the public recipient (in clear in the
    // document), a host-key pin of the attacker's, the checksum recomputed.
    let mut env: serde_json::Value = serde_json::from_slice(&genuine1).unwrap();
    assert!(env["auth"]["mac"].is_string(), "{env}");
    let recipient = env["state"]["secrets"]["recipient"]
        .as_str()
        .unwrap()
        .to_string();
    let forged_secrets = serde_json::json!({
        "joinTokens": ["forged.0123456789abcdef"],
        "adminKubeconfig": "FORGED-KUBECONFIG",
    });
    env["state"]["secrets"]["ciphertext"] =
        age_encrypt_to(&recipient, &serde_json::to_vec(&forged_secrets).unwrap()).into();
    env["state"]["secrets"]["names"] = serde_json::json!(["joinTokens/0", "adminKubeconfig"]);
    env["state"]["hostKeys"]["cp-1"] = "ssh-ed25519 AAAAATTACKER".into();
    for (case, strip_tag, want) in [
        ("no tag", true, "it carries no authentication tag"),
        (
            "the genuine tag kept",
            false,
            "its authentication tag does not verify with the key from a generated key",
        ),
    ] {
        let mut forged = env.clone();
        if strip_tag {
            forged.as_object_mut().unwrap().remove("auth");
        }
        put_raw(&store, "state.json", rechecksum(&mut forged)).await;
        // Another process with the real key (the first one would refuse it too).
        let reader = ctx.store(Some(keyring_from(&ktext, "a generated key")));
        for s in [&store, &reader] {
            let err = s.load().await.unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, StateError::Unauthenticated { .. }),
                "{case}: {msg}"
            );
            assert!(
                msg.contains(&format!("state.json at {url} is not authenticated: {want}"))
                    && msg.contains("nothing was changed"),
                "{case}: {msg}"
            );
            assert!(!msg.contains("FORGED"), "{msg}");
            assert_eq!(err.exit_kind(), kubeforge::error::ExitKind::State);
        }
    }
    // `state show` still shows it (the key given), marked as not authenticated.
    ctx.cli(&["show"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "authentic:   NOT AUTHENTICATED: state.json at {url} is not authenticated: its authentication tag does not verify"
        )));
    // The CLI with the key: refused with exit 7, naming the object; and `state migrate`
    // does not adopt a stripped tag on a store that has authenticated history.
    let copy = ctx.work.path().join("copy.json");
    std::fs::write(&copy, &genuine1).unwrap();
    ctx.cli(&["push", copy.to_str().unwrap(), "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(format!(
            "error: state.json at {url} is not authenticated: its authentication tag does not verify"
        )));
    let mut stripped = env.clone();
    stripped.as_object_mut().unwrap().remove("auth");
    put_raw(&store, "state.json", rechecksum(&mut stripped)).await;
    ctx.cli(&["migrate", "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "is not authenticated: it carries no authentication tag, but authenticated generation 1 of this store was seen here before",
        ));
    ctx.cli(&["migrate", "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .env("XDG_STATE_HOME", ctx.work.path().join("other-machine"))
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "it carries no authentication tag, but history/1.json is an authenticated generation of this store",
        ));

    // 2. One pin changed in clear, the genuine tag kept, the checksum recomputed.
    let mut pin: serde_json::Value = serde_json::from_slice(&genuine1).unwrap();
    pin["state"]["hostKeys"]["cp-1"] = "ssh-ed25519 AAAAMITM".into();
    put_raw(&store, "state.json", rechecksum(&mut pin)).await;
    let err = store.load().await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "state.json at {url} is not authenticated: its authentication tag does not verify"
        )),
        "{err}"
    );
    // The generation (also in clear) is covered too.
    let mut bumped: serde_json::Value = serde_json::from_slice(&genuine1).unwrap();
    bumped["state"]["generation"] = 7.into();
    put_raw(&store, "state.json", rechecksum(&mut bumped)).await;
    assert!(matches!(
        store.load().await.unwrap_err(),
        StateError::Unauthenticated { .. }
    ));

    // The honest path: the genuine object back, two more saves.
    put_raw(&store, "state.json", genuine1.clone()).await;
    let (loaded, v) = store.load().await.unwrap().unwrap();
    assert_eq!(v.generation, 1);
    assert_eq!(loaded.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
    let mut v = v;
    let mut doc = loaded;
    for _ in 0..2 {
        doc.journal_start("noop", "sha256:0", None);
        v = store.save(&mut doc, &v).await.unwrap();
    }
    assert_eq!(v.generation, 3);
    let genuine3 = raw_state(&store).await;

    // 3. Rollback: generation 1, authentic, re-uploaded as current.
    put_raw(&store, "state.json", genuine1.clone()).await;
    let err = store.load().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::Rollback { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "state.json at {url} was rolled back: it presents generation 1 as current, but generation 3 was seen here before (recorded in {}",
            ctx.xdg_state_home().join("kubeforge/seen").display()
        )),
        "{msg}"
    );
    assert_eq!(err.exit_kind(), kubeforge::error::ExitKind::State);
    // An operator on another machine (no record) learns it from history.
    let other = ctx
        .store(Some(keyring_from(&ktext, "k")))
        .with_seen_dir(Some(ctx.work.path().join("other-machine/kubeforge/seen")));
    let err = other.load().await.unwrap_err();
    assert!(
        err.to_string().contains(
            "it presents generation 1 as current, but history/3.json holds a newer authenticated generation 3"
        ),
        "{err}"
    );
    ctx.cli(&["push", copy.to_str().unwrap(), "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "was rolled back: it presents generation 1 as current",
        ));
    // The attacker also removes the newer history: the local record still refuses.
    for g in [2, 3] {
        store
            .backend()
            .delete(&format!("history/{g}.json"))
            .await
            .unwrap();
    }
    assert!(matches!(
        store.load().await.unwrap_err(),
        StateError::Rollback { .. }
    ));

    // The honest path again: generation 3 back; load, save, CLI all work.
    put_raw(&store, "state.json", genuine3).await;
    let (mut doc, v) = store.load().await.unwrap().unwrap();
    assert_eq!(v.generation, 3);
    doc.journal_start("noop", "sha256:0", None);
    assert_eq!(store.save(&mut doc, &v).await.unwrap().generation, 4);
    ctx.cli(&["pull", "--out", copy.to_str().unwrap()])
        .assert()
        .success();
    ctx.cli(&["push", copy.to_str().unwrap(), "--generation", "4"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains("as generation 5 (was 4)"));
    let (doc, _) = other.load().await.unwrap().unwrap();
    assert_eq!(doc.generation, 5);
    assert_eq!(doc.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
}

/// A state written before authentication (no tag) is loadable once, through the
/// explicit `state migrate`, and never again after that.
async fn legacy_state_is_adopted_once_with_migrate(ctx: Ctx) {
    let (k, ktext) = key();
    // Written "by the previous version": the same document without tag and lineage.
    let writer = ctx.store(Some(k)).with_seen_dir(None);
    seed(&writer).await;
    let mut env: serde_json::Value = serde_json::from_slice(&raw_state(&writer).await).unwrap();
    env.as_object_mut().unwrap().remove("auth");
    env["state"].as_object_mut().unwrap().remove("lineage");
    let legacy = rechecksum(&mut env);
    put_raw(&writer, "state.json", legacy.clone()).await;
    put_raw(&writer, "history/1.json", legacy.clone()).await;
    let url = writer.url();

    let store = ctx.store(Some(keyring_from(&ktext, "a generated key")));
    let err = store.load().await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "state.json at {url} is not authenticated: it carries no authentication tag; it was not written with this state key (forged, or altered in the store), so it is not used and nothing was changed. If it was written by a kubeforge from before state authentication and you trust it, check it with `kubeforge state show` and adopt it with `kubeforge state migrate --generation 1`"
        )),
        "{err}"
    );
    ctx.cli(&["show"])
        .assert()
        .success()
        .stdout(predicate::str::contains("generation:  1"))
        .stdout(predicate::str::contains(
            "authentic:   not checked (no state key given)",
        ));
    ctx.cli(&["show"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "authentic:   NOT AUTHENTICATED: state.json at ",
        ))
        .stdout(predicate::str::contains("it carries no authentication tag"));
    ctx.cli(&["migrate", "--generation", "1"])
        .assert()
        .code(7)
        .stderr(predicate::str::contains("needs the state key"));
    ctx.cli(&["migrate", "--generation", "2"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains(
            "changed since it was read at generation 2 (it is now at generation 1)",
        ));
    assert_eq!(raw_state(&store).await, legacy, "a refused migrate wrote");
    ctx.cli(&["migrate", "--generation", "1"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "adopted the unauthenticated generation 1 of {url} (1 machines, 1 pinned host keys, secrets: pki/ca.key, adminKubeconfig) as authenticated generation 2"
        )));
    let (doc, v) = store.load().await.unwrap().unwrap();
    assert_eq!(v.generation, 2);
    assert_eq!(doc.secrets.admin_kubeconfig.as_deref(), Some(SECRET));
    assert!(!doc.lineage.is_empty());
    ctx.cli(&["show"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "authentic:   verified with the state key",
        ));
    // Once is all: the tag stripped again is refused, migrate included.
    let mut again: serde_json::Value = serde_json::from_slice(&raw_state(&store).await).unwrap();
    again.as_object_mut().unwrap().remove("auth");
    put_raw(&store, "state.json", rechecksum(&mut again)).await;
    assert!(matches!(
        store.load().await.unwrap_err(),
        StateError::Unauthenticated { .. }
    ));
    ctx.cli(&["migrate", "--generation", "2"])
        .env("KUBEFORGE_STATE_KEY", &ktext)
        .assert()
        .code(7)
        .stderr(predicate::str::contains("is not adopted"));
}
