"""scripts/failed-tasks.py: the failed tasks of a Molecule log, for the tail CI keeps."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "failed-tasks.py"

# The shape Molecule 25 prints: a frame, colours, wrapped task headers.
LOG = """\
\x1b[36mINFO    \x1b[0m \x1b[32mcluster\x1b[0m \u279c \x1b[33mconverge\x1b[0m: \x1b[36mExecuting\x1b[0m
  \x1b[2m\u2502\x1b[0m TASK [vllm : Run | Enable and start the instances] ****
  \x1b[2m\u2502\x1b[0m \x1b[0;32mok: [cluster-node1] => (item=vllm@default)\x1b[0m
  \x1b[2m\u2502\x1b[0m TASK [backup : Repository | Probe] ****
  \x1b[2m\u2502\x1b[0m \x1b[0;31mfatal: [cluster-node2]: FAILED! => {"changed": false, "rc": 1}\x1b[0m
  \x1b[2m\u2502\x1b[0m \x1b[0;31m...ignoring\x1b[0m
  \x1b[2m\u2502\x1b[0m TASK [backup : Repository | Fail when the repository exists but cannot be
  \x1b[2m\u2502\x1b[0m opened] ****
  \x1b[2m\u2502\x1b[0m \x1b[0;31mfatal: [cluster-node1]: FAILED! => {"changed": false, "msg":\x1b[0m
  \x1b[2m\u2502\x1b[0m \x1b[0;31m  "restic cannot open it"}\x1b[0m
  \x1b[2m\u2502\x1b[0m PLAY RECAP ****
\x1b[36mINFO    \x1b[0m \x1b[32mcluster\x1b[0m \u279c \x1b[33midempotence\x1b[0m: \x1b[36mExecuting\x1b[0m
"""


def run(tmp_path, text):
    log = tmp_path / "molecule.log"
    log.write_text(text, encoding="utf-8")
    return subprocess.run([sys.executable, str(SCRIPT), str(log)], capture_output=True, text=True, check=True).stdout


def test_prints_the_failed_task_with_its_step_and_message(tmp_path):
    out = run(tmp_path, LOG)
    assert out.splitlines()[0].startswith("=== 1 failed task result(s)")
    assert "cluster \u279c converge: Executing" in out
    assert "TASK [backup : Repository | Fail when the repository exists but cannot be" in out
    assert 'fatal: [cluster-node1]: FAILED! => {"changed": false, "msg":' in out
    assert '"restic cannot open it"}' in out
    assert "\x1b[" not in out


def test_ignored_failures_and_clean_logs_report_nothing(tmp_path):
    out = run(tmp_path, LOG.split("TASK [backup : Repository | Fail")[0])
    assert out.splitlines() == [f"=== 0 failed task result(s) in {tmp_path / 'molecule.log'} ==="]


PYTEST_LOG = """\
test_gateway.py::test_ok PASSED
=================================== FAILURES ===================================
_______________________________ test_alert_fires _______________________________
""" + "".join(f"    line {i}\n" for i in range(60)) + """\
>       assert firing == {"GatewayNginxDown"}, "not firing"
E       AssertionError: not firing
test_monitoring.py:42: AssertionError
=========================== short test summary info ============================
FAILED test_monitoring.py::test_alert_fires - AssertionError: not firing
==================== 1 failed, 1 passed in 12.00s ====================
\x1b[36mINFO    \x1b[0m Verifier tests failed
"""


def test_prints_the_pytest_failures_and_summary(tmp_path):
    out = run(tmp_path, PYTEST_LOG)
    assert "=== pytest failures in" in out
    assert "--- test_alert_fires" in out
    assert "E       AssertionError: not firing" in out
    assert "FAILED test_monitoring.py::test_alert_fires - AssertionError: not firing" in out
    # Only the tail of a long traceback: the first lines are left out.
    assert "    line 0\n" not in out
    assert "    line 59" in out


def test_a_passing_pytest_run_adds_nothing(tmp_path):
    out = run(tmp_path, "test_a.py::test_ok PASSED\n===== 1 passed in 0.1s =====\n")
    assert "pytest failures" not in out
