#!/usr/bin/env bash
# End-to-end test on a kind cluster: build the images, install the chart with the dev MinIO,
# apply examples/, upload a DataFrame with the Python client, see it Ready in
# `kubectl get arrowdatasets`, fetch it back by ticket from a second pod (and from the host
# through the NodePort), wait for its TTL and check it is gone from the API and from MinIO.
#
# Needs: docker (with BuildKit), kind, kubectl, helm 3.8+ (or 4), and network access for the
# base images and the client pods' `pip install`. Run from anywhere:
#
#   tests/kind/e2e.sh
#
# Settings (environment): see the block below and tests/kind/README.md.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
readonly ROOT

CLUSTER_NAME="${CLUSTER_NAME:-flight-e2e}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"          # 1: leave the cluster running at the end
REUSE_CLUSTER="${REUSE_CLUSTER:-0}"        # 1: use an existing cluster of that name
SKIP_BUILD="${SKIP_BUILD:-0}"              # 1: images are built (and tagged) already
IMAGE_TAG="${IMAGE_TAG:-e2e}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-ghcr.io/trinity-data/flight-operator}"
NODE_IMAGE="${NODE_IMAGE:-ghcr.io/trinity-data/flight-node}"
PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
MC_IMAGE="${MC_IMAGE:-minio/mc:RELEASE.2025-04-16T18-13-26Z}"
PIP_PACKAGES="${PIP_PACKAGES:-pyarrow==26.0.1 pandas>=3.1,<4}"
RELEASE="${RELEASE:-flight-operator}"
OPERATOR_NS="${OPERATOR_NS:-flight-system}"
MINIO_NS="minio"                           # examples/flightpool-minio.yaml expects minio.minio.svc
POOL_NS="analytics"                        # the examples' namespace and pool
POOL="analytics"
MINIO_USER="minioadmin"                    # as in examples/minio-credentials.yaml
MINIO_PASSWORD="minioadmin"
DATASET="${DATASET:-e2e-frame}"
TTL="${TTL:-3m}"                           # TTL of the uploaded DataFrame: 90s, 3m, 1h
NODE_PORT=30815                            # kind-config.yaml maps it to 127.0.0.1:8815
HOST_FETCH="${HOST_FETCH:-auto}"           # auto | 1 | 0: fetch from the host via the NodePort
HOST_PYTHON="${HOST_PYTHON:-}"             # python with pyarrow and pandas; auto-detected

# Timeouts (seconds unless a unit is given).
BUILD_TIMEOUT="${BUILD_TIMEOUT:-3600}"
CLUSTER_TIMEOUT="${CLUSTER_TIMEOUT:-300}"
HELM_TIMEOUT="${HELM_TIMEOUT:-10m}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-300}"        # rollouts, pools, datasets
CLIENT_TIMEOUT="${CLIENT_TIMEOUT:-900}"    # client pods: image pull + pip install
EXEC_TIMEOUT="${EXEC_TIMEOUT:-300}"        # one upload or fetch
EXPIRY_GRACE="${EXPIRY_GRACE:-180}"        # after the TTL: requeue, finalizer, storage

CLIENT_A="e2e-client-a"                    # uploads
CLIENT_B="e2e-client-b"                    # fetches (a second pod, preferably on another node)
WORK="$(mktemp -d "${TMPDIR:-/tmp}/flight-e2e.XXXXXX")"
readonly WORK
CLUSTER_CREATED=0
KUBECTL=(kubectl --context "kind-${CLUSTER_NAME}")

log() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
die() {
  printf 'FAILED: %s\n' "$*" >&2
  exit 1
}

k() { "${KUBECTL[@]}" "$@"; }

require() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} is required but not on PATH"
  done
}

# Diagnostics on failure, then teardown (unless KEEP_CLUSTER=1 or the cluster was reused).
on_exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if ((rc != 0)) && k version >/dev/null 2>&1; then
    log "diagnostics (exit code ${rc})"
    timeout 60 "${KUBECTL[@]}" get pods,statefulsets,services,jobs -A -o wide >&2
    timeout 30 "${KUBECTL[@]}" get flightpools,arrowdatasets -A -o wide >&2
    timeout 30 "${KUBECTL[@]}" get events -A --sort-by=.lastTimestamp >&2
    timeout 30 "${KUBECTL[@]}" -n "${OPERATOR_NS}" logs "deployment/${RELEASE}" --tail=200 >&2
    timeout 30 "${KUBECTL[@]}" -n "${POOL_NS}" logs "statefulset/${POOL}" --tail=100 >&2
  fi
  if [[ "${KEEP_CLUSTER}" == "1" ]]; then
    info "keeping cluster ${CLUSTER_NAME} (kind delete cluster --name ${CLUSTER_NAME})"
  elif ((CLUSTER_CREATED == 1)); then
    log "deleting cluster ${CLUSTER_NAME}"
    timeout 300 kind delete cluster --name "${CLUSTER_NAME}" >&2
  fi
  rm -rf "${WORK}"
  if ((rc == 0)); then
    log "e2e passed"
  else
    printf '\ne2e FAILED (exit code %s)\n' "${rc}" >&2
  fi
  exit "${rc}"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls "$@" until it succeeds, for at most $1 seconds.
retry_for() {
  local limit=$1
  shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 3
  done
}

# Runs a command in a client pod with a time limit.
client_exec() {
  local pod=$1
  shift
  timeout "${EXEC_TIMEOUT}" "${KUBECTL[@]}" -n "${POOL_NS}" exec "${pod}" -- "$@"
}

dataset_exists() { k -n "${POOL_NS}" get arrowdataset "${DATASET}" >/dev/null 2>&1; }

preflight() {
  log "checking tools"
  require docker kind kubectl helm timeout mktemp
  docker info >/dev/null 2>&1 || die "docker is not running"
  [[ "${TTL}" =~ ^([0-9]+)([smh])$ ]] || die "TTL must look like 90s, 3m or 1h"
  case "${BASH_REMATCH[2]}" in
    s) TTL_SECONDS=$((BASH_REMATCH[1])) ;;
    m) TTL_SECONDS=$((BASH_REMATCH[1] * 60)) ;;
    *) TTL_SECONDS=$((BASH_REMATCH[1] * 3600)) ;;
  esac
  ((TTL_SECONDS >= 60)) || die "TTL must be at least 60s: the checks before expiry need the time"
  local kind_version helm_version
  kind_version="$(kind version 2>/dev/null || true)"
  helm_version="$(helm version --short 2>/dev/null || true)"
  info "kind: ${kind_version}"
  info "helm: ${helm_version}"
}

create_cluster() {
  if [[ "${REUSE_CLUSTER}" == "1" ]] && kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
    log "reusing cluster ${CLUSTER_NAME}"
    return
  fi
  log "creating cluster ${CLUSTER_NAME} from kind-config.yaml"
  CLUSTER_CREATED=1
  timeout "${CLUSTER_TIMEOUT}" kind create cluster --name "${CLUSTER_NAME}" \
    --config "${ROOT}/kind-config.yaml" --wait "${CLUSTER_TIMEOUT}s"
  k wait --for=condition=Ready nodes --all --timeout="${WAIT_TIMEOUT}s"
}

build_and_load_images() {
  local operator_ref="${OPERATOR_IMAGE}:${IMAGE_TAG}" node_ref="${NODE_IMAGE}:${IMAGE_TAG}"
  if [[ "${SKIP_BUILD}" != "1" ]]; then
    log "building ${operator_ref} and ${node_ref}"
    DOCKER_BUILDKIT=1 timeout "${BUILD_TIMEOUT}" docker build \
      -f "${ROOT}/operator/Dockerfile" -t "${operator_ref}" "${ROOT}"
    DOCKER_BUILDKIT=1 timeout "${BUILD_TIMEOUT}" docker build \
      -f "${ROOT}/flight-node/Dockerfile" -t "${node_ref}" "${ROOT}"
  fi
  log "loading the images into the cluster"
  timeout 600 kind load docker-image --name "${CLUSTER_NAME}" "${operator_ref}" "${node_ref}"
}

install_chart() {
  log "installing the chart (dev MinIO in namespace ${MINIO_NS}, a default pool in ${OPERATOR_NS})"
  local ns
  for ns in "${OPERATOR_NS}" "${MINIO_NS}" "${POOL_NS}"; do
    k create namespace "${ns}" --dry-run=client -o yaml | k apply -f - >/dev/null
  done
  timeout 1200 helm --kube-context "kind-${CLUSTER_NAME}" upgrade --install "${RELEASE}" \
    "${ROOT}/charts/flight-operator" \
    --namespace "${OPERATOR_NS}" \
    --set image.repository="${OPERATOR_IMAGE}" \
    --set image.tag="${IMAGE_TAG}" \
    --set nodeImage.repository="${NODE_IMAGE}" \
    --set nodeImage.tag="${IMAGE_TAG}" \
    --set logFormat=text \
    --set discoveryInterval=5s \
    --set retryAfter=5s \
    --set minio.enabled=true \
    --set minio.namespace="${MINIO_NS}" \
    --set minio.rootUser="${MINIO_USER}" \
    --set minio.rootPassword="${MINIO_PASSWORD}" \
    --set pool.replicas=1 \
    --wait --timeout "${HELM_TIMEOUT}"
  k -n "${OPERATOR_NS}" rollout status "deployment/${RELEASE}" --timeout="${WAIT_TIMEOUT}s"
  k -n "${MINIO_NS}" rollout status deployment/minio --timeout="${WAIT_TIMEOUT}s"
  log "waiting for the chart's own FlightPool (no other prerequisites)"
  retry_for "${WAIT_TIMEOUT}" k -n "${OPERATOR_NS}" get flightpool flight ||
    die "FlightPool ${OPERATOR_NS}/flight was not created by the chart"
  k -n "${OPERATOR_NS}" wait flightpool/flight --for=condition=Ready --timeout="${WAIT_TIMEOUT}s"
  k -n "${OPERATOR_NS}" get flightpools
}

# Waits until pod $2 in namespace $1 has finished, for at most $3 seconds; prints its log.
# Fails when the pod failed or did not finish in time.
wait_pod_done() {
  local ns=$1 pod=$2 limit=$3 phase=""
  local deadline=$((SECONDS + limit))
  while ((SECONDS < deadline)); do
    phase="$(k -n "${ns}" get pod "${pod}" -o jsonpath='{.status.phase}' 2>/dev/null || true)"
    if [[ "${phase}" == "Succeeded" || "${phase}" == "Failed" ]]; then
      break
    fi
    sleep 2
  done
  timeout 60 "${KUBECTL[@]}" -n "${ns}" logs "pod/${pod}" || true
  [[ "${phase}" == "Succeeded" ]] || die "pod ${ns}/${pod} ended in phase '${phase:-unknown}'"
}

# Runs shell commands $2 in a one-off MinIO client pod $1 (alias "dev" set up) in the MinIO
# namespace, with ConfigMap $3 (optional) mounted at /input; prints the pod's output.
run_mc() {
  local pod=$1 script=$2 input=${3:-}
  local volume_mounts="[]" volumes="[]"
  if [[ -n "${input}" ]]; then
    volume_mounts='[{name: input, mountPath: /input}]'
    volumes="[{name: input, configMap: {name: ${input}}}]"
  fi
  k -n "${MINIO_NS}" delete pod "${pod}" --ignore-not-found --wait=true --timeout=60s >/dev/null
  k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ${pod}
  namespace: ${MINIO_NS}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: mc
      image: ${MC_IMAGE}
      command: ["/bin/sh", "-ec"]
      args:
        - |
          mc alias set dev http://minio:9000 "\${ACCESS_KEY}" "\${SECRET_KEY}" >/dev/null
          ${script}
      env:
        - name: MC_CONFIG_DIR
          value: /tmp/.mc
        - name: ACCESS_KEY
          valueFrom: {secretKeyRef: {name: minio, key: AWS_ACCESS_KEY_ID}}
        - name: SECRET_KEY
          valueFrom: {secretKeyRef: {name: minio, key: AWS_SECRET_ACCESS_KEY}}
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: ["ALL"]
      volumeMounts: ${volume_mounts}
  volumes: ${volumes}
EOF
  wait_pod_done "${MINIO_NS}" "${pod}" 300
  k -n "${MINIO_NS}" delete pod "${pod}" --wait=false >/dev/null
}

# Puts the CSV that examples/arrowdataset-csv-source.yaml loads into MinIO (its "sales"
# contract: order_id int64, region utf8, amount decimal128(12,2), ordered_at timestamp[ms, UTC]).
put_source_csv() {
  log "uploading the CSV source of examples/arrowdataset-csv-source.yaml to MinIO"
  local i region
  {
    printf 'order_id,region,amount,ordered_at\n'
    for ((i = 1; i <= 1000; i++)); do
      region=amer
      if ((i % 3 == 0)); then
        region=emea
      fi
      printf '%d,%s,%d.%02d,2024-01-%02dT%02d:%02d:00Z\n' \
        "${i}" "${region}" $((i % 500)) $((i % 100)) $((i % 28 + 1)) $((i % 24)) $((i % 60))
    done
  } >"${WORK}/sales-2024.csv"
  k -n "${MINIO_NS}" create configmap e2e-sales-csv --from-file="${WORK}/sales-2024.csv" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  run_mc e2e-put-csv "mc cp /input/sales-2024.csv dev/datasets/flight/raw/sales-2024.csv" e2e-sales-csv
}

# The examples, with the pool sized to fit a laptop's kind cluster (3 small nodes).
apply_examples() {
  log "applying examples/ (the FlightPool shrunk to fit kind)"
  k apply -f "${ROOT}/examples/minio-credentials.yaml"
  k patch --local -f "${ROOT}/examples/flightpool-minio.yaml" --type merge -o yaml -p '{
      "spec": {
        "memoryLimit": "256MiB",
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "768Mi"}}
      }}' | k apply -f -
  k apply -f "${ROOT}/examples/arrowdataset-uploaded.yaml" \
    -f "${ROOT}/examples/arrowdataset-csv-source.yaml"
  k -n "${POOL_NS}" wait "flightpool/${POOL}" --for=condition=Ready --timeout="${WAIT_TIMEOUT}s"
  k -n "${POOL_NS}" rollout status "statefulset/${POOL}" --timeout="${WAIT_TIMEOUT}s"
  log "waiting for the CSV-source dataset to load"
  k -n "${POOL_NS}" wait arrowdataset/sales-2024 --for=jsonpath='{.status.phase}'=Ready \
    --timeout="${WAIT_TIMEOUT}s"
  k -n "${POOL_NS}" get arrowdataset sales-daily >/dev/null
}

# A NodePort Service in front of the pool's nodes: FlightPool has no Service type, and the
# operator's client Service is ClusterIP, so the test adds its own.
expose_pool() {
  log "exposing the pool on NodePort ${NODE_PORT} (127.0.0.1:8815 on the host)"
  k apply -f - <<EOF
apiVersion: v1
kind: Service
metadata:
  name: ${POOL}-nodeport
  namespace: ${POOL_NS}
spec:
  type: NodePort
  selector:
    app.kubernetes.io/name: flight-node
    app.kubernetes.io/instance: ${POOL}
  ports:
    - name: flight
      port: 8815
      targetPort: flight
      nodePort: ${NODE_PORT}
EOF
}

# Two client pods with pyarrow, pandas and the trinity_flight package (from a ConfigMap).
start_clients() {
  log "starting client pods ${CLIENT_A} and ${CLIENT_B}"
  k -n "${POOL_NS}" create configmap e2e-trinity-flight \
    --from-file="${ROOT}/clients/python/src/trinity_flight/" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n "${POOL_NS}" create configmap e2e-client-script \
    --from-file="${ROOT}/tests/kind/e2e_client.py" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  local pod
  for pod in "${CLIENT_A}" "${CLIENT_B}"; do
    k apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: ${pod}
  namespace: ${POOL_NS}
  labels:
    app.kubernetes.io/name: flight-e2e-client
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                app.kubernetes.io/name: flight-e2e-client
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 1000
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: client
      image: ${PYTHON_IMAGE}
      command: ["/bin/sh", "-ec"]
      args:
        - |
          pip install --quiet --no-cache-dir --disable-pip-version-check \
            --target /tmp/deps ${PIP_PACKAGES}
          touch /tmp/ready
          exec sleep 86400
      env:
        - name: HOME
          value: /tmp
        - name: PYTHONPATH
          value: /tmp/deps:/opt/client
        - name: FLIGHT_URI
          value: grpc://${POOL}.${POOL_NS}.svc:8815
        - name: FLIGHT_NAMESPACE
          value: ${POOL_NS}
      readinessProbe:
        exec:
          command: ["test", "-f", "/tmp/ready"]
        periodSeconds: 3
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: ["ALL"]
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        - name: client
          mountPath: /opt/client/trinity_flight
        - name: script
          mountPath: /opt/e2e
  volumes:
    - name: tmp
      emptyDir: {}
    - name: client
      configMap:
        name: e2e-trinity-flight
    - name: script
      configMap:
        name: e2e-client-script
EOF
  done
  for pod in "${CLIENT_A}" "${CLIENT_B}"; do
    k -n "${POOL_NS}" wait "pod/${pod}" --for=condition=Ready --timeout="${CLIENT_TIMEOUT}s"
  done
}

upload() {
  log "uploading a DataFrame as ${POOL_NS}/${DATASET} (TTL ${TTL}) from ${CLIENT_A}"
  client_exec "${CLIENT_A}" python /opt/e2e/e2e_client.py upload "${DATASET}" "${TTL}" \
    | tee "${WORK}/upload.out"
  TICKET="$(sed -n 's/^TICKET=//p' "${WORK}/upload.out")"
  ROWS="$(sed -n 's/^ROWS=//p' "${WORK}/upload.out")"
  [[ -n "${TICKET}" && -n "${ROWS}" ]] || die "the upload printed no ticket"
  UPLOADED_AT=${SECONDS}
  info "ticket ${TICKET}"
}

check_dataset_ready() {
  log "waiting for the operator to discover ${DATASET} and mark it Ready"
  retry_for "${WAIT_TIMEOUT}" dataset_exists || die "ArrowDataset ${POOL_NS}/${DATASET} never appeared"
  k -n "${POOL_NS}" wait "arrowdataset/${DATASET}" --for=jsonpath='{.status.phase}'=Ready \
    --timeout="${WAIT_TIMEOUT}s"
  k -n "${POOL_NS}" get arrowdatasets -o wide
  local ticket rows
  ticket="$(k -n "${POOL_NS}" get arrowdataset "${DATASET}" -o jsonpath='{.status.ticket}')"
  rows="$(k -n "${POOL_NS}" get arrowdataset "${DATASET}" -o jsonpath='{.status.rows}')"
  [[ "${ticket}" == "${TICKET}" ]] || die "status.ticket is ${ticket}, the upload answered ${TICKET}"
  [[ "${rows}" == "${ROWS}" ]] || die "status.rows is ${rows}, uploaded ${ROWS}"
  # The printed table, as a user reads it (NAME POOL PHASE ...).
  local table phase
  table="$(k -n "${POOL_NS}" get arrowdatasets --no-headers)"
  phase="$(awk -v ds="${DATASET}" '$1 == ds { print $3 }' <<<"${table}")"
  [[ "${phase}" == "Ready" ]] ||
    die "kubectl get arrowdatasets does not show ${DATASET} Ready: ${table}"
}

# The checks before expiry must finish inside the TTL: fail clearly instead of flaking.
before_expiry() {
  local left=$((TTL_SECONDS - (SECONDS - UPLOADED_AT)))
  ((left > 20)) || die "only ${left}s of the ${TTL} TTL left before $1: raise TTL"
}

fetch_in_cluster() {
  before_expiry "the in-cluster fetch"
  log "fetching ${TICKET} from the second pod ${CLIENT_B}"
  client_exec "${CLIENT_B}" python /opt/e2e/e2e_client.py fetch "${TICKET}"
}

find_host_python() {
  local candidate
  for candidate in "${HOST_PYTHON}" "${ROOT}/.venv/bin/python" python3; do
    if [[ -n "${candidate}" ]] && command -v "${candidate}" >/dev/null 2>&1 &&
      "${candidate}" -c 'import pyarrow.flight, pandas' >/dev/null 2>&1; then
      printf '%s' "${candidate}"
      return 0
    fi
  done
  return 1
}

fetch_from_host() {
  [[ "${HOST_FETCH}" == "0" ]] && return 0
  local python
  if ! python="$(find_host_python)"; then
    [[ "${HOST_FETCH}" == "1" ]] && die "HOST_FETCH=1 but no python with pyarrow and pandas"
    info "no python with pyarrow and pandas on the host: skipping the NodePort fetch"
    return 0
  fi
  before_expiry "the host fetch"
  log "fetching ${TICKET} from the host through NodePort ${NODE_PORT} (grpc://127.0.0.1:8815)"
  # The owner's location (a pod DNS name) does not resolve on the host; the client falls
  # back to the connection it has.
  FLIGHT_URI="grpc://127.0.0.1:8815" FLIGHT_NAMESPACE="${POOL_NS}" \
    PYTHONPATH="${ROOT}/clients/python/src" \
    timeout "${EXEC_TIMEOUT}" "${python}" "${ROOT}/tests/kind/e2e_client.py" fetch "${TICKET}"
}

# Lists the dataset's objects in MinIO, one "OBJECT ..." line each; nothing when none.
minio_objects() {
  local out
  out="$(run_mc "e2e-ls-$1" "mc ls --recursive dev/datasets/flight/${POOL_NS}/${DATASET}/ 2>/dev/null | sed 's/^/OBJECT /' || true")"
  grep '^OBJECT ' <<<"${out}" || true
}

check_expiry() {
  log "checking ${DATASET}'s objects are in MinIO before expiry"
  minio_objects before >"${WORK}/before.txt"
  before_expiry "the storage check"
  grep -q 'v1.manifest.json' "${WORK}/before.txt" || {
    cat "${WORK}/before.txt" >&2
    die "no manifest of ${DATASET} in MinIO"
  }
  local remaining=$((TTL_SECONDS - (SECONDS - UPLOADED_AT)))
  log "waiting for the TTL (${TTL}, about ${remaining}s left) and the clean-up"
  k -n "${POOL_NS}" wait "arrowdataset/${DATASET}" --for=delete \
    --timeout="$((remaining > 0 ? remaining + EXPIRY_GRACE : EXPIRY_GRACE))s"
  dataset_exists && die "ArrowDataset ${DATASET} still exists"
  info "ArrowDataset ${DATASET} is gone from the API"
  minio_objects after >"${WORK}/after.txt"
  if [[ -s "${WORK}/after.txt" ]]; then
    cat "${WORK}/after.txt" >&2
    die "objects of ${DATASET} remain in MinIO after expiry"
  fi
  info "no objects of ${DATASET} remain in MinIO"
  client_exec "${CLIENT_B}" python /opt/e2e/e2e_client.py expect-gone "${TICKET}"
  k -n "${POOL_NS}" get arrowdatasets
}

main() {
  preflight
  create_cluster
  build_and_load_images
  install_chart
  put_source_csv
  apply_examples
  expose_pool
  start_clients
  upload
  check_dataset_ready
  fetch_in_cluster
  fetch_from_host
  check_expiry
}

TICKET=""
ROWS=""
UPLOADED_AT=0
TTL_SECONDS=0
main "$@"
