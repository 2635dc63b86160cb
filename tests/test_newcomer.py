"""The newcomer's path: what README.md tells a student to type works as written.

- every ```python block of README.md runs, top to bottom, in a fresh interpreter in a scratch folder
  (a block that needs what a CI machine lacks - a GPU, transformers - is preceded by
  `<!-- readme-test: skip (the reason) -->`, and the test is skipped with that reason);
- every `minipeft ...` line of a ```bash block is a command the parser accepts, and every `make X`
  names a target of the Makefile.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest

from minipeft.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+?)\)\s*-->\s*$")


def readme_blocks(lang: str) -> list:
    """(line number, code, skip reason or None) of each ```lang block of README.md."""
    lines = open(README, encoding="utf-8").read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = next((lines[j] for j in range(start - 2, -1, -1) if lines[j].strip()), "")
            m = SKIP.search(before)
            blocks.append((start, "\n".join(body) + "\n", m.group(1) if m else None))
        i += 1
    return blocks


PYTHON = readme_blocks("python")


def test_the_readme_has_python_snippets():
    assert len(PYTHON) >= 3


@pytest.mark.parametrize("line, code, skip", PYTHON, ids=[f"README.md:{b[0]}" for b in PYTHON])
def test_readme_python_snippet_runs_as_written(line, code, skip, tmp_path):
    if skip:
        pytest.skip(f"README.md line {line}: {skip}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"README.md block at line {line} failed:\n{r.stderr[-3000:]}"


def test_the_first_look_prints_the_count_its_comment_gives_and_a_loss_value(tmp_path):
    line, code, _ = next(b for b in PYTHON if "print_trainable_parameters" in b[1])
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    said = re.search(r"# trainable params: ([\d,]+)", code).group(1)
    assert f"trainable params: {said} " in out, out
    last = out.strip().splitlines()[-1]
    assert 0 < float(last) < 20, f"print(loss...) should show a number, got {last!r}"
    assert (tmp_path / "runs" / "my-adapter" / "adapter_config.json").exists()


def _bash_lines():
    for line, code, _ in readme_blocks("bash"):
        for k, text in enumerate(code.splitlines()):
            cmd = text.split("#", 1)[0].strip()
            if cmd:
                yield line + k, cmd


def test_readme_minipeft_commands_parse_and_make_targets_exist():
    parser = build_parser()
    targets = set(re.findall(r"^([\w-]+):", open(os.path.join(REPO, "Makefile"), encoding="utf-8").read(), re.M))
    seen = 0
    for line, cmd in _bash_lines():
        argv = shlex.split(cmd)
        argv = [a for a in argv if "=" not in a or not a.split("=")[0].isupper()]   # VAR=value prefixes
        if argv and argv[0] in ("minipeft", ".venv/bin/minipeft"):
            parser.parse_args(argv[1:])                       # SystemExit(2) on a bad option
            seen += 1
        elif argv and argv[0] == "make":
            for t in argv[1:]:
                if "=" not in t:
                    assert t in targets, f"README.md line {line}: make {t}: no such target"
    assert seen >= 3
