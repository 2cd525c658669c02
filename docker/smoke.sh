#!/usr/bin/env bash
# Check a running v1motion server from outside (CI runs it against the container, as SMOKE_CMD of
# ../shared/tools/container_smoke.sh): the smoke tests of tests/container, then schemathesis over the
# server's whole OpenAPI schema (all checks, a bounded number of examples per operation).
#
#   V1MOTION_CONTAINER_URL=http://127.0.0.1:8000 V1MOTION_CONTAINER_TOKEN=... bash docker/smoke.sh
#
# Needs the dev and container extras in .venv: pip install -e '.[dev,container]'.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${V1MOTION_CONTAINER_URL:?set V1MOTION_CONTAINER_URL to the base URL of the server}"
: "${VENV:=.venv}"
: "${SCHEMATHESIS_MAX_EXAMPLES:=30}"   # per operation and phase
: "${SCHEMATHESIS_TIMEOUT_S:=240}"     # hard cap on the fuzzing run
bin="$(cd "$VENV/bin" && pwd)"
root="$(pwd)"

"$bin/python" -m pytest -q -p no:cacheprovider tests/container

auth=()
if [[ -n ${V1MOTION_CONTAINER_TOKEN:-} ]]; then
  auth=(-H "Authorization: Bearer $V1MOTION_CONTAINER_TOKEN")
fi
# schemathesis keeps state in ./.schemathesis: run it from a scratch directory, not the checkout.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd "$scratch"
echo "schemathesis: ${SCHEMATHESIS_MAX_EXAMPLES} examples per operation, all checks"
timeout "$SCHEMATHESIS_TIMEOUT_S" "$bin/schemathesis" --config-file "$root/docker/schemathesis.toml" run "$V1MOTION_CONTAINER_URL/openapi.json" \
  --checks all --max-examples "$SCHEMATHESIS_MAX_EXAMPLES" --seed 0 --workers 1 \
  --request-timeout 30 --generation-database none --no-color "${auth[@]}"
cd "$root"
