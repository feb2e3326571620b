#!/usr/bin/env bash
# Where the lab's Prometheus is, and what it sees: the targets it scrapes and
# the alerts it has.  It listens on loopback only, as on a production
# monitoring host (there: ssh -L 9090:127.0.0.1:9090 <monitoring host>).
set -euo pipefail
mon=${LAB_MONITORING_HOST:-lab-mon}
prom() {
  docker exec "$mon" python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:9090/api/v1/" + sys.argv[1]).read().decode())' "$1"
}
summary() {
  python3 -c '
import json, sys
targets = json.loads(sys.argv[1])["data"]["activeTargets"]
alerts = json.loads(sys.argv[2])["data"]["alerts"]
down = sorted(t["labels"]["job"] + "@" + t["labels"].get("node", t["labels"]["instance"]) for t in targets if t["health"] != "up")
print(f"{len(targets) - len(down)} of {len(targets)} targets up" + (f"; not (yet) up: {down}" if down else ""))
firing = sorted({a["labels"]["alertname"] for a in alerts if a["state"] == "firing"})
print("alerts firing: " + (", ".join(firing) if firing else "none"))
print("down" if down else "ok")' "$(prom 'targets?state=active')" "$(prom alerts)"
}
# The first scrapes take a few intervals (5 s in the lab).
for _ in $(seq 12); do out=$(summary); [ "$(tail -n1 <<<"$out")" = ok ] && break; sleep 5; done
echo "Prometheus: http://127.0.0.1:9090 inside the container $mon (loopback only)"
head -n -1 <<<"$out" | sed 's/^/  /'
cat <<TXT
  targets:  docker exec $mon promtool query instant http://127.0.0.1:9090 up
  alerts:   docker exec $mon promtool query instant http://127.0.0.1:9090 ALERTS
  rules:    docker exec $mon ls /etc/prometheus/rules/vllm-fleet    (runbook: docs/runbook.md)
  Alertmanager: http://127.0.0.1:9093 in $mon (the lab's receiver delivers nowhere)
TXT
