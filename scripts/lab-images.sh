#!/usr/bin/env bash
# Build the lab's systemd base images from Debian's archive (no registry) and
# import them into the local Docker engine.  Images that already exist are
# reused; REBUILD=1 forces a rebuild.
#
#   scripts/lab-images.sh            # bookworm (Debian 12)
#   scripts/lab-images.sh bookworm trixie
set -euo pipefail

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
prefix=${LAB_IMAGE_PREFIX:-vllm-fleet/debian-systemd}
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bookworm)

# What a systemd container needs to boot and be managed by Ansible.  Anything a
# role needs beyond this, the role installs itself.
packages=systemd,systemd-sysv,dbus,sudo,python3,python3-apt,ca-certificates,iproute2,procps,libcap2-bin

for suite in "${suites[@]}"; do
  tag="${prefix}:${suite}"
  if [ -z "${REBUILD:-}" ] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "lab-images: reusing ${tag}"
    continue
  fi
  root=$(mktemp -d "/tmp/lab-rootfs-${suite}.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "lab-images: debootstrap ${suite} from ${mirror}"
  debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log"; exit 1; }
  # Units that make no sense in a container and only slow boot or fail.
  for unit in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
              getty@tty1.service console-getty.service systemd-firstboot.service \
              systemd-remount-fs.service sys-kernel-config.mount; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
  done
  printf '%s\n' 'vllm-lab' >"$root/etc/hostname"
  : >"$root/etc/machine-id"
  rm -rf "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    - "$tag" >/dev/null
  rm -rf "$root" "$root.log"
  trap - EXIT
  echo "lab-images: built ${tag}"
done
