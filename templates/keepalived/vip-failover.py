#!/usr/bin/python3
# Managed by kubeforge. Local changes are overwritten.
#
# keepalived's notify_master script for the kube-apiserver load balancers on AWS and
# Hetzner Cloud, run as: vip-failover /etc/kubeforge/vip-failover.json
# These clouds route an address only to the interface their API assigned it to, so the
# node that just became VRRP MASTER moves the virtual IP to itself through the cloud API
# (and takes it away from the other load balancers). Python 3 standard library only.
#
# Config keys (JSON, mode 0600):
#   provider        "aws" or "hetzner"
#   cluster         cluster name (aws: the security group tagged kubeforge:cluster=<cluster>
#                   scopes the interfaces; hetzner: servers labelled kubeforge.dev/cluster)
#   vip             the virtual IP address
#   self            this node's private address
#   peers           the other load balancers' private addresses (aws: to find their interfaces)
#   endpoint        API URL, e.g. https://ec2.eu-central-1.amazonaws.com or https://api.hetzner.cloud/v1
#   region          aws: the region requests are signed for
#   credentials     aws, optional: {"accessKeyId", "secretAccessKey", "sessionToken" (may be null)}
#   imds            aws, optional: instance metadata URL used when "credentials" is absent
#                   (default http://169.254.169.254; the instance role, through IMDSv2)
#   token           hetzner: API token
#   timeoutSeconds  optional, default 120: retry (backoff 1 s doubling to 8 s) until then
#   checkLocal      optional, default true: act only while the VIP is on one of this node's
#                   interfaces (`ip -o addr show`), i.e. while keepalived keeps it MASTER
#
# Exit status: 0 this node holds the VIP, 1 gave up after timeoutSeconds, 2 bad config.
# Secrets (keys, tokens, signatures) are never logged.

import datetime
import hashlib
import hmac
import http.client
import ipaddress
import json
import subprocess
import sys
import syslog
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

SYSLOG_IDENT = "kubeforge-vip-failover"
EC2_API_VERSION = "2016-11-15"
FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
DEFAULT_IMDS = "http://169.254.169.254"
DEFAULT_TIMEOUT = 120
REQUEST_TIMEOUT = 10
MAX_BACKOFF = 8
# Unassigning an address the interface no longer has (or from a gone interface) is fine.
AWS_UNASSIGN_GONE = ("InvalidParameterValue", "InvalidNetworkInterfaceID.NotFound")


class ConfigError(Exception):
    """The config file is missing or invalid (exit 2)."""


class CloudError(Exception):
    """A failed cloud API call: which cloud and operation, HTTP status, API error code and message."""

    def __init__(self, cloud, operation, status=None, code="", message=""):
        self.cloud, self.operation, self.status = cloud, operation, status
        self.code, self.message = code, " ".join(message.split())[:300]  # one log line
        super().__init__(str(self))

    def __str__(self):
        where = "%s %s" % (self.cloud, self.operation)
        if self.status is None:
            return "%s: %s" % (where, self.message)
        return "%s: HTTP %s: %s: %s" % (where, self.status, self.code or "-", self.message or "-")


def log(message, priority=syslog.LOG_INFO):
    """Write one line to stderr and to syslog."""
    print("%s: %s" % (SYSLOG_IDENT, message), file=sys.stderr, flush=True)
    syslog.syslog(priority, message)


def load_config(path):
    """Read and validate the config file; raise ConfigError naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as err:
        raise ConfigError("cannot read %s: %s" % (path, err.strerror or err))
    except ValueError as err:  # invalid JSON; the message has positions, not content
        raise ConfigError("%s is not valid JSON: %s" % (path, err))
    if not isinstance(cfg, dict):
        raise ConfigError("%s: expected a JSON object" % path)

    def need(key, kind=str):
        value = cfg.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or value in ("", None):
            raise ConfigError("%s: missing or invalid %r" % (path, key))
        return value

    def address(key, value):
        try:
            ipaddress.ip_address(value)
        except (ValueError, TypeError):
            raise ConfigError("%s: %r is not an IP address: %r" % (path, key, value))

    provider = need("provider")
    if provider not in ("aws", "hetzner"):
        raise ConfigError("%s: unknown provider %r (aws or hetzner)" % (path, provider))
    for key in ("vip", "self"):
        address(key, need(key))
    peers = cfg.get("peers", [])
    if not isinstance(peers, list):
        raise ConfigError("%s: 'peers' must be a list" % path)
    for peer in peers:
        address("peers", peer)
    if not need("endpoint").startswith(("http://", "https://")):
        raise ConfigError("%s: 'endpoint' must be an http(s) URL" % path)
    if not isinstance(cfg.get("checkLocal", True), bool):
        raise ConfigError("%s: 'checkLocal' must be true or false" % path)
    timeout = cfg.get("timeoutSeconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError("%s: 'timeoutSeconds' must be a positive number" % path)
    need("cluster")
    if provider == "aws":
        need("region")
        creds = cfg.get("credentials")
        if creds is not None:
            if not isinstance(creds, dict) or not all(
                isinstance(creds.get(k), str) and creds[k] for k in ("accessKeyId", "secretAccessKey")
            ) or not isinstance(creds.get("sessionToken"), (str, type(None))):
                raise ConfigError("%s: 'credentials' needs accessKeyId and secretAccessKey" % path)
        if not isinstance(cfg.get("imds", DEFAULT_IMDS), str):
            raise ConfigError("%s: 'imds' must be a URL" % path)
    else:
        need("token")
    return cfg


def http_request(cloud, operation, method, url, deadline, headers=None, body=None):
    """One HTTP request; return (status, body bytes). Connection errors raise CloudError."""
    timeout = max(1.0, min(REQUEST_TIMEOUT, deadline - time.monotonic()))
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except urllib.error.URLError as err:
        raise CloudError(cloud, operation, message="cannot reach %s: %s" % (url, err.reason))
    except (OSError, ValueError, http.client.HTTPException) as err:  # timeouts, resets, bad answers
        raise CloudError(cloud, operation, message="request to %s failed: %s" % (url, err or type(err).__name__))


# ---------------------------------------------------------------- AWS


def aws_credentials(cfg, deadline):
    """The config's credentials, else the instance role's through IMDSv2."""
    creds = cfg.get("credentials")
    if creds:
        return creds["accessKeyId"], creds["secretAccessKey"], creds.get("sessionToken")
    base = cfg.get("imds", DEFAULT_IMDS).rstrip("/")

    def imds(operation, method, path, headers):
        status, body = http_request("aws", operation, method, base + path, deadline, headers)
        if status != 200:
            raise CloudError("aws", operation, status, "IMDS", body.decode("utf-8", "replace").strip())
        return body.decode("utf-8")

    token = imds("IMDSv2 token", "PUT", "/latest/api/token",
                 {"X-aws-ec2-metadata-token-ttl-seconds": "21600"})
    auth = {"X-aws-ec2-metadata-token": token}
    role = (imds("IMDS role", "GET", "/latest/meta-data/iam/security-credentials/", auth).splitlines()
            or [""])[0].strip()
    if not role:
        raise CloudError("aws", "IMDS role", message="this instance has no IAM role")
    op = "IMDS credentials of role %s" % role
    try:
        doc = json.loads(imds(op, "GET", "/latest/meta-data/iam/security-credentials/" + role, auth))
        return doc["AccessKeyId"], doc["SecretAccessKey"], doc.get("Token")
    except (ValueError, KeyError, TypeError):
        raise CloudError("aws", op, message="the answer lacks AccessKeyId/SecretAccessKey")


def sigv4_headers(creds, region, host, path, body, now):
    """Headers (Authorization included) signing a form POST with AWS Signature V4 for ec2."""
    access_key, secret_key, session_token = creds
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"content-type": FORM_TYPE, "host": host, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    names = sorted(headers)
    canonical = "\n".join(
        ["POST", path, ""] + ["%s:%s" % (n, headers[n].strip()) for n in names]
        + ["", ";".join(names), hashlib.sha256(body).hexdigest()])
    scope = "%s/%s/ec2/aws4_request" % (amz_date[:8], region)
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret_key).encode()
    for part in (amz_date[:8], region, "ec2", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = "AWS4-HMAC-SHA256 Credential=%s/%s, SignedHeaders=%s, Signature=%s" % (
        access_key, scope, ";".join(names), signature)
    return headers


def strip_namespaces(root):
    """Drop XML namespaces from every tag so paths work whatever the API version's namespace."""
    for el in root.iter():
        el.tag = el.tag.rsplit("}", 1)[-1]
    return root


def ec2_call(cfg, creds, action, params, deadline):
    """One EC2 Query API call; return the parsed XML root, or raise CloudError."""
    url = urllib.parse.urlsplit(cfg["endpoint"].rstrip("/") + "/")
    body = urllib.parse.urlencode(
        dict(params, Action=action, Version=EC2_API_VERSION), quote_via=urllib.parse.quote).encode()
    headers = sigv4_headers(creds, cfg["region"], url.netloc, url.path, body,
                            datetime.datetime.now(datetime.timezone.utc))
    status, answer = http_request("aws", action, "POST", urllib.parse.urlunsplit(url), deadline, headers, body)
    try:
        root = strip_namespaces(ET.fromstring(answer))
    except ET.ParseError:
        root = None
    if status != 200 or root is None:
        error = root.find(".//Error") if root is not None else None
        if error is None:  # not an EC2 error document: show the start of the answer
            raise CloudError("aws", action, status, "", answer.decode("utf-8", "replace").strip())
        raise CloudError("aws", action, status, error.findtext("Code", ""), error.findtext("Message", ""))
    return root


def aws_move(cfg, deadline):
    """Assign the VIP to this node's network interface, unassign it from the others."""
    creds = aws_credentials(cfg, deadline)
    vip, me = cfg["vip"], cfg["self"]
    # The same private addresses can exist in other VPCs of the account: only the
    # interfaces in the cluster's security group (tagged kubeforge:cluster=<cluster>).
    groups = ec2_call(cfg, creds, "DescribeSecurityGroups", {
        "Filter.1.Name": "tag:kubeforge:cluster", "Filter.1.Value.1": cfg["cluster"]}, deadline)
    group_ids = [g.text for g in groups.findall("securityGroupInfo/item/groupId")]
    if not group_ids:
        raise CloudError("aws", "DescribeSecurityGroups",
                         message="no security group is tagged kubeforge:cluster=%s" % cfg["cluster"])
    params = {"Filter.1.Name": "private-ip-address", "Filter.2.Name": "group-id"}
    for i, address in enumerate([me] + cfg.get("peers", []), 1):
        params["Filter.1.Value.%d" % i] = address
    for i, group in enumerate(group_ids, 1):
        params["Filter.2.Value.%d" % i] = group
    root = ec2_call(cfg, creds, "DescribeNetworkInterfaces", params, deadline)
    enis = [(item.findtext("networkInterfaceId"), item.findtext("privateIpAddress"),
             [a.text for a in item.findall("privateIpAddressesSet/item/privateIpAddress")])
            for item in root.findall("networkInterfaceSet/item")]
    mine = next((e for e in enis if e[1] == me), None)
    if mine is None:
        raise CloudError("aws", "DescribeNetworkInterfaces",
                         message="no network interface has the address %s" % me)
    held = vip in mine[2]
    if not held:
        ec2_call(cfg, creds, "AssignPrivateIpAddresses", {
            "NetworkInterfaceId": mine[0], "PrivateIpAddress.1": vip, "AllowReassignment": "true"}, deadline)
    removed = []
    for eni_id, _, addresses in enis:
        if eni_id != mine[0] and vip in addresses:
            try:
                ec2_call(cfg, creds, "UnassignPrivateIpAddresses",
                         {"NetworkInterfaceId": eni_id, "PrivateIpAddress.1": vip}, deadline)
            except CloudError as err:
                if err.code not in AWS_UNASSIGN_GONE:
                    raise
            removed.append(eni_id)
    return report(vip, mine[0], me, held, removed)


# ---------------------------------------------------------------- Hetzner Cloud


def hcloud_call(cfg, operation, method, path, deadline, payload=None):
    """One Hetzner Cloud API call; return the decoded JSON answer, or raise CloudError."""
    headers = {"Authorization": "Bearer " + cfg["token"], "Accept": "application/json"}
    body = None
    if payload is not None:
        headers["Content-Type"] = "application/json"
        body = json.dumps(payload).encode()
    url = cfg["endpoint"].rstrip("/") + path
    status, answer = http_request("hetzner", operation, method, url, deadline, headers, body)
    try:
        doc = json.loads(answer or b"{}")
    except ValueError:
        raise CloudError("hetzner", operation, status, "", answer.decode("utf-8", "replace").strip())
    if not 200 <= status < 300:
        error = doc.get("error") if isinstance(doc, dict) else None
        error = error if isinstance(error, dict) else {}
        raise CloudError("hetzner", operation, status, str(error.get("code", "")), str(error.get("message", "")))
    return doc


def hcloud_servers(cfg, deadline):
    """All servers labelled with this cluster, following the pagination."""
    selector = urllib.parse.quote("kubeforge.dev/cluster=%s" % cfg["cluster"], safe="/")
    servers, page = [], 1
    while page:
        doc = hcloud_call(cfg, "list servers", "GET", "/servers?label_selector=%s&per_page=50&page=%d"
                          % (selector, page), deadline)
        servers.extend(doc.get("servers") or [])
        page = ((doc.get("meta") or {}).get("pagination") or {}).get("next_page")
    return servers


def hcloud_set_aliases(cfg, server, network, aliases, deadline):
    """Set a server's alias IPs on a network and wait until the action succeeded."""
    operation = "change_alias_ips of server %s" % server["id"]
    doc = hcloud_call(cfg, operation, "POST", "/servers/%s/actions/change_alias_ips" % server["id"],
                      deadline, {"network": network, "alias_ips": aliases})
    action = doc.get("action") or {}
    while action.get("status") != "success":
        if action.get("status") == "error":
            error = action.get("error") or {}
            raise CloudError("hetzner", "%s (action %s)" % (operation, action.get("id")), 200,
                             str(error.get("code", "")), str(error.get("message", "")))
        if time.monotonic() >= deadline:
            raise CloudError("hetzner", operation, message="action %s still %s at the deadline"
                             % (action.get("id"), action.get("status")))
        time.sleep(1)
        action = hcloud_call(cfg, "get action %s" % action.get("id"), "GET",
                             "/actions/%s" % action.get("id"), deadline).get("action") or {}


def hcloud_move(cfg, deadline):
    """Remove the VIP from the other servers' alias IPs, then add it to this server's."""
    vip, me = cfg["vip"], cfg["self"]
    servers = hcloud_servers(cfg, deadline)

    def entry(server, match):
        return next((n for n in server.get("private_net") or [] if match(n)), None)

    mine = next((s for s in servers if entry(s, lambda n: n.get("ip") == me)), None)
    if mine is None:
        raise CloudError("hetzner", "list servers",
                         message="no server of cluster %s has the private address %s" % (cfg["cluster"], me))
    network = entry(mine, lambda n: n.get("ip") == me)["network"]
    removed = []
    for server in servers:
        net = entry(server, lambda n: n.get("network") == network)
        if server["id"] != mine["id"] and net and vip in (net.get("alias_ips") or []):
            hcloud_set_aliases(cfg, server, network, [a for a in net["alias_ips"] if a != vip], deadline)
            removed.append("server %s %s" % (server["id"], server.get("name")))
    aliases = entry(mine, lambda n: n.get("ip") == me).get("alias_ips") or []
    held = vip in aliases
    if not held:
        hcloud_set_aliases(cfg, mine, network, aliases + [vip], deadline)
    return report(vip, "server %s %s" % (mine["id"], mine.get("name")), me, held, removed)


# ---------------------------------------------------------------- main


def report(vip, target, me, held, removed):
    """The success log line: where the VIP is now and whom it was taken from."""
    if held:
        line = "VIP %s already on %s (this node %s)" % (vip, target, me)
    else:
        line = "moved VIP %s to %s (this node %s)" % (vip, target, me)
    if removed:
        return line + "; removed it from " + ", ".join(removed)
    return line + ("; nothing to do" if held else "")


def holds_locally(vip):
    """Whether keepalived has the VIP on one of this node's interfaces (it still is MASTER)."""
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return True  # cannot tell: act as keepalived asked
    return any(part.split("/")[0] == vip
               for line in out.splitlines() for part in line.split()[3:4])


def run(cfg):
    """Run the provider's sequence, retrying it with backoff until timeoutSeconds; return the exit code."""
    move = aws_move if cfg["provider"] == "aws" else hcloud_move
    check_local = cfg.get("checkLocal", True)
    timeout = cfg.get("timeoutSeconds", DEFAULT_TIMEOUT)
    deadline = time.monotonic() + timeout
    delay, attempt = 1, 0
    while True:
        attempt += 1
        # keepalived may have taken the VIP away again (a flap) while this ran or
        # waited: a node that is no longer MASTER must not pull the route to itself.
        if check_local and not holds_locally(cfg["vip"]):
            log("this node %s does not hold VIP %s (keepalived is not MASTER here any more): nothing done"
                % (cfg["self"], cfg["vip"]))
            return 0
        try:
            log(move(cfg, deadline))
            return 0
        except Exception as err:  # any failure: retry the whole sequence
            error = err if isinstance(err, CloudError) else "%s: %s" % (type(err).__name__, err)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log("giving up on VIP %s for this node %s after %d attempts in %ss; last error: %s"
                % (cfg["vip"], cfg["self"], attempt, timeout, error), syslog.LOG_ERR)
            return 1
        pause = min(delay, remaining)
        log("attempt %d failed: %s; retrying in %gs" % (attempt, error, round(pause, 1)), syslog.LOG_WARNING)
        time.sleep(pause)
        delay = min(delay * 2, MAX_BACKOFF)


def main(argv):
    """Entry point: vip-failover CONFIG.json."""
    syslog.openlog(SYSLOG_IDENT, syslog.LOG_PID, syslog.LOG_DAEMON)
    if len(argv) != 2:
        log("usage: %s CONFIG.json" % argv[0], syslog.LOG_ERR)
        return 2
    try:
        cfg = load_config(argv[1])
    except ConfigError as err:
        log("bad config: %s" % err, syslog.LOG_ERR)
        return 2
    return run(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
