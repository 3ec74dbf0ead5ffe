//! Run one task on many hosts: bounded concurrency, per-host results (one host's
//! failure never stops the others), indicatif progress, clean cancel on Ctrl-C.

use super::Cancelled;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// One line per host up to 12 hosts, one aggregate bar above that.
    #[default]
    Auto,
    PerHost,
    Aggregate,
    /// No progress output (tests, JSON output).
    Hidden,
}

#[derive(Debug, Clone)]
pub struct FanOutOptions {
    /// Hosts worked on at once (`--concurrency`); at least 1.
    pub concurrency: usize,
    pub progress: ProgressMode,
    /// What is being done, shown in the progress lines ("upload", "preflight", ...).
    pub label: String,
    /// Stop on Ctrl-C: running tasks are dropped (their channels close) and every
    /// unfinished host reports `Cancelled`.
    pub cancel_on_ctrl_c: bool,
}

impl Default for FanOutOptions {
    fn default() -> Self {
        FanOutOptions {
            concurrency: 10,
            progress: ProgressMode::Auto,
            label: String::new(),
            cancel_on_ctrl_c: true,
        }
    }
}

/// The outcome on one host.
#[derive(Debug)]
pub struct HostResult<T, E> {
    pub host: String,
    pub result: Result<T, E>,
    pub elapsed: Duration,
}

enum Bars {
    None,
    /// The MultiProgress is kept alive while the bars draw.
    PerHost(#[allow(dead_code)] MultiProgress, Vec<ProgressBar>),
    Aggregate(ProgressBar),
}

impl Bars {
    fn new(hosts: &[String], opts: &FanOutOptions) -> Bars {
        let mode = match opts.progress {
            ProgressMode::Auto if hosts.len() <= 12 => ProgressMode::PerHost,
            ProgressMode::Auto => ProgressMode::Aggregate,
            m => m,
        };
        match mode {
            ProgressMode::Hidden | ProgressMode::Auto => Bars::None,
            ProgressMode::PerHost => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
                let width = hosts.iter().map(|h| h.len()).max().unwrap_or(0);
                let style = ProgressStyle::with_template("{spinner} {prefix} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bars = hosts
                    .iter()
                    .map(|h| {
                        let b = multi.add(ProgressBar::new_spinner());
                        b.set_style(style.clone());
                        b.set_prefix(format!("{h:width$}"));
                        b.set_message("waiting");
                        b
                    })
                    .collect();
                Bars::PerHost(multi, bars)
            }
            ProgressMode::Aggregate => {
                let bar = ProgressBar::with_draw_target(
                    Some(hosts.len() as u64),
                    ProgressDrawTarget::stderr(),
                );
                if let Ok(style) = ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} hosts, {msg} ({elapsed})",
                ) {
                    bar.set_style(style);
                }
                bar.set_prefix(opts.label.clone());
                bar.set_message("0 failed");
                Bars::Aggregate(bar)
            }
        }
    }

    fn started(&self, i: usize, label: &str) {
        if let Bars::PerHost(_, bars) = self {
            bars[i].set_message(format!("{label} running"));
            bars[i].enable_steady_tick(Duration::from_millis(120));
        }
    }

    fn finished(&self, i: usize, outcome: &str, failed_so_far: usize) {
        match self {
            Bars::None => {}
            Bars::PerHost(_, bars) => bars[i].finish_with_message(outcome.to_string()),
            Bars::Aggregate(bar) => {
                bar.inc(1);
                bar.set_message(format!("{failed_so_far} failed"));
            }
        }
    }

    fn done(&self) {
        match self {
            Bars::None => {}
            Bars::PerHost(_, bars) => bars.iter().for_each(|b| {
                if !b.is_finished() {
                    b.abandon_with_message("cancelled")
                }
            }),
            Bars::Aggregate(bar) => bar.finish(),
        }
    }
}

/// Run `task(host)` on every host with at most `opts.concurrency` at once. Results come
/// back in the order of `hosts`. Hosts not finished when Ctrl-C arrives get
/// `Err(Cancelled.into())`.
pub async fn fan_out<T, E, F, Fut>(
    hosts: &[String],
    opts: &FanOutOptions,
    task: F,
) -> Vec<HostResult<T, E>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display + From<Cancelled>,
{
    let ctrl_c = async {
        if opts.cancel_on_ctrl_c {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        } else {
            std::future::pending::<()>().await;
        }
    };
    fan_out_until(hosts, opts, ctrl_c, task).await
}

/// [`fan_out`] that stops when `cancel` completes (instead of on Ctrl-C).
pub async fn fan_out_until<T, E, F, Fut, C>(
    hosts: &[String],
    opts: &FanOutOptions,
    cancel: C,
    task: F,
) -> Vec<HostResult<T, E>>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display + From<Cancelled>,
    C: Future<Output = ()>,
{
    let bars = Bars::new(hosts, opts);
    let mut slots: Vec<Option<HostResult<T, E>>> = hosts.iter().map(|_| None).collect();
    let mut pending = hosts.iter().enumerate();
    let mut running = FuturesUnordered::new();
    let mut failed = 0usize;
    let limit = opts.concurrency.max(1);

    let launch = |i: usize, host: &String| {
        bars.started(i, &opts.label);
        let fut = task(host.clone());
        async move {
            let start = Instant::now();
            let r = fut.await;
            (i, r, start.elapsed())
        }
    };
    for (i, host) in pending.by_ref().take(limit) {
        running.push(launch(i, host));
    }

    tokio::pin!(cancel);

    loop {
        tokio::select! {
            next = running.next() => {
                let Some((i, result, elapsed)) = next else { break };
                let text = match &result {
                    Ok(_) => format!("ok ({:.1}s)", elapsed.as_secs_f64()),
                    Err(e) => {
                        failed += 1;
                        format!("FAILED: {e}")
                    }
                };
                bars.finished(i, &text, failed);
                slots[i] = Some(HostResult { host: hosts[i].clone(), result, elapsed });
                if let Some((j, host)) = pending.next() {
                    running.push(launch(j, host));
                }
            }
            _ = &mut cancel => {
                tracing::warn!("interrupted: cancelling the remaining hosts");
                break;
            }
        }
    }
    drop(running);
    bars.done();
    slots
        .into_iter()
        .zip(hosts)
        .map(|(slot, host)| {
            slot.unwrap_or_else(|| HostResult {
                host: host.clone(),
                result: Err(Cancelled.into()),
                elapsed: Duration::ZERO,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    fn hidden(concurrency: usize, ctrl_c: bool) -> FanOutOptions {
        FanOutOptions {
            concurrency,
            progress: ProgressMode::Hidden,
            label: "t".into(),
            cancel_on_ctrl_c: ctrl_c,
        }
    }

    async fn sleepy(h: String) -> Result<String, TransportError> {
        let ms: u64 = h.trim_start_matches('h').parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(h)
    }

    #[tokio::test]
    async fn cancel_stops_running_and_pending_hosts() {
        let hosts: Vec<String> = ["h10", "h5000", "h20", "h5000"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let t = Instant::now();
        let cancel = tokio::time::sleep(Duration::from_millis(200));
        let results = fan_out_until(&hosts, &hidden(2, false), cancel, sleepy).await;
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(results[0].result.as_ref().unwrap(), "h10");
        assert_eq!(results[2].result.as_ref().unwrap(), "h20");
        assert!(matches!(
            results[1].result,
            Err(TransportError::Cancelled(_))
        ));
        assert!(matches!(
            results[3].result,
            Err(TransportError::Cancelled(_))
        ));
    }

    #[tokio::test]
    async fn a_real_sigint_cancels_the_fan_out() {
        let hosts: Vec<String> = ["h10", "h5000"].iter().map(|s| s.to_string()).collect();
        let pid = std::process::id().to_string();
        let interrupt = async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let st = tokio::process::Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .await
                .unwrap();
            assert!(st.success());
        };
        let t = Instant::now();
        let opts = hidden(2, true);
        let (results, ()) = tokio::join!(fan_out(&hosts, &opts, sleepy), interrupt);
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(results[0].result.is_ok());
        assert!(matches!(
            results[1].result,
            Err(TransportError::Cancelled(_))
        ));
    }

    use super::*;
    use crate::transport::TransportError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn bounded_concurrency_per_host_errors_and_order() {
        let hosts: Vec<String> = (0..9).map(|i| format!("h{i}")).collect();
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let opts = FanOutOptions {
            concurrency: 3,
            progress: ProgressMode::Hidden,
            label: "t".into(),
            cancel_on_ctrl_c: false,
        };
        let results = fan_out(&hosts, &opts, |h| {
            let now = now.clone();
            let peak = peak.clone();
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                if h == "h4" {
                    Err(TransportError::AgentEmpty)
                } else {
                    Ok(h.len())
                }
            }
        })
        .await;
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(results.len(), 9);
        for (r, h) in results.iter().zip(&hosts) {
            assert_eq!(&r.host, h);
            assert_eq!(r.result.is_err(), h == "h4");
        }
    }
}
