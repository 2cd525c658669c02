#!/usr/bin/env bash
# The default image's start-up time (with READY_IMAGE) and the two deployments of docker/README.md,
# run for real with podman (CI runs this after the container
# smoke test, with the podman storage and configuration that ../shared/tools/container_smoke.sh made):
#
# 1. docker/compose.yaml with its `ray` profile, through podman-compose: a Ray head, one Ray worker and
#    the service as Ray client. A short clip is posted; its job's record must name the worker
#    container as the host that ran the frames (not the head, not the service); its motion map is
#    fetched. Then a long clip is posted, the worker is killed mid-job, and the job must end failed
#    with a reason (or retried), never stay running.
# 2. Two replicas on one data volume: the second must refuse to start (one job store per volume,
#    service/jobs/lock.py) while the first keeps serving; once the first is gone, it starts.
#
# Everything it started is removed on exit, failed or not.
#
#   PODMAN_WORK=/tmp/ci-container bash docker/deploy_check.sh
#
# Needs podman, podman-compose in $VENV (pip install podman-compose) and the dev extra (httpx, cv2).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VENV:=.venv}"
: "${PODMAN_WORK:=/tmp/ci-container}"                    # container_smoke.sh's WORK
: "${STORAGE_DRIVER:=overlay}"
: "${BASE_IMAGE:=localhost/pybase:trixie-pyenv312}"      # container_smoke.sh's local python base
: "${COMPOSE_PORT:=18080}"
: "${REPLICA_PORTS:=18081 18082}"
: "${READY_TIMEOUT_S:=240}"
project=v1motion-ci
root="$(pwd)"
bin="$(cd "$VENV/bin" && pwd)"
t0=$SECONDS
log() { printf '[%(%H:%M:%S)T] deploy check: %s\n' -1 "$*"; }

# No systemd here: podman with cgroupfs, runc, file events (container_smoke.sh's containers.conf), and
# its storage, so the layers of its build are reused. A wrapper carries the storage flags to every
# podman call podman-compose makes. Bridge networks need CNI's dnsname plugin for service names.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PODMAN_WORK/containers.conf}"
scratch="$(mktemp -d)"
cat > "$scratch/podman" <<EOF
#!/bin/sh
exec podman --root "$PODMAN_WORK/storage-$STORAGE_DRIVER" --runroot "$PODMAN_WORK/run-$STORAGE_DRIVER" --storage-driver "$STORAGE_DRIVER" "\$@"
EOF
chmod +x "$scratch/podman"
P="$scratch/podman"
if [[ ! -x /usr/lib/cni/dnsname ]]; then
  log "installing CNI's dnsname plugin (service names on compose networks)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-github-containernetworking-plugin-dnsname >/dev/null
fi

token="deploy-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
export V1MOTION_TOKEN="$token"
export V1MOTION_RAY_ADDRESS=ray://ray-head:10001 V1MOTION_PUBLISH="$COMPOSE_PORT" RAY_WORKER_CPUS=1
compose=("$bin/podman-compose" --podman-path "$P" -f docker/compose.yaml -p "$project" --profile ray)
read -r -a ports <<< "$REPLICA_PORTS"
replicas=(v1motion-ci-replica-a v1motion-ci-replica-b)
volume=v1motion-ci-shared-data

teardown() {
  local rc=$?
  if ((rc != 0)); then
    for c in $("$P" ps -a --format '{{.Names}}' | grep -E "^($project|v1motion-ci-replica)" || true); do
      echo "---- last log lines of $c"; "$P" logs --tail 25 "$c" 2>&1 | grep -v systemd || true
    done
  fi
  "${compose[@]}" down -v -t 5 >/dev/null 2>&1 || true
  "$P" rm -f -t 2 "${replicas[@]}" v1motion-ci-ready >/dev/null 2>&1 || true
  "$P" volume rm -f "$volume" >/dev/null 2>&1 || true
  rm -rf "$scratch"
  log "took $((SECONDS - t0)) s (exit $rc)"
  exit $rc
}
trap teardown EXIT

wait_ready() {  # URL, container: until /readyz answers 200 (the container must keep running)
  local url=$1 name=$2 start=$SECONDS
  until [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/readyz") == 200 ]]; do
    [[ $("$P" inspect --format '{{.State.Status}}' "$name") == running ]] \
      || { log "$name is not running"; return 1; }
    ((SECONDS - start < READY_TIMEOUT_S)) || { log "$name not ready after $READY_TIMEOUT_S s"; return 1; }
    sleep 1
  done
  log "$name ready after $((SECONDS - start)) s"
}

hostname_of() { "$P" inspect --format '{{.Config.Hostname}}' "$1"; }
ip_of() { "$P" inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }

# ------------------------------------------------------------------ 0. default image: size, ready time
if [[ -n ${READY_IMAGE:-} ]]; then  # e.g. localhost/v1motion:ci, the image container_smoke.sh built
  size=$("$P" image inspect --format '{{.Size}}' "$READY_IMAGE" | awk '{printf "%.0f", $1/1e6}')
  for i in 1 2 3; do
    "$P" rm -f v1motion-ci-ready >/dev/null 2>&1 || true
    start=$(date +%s%N)
    "$P" run -d --name v1motion-ci-ready --network host -e V1MOTION_TOKEN="$token" \
      -e V1MOTION_PORT="${ports[0]}" "$READY_IMAGE" >/dev/null 2>&1
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ports[0]}/readyz") == 200 ]]; do
      (( ($(date +%s%N) - start) / 1000000000 < READY_TIMEOUT_S )) || { log "not ready"; exit 1; }
      sleep 0.1
    done
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    "$P" rm -f -t 2 v1motion-ci-ready >/dev/null 2>&1
    log "$READY_IMAGE ($size MB): podman run to /readyz 200 in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s (run $i of 3)"
  done
fi

# ------------------------------------------------------------------ 1. compose, ray profile
"${compose[@]}" down -v -t 2 >/dev/null 2>&1 || true
log "building the compose image (Dockerfile target ray) with podman-compose"
tb=$SECONDS
"${compose[@]}" --podman-build-args "--format docker --network host --pull=never --build-arg BASE_IMAGE=$BASE_IMAGE" \
  build v1motion
log "build took $((SECONDS - tb)) s; image $("$P" image inspect --format '{{.Size}}' v1motion:compose | awk '{printf "%.0f MB", $1/1e6}')"
tu=$SECONDS
"${compose[@]}" up -d
head="${project}_ray-head_1" worker="${project}_ray-worker_1" service="${project}_v1motion_1"
# The Ray head's HEALTHCHECK (`ray health-check`), run by hand: no systemd timers here.
until "$P" healthcheck run "$head" >/dev/null 2>&1; do
  ((SECONDS - tu < READY_TIMEOUT_S)) || { log "the Ray head is not healthy"; exit 1; }
  sleep 2
done
log "Ray head healthy after $((SECONDS - tu)) s"
url="http://127.0.0.1:$COMPOSE_PORT"
wait_ready "$url" "$service"
"${compose[@]}" ps
"$bin/python" docker/deploy_check.py ran-on "$url" --runner ray \
  --worker-host "$(hostname_of "$worker")" --worker-ip "$(ip_of "$worker")" \
  --not-host "$(hostname_of "$head")" "$(hostname_of "$service")"
# Killed, not stopped: `ray start --block` as PID 1 ignores SIGTERM, so a `podman stop` lets the worker
# run on until the SIGKILL of its grace period; a kill is the worker's crash or its host lost.
"$bin/python" docker/deploy_check.py stop-mid-job "$url" --stop-cmd "$P kill $worker"
"$P" logs "$service" 2>&1 | grep -E '"job [0-9a-f]{32}: (ran on|failed|succeeded)' | tail -4 || true
"${compose[@]}" down -v -t 5 >/dev/null 2>&1
log "compose with the ray profile: passed in $((SECONDS - tu)) s (plus the build)"

# ------------------------------------------------------------------ 2. two replicas, one volume
tr=$SECONDS
"$P" volume create "$volume" >/dev/null
run_replica() {  # name, port
  "$P" run -d --name "$1" --network host -e V1MOTION_TOKEN="$token" -e V1MOTION_PORT="$2" \
    -v "$volume:/data" v1motion:compose >/dev/null 2>&1
}
run_replica "${replicas[0]}" "${ports[0]}"
wait_ready "http://127.0.0.1:${ports[0]}" "${replicas[0]}"
run_replica "${replicas[1]}" "${ports[1]}"
code=$(timeout 120 "$P" wait "${replicas[1]}")
said=$("$P" logs "${replicas[1]}" 2>&1)
# 1: serve's refusal before it listens, one line with the reason and the holder (not a crash).
if [[ $code != 1 || $said != *"one job store per data volume"* ]]; then
  log "the second replica on the same volume did not refuse to start (exit $code)"; exit 1
fi
log "the second replica on the shared volume refused to start (exit $code), saying:"
grep -m1 -o 'the job store .*' <<< "$said"
[[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${ports[0]}/readyz") == 200 ]] \
  || { log "the first replica stopped serving"; exit 1; }
"$bin/python" docker/deploy_check.py ran-on "http://127.0.0.1:${ports[0]}" --runner local
"$P" rm -f -t 5 "${replicas[0]}" >/dev/null
"$P" rm -f "${replicas[1]}" >/dev/null
run_replica "${replicas[1]}" "${ports[1]}"
wait_ready "http://127.0.0.1:${ports[1]}" "${replicas[1]}"
log "once the first replica is gone the second starts on the volume: passed in $((SECONDS - tr)) s"
