"""Where the benchmark scripts write their results: stamped records, appended, never overwritten.

Every record gets the commit it measured (with "dirty": true when minipeft/ or bench/ had
uncommitted changes), the UTC date and time, and the machine (CPU model, cores, OS), so that a
number in bench/RESULTS.md can always be traced to its code and machine. A script that is given
no output file writes bench/results/<name>-<date>-<commit>.jsonl; an existing file is appended
to, never truncated, so re-running a script cannot destroy data that RESULTS.md quotes.

    python bench/record.py --path NAME                  # print the default path for NAME
    ... --json | python bench/record.py --out FILE      # stamp each JSON line of stdin, append it
                                                        # to FILE and echo it to stdout
From Python: `record.stamp()` (the dict) and `record.append(path, obj)`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stamp() -> dict:
    """commit, dirty, date (UTC, ISO) and machine of this run."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"commit": _git("rev-parse", "--short", "HEAD") or "unknown",
            "dirty": bool(_git("status", "--porcelain", "--", "minipeft", "bench")),
            "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": f"{_cpu()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"}


def default_path(name: str, ext: str = "jsonl") -> str:
    """bench/results/<name>-<YYYY-MM-DD>-<commit>.<ext> (the folder is created)."""
    os.makedirs(RESULTS, exist_ok=True)
    s = stamp()
    return os.path.join(RESULTS, f"{name}-{s['date'][:10]}-{s['commit']}.{ext}")


def append(path: str, obj: dict) -> dict:
    """Append obj, stamped (its own keys win), as one JSON line to path; returns the stamped dict."""
    rec = {**stamp(), **obj}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--path", metavar="NAME", help="print bench/results/NAME-<date>-<commit>.jsonl")
    g.add_argument("--out", metavar="FILE", help="append each JSON line of stdin, stamped, to FILE")
    ap.add_argument("--add", action="append", default=[], metavar="KEY=VALUE",
                    help="a field to add to every record (repeatable), e.g. tree=base")
    a = ap.parse_args(argv)
    if a.path:
        print(default_path(a.path))
        return 0
    extra = dict(kv.split("=", 1) for kv in a.add)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(append(a.out, {**json.loads(line), **extra})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
