"""What the nvidia_driver role leaves on a converged host (testinfra).

The repository is the test double of NVIDIA's CUDA repository
(tests/doubles/nvidia_apt_repo): branches 580 and 590 side by side, empty
packages with NVIDIA's names.  The containers have no GPU.
"""
import json
import os
import pathlib

import pytest
import testinfra.utils.ansible_runner

# The inventory says which hosts and with which variables; the commands go
# straight through `docker exec` (testinfra's docker backend), which is several
# times faster than one Ansible run per command on a small CI machine.
RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
testinfra_hosts = ["docker://" + name for name in RUNNER.get_hosts("vllm_nodes")]

DOUBLE = pathlib.Path(os.environ["MOLECULE_PROJECT_DIRECTORY"]) / ".lab" / "nvidia-apt-double"
BRANCH_VERSION = "580.95.05-1"
NEWER_VERSION = "590.44.01-1"


@pytest.fixture()
def hostvars(host):
    return RUNNER.get_variables(host.backend.get_hostname())


def _flavour(hostvars):
    return hostvars.get("nvidia_driver_kernel_modules", "open")


def _fabricmanager_forced(hostvars):
    return hostvars.get("nvidia_driver_fabricmanager", "auto") == "always"


def _installed(host, name):
    cmd = host.run("dpkg-query --show --showformat='${db:Status-Abbrev} ${Version}' %s", name)
    return cmd.stdout.split() if cmd.rc == 0 and cmd.stdout[1:2] == "i" else None


# --- repository, key, pin ----------------------------------------------------


def test_deb822_source_names_the_mirror_and_its_own_keyring(host):
    source = host.file("/etc/apt/sources.list.d/nvidia-cuda.sources")
    assert source.exists and source.mode == 0o644
    lines = source.content_string.splitlines()
    assert "URIs: file:///srv/nvidia-apt-double/repo/" in lines
    assert "Suites: /" in lines
    assert "Signed-By: /etc/apt/keyrings/nvidia-cuda.asc" in lines
    assert not any(line.startswith("Components:") for line in lines)


def test_keyring_is_the_mirrors_key(host):
    keyring = host.file("/etc/apt/keyrings/nvidia-cuda.asc")
    assert keyring.user == "root" and keyring.mode == 0o644
    assert keyring.content_string.strip() == (DOUBLE / "repo" / "archive-key.pub").read_text().strip()


def test_apt_trusts_the_signed_repository(host):
    # A signature apt cannot check makes `apt-get update` warn and leave the
    # repository out; the role's source must update cleanly.
    cmd = host.run(
        "apt-get update -o Dir::Etc::sourcelist=sources.list.d/nvidia-cuda.sources "
        "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
    )
    assert cmd.rc == 0, cmd.stderr
    assert "NO_PUBKEY" not in cmd.stderr and "not signed" not in cmd.stderr
    assert "W:" not in cmd.stderr and "E:" not in cmd.stderr, cmd.stderr


def test_pin_keeps_the_branch_although_a_newer_one_is_offered(host):
    policy = host.check_output("apt-cache policy nvidia-driver-cuda")
    assert f"Candidate: {BRANCH_VERSION}" in policy
    assert NEWER_VERSION in policy  # the newer branch is there ...
    assert f"{BRANCH_VERSION} 1000" in policy  # ... and loses to the pin
    pin = host.file("/etc/apt/preferences.d/nvidia-driver-branch.pref").content_string
    assert "Pin: version 580.*" in pin and "Pin-Priority: 1000" in pin


def test_upgrade_moves_no_driver_package(host):
    sim = host.check_output("apt-get --simulate dist-upgrade")
    assert not [line for line in sim.splitlines() if line.startswith("Inst") and "nvidia" in line]


# --- packages and hold -------------------------------------------------------


def test_driver_packages_of_the_branch_and_flavour_are_installed(host, hostvars):
    wanted = ["nvidia-driver-cuda", "libcuda1", "nvidia-smi", "nvidia-persistenced"]
    modules, other = ("nvidia-kernel-open-dkms", "nvidia-kernel-dkms")
    if _flavour(hostvars) == "proprietary":
        modules, other = other, modules
    for name in wanted + [modules]:
        status = _installed(host, name)
        assert status is not None, f"{name} is not installed"
        assert status[1] == BRANCH_VERSION, f"{name} {status[1]}"
    assert _installed(host, other) is None


def test_driver_packages_are_held(host, hostvars):
    held = set(host.check_output("apt-mark showhold").split())
    modules = "nvidia-kernel-dkms" if _flavour(hostvars) == "proprietary" else "nvidia-kernel-open-dkms"
    assert {"nvidia-driver-cuda", "libcuda1", "nvidia-smi", "nvidia-persistenced", modules} <= held
    selections = host.check_output("dpkg --get-selections nvidia-driver-cuda")
    assert selections.split() == ["nvidia-driver-cuda", "hold"]


def test_nothing_outside_the_driver_is_held(host):
    held = host.check_output("apt-mark showhold").split()
    assert "gpg" not in held and "initramfs-tools" not in held


def test_cuda_toolkit_stays_out_by_default(host):
    assert "cuda-toolkit" in host.check_output("apt-cache policy cuda-toolkit")  # available ...
    assert _installed(host, "cuda-toolkit") is None  # ... not installed


# --- fabric manager ----------------------------------------------------------


def test_fabric_manager_only_where_wanted(host, hostvars):
    unit = host.service("nvidia-fabricmanager")
    if _fabricmanager_forced(hostvars):
        status = _installed(host, "nvidia-fabricmanager-580")
        assert status is not None and status[1] == BRANCH_VERSION
        assert "nvidia-fabricmanager-580" in host.check_output("apt-mark showhold").split()
        assert unit.is_enabled
        assert not unit.is_running  # no GPU: enabled, never started
    else:
        # No NVSwitch on the PCI bus and not forced: not installed at all.
        assert _installed(host, "nvidia-fabricmanager-580") is None
        assert not host.file("/usr/lib/systemd/system/nvidia-fabricmanager.service").exists


# --- kernel modules, initramfs, persistence ----------------------------------


def test_nouveau_is_blacklisted(host):
    blacklist = host.file("/etc/modprobe.d/blacklist-nouveau.conf")
    lines = [line for line in blacklist.content_string.splitlines() if not line.startswith("#")]
    assert lines == ["blacklist nouveau", "options nouveau modeset=0"]
    # What the module loader reads (the initramfs copies the same directory).
    config = host.run("modprobe --showconfig 2>/dev/null | grep -i nouveau").stdout
    assert "blacklist nouveau" in config


def test_the_initramfs_was_rebuilt_once_after_the_blacklist_changed(host):
    """The "update initramfs" handler ran update-initramfs for every kernel on
    the first converge, after the blacklist was written, and not again (the
    idempotence step).  The calls are recorded by a test double in PATH
    (tests/doubles/update-initramfs): a container has no initramfs to show."""
    calls = host.file("/var/log/update-initramfs-calls.log").content_string.splitlines()
    assert [c.split(" ", 1)[1] for c in calls] == ["-u -k all"], calls
    blacklist = host.file("/etc/modprobe.d/blacklist-nouveau.conf").mtime.timestamp()
    assert int(calls[0].split()[0]) >= int(blacklist), (calls, blacklist)


def test_modules_load_at_boot(host):
    conf = host.file("/etc/modules-load.d/nvidia.conf").content_string.splitlines()
    assert [line for line in conf if line and not line.startswith("#")] == ["nvidia", "nvidia_uvm"]


def test_persistenced_is_enabled_with_persistence_mode_on(host):
    unit = host.service("nvidia-persistenced")
    assert unit.is_enabled
    assert not unit.is_running  # no GPU here: the role enables it and starts it only where a GPU answers
    merged = host.check_output("systemctl cat nvidia-persistenced.service")
    assert "--no-persistence-mode" in merged  # the packaged unit ...
    exec_lines = host.check_output("systemctl show -p ExecStart nvidia-persistenced.service")
    assert "--persistence-mode" in exec_lines and "--no-persistence-mode" not in exec_lines  # ... is overridden


# --- no GPU: skipped, and said so --------------------------------------------


def test_local_fact_says_module_load_and_reboot_were_skipped(host):
    fact = json.loads(host.file("/etc/ansible/facts.d/nvidia_driver.fact").content_string)
    assert fact["module_load"] == "skipped"
    assert fact["reboot"] == "skipped"
    assert fact["reboot_pending"] is False
    assert fact["gpus"] == 0
    reasons = " ".join(fact["skip_reasons"])
    assert "container (docker)" in reasons and "no NVIDIA GPU" in reasons


def test_local_fact_is_readable_by_ansible(host):
    result = RUNNER.run_module(host.backend.get_hostname(), "setup", "filter=ansible_local")
    assert result["ansible_facts"]["ansible_local"]["nvidia_driver"]["branch"] == "580"


def test_no_reboot_is_flagged(host, hostvars):
    # Even where reboots are allowed (node2), a container is never rebooted and
    # nothing is pending.
    assert not host.file("/run/nvidia-driver-reboot-required").exists

