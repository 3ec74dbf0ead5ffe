//! What the cloud providers share: what they are told about the cluster, retry with
//! backoff, secrets that never print, sizes, the minimal cloud-init user data, and the
//! fault-injection hook the crash tests use.

use super::ProviderError;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

/// What every cloud provider needs to know about the cluster besides its own config.
#[derive(Debug, Clone)]
pub struct CloudContext {
    /// Cluster name: the value of the `kubeforge:cluster` tag / label.
    pub cluster: String,
    /// The subnet the machines' fixed private addresses live in.
    pub subnet: ipnet::IpNet,
    /// OpenSSH public key line kubeforge logs in with (imported as the cluster's key).
    pub ssh_public_key: String,
    /// TCP ports opened to `allowed sources`: SSH and the apiserver/load-balancer ports.
    pub ssh_port: u16,
    pub api_ports: Vec<u16>,
    /// The keepalived VIP, when the cluster has one (allocated where the cloud needs it:
    /// Hetzner routes it to `vip_holder` as an alias address).
    pub vip: Option<IpAddr>,
    /// The machine that holds the VIP first (the first load-balancer host).
    pub vip_holder: Option<String>,
    /// The cloud's own load balancer in front of the apiservers (`loadBalancer.type:
    /// cloud`).
    pub api_lb: Option<ApiLb>,
}

/// The cloud load balancer `ensure` makes: listening at a fixed private address,
/// forwarding TCP to the control planes' apiservers, health-checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiLb {
    pub address: IpAddr,
    /// The port clients connect to.
    pub port: u16,
    /// The apiservers' port on the control planes.
    pub target_port: u16,
    /// Health check `GET /readyz` over TLS (else a TCP connect).
    pub https_check: bool,
}

impl ApiLb {
    /// The load balancer's name: `<cluster>-api`, cut to `max` characters with a short
    /// hash of the whole name when longer (AWS allows 32).
    pub fn name(cluster: &str, max: usize) -> String {
        let full = format!("{cluster}-api");
        if full.len() <= max {
            return full;
        }
        use sha2::{Digest, Sha256};
        let h = hex::encode(Sha256::digest(full.as_bytes()));
        let keep = max.saturating_sub(9);
        let head = full[..keep].trim_end_matches('-');
        format!("{head}-{}", &h[..8])
    }
}

/// Tag / label keys put on everything a cloud provider creates.
pub const TAG_CLUSTER: &str = "kubeforge:cluster";
pub const TAG_ROLE: &str = "kubeforge:role";

/// A credential or token: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The value, only for putting it into a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Refuse a plain http:// API endpoint (from the cluster file or the environment)
/// unless the provider's `allowHttp` is set.
pub fn check_endpoint(
    provider: &'static str,
    endpoint: &str,
    allow_http: bool,
) -> Result<(), ProviderError> {
    if is_plain_http(endpoint) && !allow_http {
        return Err(ProviderError::PlainHttp {
            provider,
            endpoint: endpoint.to_string(),
        });
    }
    Ok(())
}

/// `http://...` (any case).
pub fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
}

/// Read a token from an environment variable; unset or empty is an error naming it.
pub fn secret_from_env(provider: &'static str, var: &str) -> Result<Secret, ProviderError> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
        _ => Err(ProviderError::Credentials {
            provider,
            message: format!("the environment variable {var} is not set"),
        }),
    }
}

/// Exponential backoff for throttled or unavailable answers.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Attempts in all (the first one included).
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 7,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// Whether a failed attempt may be tried again.
pub enum Attempt<T> {
    Done(Result<T, ProviderError>),
    /// Throttled or unavailable: try again after the backoff (or after `after`, when
    /// the cloud said how long to wait); the error is returned if attempts run out.
    Again(ProviderError, Option<Duration>),
}

impl Retry {
    /// Run `f` until it is done or the attempts are used up.
    pub async fn run<T, F, Fut>(&self, mut f: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut delay = self.first_delay;
        let mut n = 1;
        loop {
            match f().await {
                Attempt::Done(r) => return r,
                Attempt::Again(e, _) if n >= self.attempts => return Err(e),
                Attempt::Again(e, after) => {
                    let wait = after.unwrap_or(delay).min(self.max_delay);
                    tracing::info!("{e}; retrying in {:.1}s (attempt {n})", wait.as_secs_f64());
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(self.max_delay);
                    n += 1;
                }
            }
        }
    }
}

/// An HTTP client with the timeouts every cloud call uses.
pub fn http_client(provider: &'static str) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("kubeforge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Config {
            provider,
            message: format!("cannot build the HTTP client: {e}"),
        })
}

/// A size as written in `extraDisks`: bytes (`10737418240`), or with a suffix
/// `K/M/G/T` (powers of 1024, `Gi` and `GiB` mean the same) or `KB/MB/GB/TB` (powers
/// of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 100G or 107374182400"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "Ki" | "KiB" => 1 << 10,
        "M" | "Mi" | "MiB" => 1 << 20,
        "G" | "Gi" | "GiB" => 1 << 30,
        "T" | "Ti" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "`{s}`: unknown size unit `{other}` (use G, Gi, GB, ...)"
            ))
        }
    };
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))?;
    if bytes == 0 {
        return Err(format!("`{s}`: a disk needs a size above zero"));
    }
    Ok(bytes)
}

/// Whole GiB, rounded up (clouds size volumes in GiB; at least 1).
pub fn gib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30).max(1)
}

/// cloud-init user data: the hostname and nothing to wait for but sshd (no package
/// updates, no reboots). The login key comes from the cloud's own key mechanism.
pub fn user_data(hostname: &str) -> String {
    format!(
        "#cloud-config\nhostname: {hostname}\nfqdn: {hostname}\npreserve_hostname: false\npackage_update: false\npackage_upgrade: false\npackage_reboot_if_required: false\n"
    )
}

/// Fault injection for the crash tests: when `KUBEFORGE_FAULT` names `point`, the
/// process exits at once with status 86, as a crash would leave things.
pub fn fault(point: &str) {
    if std::env::var("KUBEFORGE_FAULT").ok().as_deref() == Some(point) {
        eprintln!("kubeforge: injected fault `{point}`: exiting");
        std::process::exit(86);
    }
}

/// Poll `f` every `every` until it returns Some, for at most `limit`.
pub async fn poll<T, F, Fut>(
    provider: &'static str,
    what: &str,
    every: Duration,
    limit: Duration,
    mut f: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, ProviderError>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() >= limit {
            return Err(ProviderError::Timeout {
                provider,
                what: what.to_string(),
                seconds: limit.as_secs(),
            });
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100G"), Ok(100 << 30));
        assert_eq!(parse_size("100Gi"), Ok(100 << 30));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("10X").is_err());
        assert!(parse_size("0G").is_err());
        assert_eq!(gib_ceil(1), 1);
        assert_eq!(gib_ceil(10 << 30), 10);
        assert_eq!(gib_ceil((10 << 30) + 1), 11);
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[tokio::test]
    async fn retry_gives_up_after_the_attempts() {
        let r = Retry {
            attempts: 3,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut n = 0;
        let out: Result<(), _> = r
            .run(|| {
                n += 1;
                async {
                    Attempt::Again(
                        ProviderError::Config {
                            provider: "t",
                            message: "busy".into(),
                        },
                        None,
                    )
                }
            })
            .await;
        assert!(out.is_err());
        assert_eq!(n, 3);
    }
}

/// How a REST API wants to be authenticated.
#[derive(Clone)]
pub enum Auth {
    Bearer(Secret),
    Basic { user: Secret, password: Secret },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Auth::Basic { .. } => f.write_str("Basic(<redacted>)"),
        }
    }
}

/// A JSON REST client shared by the REST clouds: authentication, retries of throttled
/// and unavailable answers, and errors carrying the cloud's own code and message
/// (`error_of` reads them out of an error body).
#[derive(Debug, Clone)]
pub struct RestClient {
    provider: &'static str,
    http: reqwest::Client,
    base: String,
    auth: Result<Auth, String>,
    error_of: fn(&str) -> Option<(String, String)>,
    retryable_code: fn(&str) -> bool,
    pub retry: Retry,
}

impl RestClient {
    pub fn new(
        provider: &'static str,
        base: &str,
        auth: Result<Auth, ProviderError>,
        error_of: fn(&str) -> Option<(String, String)>,
        retryable_code: fn(&str) -> bool,
    ) -> Result<RestClient, ProviderError> {
        Ok(RestClient {
            provider,
            http: http_client(provider)?,
            base: base.trim_end_matches('/').to_string(),
            auth: auth.map_err(|e| match e {
                ProviderError::Credentials { message, .. } => message,
                other => other.to_string(),
            }),
            error_of,
            retryable_code,
            retry: Retry::default(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `method path` with an optional JSON body; `resource` names what it is about.
    /// Returns the status and the JSON answer (`null` for an empty body).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        resource: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ProviderError> {
        let auth = self.auth.as_ref().map_err(|m| ProviderError::Credentials {
            provider: self.provider,
            message: m.clone(),
        })?;
        let url = format!("{}{path}", self.base);
        let operation = format!("{method} {}", path.split('?').next().unwrap_or(path));
        self.retry
            .run(|| {
                let mut req = self.http.request(method.clone(), &url);
                req = match auth {
                    Auth::Bearer(t) => req.bearer_auth(t.expose()),
                    Auth::Basic { user, password } => {
                        req.basic_auth(user.expose(), Some(password.expose()))
                    }
                };
                if let Some(b) = body {
                    req = req
                        .header("content-type", "application/json")
                        .body(b.to_string());
                }
                let operation = operation.clone();
                let creates = method == reqwest::Method::POST;
                async move {
                    let unreachable = |source| ProviderError::Unreachable {
                        provider: self.provider,
                        operation: operation.clone(),
                        resource: resource.to_string(),
                        endpoint: self.base.clone(),
                        source,
                    };
                    // POST creates: repeating it after an answer that may hide a done
                    // create could make a second resource (the next run finds the first
                    // by its tag instead). Other methods are idempotent.
                    let resp = match req.send().await {
                        Ok(r) => r,
                        Err(e) if creates && !e.is_connect() => {
                            return Attempt::Done(Err(unreachable(e)))
                        }
                        Err(e) => return Attempt::Again(unreachable(e), None),
                    };
                    let status = resp.status().as_u16();
                    let after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let text = match resp.text().await {
                        Ok(t) => t,
                        Err(e) => return Attempt::Again(unreachable(e), None),
                    };
                    if (200..300).contains(&status) {
                        let value = if text.trim().is_empty() {
                            serde_json::Value::Null
                        } else {
                            match serde_json::from_str(&text) {
                                Ok(v) => v,
                                Err(e) => {
                                    return Attempt::Done(Err(ProviderError::BadResponse {
                                        provider: self.provider,
                                        operation,
                                        resource: resource.to_string(),
                                        detail: format!("not JSON: {e}"),
                                    }))
                                }
                            }
                        };
                        return Attempt::Done(Ok((status, value)));
                    }
                    let (code, message) = (self.error_of)(&text).unwrap_or_else(|| {
                        (format!("HTTP{status}"), text.chars().take(200).collect())
                    });
                    let again = if creates {
                        // Refused before anything was done.
                        matches!(status, 429 | 503) || (self.retryable_code)(&code)
                    } else {
                        matches!(status, 429 | 500 | 502 | 503 | 504)
                            || (self.retryable_code)(&code)
                    };
                    let e = ProviderError::Api {
                        provider: self.provider,
                        operation,
                        resource: resource.to_string(),
                        status,
                        code,
                        message,
                    };
                    if again {
                        Attempt::Again(e, after)
                    } else {
                        Attempt::Done(Err(e))
                    }
                }
            })
            .await
    }

    pub async fn get(
        &self,
        path: &str,
        resource: &str,
    ) -> Result<serde_json::Value, ProviderError> {
        Ok(self
            .send(reqwest::Method::GET, path, resource, None)
            .await?
            .1)
    }

    pub async fn post(
        &self,
        path: &str,
        resource: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ProviderError> {
        Ok(self
            .send(reqwest::Method::POST, path, resource, Some(body))
            .await?
            .1)
    }

    pub async fn put(
        &self,
        path: &str,
        resource: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ProviderError> {
        Ok(self
            .send(reqwest::Method::PUT, path, resource, Some(body))
            .await?
            .1)
    }

    /// DELETE; a 404 is success (it is gone).
    pub async fn delete(
        &self,
        path: &str,
        resource: &str,
    ) -> Result<serde_json::Value, ProviderError> {
        match self
            .send(reqwest::Method::DELETE, path, resource, None)
            .await
        {
            Ok((_, v)) => Ok(v),
            Err(ProviderError::Api { status: 404, .. }) => Ok(serde_json::Value::Null),
            Err(e) => Err(e),
        }
    }

    /// An answer that lacks what kubeforge needs.
    pub fn bad(&self, operation: &str, resource: &str, detail: impl Into<String>) -> ProviderError {
        ProviderError::BadResponse {
            provider: self.provider,
            operation: operation.to_string(),
            resource: resource.to_string(),
            detail: detail.into(),
        }
    }
}

/// Percent-encode a query value.
pub fn query_value(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}
