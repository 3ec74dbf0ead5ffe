// Command crictl is kubeforge's TEST-BED STAND-IN for cri-tools' crictl. It is NOT
// cri-tools: it implements only the subcommands kubeadm 1.20 runs
// (cmd/kubeadm/app/util/runtime/runtime.go: `-r <endpoint> info`, `pods -q`, `stopp`,
// `rmp`, `pull`, `inspecti`) plus a few read-only ones that help when looking at a
// machine by hand (`version`, `images`, `ps`, `rmi`). Every command is a real CRI call
// (runtime.v1alpha2, the API kubelet 1.20 and cri-tools v1.20.0 speak) against the
// runtime's socket, default unix:///run/containerd/containerd.sock; nothing is faked.
//
// It is built by scripts/k8s-mirror/build-crictl.sh from the k8s.io/cri-api and gRPC
// vendored in the Kubernetes v1.20.2 source tree, because the offline test bed has no
// cri-tools package. Anything else prints an error naming this stand-in and exits 1.
//
// Output formats follow crictl where kubeadm or a person reads them: `pods -q`/`ps -q`/
// `images -q` print one full id per line, `pull` prints "Image is up to date for <id>",
// `inspecti` exits 1 for an absent image. The JSON of `info`/`inspecti` uses the CRI
// message field names (snake_case), not crictl's camelCase.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/ioutil"
	"net"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	pb "k8s.io/cri-api/pkg/apis/runtime/v1alpha2"
)

// version is set with -ldflags "-X main.version=..." by build-crictl.sh.
var version = "v1.20.0"

const (
	defaultEndpoint = "unix:///run/containerd/containerd.sock"
	standIn         = "kubeforge crictl stand-in, not cri-tools"
	maxMsgSize      = 16 * 1024 * 1024
	// Upper bound of one image pull (a pull from a registry that cannot be reached
	// fails long before: DNS or connect errors).
	pullTimeout = 10 * time.Minute
)

type globals struct {
	runtimeEndpoint string
	imageEndpoint   string
	timeout         time.Duration
	debug           bool
}

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "crictl: "+format+"\n", args...)
	os.Exit(1)
}

func usage() {
	fmt.Printf(`crictl %s — %s

Usage: crictl [global options] command [options] [arguments...]

Global options:
  -r, --runtime-endpoint ENDPOINT  CRI socket (default: $CONTAINER_RUNTIME_ENDPOINT, the
                                   runtime-endpoint of --config, else %s)
  -i, --image-endpoint ENDPOINT    image service socket (default: the runtime endpoint)
  -t, --timeout DURATION           connection and call timeout (default 10s; pulls 10m)
  -c, --config FILE                crictl.yaml to read endpoints from (default /etc/crictl.yaml)
  -D, --debug                      print each CRI call on stderr
  -v, --version                    print the version

Commands (only these; this is a test stand-in, not cri-tools):
  info                       runtime status (RuntimeService/Status, verbose) as JSON
  version                    runtime name and versions
  pods [-q] [--state S] [--name N] [--namespace NS]    list pod sandboxes
  ps [-a] [-q] [--pod ID] [--name N]                   list containers (running unless -a)
  stopp POD-ID...            stop pod sandboxes
  rmp [-f] POD-ID...         remove pod sandboxes (-f: stop them first)
  images [-q] [--digests] [IMAGE]                      list images
  inspecti [-q] IMAGE...     image status as JSON; exit 1 if an image is absent
  pull IMAGE                 pull an image through the runtime (needs its registry)
  rmi IMAGE...               remove images
`, version, standIn, defaultEndpoint)
}

// splitFlag returns (name, value, hasValue) for "--name=value" / "-n".
func splitFlag(a string) (string, string, bool) {
	if i := strings.Index(a, "="); i > 0 && strings.HasPrefix(a, "-") {
		return a[:i], a[i+1:], true
	}
	return a, "", false
}

// readConfigEndpoints reads runtime-endpoint / image-endpoint from a crictl.yaml
// (flat "key: value" lines, the only form crictl writes).
func readConfigEndpoints(path string, g *globals, explicit bool) {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		if explicit {
			die("cannot read config %s: %v", path, err)
		}
		return
	}
	for _, line := range strings.Split(string(data), "\n") {
		kv := strings.SplitN(line, ":", 2)
		if len(kv) != 2 {
			continue
		}
		k := strings.TrimSpace(kv[0])
		v := strings.Trim(strings.TrimSpace(kv[1]), `"'`)
		switch k {
		case "runtime-endpoint":
			if g.runtimeEndpoint == "" {
				g.runtimeEndpoint = v
			}
		case "image-endpoint":
			if g.imageEndpoint == "" {
				g.imageEndpoint = v
			}
		}
	}
}

func parseGlobals(args []string) (globals, []string) {
	g := globals{timeout: 10 * time.Second}
	config, configExplicit := "/etc/crictl.yaml", false
	i := 0
	next := func(name string) string {
		i++
		if i >= len(args) {
			die("flag %s needs a value", name)
		}
		return args[i]
	}
	for ; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			break
		}
		name, val, has := splitFlag(a)
		get := func() string {
			if has {
				return val
			}
			return next(name)
		}
		switch name {
		case "-r", "--runtime-endpoint":
			g.runtimeEndpoint = get()
		case "-i", "--image-endpoint":
			g.imageEndpoint = get()
		case "-t", "--timeout":
			d, err := time.ParseDuration(get())
			if err != nil {
				die("invalid --timeout: %v", err)
			}
			g.timeout = d
		case "-c", "--config":
			config, configExplicit = get(), true
		case "-D", "--debug":
			g.debug = true
		case "-v", "--version":
			fmt.Printf("crictl version %s (%s)\n", version, standIn)
			os.Exit(0)
		case "-h", "--help":
			usage()
			os.Exit(0)
		default:
			die("unknown global flag %s (%s)", a, standIn)
		}
	}
	if g.runtimeEndpoint == "" {
		g.runtimeEndpoint = os.Getenv("CONTAINER_RUNTIME_ENDPOINT")
	}
	if g.imageEndpoint == "" {
		g.imageEndpoint = os.Getenv("IMAGE_SERVICE_ENDPOINT")
	}
	readConfigEndpoints(config, &g, configExplicit)
	if g.runtimeEndpoint == "" {
		g.runtimeEndpoint = defaultEndpoint
	}
	if g.imageEndpoint == "" {
		g.imageEndpoint = g.runtimeEndpoint
	}
	return g, args[i:]
}

// socketPath accepts unix:///path and a bare /path (as crictl and kubelet do).
func socketPath(endpoint string) (string, error) {
	if strings.HasPrefix(endpoint, "/") {
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("invalid endpoint %q: %v", endpoint, err)
	}
	if u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: only unix sockets are supported", endpoint)
	}
	p := u.Path
	if p == "" {
		p = u.Opaque
	}
	if p == "" {
		return "", fmt.Errorf("endpoint %q has no socket path", endpoint)
	}
	return p, nil
}

func dial(g globals, endpoint string) *grpc.ClientConn {
	path, err := socketPath(endpoint)
	if err != nil {
		die("%v", err)
	}
	if _, err := os.Stat(path); err != nil {
		die("connect: endpoint %q: %v (is the runtime running?)", endpoint, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	if g.debug {
		fmt.Fprintf(os.Stderr, "DEBU connecting to %s (unix %s)\n", endpoint, path)
	}
	conn, err := grpc.DialContext(ctx, path,
		grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsgSize)))
	if err != nil {
		die("connect: connect endpoint %q, make sure you are running as root and the runtime has been started: %v", endpoint, err)
	}
	return conn
}

type clients struct {
	g       globals
	runtime pb.RuntimeServiceClient
	image   pb.ImageServiceClient
}

func (c *clients) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.g.timeout)
}

func (c *clients) debug(call string, req interface{}) {
	if c.g.debug {
		b, _ := json.Marshal(req)
		fmt.Fprintf(os.Stderr, "DEBU %s: %s\n", call, b)
	}
}

func printJSON(v interface{}) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		die("encoding JSON: %v", err)
	}
	fmt.Println(string(b))
}

// verboseInfo turns the runtime's verbose info map (JSON strings) into raw JSON values.
func verboseInfo(info map[string]string) map[string]json.RawMessage {
	out := map[string]json.RawMessage{}
	for k, v := range info {
		if json.Valid([]byte(v)) {
			out[k] = json.RawMessage(v)
		} else {
			b, _ := json.Marshal(v)
			out[k] = b
		}
	}
	return out
}

// cmdFlags parses a subcommand's flags: bools are names without a value, valued maps
// names that take one. Returns the set flags and the positional arguments.
func cmdFlags(cmd string, args []string, bools map[string]string, valued map[string]string) (map[string]string, []string) {
	set := map[string]string{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, has := splitFlag(a)
		if canon, ok := bools[name]; ok {
			set[canon] = "true"
			continue
		}
		if canon, ok := valued[name]; ok {
			if !has {
				i++
				if i >= len(args) {
					die("%s: flag %s needs a value", cmd, name)
				}
				val = args[i]
			}
			set[canon] = val
			continue
		}
		die("%s: unknown flag %s (%s)", cmd, a, standIn)
	}
	return set, pos
}

func ago(ns int64) string {
	if ns == 0 {
		return "-"
	}
	d := time.Since(time.Unix(0, ns)).Round(time.Second)
	return d.String() + " ago"
}

func shortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 13 {
		return id[:13]
	}
	return id
}

func (c *clients) info() {
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.StatusRequest{Verbose: true}
	c.debug("Status", req)
	resp, err := c.runtime.Status(ctx, req)
	if err != nil {
		die("getting status of runtime: %v", err)
	}
	out := map[string]interface{}{"status": resp.Status}
	for k, v := range verboseInfo(resp.Info) {
		out[k] = v
	}
	printJSON(out)
}

func (c *clients) version() {
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.VersionRequest{Version: "v1alpha2"}
	c.debug("Version", req)
	resp, err := c.runtime.Version(ctx, req)
	if err != nil {
		die("getting the runtime version: %v", err)
	}
	fmt.Printf("Version:  %s\nRuntimeName:  %s\nRuntimeVersion:  %s\nRuntimeApiVersion:  %s\n",
		resp.Version, resp.RuntimeName, resp.RuntimeVersion, resp.RuntimeApiVersion)
}

func (c *clients) listPods(f *pb.PodSandboxFilter) []*pb.PodSandbox {
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.ListPodSandboxRequest{Filter: f}
	c.debug("ListPodSandbox", req)
	resp, err := c.runtime.ListPodSandbox(ctx, req)
	if err != nil {
		die("listing pod sandboxes: %v", err)
	}
	items := resp.Items
	sort.Slice(items, func(i, j int) bool { return items[i].CreatedAt > items[j].CreatedAt })
	return items
}

func (c *clients) pods(args []string) {
	set, pos := cmdFlags("pods", args,
		map[string]string{"-q": "quiet", "--quiet": "quiet", "--no-trunc": "no-trunc"},
		map[string]string{"-s": "state", "--state": "state", "--name": "name", "--namespace": "namespace", "--id": "id"})
	if len(pos) > 0 {
		die("pods: unexpected arguments %v", pos)
	}
	f := &pb.PodSandboxFilter{Id: set["id"]}
	switch strings.ToLower(set["state"]) {
	case "":
	case "ready", "sandbox_ready":
		f.State = &pb.PodSandboxStateValue{State: pb.PodSandboxState_SANDBOX_READY}
	case "notready", "sandbox_notready":
		f.State = &pb.PodSandboxStateValue{State: pb.PodSandboxState_SANDBOX_NOTREADY}
	default:
		die("pods: --state must be ready or notready")
	}
	var items []*pb.PodSandbox
	for _, p := range c.listPods(f) {
		m := p.GetMetadata()
		if set["name"] != "" && !strings.Contains(m.GetName(), set["name"]) {
			continue
		}
		if set["namespace"] != "" && !strings.Contains(m.GetNamespace(), set["namespace"]) {
			continue
		}
		items = append(items, p)
	}
	if set["quiet"] != "" {
		for _, p := range items {
			fmt.Println(p.Id)
		}
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 20, 1, 3, ' ', 0)
	fmt.Fprintln(w, "POD ID\tCREATED\tSTATE\tNAME\tNAMESPACE\tATTEMPT")
	for _, p := range items {
		id := p.Id
		if set["no-trunc"] == "" {
			id = shortID(id)
		}
		m := p.GetMetadata()
		state := strings.TrimPrefix(p.State.String(), "SANDBOX_")
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", id, ago(p.CreatedAt), state, m.GetName(), m.GetNamespace(), m.GetAttempt())
	}
	w.Flush()
}

func (c *clients) ps(args []string) {
	set, pos := cmdFlags("ps", args,
		map[string]string{"-a": "all", "--all": "all", "-q": "quiet", "--quiet": "quiet", "--no-trunc": "no-trunc"},
		map[string]string{"-p": "pod", "--pod": "pod", "--name": "name", "--id": "id", "-s": "state", "--state": "state"})
	if len(pos) > 0 {
		die("ps: unexpected arguments %v", pos)
	}
	f := &pb.ContainerFilter{Id: set["id"], PodSandboxId: set["pod"]}
	switch strings.ToLower(set["state"]) {
	case "":
		if set["all"] == "" {
			f.State = &pb.ContainerStateValue{State: pb.ContainerState_CONTAINER_RUNNING}
		}
	case "created":
		f.State = &pb.ContainerStateValue{State: pb.ContainerState_CONTAINER_CREATED}
	case "running":
		f.State = &pb.ContainerStateValue{State: pb.ContainerState_CONTAINER_RUNNING}
	case "exited":
		f.State = &pb.ContainerStateValue{State: pb.ContainerState_CONTAINER_EXITED}
	case "unknown":
		f.State = &pb.ContainerStateValue{State: pb.ContainerState_CONTAINER_UNKNOWN}
	default:
		die("ps: --state must be created, running, exited or unknown")
	}
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.ListContainersRequest{Filter: f}
	c.debug("ListContainers", req)
	resp, err := c.runtime.ListContainers(ctx, req)
	if err != nil {
		die("listing containers: %v", err)
	}
	items := resp.Containers
	sort.Slice(items, func(i, j int) bool { return items[i].CreatedAt > items[j].CreatedAt })
	var shown []*pb.Container
	for _, ct := range items {
		if set["name"] != "" && !strings.Contains(ct.GetMetadata().GetName(), set["name"]) {
			continue
		}
		shown = append(shown, ct)
	}
	if set["quiet"] != "" {
		for _, ct := range shown {
			fmt.Println(ct.Id)
		}
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 20, 1, 3, ' ', 0)
	fmt.Fprintln(w, "CONTAINER\tIMAGE\tCREATED\tSTATE\tNAME\tATTEMPT\tPOD ID")
	for _, ct := range shown {
		id, pod, img := ct.Id, ct.PodSandboxId, ct.GetImage().GetImage()
		if set["no-trunc"] == "" {
			id, pod, img = shortID(id), shortID(pod), shortID(img)
		}
		state := strings.TrimPrefix(ct.State.String(), "CONTAINER_")
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", id, img, ago(ct.CreatedAt), state,
			ct.GetMetadata().GetName(), ct.GetMetadata().GetAttempt(), pod)
	}
	w.Flush()
}

func (c *clients) stopPod(id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.StopPodSandboxRequest{PodSandboxId: id}
	c.debug("StopPodSandbox", req)
	_, err := c.runtime.StopPodSandbox(ctx, req)
	return err
}

func (c *clients) stopp(args []string) {
	_, pos := cmdFlags("stopp", args, nil, nil)
	if len(pos) == 0 {
		die("stopp: ID cannot be empty")
	}
	failed := false
	for _, id := range pos {
		if err := c.stopPod(id); err != nil {
			fmt.Fprintf(os.Stderr, "crictl: stopping the pod sandbox %q: %v\n", id, err)
			failed = true
			continue
		}
		fmt.Printf("Stopped sandbox %s\n", id)
	}
	if failed {
		os.Exit(1)
	}
}

func (c *clients) rmp(args []string) {
	set, pos := cmdFlags("rmp", args, map[string]string{"-f": "force", "--force": "force"}, nil)
	if len(pos) == 0 {
		die("rmp: ID cannot be empty")
	}
	failed := false
	for _, id := range pos {
		if set["force"] != "" {
			if err := c.stopPod(id); err != nil {
				fmt.Fprintf(os.Stderr, "crictl: stopping the pod sandbox %q: %v\n", id, err)
				failed = true
				continue
			}
		}
		ctx, cancel := c.ctx()
		req := &pb.RemovePodSandboxRequest{PodSandboxId: id}
		c.debug("RemovePodSandbox", req)
		_, err := c.runtime.RemovePodSandbox(ctx, req)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "crictl: removing the pod sandbox %q: %v\n", id, err)
			failed = true
			continue
		}
		fmt.Printf("Removed sandbox %s\n", id)
	}
	if failed {
		os.Exit(1)
	}
}

func (c *clients) imageStatus(ref string) (*pb.ImageStatusResponse, error) {
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.ImageStatusRequest{Image: &pb.ImageSpec{Image: ref}, Verbose: true}
	c.debug("ImageStatus", req)
	return c.image.ImageStatus(ctx, req)
}

func (c *clients) inspecti(args []string) {
	set, pos := cmdFlags("inspecti", args, map[string]string{"-q": "quiet", "--quiet": "quiet"},
		map[string]string{"-o": "output", "--output": "output"})
	if len(pos) == 0 {
		die("inspecti: you must specify at least one image")
	}
	if o := set["output"]; o != "" && o != "json" {
		die("inspecti: only -o json is supported by the %s", standIn)
	}
	failed := false
	for _, ref := range pos {
		resp, err := c.imageStatus(ref)
		if err != nil {
			fmt.Fprintf(os.Stderr, "crictl: image status for %q request: %v\n", ref, err)
			failed = true
			continue
		}
		if resp.Image == nil {
			fmt.Fprintf(os.Stderr, "crictl: no such image %q present\n", ref)
			failed = true
			continue
		}
		if set["quiet"] != "" {
			printJSON(map[string]interface{}{"status": resp.Image})
		} else {
			printJSON(map[string]interface{}{"status": resp.Image, "info": verboseInfo(resp.Info)})
		}
	}
	if failed {
		os.Exit(1)
	}
}

func (c *clients) pull(args []string) {
	_, pos := cmdFlags("pull", args, nil,
		map[string]string{"--creds": "creds", "--auth": "auth", "-p": "pod-config", "--pod-config": "pod-config"})
	if len(pos) != 1 {
		die("pull: exactly one image is needed")
	}
	ref := pos[0]
	ctx, cancel := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel()
	req := &pb.PullImageRequest{Image: &pb.ImageSpec{Image: ref}}
	c.debug("PullImage", req)
	resp, err := c.image.PullImage(ctx, req)
	if err != nil {
		die("pulling image %q failed: %v\n"+
			"(%s: the pull went to the runtime for real; on kubeforge's offline test mirror the images are not in any reachable registry: kubeforge imports them with `ctr -n k8s.io images import`)",
			ref, err, standIn)
	}
	fmt.Printf("Image is up to date for %s\n", resp.ImageRef)
}

func (c *clients) images(args []string) {
	set, pos := cmdFlags("images", args,
		map[string]string{"-q": "quiet", "--quiet": "quiet", "--digests": "digests", "--no-trunc": "no-trunc"}, nil)
	if len(pos) > 1 {
		die("images: at most one image filter")
	}
	var filter *pb.ImageFilter
	if len(pos) == 1 {
		filter = &pb.ImageFilter{Image: &pb.ImageSpec{Image: pos[0]}}
	}
	ctx, cancel := c.ctx()
	defer cancel()
	req := &pb.ListImagesRequest{Filter: filter}
	c.debug("ListImages", req)
	resp, err := c.image.ListImages(ctx, req)
	if err != nil {
		die("listing images: %v", err)
	}
	imgs := resp.Images
	sort.Slice(imgs, func(i, j int) bool { return strings.Join(imgs[i].RepoTags, ",") < strings.Join(imgs[j].RepoTags, ",") })
	if set["quiet"] != "" {
		for _, im := range imgs {
			fmt.Println(im.Id)
		}
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 20, 1, 3, ' ', 0)
	if set["digests"] != "" {
		fmt.Fprintln(w, "IMAGE\tTAG\tDIGEST\tIMAGE ID\tSIZE")
	} else {
		fmt.Fprintln(w, "IMAGE\tTAG\tIMAGE ID\tSIZE")
	}
	for _, im := range imgs {
		id := im.Id
		if set["no-trunc"] == "" {
			id = shortID(id)
		}
		size := fmt.Sprintf("%.1fMB", float64(im.Size_)/1e6)
		tags := im.RepoTags
		if len(tags) == 0 {
			tags = []string{"<none>:<none>"}
		}
		for _, t := range tags {
			repo, tag := t, "<none>"
			if i := strings.LastIndex(t, ":"); i > strings.LastIndex(t, "/") {
				repo, tag = t[:i], t[i+1:]
			}
			if set["digests"] != "" {
				digest := "<none>"
				if len(im.RepoDigests) > 0 {
					if i := strings.Index(im.RepoDigests[0], "@"); i >= 0 {
						digest = shortID(strings.TrimPrefix(im.RepoDigests[0][i+1:], "sha256:"))
					}
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", repo, tag, digest, id, size)
			} else {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", repo, tag, id, size)
			}
		}
	}
	w.Flush()
}

func (c *clients) rmi(args []string) {
	_, pos := cmdFlags("rmi", args, nil, nil)
	if len(pos) == 0 {
		die("rmi: you must specify at least one image")
	}
	failed := false
	for _, ref := range pos {
		st, err := c.imageStatus(ref)
		if err != nil || st.Image == nil {
			fmt.Fprintf(os.Stderr, "crictl: no such image %s\n", ref)
			failed = true
			continue
		}
		ctx, cancel := c.ctx()
		req := &pb.RemoveImageRequest{Image: &pb.ImageSpec{Image: st.Image.Id}}
		c.debug("RemoveImage", req)
		_, err = c.image.RemoveImage(ctx, req)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "crictl: removing image %q: %v\n", ref, err)
			failed = true
			continue
		}
		fmt.Printf("Deleted: %s\n", strings.Join(st.Image.RepoTags, ", "))
	}
	if failed {
		os.Exit(1)
	}
}

func main() {
	g, rest := parseGlobals(os.Args[1:])
	if len(rest) == 0 {
		usage()
		os.Exit(1)
	}
	cmd, args := rest[0], rest[1:]
	for _, a := range args {
		if a == "-h" || a == "--help" {
			usage()
			os.Exit(0)
		}
	}
	var c clients
	c.g = g
	needRuntime := map[string]bool{"info": true, "version": true, "pods": true, "ps": true, "stopp": true, "rmp": true}
	needImage := map[string]bool{"images": true, "image": true, "img": true, "inspecti": true, "pull": true, "rmi": true}
	switch {
	case cmd == "help":
		usage()
		return
	case needRuntime[cmd]:
		conn := dial(g, g.runtimeEndpoint)
		defer conn.Close()
		c.runtime = pb.NewRuntimeServiceClient(conn)
	case needImage[cmd]:
		conn := dial(g, g.imageEndpoint)
		defer conn.Close()
		c.image = pb.NewImageServiceClient(conn)
	default:
		die("%q is not implemented by the %s; it implements info, version, pods, ps, stopp, rmp, images, inspecti, pull, rmi", cmd, standIn)
	}
	switch cmd {
	case "info":
		c.info()
	case "version":
		c.version()
	case "pods":
		c.pods(args)
	case "ps":
		c.ps(args)
	case "stopp":
		c.stopp(args)
	case "rmp":
		c.rmp(args)
	case "images", "image", "img":
		c.images(args)
	case "inspecti":
		c.inspecti(args)
	case "pull":
		c.pull(args)
	case "rmi":
		c.rmi(args)
	}
}
