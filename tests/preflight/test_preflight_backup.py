"""Preflight rules of the backup role (every host).

Same harness as test_preflight.py: the real site.yml against two local hosts,
one with a bad value; the run must stop before any change on either host.
"""
from __future__ import annotations

import pytest

from test_preflight import Batch, assert_rejected, run_site

CASES = {
    "retention keeps nothing": (
        {"backup_keep_daily": 0, "backup_keep_weekly": 0, "backup_keep_monthly": 0},
        ["[bad-node] backup_keep_daily=0 backup_keep_weekly=0", "backup_keep_monthly=0", "at least one >= 1",
         "delete every snapshot"]),
    "negative retention": ({"backup_keep_daily": -1}, ["backup_keep_daily=-1", "each must be >= 0"]),
    "no password": ({"backup_password": ""}, ["backup_password=<0 characters, hidden>", "at least 16"]),
    "short password": ({"backup_password": "hunter2"}, ["backup_password=<7 characters, hidden>", "at least 16"]),
    "relative repository": ({"backup_repository": "backups/restic"},
                            ["backup_repository=backups/restic", "a local absolute path", "sftp:user@host:/path"]),
    "unsupported backend": ({"backup_repository": "rest:http://backup:8000/"},
                            ["backup_repository=rest:http://backup:8000/", "S3-compatible"]),
    "s3 without bucket": ({"backup_repository": "s3:https://s3.example.internal"},
                          ["backup_repository=s3:https://s3.example.internal", "s3:https://host/bucket/prefix"]),
    "half the s3 credentials": ({"backup_repository": "s3:https://s3.example.internal/fleet/restic",
                                 "backup_s3_access_key_id": "AKIAEXAMPLE"},
                                ["backup_s3_access_key_id=<11 characters, hidden>", "both or neither"]),
    "s3 credentials on a local repository": ({"backup_s3_access_key_id": "AKIAEXAMPLE",
                                              "backup_s3_secret_access_key": "s" * 40},
                                             ["only with an s3: backup_repository"]),
    "bad schedule": ({"backup_schedule": "every day at noon"},
                     ["backup_schedule=every day at noon", "not a systemd calendar event"]),
    "bad check schedule": ({"backup_check_schedule": "Sun *-*-* 25:00"},
                           ["backup_check_schedule=Sun *-*-* 25:00", "not a systemd calendar event"]),
    "bad delay": ({"backup_randomized_delay": "an hour"}, ["backup_randomized_delay=an hour", "time span"]),
    "data subset over 100%": ({"backup_check_read_data_subset": "150%"},
                              ["backup_check_read_data_subset=150%", "(0, 100]"]),
    "relative path": ({"backup_extra_paths": ["etc/custom"]}, ["contain etc/custom", "absolute paths"]),
    "quote in environment": ({"backup_environment": {"AWS_DEFAULT_REGION": "eu'; rm -rf /"}},
                             ["backup_environment keys=AWS_DEFAULT_REGION", "without quotes"]),
    "bad snapshot id": ({"backup_restore_snapshot": "yesterday"}, ["backup_restore_snapshot=yesterday", "latest or"]),
}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    return Batch(tmp_path_factory.mktemp("preflight-backup"), CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_backup_value_fails_before_any_change(batch, case):
    batch.assert_rejected(case)
    assert "backup : Install" not in batch.out
    # The password never reaches the output, even when it is the bad value.
    assert "hunter2" not in batch.out


def test_backup_disabled_is_not_checked(tmp_path):
    """backup_enabled: false on a host skips its backup checks (the rest still runs)."""
    result, out = run_site(tmp_path, {"backup_enabled": False, "backup_keep_daily": 0, "backup_keep_weekly": 0,
                                      "backup_keep_monthly": 0, "vllm_max_model_len": 0}, )
    assert_rejected(tmp_path, result, out, "vllm_max_model_len=0")
    assert "backup_keep_daily=0" not in out


def test_a_local_repository_on_the_root_file_system_is_a_warning_not_an_error(tmp_path):
    result, out = run_site(tmp_path, {}, common={"backup_repository": "/var/backups/vllm-fleet-restic"},
                           playbook="playbooks/preflight.yml")
    assert result.returncode == 0, out[-4000:]
    assert "[bad-node] WARNING backup_repository=/var/backups/vllm-fleet-restic is on this host's root file system" in out
