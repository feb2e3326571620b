#!/usr/bin/python3
"""vllm-fleet backup: restic backup, retention, verification and restore of one host.

Lives in the vllm_fleet package; installed by the backup role as /usr/local/libexec/vllm-fleet/vllm-fleet-backup
and run by vllm-fleet-backup.service (backup), vllm-fleet-backup-check.service
(check) and playbooks/restore.yml (restore).  Standard library only.

    vllm-fleet-backup backup              back up, apply retention, write metrics
    vllm-fleet-backup check               restic check --read-data-subset, write metrics
    vllm-fleet-backup restore [--snapshot ID|latest] [--path P ...] [--dry-run]
    vllm-fleet-backup restic ARGS...      run restic with the host's repository settings

The repository, password file and S3 credentials come from the role's
EnvironmentFile (mode 0600); when the variables are not already in the
environment (a shell, Ansible) the file is read here, so no secret is ever on a
command line.  Everything else comes from config.json.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time

CONFIG = "/etc/vllm-fleet/backup/config.json"
LOCKED = "repository is already locked"
MAGIC = re.compile(r"[*?[]")


# --- configuration ---------------------------------------------------------------

def read_env_file(text: str) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads the role's file.

    Values are written by the role in single quotes (taken literally by both
    systemd and sh); double quotes and bare values are accepted too.
    """
    env = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        env[key] = value
    return env


def restic_env(env_file: str, environ: dict[str, str]) -> dict[str, str]:
    """The environment restic runs with: the caller's, completed from the env file."""
    env = dict(environ)
    try:
        with open(env_file, encoding="utf-8") as handle:
            values = read_env_file(handle.read())
    except FileNotFoundError:
        values = {}
    for key, value in values.items():
        env.setdefault(key, value)
    return env


def exclusions(config: dict) -> list[str]:
    """restic --exclude-file lines: the user's patterns, then every exclude_under
    directory as an absolute path (so it is left out wherever it lies)."""
    return list(config.get("exclude", [])) + [p.rstrip("/") for p in config.get("exclude_under", [])]


def expand_paths(patterns: list[str], exclude_under: list[str] | None = None,
                 exists=os.path.lexists, globber=None) -> list[str]:
    """Existing paths for the patterns (globs expanded), deduplicated, without
    paths already covered by another one or lying under exclude_under."""
    globber = globber or glob.glob
    found: list[str] = []
    for pattern in patterns:
        pattern = os.path.normpath(pattern)
        matches = sorted(globber(pattern)) if MAGIC.search(pattern) else [pattern]
        found.extend(os.path.normpath(m) for m in matches if exists(m))
    found = sorted(set(found))
    result = []
    for path in found:
        if any(is_under(path, other) for other in result):
            continue
        if any(is_under(path, ex) for ex in exclude_under or []):
            continue
        result.append(path)
    return result


def is_under(path: str, parent: str) -> bool:
    parent = parent.rstrip("/") or "/"
    return path == parent or path.startswith(parent if parent == "/" else parent + "/")


# --- restic ----------------------------------------------------------------------

def run_restic(args: list[str], env: dict[str, str], retries: int = 0, wait: float = 60,
               runner=subprocess.run, sleep=time.sleep, **kwargs) -> subprocess.CompletedProcess:
    """Run restic; while another host holds an exclusive lock on a shared
    repository (prune, check), wait and try again up to `retries` times."""
    for attempt in range(retries + 1):
        proc = runner(["restic", *args], env=env, capture_output=True, text=True, **kwargs)
        if proc.returncode == 0 or LOCKED not in (proc.stderr or "") or attempt == retries:
            return proc
        print(f"repository locked by another process; retry {attempt + 1}/{retries} in {wait:.0f} s",
              file=sys.stderr, flush=True)
        sleep(wait)
    return proc  # pragma: no cover


def parse_summary(stdout: str) -> dict:
    """The summary message of `restic backup --json`."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("message_type") == "summary":
            return message
    raise ValueError("restic backup printed no summary")


def forget_args(keep: dict) -> list[str]:
    """--keep-* options of a retention policy; a policy keeping nothing is refused."""
    args = []
    for period in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        value = int(keep.get(period) or 0)
        if value < 0:
            raise ValueError(f"keep {period}={value}: must be >= 0")
        if value:
            args += [f"--keep-{period}", str(value)]
    if not args:
        raise ValueError("the retention policy keeps nothing")
    return args


def pick_snapshot(snapshots: list[dict], wanted: str = "latest") -> dict:
    """The newest snapshot, or the one whose id starts with `wanted`."""
    if not snapshots:
        raise LookupError("no snapshot found")
    if wanted == "latest":
        return max(snapshots, key=lambda s: s["time"])
    matches = [s for s in snapshots if s["id"].startswith(wanted) or s.get("short_id") == wanted]
    if len(matches) != 1:
        raise LookupError(f"snapshot {wanted!r}: {'no' if not matches else len(matches)} match(es) among "
                          f"{', '.join(s.get('short_id', s['id'][:8]) for s in snapshots)}")
    return matches[0]


# --- metrics ---------------------------------------------------------------------

def render_metrics(metrics: list[tuple[str, str, float | None]]) -> str:
    lines = []
    for name, help_text, value in metrics:
        if value is None:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def read_metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            try:
                return float(parts[1])
            except ValueError:
                return None
    return None


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write next to the target and rename over it: node_exporter never reads half a file."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def backup_metrics(now: float, ok: bool, duration: float, summary: dict | None,
                   previous: str = "") -> str:
    """The backup textfile: a failed run keeps the previous success time and size."""
    prefix = "vllm_fleet_backup_"
    last_success = now if ok else read_metric(previous, prefix + "last_success_timestamp_seconds")
    size = summary.get("total_bytes_processed") if ok and summary else read_metric(previous, prefix + "snapshot_size_bytes")
    added = summary.get("data_added") if ok and summary else read_metric(previous, prefix + "added_bytes")
    files = summary.get("total_files_processed") if ok and summary else read_metric(previous, prefix + "files")
    return render_metrics([
        (prefix + "last_success_timestamp_seconds", "Time the last successful backup (and retention) finished.",
         last_success),
        (prefix + "last_run_timestamp_seconds", "Time the last backup run finished, successful or not.", now),
        (prefix + "last_run_success", "1 when the last backup run succeeded, 0 when it failed.", 1 if ok else 0),
        (prefix + "duration_seconds", "Duration of the last backup run (backup, retention, prune).", duration),
        (prefix + "snapshot_size_bytes", "Size of the files in the last successful snapshot.", size),
        (prefix + "added_bytes", "Bytes the last successful snapshot added to the repository.", added),
        (prefix + "files", "Files in the last successful snapshot.", files),
    ])


def check_metrics(now: float, ok: bool, duration: float, previous: str = "") -> str:
    prefix = "vllm_fleet_backup_check_"
    last_success = now if ok else read_metric(previous, prefix + "last_success_timestamp_seconds")
    return render_metrics([
        (prefix + "success", "1 when the last restic check of the repository passed, 0 when it failed.",
         1 if ok else 0),
        (prefix + "last_run_timestamp_seconds", "Time the last repository check finished.", now),
        (prefix + "last_success_timestamp_seconds", "Time the last passing repository check finished.", last_success),
        (prefix + "duration_seconds", "Duration of the last repository check.", duration),
    ])


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


# --- restore ---------------------------------------------------------------------

def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _same_meta(a: os.stat_result, b: os.stat_result, owners: bool) -> bool:
    return stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode) and (
        not owners or (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid))


def _apply_meta(path: str, st: os.stat_result, owners: bool, link: bool = False) -> None:
    if owners:
        os.lchown(path, st.st_uid, st.st_gid)
    if not link:
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _walk(top: str):
    """top, then everything below it, parents before children; links not followed."""
    yield top
    if os.path.isdir(top) and not os.path.islink(top):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                yield os.path.join(dirpath, name)


def install_one(src: str, dest: str, dry_run: bool = False, owners: bool | None = None) -> str:
    """Make dest what src is. Returns 'restored' (was missing), 'replaced'
    (content, target or metadata differed), 'unchanged' or 'skipped'."""
    owners = os.geteuid() == 0 if owners is None else owners
    st = os.lstat(src)
    try:
        cur = os.lstat(dest)
    except FileNotFoundError:
        cur = None
    if cur is not None and stat.S_ISDIR(cur.st_mode) and not stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{dest} is a directory in place of a {'link' if stat.S_ISLNK(st.st_mode) else 'file'}; "
                                "not replaced")
    if stat.S_ISDIR(st.st_mode):
        if cur is not None and stat.S_ISDIR(cur.st_mode):
            if _same_meta(st, cur, owners):
                return "unchanged"
            if not dry_run:
                _apply_meta(dest, st, owners)
            return "replaced"
        if not dry_run:
            if cur is not None:
                os.unlink(dest)
            os.mkdir(dest)
            _apply_meta(dest, st, owners)
        return "restored" if cur is None else "replaced"
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(src)
        if cur is not None and stat.S_ISLNK(cur.st_mode) and os.readlink(dest) == target and (
                not owners or (cur.st_uid, cur.st_gid) == (st.st_uid, st.st_gid)):
            return "unchanged"
        if not dry_run:
            tmp = _temp_name(dest)
            os.symlink(target, tmp)
            _apply_meta(tmp, st, owners, link=True)
            os.replace(tmp, dest)
        return "restored" if cur is None else "replaced"
    if stat.S_ISREG(st.st_mode):
        if (cur is not None and stat.S_ISREG(cur.st_mode) and cur.st_size == st.st_size
                and _same_meta(st, cur, owners) and sha256_file(src) == sha256_file(dest)):
            return "unchanged"
        if not dry_run:
            tmp = _temp_name(dest)
            try:
                shutil.copyfile(src, tmp)
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                _apply_meta(tmp, st, owners)
                os.replace(tmp, dest)
            except BaseException:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                raise
        return "restored" if cur is None else "replaced"
    return "skipped"


def _temp_name(dest: str) -> str:
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.vllm-fleet-restore.{os.getpid()}")


def install_tree(staging: str, paths: list[str], root: str = "/", dry_run: bool = False,
                 owners: bool | None = None) -> dict:
    """Copy what a snapshot restored under `staging` back to `root`, path by
    path.  Files outside the snapshot's paths are never touched or removed;
    missing parent directories are created with the snapshot's metadata,
    existing ones are left as they are."""
    report: dict = {"restored": [], "replaced": [], "unchanged": 0, "skipped": []}
    for path in paths:
        rel = path.strip("/")
        top = os.path.join(staging, rel)
        if not os.path.lexists(top):
            continue
        # Parents that are missing on the target (a rebuilt host).
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            dest = os.path.join(root, parent)
            if not os.path.lexists(dest) and not dry_run:
                os.mkdir(dest)
                _apply_meta(dest, os.lstat(os.path.join(staging, parent)),
                            os.geteuid() == 0 if owners is None else owners)
        for src in _walk(top):
            name = os.path.relpath(src, staging)
            action = install_one(src, os.path.join(root, name), dry_run=dry_run, owners=owners)
            if action == "unchanged":
                report["unchanged"] += 1
            else:
                report[action].append("/" + name + ("/" if os.path.isdir(src) and not os.path.islink(src) else ""))
    return report


# --- commands --------------------------------------------------------------------

def export_journal(units: list[str], since: str, out_dir: str, runner=subprocess.run) -> list[str]:
    """Recent journal of each unit pattern, in journalctl's export format."""
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    written = []
    for unit in units:
        path = os.path.join(out_dir, re.sub(r"[^A-Za-z0-9_.@-]", "_", unit) + ".export")
        with open(path, "wb") as handle:
            proc = runner(["journalctl", "--no-pager", "--quiet", "-o", "export", "--since", since, "-u", unit],
                          stdout=handle, stderr=subprocess.PIPE)
        # A pattern that matches no unit known to the journal is not an error.
        if proc.returncode != 0 and b"No data available" not in (proc.stderr or b""):
            print(f"journalctl -u {unit}: rc={proc.returncode} {proc.stderr!r}", file=sys.stderr)
        if os.path.getsize(path) == 0:
            os.unlink(path)
        else:
            written.append(path)
    return written


def cmd_backup(config: dict, env: dict) -> int:
    state = config["state_dir"]
    start = time.monotonic()
    os.makedirs(state, mode=0o700, exist_ok=True)
    retention = forget_args(config["keep"])
    if config.get("journal_units") and config.get("journal_since"):
        export_journal(config["journal_units"], config["journal_since"], config["journal_dir"])
    paths = expand_paths(config["paths"] + [config["journal_dir"]], exclude_under=config.get("exclude_under"))
    listing = os.path.join(state, "paths.list")
    excludes = os.path.join(state, "exclude.list")
    write_atomic(listing, "".join(p + "\n" for p in paths), 0o600)
    # exclude_under also applies inside the backed-up trees: /etc/vllm-fleet
    # holds the firewall and, below it, the repository password and keys.
    write_atomic(excludes, "".join(p + "\n" for p in exclusions(config)), 0o600)
    retries, wait = int(config.get("lock_retries", 0)), float(config.get("lock_wait_seconds", 60))
    print(f"backing up {len(paths)} path(s): {' '.join(paths)}", flush=True)

    summary = None
    proc = run_restic(["backup", "--json", "--host", config["host"], "--tag", config["tag"],
                       "--files-from-verbatim", listing, "--exclude-file", excludes], env, retries, wait)
    sys.stderr.write(proc.stderr)
    ok = proc.returncode == 0
    if ok:
        summary = parse_summary(proc.stdout)
        print(f"snapshot {summary['snapshot_id']} saved: {summary['total_files_processed']} files, "
              f"{summary['total_bytes_processed']} bytes ({summary['data_added']} added)", flush=True)
        forget = run_restic(["forget", "--host", config["host"], "--tag", config["tag"], "--group-by", "host,tags",
                             *retention, "--prune"], env, retries, wait)
        sys.stdout.write(forget.stdout)
        sys.stderr.write(forget.stderr)
        if forget.returncode != 0:
            print(f"restic forget --prune failed (rc={forget.returncode})", file=sys.stderr)
            ok = False
    else:
        print(f"restic backup failed (rc={proc.returncode})", file=sys.stderr)

    now, duration = time.time(), time.monotonic() - start
    metrics = os.path.join(config["textfile_dir"], "vllm_fleet_backup.prom")
    if os.path.isdir(config["textfile_dir"]):
        write_atomic(metrics, backup_metrics(now, ok, duration, summary, _read(metrics)))
    if summary is not None:
        write_atomic(os.path.join(state, "last.json"), json.dumps({
            "snapshot_id": summary["snapshot_id"], "host": config["host"], "ok": ok,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "duration_seconds": round(duration, 3),
            "size_bytes": summary["total_bytes_processed"], "added_bytes": summary["data_added"],
            "files": summary["total_files_processed"], "paths": paths}, indent=2) + "\n", 0o600)
    return 0 if ok else 1


def cmd_check(config: dict, env: dict) -> int:
    start = time.monotonic()
    args = ["check"] + ([f"--read-data-subset={config['check_subset']}"] if config.get("check_subset") else [])
    proc = run_restic(args, env, int(config.get("lock_retries", 0)), float(config.get("lock_wait_seconds", 60)))
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    ok = proc.returncode == 0
    metrics = os.path.join(config["textfile_dir"], "vllm_fleet_backup_check.prom")
    if os.path.isdir(config["textfile_dir"]):
        write_atomic(metrics, check_metrics(time.time(), ok, time.monotonic() - start, _read(metrics)))
    print("repository check " + ("passed" if ok else f"FAILED (rc={proc.returncode})"), flush=True)
    return 0 if ok else 1


def cmd_restore(config: dict, env: dict, snapshot: str, host: str | None, only: list[str],
                root: str, dry_run: bool) -> int:
    host = host or config["host"]
    listing = run_restic(["snapshots", "--json", "--host", host, "--tag", config["tag"]], env)
    if listing.returncode != 0:
        print(listing.stderr, file=sys.stderr)
        return 1
    try:
        snap = pick_snapshot(json.loads(listing.stdout or "[]"), snapshot)
    except LookupError as err:
        print(f"host {host}: {err}", file=sys.stderr)
        return 1
    keep_out = [config["journal_dir"], config["state_dir"]] + config.get("exclude_under", [])
    paths = [p for p in snap["paths"] if not any(is_under(p, ex) for ex in keep_out)]
    if only:
        paths = [p for p in paths if any(is_under(p, o) for o in only)] + [
            o for o in only if any(is_under(o, p) and o != p for p in paths)]
    staging = os.path.join(config["state_dir"], "restore")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging, mode=0o700)
    try:
        includes = [arg for p in paths for arg in ("--include", p)] if only else []
        proc = run_restic(["restore", snap["id"], "--target", staging, *includes], env)
        if proc.returncode != 0:
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 1
        report = install_tree(staging, paths, root=root, dry_run=dry_run)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.update({"snapshot_id": snap["id"], "short_id": snap.get("short_id", snap["id"][:8]),
                   "time": snap["time"], "host": snap.get("hostname", host), "paths": paths, "dry_run": dry_run})
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-fleet-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("backup", help="back up now, apply retention, write metrics")
    sub.add_parser("check", help="verify the repository (a subset of the data)")
    restore = sub.add_parser("restore", help="restore a snapshot of this host onto it")
    restore.add_argument("--snapshot", default="latest")
    restore.add_argument("--host", help="snapshots of this host (default: the configured one)")
    restore.add_argument("--path", action="append", default=[], help="only these backed-up paths (repeatable)")
    restore.add_argument("--root", default="/", help=argparse.SUPPRESS)
    restore.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")
    passthrough = sub.add_parser("restic", help="run restic against this host's repository")
    passthrough.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    with open(args.config, encoding="utf-8") as handle:
        config = json.load(handle)
    env = restic_env(config["env_file"], dict(os.environ))
    if args.command == "restic":
        os.execvpe("restic", ["restic", *args.args], env)
    if args.command == "backup":
        return cmd_backup(config, env)
    if args.command == "check":
        return cmd_check(config, env)
    return cmd_restore(config, env, args.snapshot, args.host, args.path, args.root, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
