//! Shared helpers for the state-store integration tests: a moto S3 server started by the
//! tests themselves, a TCP proxy that can take the endpoint "down", and store contexts
//! for the file:// and s3:// backends.
#![allow(dead_code)]

pub mod http_mock;
pub mod moto;
pub mod proxy;

use kubeforge::state::{Keyring, StateStore, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The kubeforge binary under test.
pub fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("kubeforge")
}

/// Credentials for moto (any signature works) so object_store never looks for cloud
/// metadata endpoints. Set once; every test sets the same values.
pub fn aws_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Set once, before any store reads them; the same values always.
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::remove_var("AWS_ENDPOINT");
        std::env::remove_var("AWS_ENDPOINT_URL");
        for v in [
            "KUBEFORGE_STATE_KEY_FILE",
            "KUBEFORGE_STATE_KEY",
            "KUBEFORGE_STATE_PASSPHRASE",
        ] {
            std::env::remove_var(v);
        }
    });
}

fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// One store location (file:// or s3://) and how to reach it from the library and the CLI.
pub struct Ctx {
    pub url: String,
    pub options: StoreOptions,
    pub kind: &'static str,
    _dir: Option<tempfile::TempDir>,
    pub work: tempfile::TempDir,
}

impl Ctx {
    pub fn file() -> Ctx {
        aws_env();
        let dir = tempfile::tempdir().unwrap();
        Ctx {
            url: format!("file://{}", dir.path().join("store").display()),
            options: StoreOptions::default(),
            kind: "file",
            _dir: Some(dir),
            work: tempfile::tempdir().unwrap(),
        }
    }

    pub fn s3() -> Ctx {
        Self::s3_at(&moto::shared().endpoint())
    }

    /// An s3:// context at a given endpoint (e.g. a proxy in front of moto).
    pub fn s3_at(endpoint: &str) -> Ctx {
        aws_env();
        let m = moto::shared();
        Ctx {
            url: format!("s3://{}/{}", m.bucket, unique("clusters/t")),
            options: StoreOptions {
                endpoint: Some(endpoint.to_string()),
                region: Some("us-east-1".into()),
                path_style: true,
                allow_http: true,
                credentials: None,
                ca_bundle: None,
            },
            kind: "s3",
            _dir: None,
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// A library handle on the store, for cluster `demo`, with an optional key. It
    /// records the generations it saw where the CLI of this context does
    /// ([`Self::xdg_state_home`]), as one operator's machine would.
    pub fn store(&self, keyring: Option<Keyring>) -> StateStore {
        let backend = StateStore::backend_for(&self.url, &self.options, Path::new(".")).unwrap();
        StateStore::with_backend(backend)
            .with_cluster(Some("demo".into()))
            .with_keyring(keyring)
            .with_seen_dir(Some(self.xdg_state_home().join("kubeforge/seen")))
    }

    /// `$XDG_STATE_HOME` of this context's CLI runs (its rollback records).
    pub fn xdg_state_home(&self) -> std::path::PathBuf {
        self.work.path().join("xdg-state")
    }

    /// Arguments that select this store on the command line.
    pub fn target_args(&self) -> Vec<String> {
        let mut a = vec!["--state-url".to_string(), self.url.clone()];
        if let Some(e) = &self.options.endpoint {
            a.push("--endpoint".into());
            a.push(e.clone());
        }
        if self.options.path_style {
            a.push("--path-style".into());
        }
        if self.options.allow_http {
            a.push("--allow-http".into());
        }
        a
    }

    /// `kubeforge state <sub...>` against this store, as a user runs it.
    pub fn cli(&self, sub: &[&str]) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(bin());
        c.current_dir(self.work.path());
        base_env(&mut c);
        c.env("XDG_STATE_HOME", self.xdg_state_home());
        c.arg("state");
        c.args(sub);
        c.args(self.target_args());
        c
    }

    /// The same as a std Command (for spawning many at once).
    pub fn spawn_cmd(&self, sub: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(bin());
        c.current_dir(self.work.path());
        c.env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("KUBEFORGE_STATE_KEY_FILE")
            .env_remove("KUBEFORGE_STATE_KEY")
            .env_remove("KUBEFORGE_STATE_PASSPHRASE")
            .env("XDG_STATE_HOME", self.xdg_state_home())
            .env("RUST_LOG", "warn");
        c.arg("state");
        c.args(sub);
        c.args(self.target_args());
        c
    }
}

pub fn base_env(c: &mut assert_cmd::Command) {
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env_remove("KUBEFORGE_STATE_KEY_FILE")
        .env_remove("KUBEFORGE_STATE_KEY")
        .env_remove("KUBEFORGE_STATE_PASSPHRASE")
        .env("RUST_LOG", "warn");
}
