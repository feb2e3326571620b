"""The lab's Molecule platforms are declared once (playbooks/lab/vars/platform.yml)
and completed per scenario by vllm_fleet.lab.platforms."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vllm_fleet.lab.platforms import complete, lab_host

ROOT = Path(__file__).resolve().parents[2]
SHARED = yaml.safe_load((ROOT / "playbooks/lab/vars/platform.yml").read_text())
SCENARIO_FILES = sorted(ROOT.glob("molecule/*/molecule.yml")) + [ROOT / ".config/molecule/config.yml"]


def test_a_platform_takes_the_defaults_and_keeps_its_own_keys():
    defaults = {"image": "debian", "volumes": ["/sys/fs/cgroup:/sys/fs/cgroup:rw"], "sysctls": {"a": 1}}
    got = complete({"name": "n1", "sysctls": {}, "volumes": ["/x:/x:ro"], "groups": ["g"]}, defaults)
    assert got == {"name": "n1", "image": "debian", "sysctls": {}, "groups": ["g"],
                   "volumes": ["/sys/fs/cgroup:/sys/fs/cgroup:rw", "/x:/x:ro"]}
    # The defaults are not changed by completing a platform.
    assert defaults["volumes"] == ["/sys/fs/cgroup:/sys/fs/cgroup:rw"]


def test_a_volume_already_in_the_defaults_is_not_mounted_twice():
    defaults = {"volumes": ["/a:/a"]}
    assert complete({"name": "n", "volumes": ["/a:/a", "/b:/b"]}, defaults)["volumes"] == ["/a:/a", "/b:/b"]


@pytest.mark.parametrize("platform", [{}, {"groups": ["g"]}, "node1"])
def test_a_platform_without_a_name_is_refused(platform):
    with pytest.raises(ValueError, match="a platform needs a name"):
        complete(platform, {})


@pytest.mark.parametrize("path", SCENARIO_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_scenario_repeats_the_shared_declaration(path):
    """What every lab host needs is said once: a scenario that sets one of the
    shared keys again must have its own value (cluster-node3's empty sysctls)."""
    for platform in yaml.safe_load(path.read_text()).get("platforms", []):
        for key in ("image", "command", "cgroupns_mode", "privileged", "capabilities", "tmpfs", "shm_size",
                    "pre_build_image"):
            assert key not in platform, f"{path}: {platform['name']} repeats {key} (playbooks/lab/vars/platform.yml)"
        for volume in platform.get("volumes", []):
            assert volume not in SHARED["volumes"], f"{path}: {platform['name']} repeats the volume {volume}"
        if "sysctls" in platform:
            assert platform["sysctls"] != SHARED["sysctls"], f"{path}: {platform['name']} repeats sysctls"


def test_every_scenario_creates_its_hosts_with_the_shared_playbook():
    config = yaml.safe_load((ROOT / ".config/molecule/config.yml").read_text())
    assert config["provisioner"]["playbooks"]["create"] == "../shared/create.yml"
    for path in ROOT.glob("molecule/*/molecule.yml"):
        scenario = yaml.safe_load(path.read_text())
        assert "create" not in scenario.get("provisioner", {}).get("playbooks", {}), path


def test_a_local_lab_host_is_a_platform_on_the_lab_network():
    hostvars = {"lab-node1": {"lab_dir": "/srv/lab", "lab_address": "172.31.240.11"}}
    platform = complete(lab_host("lab-node1", hostvars, "vllm-lab", {"vllm.lab.internal": "172.31.240.100"}), SHARED)
    assert platform["networks"] == [{"name": "vllm-lab", "ipv4_address": "172.31.240.11"}]
    assert platform["volumes"] == SHARED["volumes"] + ["/srv/lab/wheelhouse:/srv/wheelhouse:ro",
                                                      "/srv/lab/backup:/srv/backup:rw"]
    assert platform["etc_hosts"] == {"vllm.lab.internal": "172.31.240.100"}
    assert platform["command"] == SHARED["command"] and platform["capabilities"] == SHARED["capabilities"]


def test_the_local_lab_and_the_scenarios_create_hosts_with_one_task_file():
    for path in ("playbooks/lab/containers.yml", "molecule/shared/create.yml"):
        text = (ROOT / path).read_text()
        assert "tasks/containers.yml" in text, path
        assert "docker_container:\n" not in text.split("Containers removed")[0], f"{path} creates containers itself"
