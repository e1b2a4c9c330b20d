// Command smoke is the test cluster's smoke check, run as a pod by `tests/k8s/cluster up`:
// it resolves the API server's Service name through the cluster DNS, calls the API through
// that Service's ClusterIP with the pod's service-account token, and prints what it saw.
// Any failure exits non-zero with the reason on stderr.
//
//	smoke           the checks above
//	smoke --serve   the checks, then serve HTTP on :8080 ("ok POD-NAME") until SIGTERM, so that
//	                logs, exec, probes and Services can be tried on the pod
//	smoke --get URL GET URL and print the answer (for kubectl exec)
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const (
	name   = "kubernetes.default.svc.cluster.local"
	saDir  = "/var/run/secrets/kubernetes.io/serviceaccount"
	review = `{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}`
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "smoke: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "--get" {
		get(os.Args[2])
		return
	}
	serve := len(os.Args) == 2 && os.Args[1] == "--serve"
	if len(os.Args) > 1 && !serve {
		fail("usage: smoke [--serve | --get URL]")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		fail("reading /etc/resolv.conf: %v", err)
	}
	fmt.Printf("resolv.conf: %s\n", strings.Join(strings.Fields(string(resolv)), " "))

	// The pure-Go resolver reads /etc/resolv.conf: this asks the cluster DNS server.
	var addrs []string
	for attempt := 1; ; attempt++ {
		addrs, err = net.DefaultResolver.LookupHost(ctx, name)
		if err == nil || ctx.Err() != nil {
			break
		}
		fmt.Printf("dns attempt %d: %v\n", attempt, err)
		time.Sleep(time.Second)
	}
	if err != nil {
		fail("resolving %s: %v", name, err)
	}
	fmt.Printf("dns: %s -> %s\n", name, strings.Join(addrs, ","))
	if want := os.Getenv("KUBERNETES_SERVICE_HOST"); want != "" && addrs[0] != want {
		fail("%s resolved to %v, but KUBERNETES_SERVICE_HOST is %s", name, addrs, want)
	}

	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		fail("reading the service-account token: %v", err)
	}
	caPEM, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		fail("reading the service-account CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		fail("no certificate in %s/ca.crt", saDir)
	}
	client := &http.Client{
		Timeout:   20 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	call := func(method, path, body string) []byte {
		req, err := http.NewRequestWithContext(ctx, method, "https://"+name+path, bytes.NewBufferString(body))
		if err != nil {
			fail("%s %s: %v", method, path, err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			fail("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		out, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			fail("%s %s: %s: %s", method, path, resp.Status, out)
		}
		return out
	}

	var version struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(call("GET", "/version", ""), &version); err != nil {
		fail("decoding /version: %v", err)
	}
	fmt.Printf("api: https://%s/version -> %s\n", name, version.GitVersion)

	var who struct {
		Status struct {
			UserInfo struct {
				Username string `json:"username"`
			} `json:"userInfo"`
		} `json:"status"`
	}
	if err := json.Unmarshal(call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", review), &who); err != nil {
		fail("decoding the SelfSubjectReview: %v", err)
	}
	fmt.Printf("api: authenticated as %s\n", who.Status.UserInfo.Username)
	fmt.Println("smoke: ok")

	if serve {
		listener, err := net.Listen("tcp", ":8080")
		if err != nil {
			fail("listening on :8080: %v", err)
		}
		hostname, _ := os.Hostname()
		go http.Serve(listener, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "ok %s\n", hostname)
		}))
		fmt.Println("smoke: serving on :8080")
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
		<-stop
	}
}

func get(url string) {
	client := &http.Client{Timeout: 20 * time.Second}
	var err error
	for attempt := 1; attempt <= 10; attempt++ {
		var resp *http.Response
		resp, err = client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				fail("GET %s: %s: %s", url, resp.Status, body)
			}
			fmt.Printf("GET %s -> %s", url, body)
			return
		}
		time.Sleep(time.Second)
	}
	fail("GET %s: %v", url, err)
}
