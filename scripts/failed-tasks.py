#!/usr/bin/env python3
"""Print the failed Ansible tasks and pytest failures of a Molecule log, for the end of a CI log.

usage: failed-tasks.py LOG

CI keeps only the tail of its output, and Molecule ends with a recap that says
a step failed but not which task.  This prints, for every `fatal:` or
`failed:` result in LOG, the task header above it and the result itself, with
Molecule's colours and frame removed.  Exit status 0 whether or not any were
found (it runs after a failure has already been reported).

The verify step's pytest output is summarised too: its "short test summary
info" section, and the last lines of each failure's traceback (the assertion
and its message), since pytest prints them well above Molecule's recap.
"""
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FRAME = re.compile(r"^\s*[│|]\s?")
RESULT = re.compile(r"^(fatal|failed): \[")
TASK = re.compile(r"^(TASK|RUNNING HANDLER) \[")
MORE = 25  # lines of a result to show
END = ("PLAY", "ok: [", "changed: [", "skipping: [", "fatal: [", "failed: [", "included: ")


def clean(line: str) -> str:
    return FRAME.sub("", ANSI.sub("", line.rstrip("\n")), count=1)


def failures(lines: list[str]) -> list[list[str]]:
    found, task, play_step = [], "", ""
    for i, line in enumerate(lines):
        if "➜" in line and "Executing" in line:
            play_step = line.strip()
        if TASK.match(line):
            task = line.strip()
        elif RESULT.match(line):
            body = [line]
            for follow in lines[i + 1:]:
                if TASK.match(follow) or follow.startswith(END):
                    break
                body.append(follow)
            if "...ignoring" not in body:
                found.append([play_step, task] + body[:MORE])
    return found


# Molecule frames and wraps pytest's lines at its own width: headers may lose
# their trailing rule (it comes on the next, indented line).
PYTEST_FAILURES = re.compile(r"^=+ (FAILURES|ERRORS)\b")
PYTEST_SECTION = re.compile(r"^_{3,} (\S.*?)(?: _{3,})?$")
PYTEST_SUMMARY = re.compile(r"^=+ short test summary info")
PYTEST_END = re.compile(r"^=+ .*\b(passed|failed|errors?|skipped)\b")
TAIL = 30  # lines of each failure's traceback to show


def pytest_failures(lines: list[str]) -> list[str]:
    """The tail of every failure section, and the FAILED/ERROR lines of the short summary."""
    out: list[str] = []
    section, body, state = None, [], "outside"

    def flush():
        if section is not None:
            out.append(f"--- {section}")
            out.extend(body[-TAIL:])

    for line in lines:
        if PYTEST_FAILURES.match(line):
            state = "failures"
            continue
        if PYTEST_SUMMARY.match(line):
            flush()
            section, body, state = None, [], "summary"
            out.append("=== short test summary info")
            keep = False
            continue
        if state == "failures":
            match = PYTEST_SECTION.match(line)
            if match:
                flush()
                section, body = match.group(1), []
            elif PYTEST_END.match(line):
                flush()
                section, body, state = None, [], "outside"
            elif section is not None:
                body.append(line)
        elif state == "summary":
            if PYTEST_END.match(line):
                out.append(line)
                state = "outside"
            elif line.startswith(("FAILED", "ERROR")):
                keep = True
                out.append(line)
            elif line.startswith(("SKIPPED", "XFAIL", "XPASS", "PASSED")):
                keep = False
            elif keep and line.startswith(" "):
                out.append(line)  # a wrapped continuation
    flush()
    return out


def main() -> int:
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
        lines = [clean(line) for line in log]
    found = failures(lines)
    print(f"=== {len(found)} failed task result(s) in {sys.argv[1]} ===")
    for block in found:
        print("\n".join(part for part in block if part))
        print("---")
    tests = pytest_failures(lines)
    if tests:
        print(f"=== pytest failures in {sys.argv[1]} ===")
        print("\n".join(tests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
