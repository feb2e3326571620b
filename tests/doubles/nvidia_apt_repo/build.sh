#!/usr/bin/env bash
# TEST DOUBLE of NVIDIA's CUDA apt repository (see README.md next to this file).
#
# Builds, at test time, a signed flat apt repository that has the layout of
# https://developer.download.nvidia.com/compute/cuda/repos/<distro>/<arch>/ and
# NVIDIA's real package names, but whose packages are empty: each holds a
# marker file under /usr/share/doc (and a systemd unit where the real one
# ships a service).  It is signed with a throw-away key made for this run; the
# private key is deleted when the script ends and never stored.
#
#   build.sh OUT_DIR [BRANCH ...]        (default branches: 580 590)
#
# OUT_DIR keeps its inode (bind mounts of it stay valid); its contents are
# replaced:
#   OUT_DIR/repo/             Packages(.gz), Release, InRelease, Release.gpg, *.deb
#   OUT_DIR/repo/archive-key.pub   the public key (ASCII armor), like NVIDIA's 3bf863cc.pub
#   OUT_DIR/fingerprint       the key's fingerprint (40 hex digits)
#
# Needs: bash, dpkg-deb (dpkg), gpg and gpg-agent (gnupg), gzip, coreutils.
set -euo pipefail

out=${1:?usage: build.sh OUT_DIR [BRANCH ...]}
shift
branches=("$@")
[ ${#branches[@]} -gt 0 ] || branches=(580 590)

for tool in dpkg-deb gpg gpg-agent gzip sha256sum md5sum; do
  command -v "$tool" >/dev/null || { echo "nvidia-apt-double: $tool is missing (apt install gnupg)" >&2; exit 1; }
done

# A build number for each branch, shaped like NVIDIA's (580.95.05-1).
version_of() {
  case "$1" in
    580) echo 580.95.05-1 ;;
    590) echo 590.44.01-1 ;;
    *) echo "$1.10.01-1" ;;
  esac
}

mkdir -p "$out"
find "$out" -mindepth 1 -delete
repo="$out/repo"
mkdir -p "$repo"
work=$(mktemp -d)
trap 'gpgconf --kill gpg-agent 2>/dev/null; rm -rf "$work"' EXIT
export GNUPGHOME="$work/gnupg"
mkdir -m 0700 "$GNUPGHOME"

# deb NAME VERSION DEPENDS CONFLICTS [UNIT_TEXT [UNIT_NAME]]
# An empty package: a marker file, and a systemd unit UNIT_NAME.service
# (default NAME.service) when UNIT_TEXT is given.
deb() {
  local name=$1 version=$2 depends=$3 conflicts=$4 unit=${5:-} unit_name=${6:-$1}
  local root="$work/pkg/$name-$version"
  mkdir -p "$root/DEBIAN" "$root/usr/share/doc/$name"
  printf 'Test double of NVIDIA'"'"'s %s %s, built by vllm-fleet tests/doubles/nvidia_apt_repo.\nIt contains no driver.\n' \
    "$name" "$version" >"$root/usr/share/doc/$name/TEST-DOUBLE"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: all"
    echo "Maintainer: vllm-fleet test double <test-double@invalid>"
    echo "Section: non-free/libs"
    echo "Priority: optional"
    [ -z "$depends" ] || echo "Depends: $depends"
    [ -z "$conflicts" ] || echo "Conflicts: $conflicts"
    echo "Description: test double of NVIDIA's $name (empty)"
    echo " Stands in for NVIDIA's package in vllm-fleet's Molecule tests."
  } >"$root/DEBIAN/control"
  if [ -n "$unit" ]; then
    mkdir -p "$root/usr/lib/systemd/system"
    printf '%s\n' "$unit" >"$root/usr/lib/systemd/system/$unit_name.service"
  fi
  dpkg-deb --root-owner-group -Zgzip --build "$root" "$repo/${name}_${version}_all.deb" >/dev/null
}

unit() { # DESCRIPTION EXEC -> a unit shaped like the real one (never started here: no GPU)
  printf '[Unit]\nDescription=%s (test double)\n\n[Service]\nType=forking\nExecStart=%s\n\n[Install]\nWantedBy=multi-user.target\n' "$1" "$2"
}

for branch in "${branches[@]}"; do
  v=$(version_of "$branch")
  # Debian names, as in NVIDIA's debian12/debian13 repositories.
  deb libcuda1 "$v" "" ""
  deb nvidia-smi "$v" "" ""
  deb nvidia-driver-cuda "$v" "libcuda1 (= $v), nvidia-smi (= $v)" ""
  deb nvidia-kernel-open-dkms "$v" "" "nvidia-kernel-dkms"
  deb nvidia-kernel-dkms "$v" "" "nvidia-kernel-open-dkms"
  deb nvidia-persistenced "$v" "" "" \
    "$(unit 'NVIDIA Persistence Daemon' '/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose')"
  deb nvidia-open "$v" "nvidia-driver-cuda (>= $v), nvidia-kernel-open-dkms (>= $v)" ""
  deb cuda-drivers "$v" "nvidia-driver-cuda (>= $v), nvidia-kernel-dkms (>= $v)" ""
  # Fabric manager: named after the branch up to 580, unsuffixed from 590 on.
  fm=nvidia-fabricmanager
  [ "$branch" -ge 590 ] || fm="nvidia-fabricmanager-$branch"
  # The unit is nvidia-fabricmanager.service whatever the package is called.
  deb "$fm" "$v" "" "" \
    "$(unit 'NVIDIA fabric manager service' '/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg')" \
    nvidia-fabricmanager
done
# Not tied to a driver branch: the role must leave it out unless asked.
deb cuda-toolkit 13.0.2-1 "" ""

# Flat repository indexes, as NVIDIA publishes them (Suites: /): every
# version of every package (what dpkg-scanpackages --multiversion writes).
for file in "$repo"/*.deb; do
  dpkg-deb --field "$file"
  printf 'Filename: ./%s\nSize: %s\nMD5sum: %s\nSHA256: %s\n\n' "${file##*/}" "$(stat -c%s "$file")" \
    "$(md5sum <"$file" | cut -d' ' -f1)" "$(sha256sum <"$file" | cut -d' ' -f1)"
done >"$repo/Packages"
gzip -9nk "$repo/Packages"
{
  echo "Origin: vllm-fleet test double of NVIDIA"
  echo "Label: NVIDIA CUDA (test double)"
  echo "Architectures: all amd64 arm64"
  echo "Date: $(LC_ALL=C date -Ru)"
  echo "MD5Sum:"
  for f in Packages Packages.gz; do printf ' %s %s %s\n' "$(md5sum <"$repo/$f" | cut -d' ' -f1)" "$(stat -c%s "$repo/$f")" "$f"; done
  echo "SHA256:"
  for f in Packages Packages.gz; do printf ' %s %s %s\n' "$(sha256sum <"$repo/$f" | cut -d' ' -f1)" "$(stat -c%s "$repo/$f")" "$f"; done
} >"$repo/Release"

gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
  --quick-gen-key 'vllm-fleet NVIDIA repository test double <test-double@invalid>' ed25519 sign 2d
fpr=$(gpg --batch --quiet --with-colons --list-keys 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
gpg --batch --yes --armor --export "$fpr" >"$repo/archive-key.pub"
gpg --batch --yes --digest-algo SHA512 --local-user "$fpr" --clearsign --output "$repo/InRelease" "$repo/Release"
gpg --batch --yes --digest-algo SHA512 --local-user "$fpr" --armor --detach-sign --output "$repo/Release.gpg" "$repo/Release"
echo "$fpr" >"$out/fingerprint"
chmod -R a+rX "$out"

echo "nvidia-apt-double: $(ls "$repo"/*.deb | wc -l) packages for branches ${branches[*]} in $repo, signed by $fpr"
