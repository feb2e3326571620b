"""`--check --diff` on the converged cluster changes nothing and would change nothing.

Molecule's own `check` step only requires the run not to fail; this requires
what the README promises: changed=0 on every host.
"""
from conftest import playbook, recap


def test_check_mode_reports_no_change_on_a_converged_cluster():
    run = playbook("site.yml", "--check", "--diff")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    counts = recap(run.stdout)
    assert set(counts) >= {"cluster-node1", "cluster-node2"}, counts
    changed = {host: c["changed"] for host, c in counts.items() if c["changed"]}
    assert not changed, (changed, [line for line in run.stdout.splitlines() if line.startswith("changed:")][:20])
