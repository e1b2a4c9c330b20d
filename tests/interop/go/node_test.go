// The harness: one real flight-node process for the whole suite, started from the binary
// named by FLIGHT_NODE_BIN on free loopback ports, with a temporary file:// storage, a token
// file (one namespace token, one "*" token) and 64 KiB parts, so that a table of a few
// megabytes is stored as many parts.
package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/flight"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

const (
	// NsToken may use namespace "analytics" only; AdminToken every namespace.
	NsToken    = "analytics-token"
	AdminToken = "admin-token"
	Namespace  = "analytics"
	OtherNs    = "ops"
	startLimit = 30 * time.Second
)

// node is the running flight-node the tests talk to.
var node *Node

type Node struct {
	Bin      string
	Dir      string // temporary: storage, token file, log
	Storage  string // the file:// storage directory
	GrpcAddr string
	HTTPAddr string
	LogPath  string
	cmd      *exec.Cmd
	exited   chan struct{}
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin := os.Getenv("FLIGHT_NODE_BIN")
	if bin == "" {
		fmt.Fprintln(os.Stderr, "FAIL: FLIGHT_NODE_BIN is not set: it must name a built flight-node "+
			"binary (cargo build -p flight-node; FLIGHT_NODE_BIN=$PWD/target/debug/flight-node)")
		return 1
	}
	if st, err := os.Stat(bin); err != nil || st.IsDir() {
		fmt.Fprintf(os.Stderr, "FAIL: FLIGHT_NODE_BIN=%s is not a flight-node binary (%v); "+
			"run cargo build -p flight-node\n", bin, err)
		return 1
	}
	dir, err := os.MkdirTemp("", "flight-interop-go-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	n, err := startNode(bin, dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: starting flight-node:", err)
		return 1
	}
	node = n
	code := m.Run()
	if alive := n.Alive(); !alive {
		fmt.Fprintln(os.Stderr, "FAIL: flight-node exited during the tests")
		code = 1
	}
	if log, err := os.ReadFile(n.LogPath); err == nil && bytes.Contains(log, []byte("panicked")) {
		fmt.Fprintln(os.Stderr, "FAIL: flight-node logged a panic during the tests")
		code = 1
	}
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- flight-node log (last lines of %s) ---\n%s\n", n.LogPath, n.LogTail(60))
	}
	n.Stop()
	return code
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startNode(bin, dir string) (*Node, error) {
	storage := filepath.Join(dir, "data")
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.yaml")
	tokenYAML := fmt.Sprintf("tokens:\n  - token: %s\n    namespaces: [%s]\n  - token: %s\n    namespaces: [\"*\"]\n",
		NsToken, Namespace, AdminToken)
	if err := os.WriteFile(tokens, []byte(tokenYAML), 0o600); err != nil {
		return nil, err
	}
	gp, err := freePort()
	if err != nil {
		return nil, err
	}
	hp, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &Node{
		Bin: bin, Dir: dir, Storage: storage,
		GrpcAddr: fmt.Sprintf("127.0.0.1:%d", gp),
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", hp),
		LogPath:  filepath.Join(dir, "node.log"),
		exited:   make(chan struct{}),
	}
	log, err := os.Create(n.LogPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(bin,
		"--listen", n.GrpcAddr,
		"--http-listen", n.HTTPAddr,
		"--storage-url", "file://"+storage,
		"--token-file", tokens,
		"--part-size", "64KiB",
	)
	// The node reads every flag from FLIGHT_* variables too: none may leak in.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLIGHT_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "RUST_LOG=info")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n.cmd = cmd
	go func() { _ = cmd.Wait(); close(n.exited) }()

	deadline := time.Now().Add(startLimit)
	hc := http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		if !n.Alive() {
			return nil, fmt.Errorf("flight-node exited at start:\n%s", n.LogTail(40))
		}
		resp, err := hc.Get("http://" + n.HTTPAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return n, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.Stop()
	return nil, fmt.Errorf("flight-node not ready within %s:\n%s", startLimit, n.LogTail(40))
}

func (n *Node) Alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (n *Node) Stop() {
	if n.cmd == nil || !n.Alive() {
		return
	}
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(5 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

func (n *Node) LogTail(lines int) string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return ""
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// Manifest is the part of a version's record in storage the tests look at.
type Manifest struct {
	Version int64 `json:"version"`
	Rows    int64 `json:"rows"`
	Parts   []struct {
		Path string `json:"path"`
	} `json:"parts"`
}

func (n *Node) Manifest(t *testing.T, ns, name string, version int64) Manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.Storage, ns, name, fmt.Sprintf("v%d.manifest.json", version)))
	if err != nil {
		t.Fatalf("reading the manifest of %s/%s@%d: %v", ns, name, version, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("decoding the manifest of %s/%s@%d: %v", ns, name, version, err)
	}
	return m
}

// NewClient connects a Flight client to the node, as an atom would: plain gRPC, no
// client-side auth handler (the bearer token travels in the call's metadata).
func NewClient(t *testing.T) flight.Client {
	t.Helper()
	c, err := flight.NewClientWithMiddleware(node.GrpcAddr, nil, nil,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatalf("connecting to %s: %v", node.GrpcAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// WithToken returns ctx carrying `authorization: Bearer <token>`.
func WithToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// TestContext is a context bounded in time, carrying the admin token.
func adminContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return WithToken(ctx, AdminToken)
}

// Action runs a DoAction and returns its result bodies.
func Action(ctx context.Context, c flight.Client, kind string, body any) ([][]byte, error) {
	var raw []byte
	switch b := body.(type) {
	case nil:
	case []byte:
		raw = b
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			return nil, err
		}
	}
	stream, err := c.DoAction(ctx, &flight.Action{Type: kind, Body: raw})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, bytes.Clone(r.Body))
	}
}
