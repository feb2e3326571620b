#!/usr/bin/env bash
# Serve one completion through the lab and print it.  The internal API key is
# read inside the node from its root-only EnvironmentFile and given to curl on
# stdin, never on a command line.
set -euo pipefail
node=${1:-lab-node1}
prompt=${2:-Hello fleet}
body=$(printf '{"model": "tiny-llama", "prompt": "%s", "max_tokens": 16}' "$prompt")
docker exec -i "$node" sh -c '. /etc/vllm/default.env && printf "Authorization: Bearer %s" "$VLLM_API_KEY" |
  curl -sS --fail-with-body -H @- -H "Content-Type: application/json" --data-binary @/dev/fd/3 \
  http://127.0.0.1:8000/v1/completions 3<<EOF_BODY
'"$body"'
EOF_BODY'
echo
