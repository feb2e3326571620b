"""Decisions of the nvidia_driver role, as plain functions.

The role asks the host real questions (what is on the PCI bus, is this a
container, which nvidia module is loaded, which one is built for the running
kernel) and these functions turn the answers into decisions.  They are plain
Python so tests/unit/test_nvidia_driver_*.py can exercise every branch,
including the ones a container can never reach (a GPU that needs a reboot).
"""
from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable, Mapping

NVIDIA_PCI_VENDOR = "0x10de"
#: PCI classes of a GPU: 0x0300 VGA controller, 0x0302 3D controller (datacenter GPUs).
GPU_PCI_CLASSES = ("0x0300", "0x0302")
#: PCI class "Bridge: other" (0x0680): how NVSwitch chips enumerate on HGX boards.
NVSWITCH_PCI_CLASS = "0x0680"

#: Names of the packages NVIDIA's driver branches ship (driver, libraries, kernel
#: modules, persistenced, fabric manager, metapackages).  Only installed packages
#: whose version also belongs to the branch are held, so nvidia-container-toolkit
#: (versioned 1.x) or the CUDA toolkit (versioned 12.x/13.x) are never caught.
DRIVER_PACKAGE_PATTERN = r"(nvidia|^libcuda|^libnv|^libxnvctrl|^cuda-drivers)"


def nvidia_driver_pci_summary(text: str) -> dict[str, Any]:
    """Summarise ``<address> <vendor> <class>`` lines (one per PCI device, from sysfs).

    Returns the addresses of NVIDIA GPUs and NVSwitch chips and their counts.
    Lines that do not have three fields are ignored (a host without PCI, or a
    device whose attributes could not be read).
    """
    gpus: list[str] = []
    nvswitches: list[str] = []
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        address, vendor, pci_class = fields[0], fields[1].lower(), fields[2].lower()
        if vendor != NVIDIA_PCI_VENDOR:
            continue
        if pci_class.startswith(GPU_PCI_CLASSES):
            gpus.append(address)
        elif pci_class.startswith(NVSWITCH_PCI_CLASS):
            nvswitches.append(address)
    return {
        "gpu_count": len(gpus),
        "gpu_addresses": gpus,
        "nvswitch_count": len(nvswitches),
        "nvswitch_addresses": nvswitches,
    }


def nvidia_driver_skip_reasons(container: bool, container_type: str, gpu_count: int) -> list[str]:
    """Why the NVIDIA kernel modules cannot be loaded on this host (empty: they can)."""
    reasons = []
    if container:
        reasons.append(
            "this host is a container (%s): it runs on its host's kernel, so it can neither load kernel "
            "modules nor be rebooted from inside" % (container_type or "unknown type")
        )
    if int(gpu_count) == 0:
        reasons.append("no NVIDIA GPU on the PCI bus (no device with vendor 0x10de and class 0x0300/0x0302)")
    return reasons


def nvidia_driver_module_plan(state: Mapping[str, Any]) -> dict[str, Any]:
    """Decide what to do about the kernel modules after the packages are in place.

    ``state`` holds what the role read from the host:

    - ``skip_reasons``: from :func:`nvidia_driver_skip_reasons`; non-empty means no module work.
    - ``packages_changed``: the driver packages changed in this run.
    - ``flag_present``: the reboot flag of an earlier run is still there (it lives
      under /run, so a reboot clears it).
    - ``nouveau_loaded`` / ``nvidia_loaded``: /sys/module/<name> exists.
    - ``loaded_version``: /sys/module/nvidia/version ('' when not loaded).
    - ``built_version``: ``modinfo -F version nvidia`` for the running kernel ('' when none).
    - ``reboot_allowed``: the inventory's ``nvidia_driver_reboot``.

    Returns ``action`` - ``skip`` (no GPU or a container), ``none`` (the right module
    is loaded), ``load`` (built, not loaded, nothing changed: modprobe is enough),
    ``reboot`` or ``pending`` (a reboot is needed and not allowed) - with the
    ``reasons`` behind it and ``reboot_pending``.
    """
    skip = list(state.get("skip_reasons") or [])
    if skip:
        return {"action": "skip", "reasons": skip, "reboot_pending": False}

    loaded = str(state.get("loaded_version") or "").strip()
    built = str(state.get("built_version") or "").strip()
    reasons = []
    if state.get("packages_changed"):
        reasons.append("the NVIDIA driver packages changed in this run")
    if state.get("flag_present"):
        reasons.append("an earlier run changed the driver and is still waiting for a reboot")
    if state.get("nouveau_loaded"):
        reasons.append("the nouveau module is loaded and holds the GPU (it is blacklisted from the next boot on)")
    if state.get("nvidia_loaded") and loaded and built and loaded != built:
        reasons.append(
            "the loaded nvidia module is %s but %s is installed for this kernel "
            "(a driver/library version mismatch until the host reboots)" % (loaded, built)
        )

    if not reasons:
        if state.get("nvidia_loaded"):
            return {"action": "none", "reasons": [], "reboot_pending": False}
        if built:
            return {
                "action": "load",
                "reasons": ["the nvidia module %s is built for this kernel but not loaded" % built],
                "reboot_pending": False,
            }
        # Nothing changed, nothing loaded and nothing built: a reboot would not
        # help; the verification that follows reports the broken state instead.
        return {
            "action": "load",
            "reasons": ["no nvidia module is built for the running kernel (check `dkms status`)"],
            "reboot_pending": False,
        }
    if state.get("reboot_allowed"):
        return {"action": "reboot", "reasons": reasons, "reboot_pending": False}
    return {"action": "pending", "reasons": reasons, "reboot_pending": True}


def nvidia_driver_hold_candidates(dpkg_query: str, branch: str, pattern: str = DRIVER_PACKAGE_PATTERN) -> list[str]:
    """Installed driver packages of ``branch`` from ``dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n'``.

    A package counts when it is installed (second status letter ``i``; a held
    package reads ``hi``), its name matches ``pattern`` and its version belongs to
    the branch (``580.95.05-1`` for branch 580; an epoch is allowed).
    """
    version_re = re.compile(r"^([0-9]+:)?%s\." % re.escape(str(branch)))
    name_re = re.compile(pattern)
    names = []
    for line in (dpkg_query or "").splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        status, name, version = fields
        if len(status) < 2 or status[1] != "i":
            continue
        if name_re.search(name) and version_re.match(version):
            names.append(name)
    return sorted(set(names))


def nvidia_driver_hold_changes(dpkg_query: str, branch: str, hold: bool = True,
                               pattern: str = DRIVER_PACKAGE_PATTERN) -> list[str]:
    """The packages of :func:`nvidia_driver_hold_candidates` whose dpkg selection must change.

    With ``hold`` those not yet on hold (first status letter is not ``h``);
    without it those that are, so they go back to ``install``.  A converged host
    gives an empty list, so the role runs no dpkg_selections task at all.
    """
    wanted = set(nvidia_driver_hold_candidates(dpkg_query, branch, pattern))
    changes = []
    for line in (dpkg_query or "").splitlines():
        fields = line.split()
        if len(fields) != 3 or fields[1] not in wanted:
            continue
        if (fields[0][0] == "h") != bool(hold):
            changes.append(fields[1])
    return sorted(set(changes))


def nvidia_driver_not_installed(dpkg_query: str, packages: Iterable[str], version_glob: str = "") -> list[str]:
    """Which of ``packages`` are not installed (or not at a version matching ``version_glob``).

    Reads the same ``dpkg-query`` output as :func:`nvidia_driver_hold_candidates`.
    The role asks apt only for these, so a converged host runs no apt task at
    all (opening apt's cache is the slowest thing the role does).
    """
    installed = {}
    for line in (dpkg_query or "").splitlines():
        fields = line.split()
        if len(fields) == 3 and len(fields[0]) >= 2 and fields[0][1] == "i":
            installed[fields[1]] = fields[2]
    return [
        name
        for name in packages
        if name not in installed or (version_glob and not fnmatch.fnmatchcase(installed[name], version_glob))
    ]


def nvidia_driver_versioned(packages: Iterable[str], version_glob: str) -> list[str]:
    """``name=<glob>`` for each package, so apt installs the branch's build of each."""
    return ["%s=%s" % (name, version_glob) for name in packages]


def nvidia_driver_key_fingerprints(gpg_colons: str) -> list[str]:
    """Primary-key fingerprints from ``gpg --show-keys --with-colons`` output.

    The ``fpr`` record that follows a ``pub`` record is the primary key's; the
    ones after ``sub`` records belong to subkeys and are skipped.
    """
    fingerprints = []
    previous = ""
    for line in (gpg_colons or "").splitlines():
        fields = line.split(":")
        kind = fields[0]
        if kind == "fpr" and previous == "pub" and len(fields) > 9:
            fingerprints.append(fields[9].upper())
        if kind in ("pub", "sub", "sec", "ssb"):
            previous = kind
        elif kind == "fpr":
            previous = "fpr"
    return fingerprints
