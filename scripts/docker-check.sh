#!/usr/bin/env bash
# Build the image from this checkout with no network inside the build, run it, check it with known answers
# over REST and gRPC, watch its HEALTHCHECK turn healthy, stop it with a request in flight, then bring up
# the compose file's featureserve and Prometheus and see Prometheus scrape it. Prints the image size, the
# build time and the time to ready; removes the containers, networks and volumes it made, and stops the
# Docker engine if it started one (the images stay, for the next run).
#
# Usage: scripts/docker-check.sh [pip download options for scripts/wheelhouse.sh]
# Exit status: 0 passed, 77 no Docker engine can run on this machine, anything else a failed check.
# Needs .venv (scripts/install.sh test) for the checks, and as root installs what is missing with apt-get:
# Debian's docker.io when no engine answers, and debootstrap when the base image cannot be pulled (the base
# is then made from Debian's own packages). Where prom/prometheus cannot be pulled, Debian's prometheus
# binary stands in for it.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=featureserve:check
CONTAINER=featureserve-check
PROJECT=featureserve-check
STANDIN_BASE=featureserve-check/python:3.11-bookworm
STANDIN_PROMETHEUS=featureserve-check/prometheus:debian
COMPOSE=.venv/bin/docker-compose
PYTHON=.venv/bin/python
work=$(mktemp -d)
engine_pid=""
compose_up=""

log() { echo "docker-check: $*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
elapsed() { echo "$(($(date +%s%N) - $1))" | awk '{printf "%.1f", $1 / 1e9}'; }

cleanup() {
  set +e
  "${DOCKER:-docker}" rm -f "$CONTAINER" >/dev/null 2>&1
  if [ -n "$compose_up" ]; then compose down --volumes --remove-orphans >/dev/null 2>&1; fi
  if [ -n "$engine_pid" ]; then kill "$engine_pid" && wait "$engine_pid"; fi
  rm -rf "$work"
}
trap cleanup EXIT

apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || fail "$* missing; install it (or run as root with apt-get)"
  log "installing $* with apt-get"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >"$work/apt.log" 2>&1 \
    || fail "apt-get install $*: $(tail -5 "$work/apt.log")"
}

# An engine: the one that answers, or Debian's dockerd started here. It leaves the host's firewall alone
# (no iptables rules, no IP forwarding): published ports still reach 127.0.0.1 through docker-proxy.
start_engine() {
  if docker info >/dev/null 2>&1 || /usr/bin/docker info >/dev/null 2>&1; then return; fi
  command -v dockerd >/dev/null || apt_install docker.io
  log "starting dockerd (log: $work/dockerd.log)"
  dockerd --iptables=false --ip-forward=false >"$work/dockerd.log" 2>&1 &
  engine_pid=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && return; sleep 0.5; done
  log "no Docker engine can run here: dockerd did not answer within 30 s: $(tail -3 "$work/dockerd.log")"
  exit 77
}

# A client that builds with BuildKit: one with the buildx plugin, or a client older than 23.0, whose builder
# is BuildKit with DOCKER_BUILDKIT=1 (Debian's /usr/bin/docker 20.10; a newer client without buildx cannot).
choose_client() {
  for client in docker /usr/bin/docker; do
    command -v "$client" >/dev/null || continue
    if "$client" buildx version >/dev/null 2>&1; then DOCKER=$client; return; fi
    major=$("$client" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1 || true)
    if [ -n "$major" ] && [ "$major" -lt 23 ]; then DOCKER=$client; export DOCKER_BUILDKIT=1; return; fi
  done
  fail "no docker client can build with BuildKit: install the buildx plugin"
}

pull() { timeout 120 "$DOCKER" pull --quiet "$1" >/dev/null 2>&1; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The Dockerfile's base image, or a Debian bookworm with Python 3.11 made by debootstrap in its place.
base_image() {
  local base mirror
  base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
  if have_image "$base" || pull "$base"; then echo "$base"; return; fi
  if ! have_image "$STANDIN_BASE"; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
    log "$base cannot be pulled; making $STANDIN_BASE with debootstrap from ${mirror:=http://deb.debian.org/debian}"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
      bookworm "$work/base" "$mirror" >"$work/debootstrap.log" 2>&1 || fail "debootstrap: $(tail -3 "$work/debootstrap.log")"
    tar -C "$work/base" -c . | "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$STANDIN_BASE" >/dev/null
  fi
  echo "$STANDIN_BASE"
}

# prom/prometheus as the compose file names it, or Debian's prometheus binary on the base image.
prometheus_image() {
  local wanted
  wanted=$(sed -n 's/^ *image: *\(prom\/prometheus:.*\)$/\1/p' docker-compose.yml)
  if have_image "$wanted" || pull "$wanted"; then echo "$wanted"; return; fi
  log "$wanted cannot be pulled; Debian's prometheus stands in for it ($STANDIN_PROMETHEUS)"
  mkdir -p "$work/prometheus" && (cd "$work/prometheus" && apt-get download -qq prometheus >/dev/null 2>&1) \
    || fail "apt-get download prometheus failed"
  dpkg-deb -x "$work"/prometheus/prometheus_*.deb "$work/prometheus/root"
  cp "$work/prometheus/root/usr/bin/prometheus" "$work/prometheus/"
  printf 'FROM %s\nCOPY prometheus /bin/prometheus\nENTRYPOINT ["/bin/prometheus"]\n' "$1" >"$work/prometheus/Dockerfile"
  "$DOCKER" build --quiet --network none -t "$STANDIN_PROMETHEUS" "$work/prometheus" >/dev/null
  echo "$STANDIN_PROMETHEUS"
}

compose() {
  GRAFANA_ADMIN_PASSWORD=$grafana_password "$COMPOSE" -p "$PROJECT" -f docker-compose.yml -f "$work/override.yml" "$@"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return; sleep 0.2; done
  fail "$what within $seconds s"
}

ready() { "$PYTHON" -c 'import sys, httpx; sys.exit(httpx.get(sys.argv[1] + "/readyz", timeout=2).status_code != 200)' "$1"; }
healthy() { [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$CONTAINER")" = healthy ]; }
scraped() {
  "$PYTHON" -c 'import sys, httpx
answer = httpx.get("http://127.0.0.1:9090/api/v1/query", params={"query": "up{job=\"featureserve\"}"}, timeout=2).json()
sys.exit(not any(r["value"][1] == "1" for r in answer["data"]["result"]))'
}

[ -x "$PYTHON" ] && [ -x "$COMPOSE" ] || fail ".venv with the test extra is missing: run scripts/install.sh test"
start_engine
choose_client
base=$(base_image)

log "wheelhouse: every wheel of the image at the versions of constraints/lock.txt"
scripts/wheelhouse.sh wheelhouse "$@"

log "building $IMAGE on $base with no network and no cache"
start=$(date +%s%N)
"$DOCKER" build --no-cache --network none --build-arg OFFLINE=1 --build-arg "PYTHON_IMAGE=$base" -t "$IMAGE" . \
  >"$work/build.log" 2>&1 || fail "docker build: $(tail -20 "$work/build.log")"
build_s=$(elapsed "$start")
size=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.2f GB", $1 / 1e9}')

log "docker run, then readiness, the HEALTHCHECK, known answers and docker stop with a request in flight"
start=$(date +%s%N)
"$DOCKER" run -d --name "$CONTAINER" -p 127.0.0.1::8080 -p 127.0.0.1::50051 "$IMAGE" >/dev/null
rest_url=http://$("$DOCKER" port "$CONTAINER" 8080/tcp | head -1)
grpc_target=$("$DOCKER" port "$CONTAINER" 50051/tcp | head -1)
wait_for 120 "the container was not ready" ready "$rest_url"
ready_s=$(elapsed "$start")
wait_for 60 "the HEALTHCHECK did not report healthy" healthy
healthy_s=$(elapsed "$start")
probe=$(PYTHONPATH=. "$PYTHON" scripts/container_probe.py "$CONTAINER" --rest "$rest_url" --grpc "$grpc_target" --docker "$DOCKER" --stop)
"$DOCKER" rm -f "$CONTAINER" >/dev/null

log "docker compose up featureserve prometheus"
prometheus=$(prometheus_image "$base")
printf 'services:\n  featureserve:\n    image: %s\n  prometheus:\n    image: %s\n' "$IMAGE" "$prometheus" >"$work/override.yml"
grafana_password=$(head -c 18 /dev/urandom | base64)
start=$(date +%s%N)
compose_up=1
compose up --detach --no-build featureserve prometheus >"$work/compose.log" 2>&1 || fail "compose up: $(tail -5 "$work/compose.log")"
published=$("$DOCKER" port "$PROJECT-featureserve-1")
if grep -qv '^[0-9]*/tcp -> 127\.0\.0\.1:' <<<"$published"; then fail "compose published beyond 127.0.0.1: $published"; fi
wait_for 120 "the compose service was not ready" ready http://127.0.0.1:8080
compose_ready_s=$(elapsed "$start")
wait_for 60 "Prometheus did not scrape featureserve" scraped
scraped_s=$(elapsed "$start")

cat <<EOF
docker-check: passed
  image $IMAGE: $size, built in $build_s s (no cache, no network) on $base
  docker run: ready in $ready_s s, HEALTHCHECK healthy at $healthy_s s
  known answers and docker stop: $probe
  compose (featureserve, $prometheus): ready in $compose_ready_s s, scraped by Prometheus at $scraped_s s
EOF
