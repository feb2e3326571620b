#!/usr/bin/env bash
# Serve one completion through the whole lab stack and print it:
# client -> VIP 172.31.240.100:443 (nginx on the VRRP master; TLS verified
# against the lab CA; client key) -> least_conn upstream -> vLLM on a node
# (internal key).  The client key is handed to curl on stdin, never argv.
set -euo pipefail
cd "$(dirname "$0")/.."
lab=${VLLM_FLEET_LAB_DIR:-.lab}
vip=${LAB_VIP:-172.31.240.100}
prompt=${1:-Hello fleet}
printf 'Authorization: Bearer %s\n' "$(cat "$lab/secrets/client-lab-alice")" |
  curl -sS --fail-with-body --cacert "$lab/pki/ca.crt" -H @- -H 'Content-Type: application/json' \
    --data "{\"model\": \"tiny-llama\", \"prompt\": \"${prompt//\"/}\", \"max_tokens\": 16}" \
    "https://$vip/v1/completions"
echo
