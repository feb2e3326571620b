"""The backup role's node-side tool (vllm_fleet/backup_tool.py).

restic's own output here is recorded from Debian 12's restic 0.14.0
(tests/fixtures/restic/); restic itself is not needed to run these tests.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "restic"
from vllm_fleet import backup_tool as tool


# --- configuration ---------------------------------------------------------------

def test_env_file_values_in_single_double_or_no_quotes():
    text = ("# managed\n\nRESTIC_REPOSITORY='/srv/backup/restic'\nAWS_SECRET_ACCESS_KEY='a/b+c=$x'\n"
            'QUOTED="say \\"hi\\" \\$HOME"\nBARE=value\nnot a line\n')
    assert tool.read_env_file(text) == {
        "RESTIC_REPOSITORY": "/srv/backup/restic", "AWS_SECRET_ACCESS_KEY": "a/b+c=$x",
        "QUOTED": 'say "hi" $HOME', "BARE": "value"}


def test_the_environment_wins_over_the_env_file(tmp_path):
    env_file = tmp_path / "restic.env"
    env_file.write_text("RESTIC_REPOSITORY='/from/file'\nRESTIC_PASSWORD_FILE='/etc/pw'\n")
    env = tool.restic_env(str(env_file), {"RESTIC_REPOSITORY": "/other", "PATH": "/bin"})
    assert env == {"RESTIC_REPOSITORY": "/other", "RESTIC_PASSWORD_FILE": "/etc/pw", "PATH": "/bin"}
    assert tool.restic_env(str(tmp_path / "missing"), {"A": "1"}) == {"A": "1"}


def test_paths_only_those_present_globs_expanded_nested_and_excluded_dropped(tmp_path):
    for rel in ["etc/vllm/default.yaml", "etc/systemd/system/vllm@.service", "etc/systemd/system/vllm@a.service.d/x.conf",
                "etc/systemd/system/vllm@b.service.d/x.conf", "etc/vllm-fleet/firewall.nft",
                "etc/vllm-fleet/backup/password", "etc/nginx2/x"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    t = str(tmp_path)
    paths = tool.expand_paths(
        [f"{t}/etc/vllm", f"{t}/etc/vllm/default.yaml", f"{t}/etc/nginx", f"{t}/etc/systemd/system/vllm@.service",
         f"{t}/etc/systemd/system/vllm@*.service.d", f"{t}/etc/vllm-fleet", f"{t}/etc/vllm-fleet/backup/"],
        exclude_under=[f"{t}/etc/vllm-fleet/backup"])
    assert paths == [f"{t}/etc/systemd/system/vllm@.service", f"{t}/etc/systemd/system/vllm@a.service.d",
                     f"{t}/etc/systemd/system/vllm@b.service.d", f"{t}/etc/vllm", f"{t}/etc/vllm-fleet"]


def test_is_under_is_by_path_component():
    assert tool.is_under("/etc/nginx/conf.d", "/etc/nginx")
    assert tool.is_under("/etc/nginx", "/etc/nginx/")
    assert not tool.is_under("/etc/nginx2", "/etc/nginx")
    assert tool.is_under("/anything", "/")


# --- restic ----------------------------------------------------------------------

def test_summary_of_a_recorded_backup():
    summary = tool.parse_summary((FIXTURES / "backup-0.14.0.jsonl").read_text())
    assert summary["snapshot_id"] == "2eb2bfc2"
    assert summary["total_bytes_processed"] == 77086
    assert summary["total_files_processed"] == 13
    with pytest.raises(ValueError):
        tool.parse_summary('{"message_type":"status","percent_done":0}\nFatal: oops\n')


def test_retention_arguments_and_a_policy_that_keeps_nothing():
    assert tool.forget_args({"daily": 7, "weekly": 4, "monthly": 0}) == ["--keep-daily", "7", "--keep-weekly", "4"]
    with pytest.raises(ValueError, match="keeps nothing"):
        tool.forget_args({"daily": 0, "weekly": 0, "monthly": 0})
    with pytest.raises(ValueError, match=">= 0"):
        tool.forget_args({"daily": -1, "weekly": 4})


class FakeRestic:
    def __init__(self, *results):
        self.results = list(results)
        self.calls = []

    def __call__(self, argv, **kwargs):
        self.calls.append(argv)
        rc, out, err = self.results.pop(0)
        return subprocess.CompletedProcess(argv, rc, out, err)


LOCKED = ("Fatal: unable to create lock in backend: repository is already locked exclusively by PID 41 on gw1 "
          "by root (UID 0, GID 0)\nlock was created at 2026-11-22 02:00:01 (2m0s ago)\n")


def test_a_locked_repository_is_retried_then_given_up():
    sleeps = []
    fake = FakeRestic((1, "", LOCKED), (0, "ok", ""))
    assert tool.run_restic(["forget"], {}, retries=3, wait=5, runner=fake, sleep=sleeps.append).stdout == "ok"
    assert sleeps == [5] and len(fake.calls) == 2
    fake = FakeRestic((1, "", LOCKED), (1, "", LOCKED), (1, "", LOCKED))
    assert tool.run_restic(["check"], {}, retries=2, wait=1, runner=fake, sleep=lambda s: None).returncode == 1
    assert len(fake.calls) == 3


def test_other_failures_are_not_retried():
    fake = FakeRestic((1, "", (FIXTURES / "cat-config-wrong-password-0.14.0.txt").read_text()))
    assert tool.run_restic(["cat", "config"], {}, retries=5, runner=fake, sleep=lambda s: None).returncode == 1
    assert fake.calls == [["restic", "cat", "config"]]


def test_snapshot_choice():
    snaps = json.loads((FIXTURES / "snapshots-0.14.0.json").read_text())
    assert tool.pick_snapshot(snaps)["short_id"] == "2eb2bfc2"
    assert tool.pick_snapshot(snaps, "54cd89d8")["id"].startswith("54cd89d8a5")
    assert tool.pick_snapshot(snaps, "54cd89d8a595898590bd")["short_id"] == "54cd89d8"
    with pytest.raises(LookupError, match="no match"):
        tool.pick_snapshot(snaps, "deadbeef")
    with pytest.raises(LookupError, match="no snapshot"):
        tool.pick_snapshot([], "latest")


# --- metrics ---------------------------------------------------------------------

SUMMARY = {"snapshot_id": "2eb2bfc2", "total_bytes_processed": 77086, "data_added": 1024, "total_files_processed": 13}


def test_metrics_of_a_successful_run():
    text = tool.backup_metrics(1_800_000_000, True, 12.3456, SUMMARY)
    assert "vllm_fleet_backup_last_success_timestamp_seconds 1800000000\n" in text
    assert "vllm_fleet_backup_last_run_success 1\n" in text
    assert "vllm_fleet_backup_duration_seconds 12.346\n" in text
    assert "vllm_fleet_backup_snapshot_size_bytes 77086\n" in text
    assert "# TYPE vllm_fleet_backup_snapshot_size_bytes gauge\n" in text


def test_a_failed_run_keeps_the_last_success_and_never_invents_one():
    good = tool.backup_metrics(1_800_000_000, True, 10, SUMMARY)
    failed = tool.backup_metrics(1_800_086_400, False, 3, None, previous=good)
    assert "vllm_fleet_backup_last_success_timestamp_seconds 1800000000\n" in failed
    assert "vllm_fleet_backup_last_run_timestamp_seconds 1800086400\n" in failed
    assert "vllm_fleet_backup_last_run_success 0\n" in failed
    assert "vllm_fleet_backup_snapshot_size_bytes 77086\n" in failed
    # No success ever: the metric stays absent (the BackupMissing alert's signal).
    first = tool.backup_metrics(1_800_000_000, False, 3, None, previous="")
    assert "last_success_timestamp_seconds" not in first and "snapshot_size_bytes" not in first


def test_check_metrics():
    passed = tool.check_metrics(1_800_000_000, True, 61.5)
    failed = tool.check_metrics(1_800_604_800, False, 2, previous=passed)
    assert "vllm_fleet_backup_check_success 0\n" in failed
    assert "vllm_fleet_backup_check_last_success_timestamp_seconds 1800000000\n" in failed


def test_metrics_are_written_atomically_and_world_readable(tmp_path):
    target = tmp_path / "vllm_fleet_backup.prom"
    target.write_text("old\n")
    tool.write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["vllm_fleet_backup.prom"]


# --- journal ---------------------------------------------------------------------

def test_journal_export_per_unit_and_empty_ones_dropped(tmp_path):
    calls = []

    def runner(argv, stdout, stderr):
        calls.append(argv)
        if argv[-1] == "nginx.service":
            stdout.write(b"__CURSOR=s=1\nMESSAGE=started\n\n")
        return subprocess.CompletedProcess(argv, 0, None, b"")

    out = tmp_path / "journal"
    out.mkdir()
    (out / "stale.export").write_text("from the last run")
    written = tool.export_journal(["vllm@*.service", "nginx.service"], "-48h", str(out), runner=runner)
    assert [os.path.basename(p) for p in written] == ["nginx.service.export"]
    assert sorted(p.name for p in out.iterdir()) == ["nginx.service.export"]
    assert calls[0] == ["journalctl", "--no-pager", "--quiet", "-o", "export", "--since", "-48h", "-u", "vllm@*.service"]


# --- restore ---------------------------------------------------------------------

def sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def restore_case(tmp_path):
    """A staged snapshot of /etc/vllm, /etc/nginx and a unit file, and a host
    where some of it is missing, some differs and some is the host's own."""
    staging, root = tmp_path / "staging", tmp_path / "root"
    files = {
        "etc/vllm/default.yaml": ("model: tiny\n", 0o640),
        "etc/vllm/default.env": ("VLLM_API_KEY=k\n", 0o600),
        "etc/nginx/nginx.conf": ("events {}\n", 0o644),
        "etc/nginx/conf.d/vllm-fleet.conf": ("server {}\n", 0o644),
        "etc/systemd/system/vllm@.service": ("[Service]\n", 0o644),
    }
    for rel, (text, mode) in files.items():
        path = staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    (staging / "etc/nginx/sites-enabled").mkdir()
    os.symlink("/etc/nginx/sites-available/default", staging / "etc/nginx/sites-enabled/default")
    # The host: /etc/vllm gone, nginx.conf edited, its own extra file, a unit dir with other units.
    (root / "etc/nginx/conf.d").mkdir(parents=True)
    (root / "etc/nginx/nginx.conf").write_text("events { worker_connections 1; }\n")
    (root / "etc/nginx/conf.d/vllm-fleet.conf").write_text("server {}\n")
    (root / "etc/nginx/conf.d/vllm-fleet.conf").chmod(0o644)
    (root / "etc/nginx/conf.d/local.conf").write_text("# the host's own\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/ssh.service").write_text("other\n")
    (root / "etc/systemd/system").chmod(0o755)
    paths = ["/etc/vllm", "/etc/nginx", "/etc/systemd/system/vllm@.service"]
    return staging, root, paths, files


def test_restore_writes_what_is_missing_or_differs_and_nothing_else(restore_case):
    staging, root, paths, files = restore_case
    report = tool.install_tree(str(staging), paths, root=str(root))
    assert report["restored"] == ["/etc/vllm/", "/etc/vllm/default.env", "/etc/vllm/default.yaml",
                                  "/etc/nginx/sites-enabled/", "/etc/nginx/sites-enabled/default",
                                  "/etc/systemd/system/vllm@.service"]
    assert "/etc/nginx/nginx.conf" in report["replaced"]
    assert "/etc/nginx/conf.d/vllm-fleet.conf" not in report["replaced"]  # same content and mode: left alone
    for rel, (_, mode) in files.items():
        assert sha(root / rel) == sha(staging / rel), rel
        assert (root / rel).stat().st_mode & 0o777 == mode, rel
        if "/" + rel in report["restored"] + report["replaced"]:
            assert (root / rel).stat().st_mtime_ns == (staging / rel).stat().st_mtime_ns, rel
    assert os.readlink(root / "etc/nginx/sites-enabled/default") == "/etc/nginx/sites-available/default"
    # Outside the snapshot's files: untouched.
    assert (root / "etc/nginx/conf.d/local.conf").read_text() == "# the host's own\n"
    assert (root / "etc/systemd/system/ssh.service").read_text() == "other\n"
    assert not list(root.rglob("*.vllm-fleet-restore.*"))
    # A second restore changes nothing.
    again = tool.install_tree(str(staging), paths, root=str(root))
    assert again["restored"] == [] and again["replaced"] == [] and again["unchanged"] > 0


def test_restore_dry_run_reports_and_writes_nothing(restore_case):
    staging, root, paths, _ = restore_case
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    report = tool.install_tree(str(staging), paths, root=str(root), dry_run=True)
    assert "/etc/vllm/default.yaml" in report["restored"] and "/etc/nginx/nginx.conf" in report["replaced"]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert not (root / "etc/vllm").exists()


def test_restore_creates_missing_parents_of_a_rebuilt_host(restore_case, tmp_path):
    staging, _, paths, files = restore_case
    (staging / "etc/systemd").chmod(0o750)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    report = tool.install_tree(str(staging), paths, root=str(empty))
    assert len([p for p in report["restored"] if not p.endswith("/")]) == len(files) + 1  # + the symlink
    assert (empty / "etc/systemd").stat().st_mode & 0o777 == 0o750


def test_restore_never_replaces_a_directory_with_a_file(restore_case):
    staging, root, _, _ = restore_case
    (root / "etc/systemd/system/vllm@.service").mkdir()
    with pytest.raises(IsADirectoryError):
        tool.install_tree(str(staging), ["/etc/systemd/system/vllm@.service"], root=str(root))


# --- commands --------------------------------------------------------------------

def test_backup_run_writes_metrics_and_result_and_applies_retention(tmp_path, monkeypatch):
    (tmp_path / "etc/vllm").mkdir(parents=True)
    (tmp_path / "etc/vllm/default.yaml").write_text("x")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    config = {"host": "gpu-node-01", "tag": "vllm-fleet", "state_dir": str(tmp_path / "state"),
              "journal_dir": str(tmp_path / "state/journal"), "textfile_dir": str(textfile),
              "paths": [str(tmp_path / "etc/vllm"), str(tmp_path / "etc/nginx")], "exclude": ["*.swp"],
              "journal_units": [], "journal_since": "", "keep": {"daily": 7, "weekly": 0, "monthly": 6},
              "lock_retries": 0, "lock_wait_seconds": 1}
    calls = []

    def fake(args, env, retries=0, wait=60, **kwargs):
        calls.append(args)
        out = (FIXTURES / "backup-0.14.0.jsonl").read_text() if args[0] == "backup" else ""
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(tool, "run_restic", fake)
    assert tool.cmd_backup(config, {}) == 0
    assert calls[0][:5] == ["backup", "--json", "--host", "gpu-node-01", "--tag"]
    assert calls[1] == ["forget", "--host", "gpu-node-01", "--tag", "vllm-fleet", "--group-by", "host,tags",
                        "--keep-daily", "7", "--keep-monthly", "6", "--prune"]
    assert (tmp_path / "state/paths.list").read_text() == str(tmp_path / "etc/vllm") + "\n"
    assert (tmp_path / "state/exclude.list").read_text() == "*.swp\n"
    metrics = (textfile / "vllm_fleet_backup.prom").read_text()
    assert "vllm_fleet_backup_last_run_success 1\n" in metrics
    assert json.loads((tmp_path / "state/last.json").read_text())["snapshot_id"] == "2eb2bfc2"


def test_the_backup_config_directory_is_excluded_inside_backed_up_trees():
    """/etc/vllm-fleet is backed up (the firewall); its backup/ subdirectory
    (repository password, S3 keys) must be excluded there too."""
    config = {"exclude": ["*.tmp"], "exclude_under": ["/etc/vllm-fleet/backup/", "/var/lib/vllm-fleet-backup/restore"]}
    assert tool.exclusions(config) == ["*.tmp", "/etc/vllm-fleet/backup", "/var/lib/vllm-fleet-backup/restore"]
