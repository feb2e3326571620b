"""The nvidia_driver role's decisions (vllm_fleet/nvidia_driver.py).

Molecule runs the role in containers, where only the "no GPU / container"
branch is real; these tests cover every other branch of the module and reboot
decision, the PCI and dpkg parsing, and the key fingerprint check.
"""
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
from vllm_fleet import nvidia_driver as nd  # noqa: E402

# --- PCI ---------------------------------------------------------------------

# What the role's probe prints on an HGX H100 board (8 GPUs as 3D controllers,
# 4 NVSwitch chips as "bridge: other"), abridged, plus unrelated devices.
HGX_PCI = """\
0000:00:00.0 0x8086 0x060000
0000:18:00.0 0x10de 0x030200
0000:2a:00.0 0x10de 0x030200
0000:3a:00.0 0x10de 0x030200
0000:5d:00.0 0x10de 0x030200
0000:9a:00.0 0x10de 0x030200
0000:ab:00.0 0x10de 0x030200
0000:ba:00.0 0x10de 0x030200
0000:db:00.0 0x10de 0x030200
0000:05:00.0 0x10de 0x068000
0000:06:00.0 0x10de 0x068000
0000:07:00.0 0x10de 0x068000
0000:08:00.0 0x10de 0x068000
0000:19:00.0 0x15b3 0x020700
"""


def test_pci_summary_counts_gpus_and_nvswitches_on_an_hgx_board():
    summary = nd.nvidia_driver_pci_summary(HGX_PCI)
    assert summary["gpu_count"] == 8
    assert summary["nvswitch_count"] == 4
    assert "0000:18:00.0" in summary["gpu_addresses"]


def test_pci_summary_sees_a_workstation_gpu_and_ignores_its_audio_function():
    text = "0000:01:00.0 0x10de 0x030000\n0000:01:00.1 0x10de 0x040300\n0000:00:02.0 0x8086 0x030000\n"
    summary = nd.nvidia_driver_pci_summary(text)
    assert (summary["gpu_count"], summary["nvswitch_count"]) == (1, 0)


@pytest.mark.parametrize("text", ["", "garbage\n", "0000:00:01.0 0x1af4 0x010000\n"])
def test_pci_summary_of_a_host_without_nvidia_devices(text):
    assert nd.nvidia_driver_pci_summary(text)["gpu_count"] == 0


# --- skip reasons ------------------------------------------------------------


def test_a_container_on_a_gpu_host_is_still_skipped():
    reasons = nd.nvidia_driver_skip_reasons(True, "docker", 8)
    assert len(reasons) == 1 and "container (docker)" in reasons[0]


def test_a_container_without_gpu_gives_both_reasons():
    reasons = nd.nvidia_driver_skip_reasons(True, "docker", 0)
    assert len(reasons) == 2 and "no NVIDIA GPU" in reasons[1]


def test_bare_metal_with_gpus_is_not_skipped():
    assert nd.nvidia_driver_skip_reasons(False, "", 2) == []


# --- module and reboot plan --------------------------------------------------


def _state(**kw):
    base = dict(skip_reasons=[], packages_changed=False, flag_present=False, nouveau_loaded=False,
                nvidia_loaded=True, loaded_version="580.95.05", built_version="580.95.05", reboot_allowed=False)
    base.update(kw)
    return base


def test_skip_never_reboots_even_when_allowed():
    plan = nd.nvidia_driver_module_plan(_state(skip_reasons=["container"], packages_changed=True, reboot_allowed=True))
    assert plan == {"action": "skip", "reasons": ["container"], "reboot_pending": False}


def test_converged_host_needs_nothing():
    plan = nd.nvidia_driver_module_plan(_state())
    assert plan["action"] == "none" and not plan["reboot_pending"]


def test_new_driver_with_reboot_allowed_reboots():
    plan = nd.nvidia_driver_module_plan(_state(packages_changed=True, reboot_allowed=True, nvidia_loaded=False,
                                               loaded_version=""))
    assert plan["action"] == "reboot" and not plan["reboot_pending"]


def test_new_driver_without_permission_is_pending():
    plan = nd.nvidia_driver_module_plan(_state(packages_changed=True))
    assert plan["action"] == "pending" and plan["reboot_pending"]
    assert "changed in this run" in plan["reasons"][0]


def test_pending_survives_the_next_run_through_the_flag():
    plan = nd.nvidia_driver_module_plan(_state(flag_present=True))
    assert plan["action"] == "pending" and plan["reboot_pending"]


def test_mismatch_between_loaded_and_built_module_needs_a_reboot():
    plan = nd.nvidia_driver_module_plan(_state(loaded_version="580.82.07", built_version="580.95.05",
                                               reboot_allowed=True))
    assert plan["action"] == "reboot"
    assert "580.82.07" in plan["reasons"][0] and "mismatch" in plan["reasons"][0]


def test_loaded_nouveau_needs_a_reboot():
    plan = nd.nvidia_driver_module_plan(_state(nouveau_loaded=True, nvidia_loaded=False, loaded_version=""))
    assert plan["action"] == "pending" and "nouveau" in plan["reasons"][0]


def test_built_but_unloaded_module_is_loaded_without_reboot():
    plan = nd.nvidia_driver_module_plan(_state(nvidia_loaded=False, loaded_version="", reboot_allowed=True))
    assert plan["action"] == "load" and not plan["reboot_pending"]


def test_nothing_built_does_not_reboot_in_a_loop():
    plan = nd.nvidia_driver_module_plan(_state(nvidia_loaded=False, loaded_version="", built_version="",
                                               reboot_allowed=True))
    assert plan["action"] == "load" and "dkms status" in plan["reasons"][0]


# --- hold --------------------------------------------------------------------

DPKG = """\
ii  apt 2.6.1 
ii  libcuda1 580.95.05-1
hi  nvidia-driver-cuda 580.95.05-1
ii  nvidia-kernel-open-dkms 580.95.05-1
ii  nvidia-persistenced 580.95.05-1
ii  nvidia-container-toolkit 1.17.8-1
ii  cuda-toolkit 13.0.2-1
ii  libnvjitlink-13-0 13.0.88-1
rc  nvidia-smi 580.82.07-1
ii  nvidia-fabricmanager-580 580.95.05-1
ii  cuda-drivers 1:580.95.05-1
ii  libxnvctrl0 580.95.05-1
ii  libcudnn9 580.1.2-1
"""


def test_hold_takes_the_installed_packages_of_the_branch_only():
    held = nd.nvidia_driver_hold_candidates(DPKG, "580")
    assert held == [
        "cuda-drivers",
        "libcuda1",
        "libxnvctrl0",
        "nvidia-driver-cuda",
        "nvidia-fabricmanager-580",
        "nvidia-kernel-open-dkms",
        "nvidia-persistenced",
    ]


def test_hold_of_another_branch_takes_nothing():
    assert nd.nvidia_driver_hold_candidates(DPKG, "590") == []


def test_hold_changes_only_what_is_not_held_yet():
    # nvidia-driver-cuda is already held ("hi"); the others of the branch are not.
    changes = nd.nvidia_driver_hold_changes(DPKG, "580", True)
    assert "nvidia-driver-cuda" not in changes
    assert changes == [name for name in nd.nvidia_driver_hold_candidates(DPKG, "580") if name != "nvidia-driver-cuda"]


def test_hold_changes_on_a_converged_host_are_none():
    held = "\n".join("hi  %s 580.95.05-1" % name for name in ["libcuda1", "nvidia-driver-cuda", "nvidia-smi"])
    assert nd.nvidia_driver_hold_changes(held, "580", True) == []


def test_releasing_the_hold_touches_only_held_packages():
    assert nd.nvidia_driver_hold_changes(DPKG, "580", False) == ["nvidia-driver-cuda"]


def test_not_installed_asks_apt_only_for_what_is_missing_or_off_branch():
    wanted = ["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-smi", "nvidia-open"]
    # nvidia-smi was removed ("rc"), nvidia-open never installed.
    assert nd.nvidia_driver_not_installed(DPKG, wanted, "580.*") == ["nvidia-smi", "nvidia-open"]
    # A new exact version makes every installed package of the old build "missing".
    assert nd.nvidia_driver_not_installed(DPKG, wanted[:2], "580.105.08-*") == wanted[:2]
    assert nd.nvidia_driver_not_installed(DPKG, ["apt", "gpg"]) == ["gpg"]


def test_versioned_names_carry_the_glob():
    assert nd.nvidia_driver_versioned(["nvidia-open", "nvidia-persistenced"], "580.*") == [
        "nvidia-open=580.*",
        "nvidia-persistenced=580.*",
    ]


# --- key fingerprint ---------------------------------------------------------

# gpg --show-keys --with-colons of a key with a subkey (fields abridged).
GPG_COLONS = """\
pub:-:4096:1:A4B469963BF863CC:1650000000:::-:::scESC::::::23::0:
fpr:::::::::EB693B3035CD5710E231E123A4B469963BF863CC:
uid:-::::1650000000::A7D3E8C2B1::cudatools <cudatools@nvidia.com>::::::::::0:
sub:-:4096:1:1234567890ABCDEF:1650000000::::::e::::::23:
fpr:::::::::0000000000000000000000001234567890ABCDEF:
"""


def test_fingerprints_are_the_primary_keys_only():
    assert nd.nvidia_driver_key_fingerprints(GPG_COLONS) == ["EB693B3035CD5710E231E123A4B469963BF863CC"]


def test_fingerprints_of_garbage_is_empty():
    assert nd.nvidia_driver_key_fingerprints("gpg: no valid OpenPGP data found.\n") == []


@pytest.mark.skipif(shutil.which("gpg") is None, reason="needs gpg")
def test_fingerprint_matches_what_gpg_reports_for_a_fresh_key(tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet"]
    subprocess.run(gpg + ["--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key",
                          "unit test <unit@invalid>", "ed25519", "sign", "1d"], check=True)
    listed = subprocess.run(gpg + ["--with-colons", "--list-keys"], check=True, capture_output=True, text=True)
    expected = [line.split(":")[9] for line in listed.stdout.splitlines() if line.startswith("fpr:")][0]
    exported = subprocess.run(gpg + ["--armor", "--export"], check=True, capture_output=True).stdout
    key = tmp_path / "key.asc"
    key.write_bytes(exported)
    shown = subprocess.run(gpg + ["--with-colons", "--show-keys", str(key)], check=True, capture_output=True, text=True)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    assert nd.nvidia_driver_key_fingerprints(shown.stdout) == [expected]
