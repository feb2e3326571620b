#!/usr/bin/env bash
# Prepare this machine for `make lab` and `make test` (and CI's .ci/run, which
# calls this same script): Debian's packages the lab and the tests need, and a
# running Docker engine.  Does nothing on a machine that is already prepared;
# otherwise it needs root on Debian 12 and refuses anything else with a
# message that says what to install by hand.
set -euo pipefail

packages=(docker.io debootstrap python3-venv make curl openssl git gnupg prometheus mtail tcpdump)

. /etc/os-release 2>/dev/null || true
need=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done

if [ ${#need[@]} -gt 0 ]; then
  if [ "${ID:-}" != debian ] || [ "${VERSION_ID:-}" != 12 ]; then
    echo "bootstrap: this machine is ${PRETTY_NAME:-an unknown OS}; the lab is prepared automatically only on" >&2
    echo "bootstrap: Debian 12. Install by hand: Docker (running), debootstrap, python3-venv, make, curl," >&2
    echo "bootstrap: openssl, git, gnupg, promtool (prometheus), mtail, tcpdump; then run make again." >&2
    exit 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing Debian packages: ${need[*]}; run as root (or: sudo $0)" >&2
    exit 1
  fi
  echo "bootstrap: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: the Docker engine is not running (or not reachable for $(id -un)); start dockerd as root" >&2
    exit 1
  fi
  echo "bootstrap: starting dockerd (log: /var/log/dockerd.log)"
  if command -v systemctl >/dev/null 2>&1 && systemctl start docker 2>/dev/null; then
    :
  else
    (dockerd >/var/log/dockerd.log 2>&1 &)
  fi
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "bootstrap: dockerd did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
