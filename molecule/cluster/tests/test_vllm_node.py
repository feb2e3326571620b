"""The vllm role's own checks (molecule/default/tests/test_vllm.py) on the
first cluster node, so the cluster scenario alone covers the role: unit and
user, listen address, keys, completion, metrics, manifest, secrets,
hardening, restart."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "default" / "tests"))

from test_vllm import *  # noqa: E402,F401,F403

testinfra_hosts = ["docker://cluster-node1"]
