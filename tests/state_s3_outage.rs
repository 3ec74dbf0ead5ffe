//! The S3 endpoint goes down (a proxy in front of moto stops listening and cuts its
//! connections) and comes back: clear errors, bounded retries with backoff, nothing lost.

mod common;

use common::proxy::Proxy;
use common::Ctx;
use kubeforge::state::{Keyring, StateError};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_endpoint_down_clear_error_retries_nothing_lost() {
    let moto = common::moto::shared();
    let proxy = Proxy::start(moto.port).await;
    let ctx = Ctx::s3_at(&proxy.endpoint());
    let store = ctx.store(Some(Keyring::generate().0));

    let (mut doc, v0) = store.load_or_new().await.unwrap();
    doc.secrets.admin_kubeconfig = Some("kubeconfig".into());
    doc.versions.kubernetes = Some("v1.20.2".into());
    let v1 = store.save(&mut doc, &v0).await.unwrap();
    let lock = store.lock("kubeforge apply").await.unwrap();

    proxy.down().await;
    // A save while the endpoint is down: a clear error after bounded retries.
    let mut attempt = doc.clone();
    attempt.versions.kubernetes = Some("v1.20.3".into());
    let t = Instant::now();
    let err = store.save(&mut attempt, &v1).await.unwrap_err();
    let took = t.elapsed();
    eprintln!("save with the endpoint down failed after {took:?}");
    assert!(matches!(err, StateError::Unavailable { .. }), "{err}");
    let chain = kubeforge::error::render_chain(&kubeforge::error::Error::from(err));
    assert!(
        chain.starts_with(&format!(
            "error: cannot reach the state store at {} (retried with backoff); every write is all-or-nothing: read the state again once the store is back",
            store.url()
        )),
        "{chain}"
    );
    assert!(chain.contains("caused by:"), "{chain}");
    assert!(took >= Duration::from_millis(700), "no backoff? {took:?}");
    assert!(
        took < Duration::from_secs(30),
        "retries not bounded: {took:?}"
    );
    assert_eq!(
        attempt.generation, 1,
        "a failed save must not advance the document"
    );

    // The CLI says the same, with the state exit code.
    let out = ctx
        .cli(&["show"])
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: cannot reach the state store at s3://")
            && stderr.contains("(retried with backoff); every write is all-or-nothing: read the state again once the store is back"),
        "{stderr}"
    );
    assert!(matches!(
        store.lock("kubeforge upgrade").await,
        Err(StateError::Unavailable { .. })
    ));

    // Back up: nothing was lost, and the same save now goes through.
    proxy.up().await;
    let (now, v) = store.load().await.unwrap().unwrap();
    assert_eq!(v, v1);
    assert_eq!(now.versions.kubernetes.as_deref(), Some("v1.20.2"));
    assert_eq!(now.secrets.admin_kubeconfig.as_deref(), Some("kubeconfig"));
    let v2 = store.save(&mut attempt, &v1).await.unwrap();
    assert_eq!(v2.generation, 2);

    // An outage shorter than the retry budget is ridden out by the backoff.
    proxy.down().await;
    let t = Instant::now();
    let back = tokio::spawn({
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.up().await;
            proxy
        }
    });
    attempt.versions.kubernetes = Some("v1.20.4".into());
    let v3 = store.save(&mut attempt, &v2).await.unwrap();
    eprintln!("save across a 300 ms outage took {:?}", t.elapsed());
    assert_eq!(v3.generation, 3);
    let _proxy = back.await.unwrap();
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
    lock.check().unwrap();
    lock.release().await.unwrap();
    assert!(store.lock_status().await.unwrap().is_none());
}

/// A store that cannot do conditional writes is refused, not used unsafely
/// (object_store's `AWS_CONDITIONAL_PUT=disabled` stands in for such a store).
#[test]
fn s3_without_conditional_writes_is_refused() {
    let ctx = Ctx::s3();
    let out = ctx
        .cli(&["lock-probe", "--hold-ms", "0"])
        .env("AWS_CONDITIONAL_PUT", "disabled")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: the state store at {} (endpoint {}) cannot do conditional writes (create-if-absent, compare-and-swap), without which the lock and safe saves are impossible; see docs/state.md",
            ctx.url,
            ctx.options.endpoint.as_deref().unwrap()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("caused by:"), "{stderr}");
}
