"""The course kit (minipeft/course.py): solution regions, student copies, the autograder.

The reference code scores full marks; a freshly built student copy scores zero and fails with the
stubs' messages; putting the solution back restores full marks; nothing of a solution is left in
a student copy; every task marker selects tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from minipeft import course
from minipeft.cli import main

ROOT = course.ROOT
pytestmark = [pytest.mark.task_course,
              pytest.mark.skipif(os.path.exists(os.path.join(ROOT, course.RECORD)),
                                 reason="a student copy: the kit's own tests need the reference code")]


def solution_lines(regions, root=ROOT):
    """The distinctive lines inside the regions: long enough to mean something, and found nowhere
    in the library outside a region (a line such as `return out` proves nothing)."""
    inside, outside = {}, set()
    for path in course._python_files(os.path.join(root, "minipeft")):
        rel = os.path.relpath(path, root)
        lines = open(path, encoding="utf-8").read().split("\n")
        spans = [(r.start, r.end) for r in regions if r.path == rel]
        for i, line in enumerate(lines):
            key = line.strip()
            if any(a < i < b for a, b in spans):
                inside.setdefault(key, (rel, i + 1))
            else:
                outside.add(key)
    return {k: v for k, v in inside.items() if len(k) >= 16 and not k.startswith("#") and k not in outside}


def test_every_task_has_a_region_and_every_region_a_task():
    regions = course.find_regions()
    tasks = {t.name for a in course.ASSIGNMENTS.values() for t in a.tasks}
    assert {r.task for r in regions} == tasks, ({r.task for r in regions} ^ tasks)
    assert len(course.ASSIGNMENTS) >= 3 and all(t.points > 0 for a in course.ASSIGNMENTS.values() for t in a.tasks)


def test_a_broken_region_is_an_error_naming_file_and_line(tmp_path):
    pkg = tmp_path / "minipeft"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    # BEGIN SOLUTION t\n    return 1\n")
    with pytest.raises(ValueError, match=r"minipeft/x.py:2: '# BEGIN SOLUTION t' has no '# END SOLUTION'"):
        course.find_regions(str(tmp_path))
    (pkg / "x.py").write_text("def f():\n    return 1\n    # END SOLUTION\n")
    with pytest.raises(ValueError, match=r"minipeft/x.py:3: '# END SOLUTION' without"):
        course.find_regions(str(tmp_path))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("hw") / "lora"
    rec = course.build("lora", str(out))
    return out, rec


def test_student_copy_has_stubs_a_readme_and_no_solution(student):
    out, rec = student
    regions = [r for r in course.find_regions() if r.task in ("lora_delta", "lora_merge")]
    lora = (out / "minipeft" / "peft" / "lora.py").read_text()
    assert lora.count("raise NotImplementedError('task lora_") == len(regions) == 4
    assert "BEGIN SOLUTION" not in lora and "END SOLUTION" not in lora
    for place in rec["places"]["lora_merge"]:                     # the recorded lines are the stubs
        path, line = place.rsplit(":", 1)
        assert "lora_merge" in (out / path).read_text().split("\n")[int(line) - 1]
    removed = solution_lines(regions)
    assert len(removed) >= 4, removed
    for p in out.rglob("*"):
        if p.is_file() and p.suffix in (".py", ".md", ".ipynb", ".txt", ".json", ".sh", ".toml"):
            text = p.read_text(encoding="utf-8", errors="replace")
            left = [k for k in removed if k in text]
            assert not left, f"{p.relative_to(out)} still holds solution lines {left}"
    md = (out / "ASSIGNMENT.md").read_text()
    assert "lora_delta" in md and "lora_merge" in md and "minipeft grade" in md and "10 points" in md
    # another assignment's regions keep their code, without their markers
    ref = (out / "minipeft" / "ops" / "reference.py").read_text()
    assert "raise NotImplementedError" not in ref and "BEGIN SOLUTION" not in ref and "K' = [K_prefix ; K]" in ref
    assert "r (d_in + d_out)" in lora and "per_layer = sum(cfg.r" in lora       # the count formula stays
    assert not (out / ".git").exists()


def test_a_fresh_copy_scores_zero_and_the_solution_restores_full_marks(student, tmp_path):
    out, _ = student
    result = course.grade(str(out))
    assert result["score"] == 0 and result["max_score"] == 10, course.table(result)
    for r in result["tasks"]:
        assert not r["passed"] and "NotImplementedError: task lora_" in r["first_failure"], r
    fixed = tmp_path / "fixed"
    shutil.copytree(out, fixed)
    shutil.copy2(os.path.join(ROOT, "minipeft", "peft", "lora.py"), fixed / "minipeft" / "peft" / "lora.py")
    result = course.grade(str(fixed))
    assert result["score"] == 10, course.table(result)
    assert all(r["tests"] > 0 for r in result["tasks"])


@pytest.mark.parametrize("name", sorted(course.ASSIGNMENTS))
def test_the_reference_code_scores_full_marks(name):
    result = course.grade(ROOT, name=name)
    assert result["score"] == result["max_score"] > 0, course.table(result)
    assert all(r["tests"] > 0 for r in result["tasks"]), result


def test_grade_cli_prints_the_table_and_writes_gradescope_json(student, tmp_path, capsys):
    out, _ = student
    path = tmp_path / "results.json"
    assert main(["grade", str(out), "--task", "lora_merge", "--json", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "lora_merge" in printed and "0 / 4" in printed and "NotImplementedError" in printed
    res = json.loads(path.read_text())
    assert res["score"] == 0 and res["tests"][0]["name"] == "lora_merge" and res["tests"][0]["max_score"] == 4
    assert res["tests"][0]["status"] == "failed"


def test_build_refuses_a_non_empty_folder_and_unknown_names(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        course.build("lora", str(tmp_path))
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no assignment 'nope'"):
        course.build("nope", str(tmp_path / "x"))
    assert main(["grade", str(tmp_path)]) == 2                     # not a built assignment: one line


def test_hidden_tests_stay_out_of_the_copy_and_come_back_for_grading(tmp_path, monkeypatch):
    a = course.ASSIGNMENTS["lora"]
    hidden = course.Assignment("lora_hidden", a.title, a.read, a.tasks, hidden=["tests/peft/test_lora.py"])
    monkeypatch.setitem(course.ASSIGNMENTS, "lora_hidden", hidden)
    out = tmp_path / "hw"
    course.build("lora_hidden", str(out))
    assert not (out / "tests" / "peft" / "test_lora.py").exists()
    result = course.grade(str(out), only="lora_merge")
    assert result["tasks"][0]["tests"] == 0 and not result["tasks"][0]["passed"]    # nothing to run yet
    course.grade(str(out), only="lora_merge", hidden_from=ROOT)
    assert (out / "tests" / "peft" / "test_lora.py").exists()


def test_every_registered_task_marker_selects_tests():
    """`pytest -m task_X` must never select nothing silently (task_prefix once did)."""
    script = (
        "import json, pytest\n"
        "class P:\n"
        "    def pytest_collection_modifyitems(self, config, items):\n"
        "        P.found = {'marks': sorted({m.name for it in items for m in it.iter_markers()}),\n"
        "                   'registered': sorted(l.split(':')[0] for l in config.getini('markers'))}\n"
        "pytest.main(['--collect-only', '-q', '-p', 'no:cacheprovider', 'tests'], plugins=[P()])\n"
        "print('FOUND', json.dumps(P.found))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True).stdout
    found = json.loads(out.split("FOUND ", 1)[1].split("\n")[0])
    marks, registered = found["marks"], found["registered"]
    tasks = [m for m in registered if m.startswith("task_")]
    assert len(tasks) >= 10, registered
    assert [m for m in tasks if m not in marks] == []


LECTURE = os.path.join(ROOT, "lectures", "01_parameter_counts.ipynb")


def tagged(nb, tag):
    return [c for c in nb["cells"] if tag in c.get("metadata", {}).get("tags", [])]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_notebook_answers_pass_their_checks_and_the_student_version_holds_none(tmp_path):
    ref = json.load(open(LECTURE, encoding="utf-8"))
    answers, checks = tagged(ref, "solution"), tagged(ref, "check")
    assert len(answers) >= 3 and len(checks) == len(answers)
    ns = {}
    exec("from minipeft import peft\nfrom minipeft.cli import count_params\n"
         "from minipeft.peft.count import ARCHS", ns)
    for a, c in zip(answers, checks):                         # the reference answers pass their checks
        exec(source(a), ns)
        exec(source(c), ns)
    assert main(["assignment", "notebook", LECTURE, "--out", str(tmp_path)]) == 0
    student = json.load(open(tmp_path / os.path.basename(LECTURE), encoding="utf-8"))
    assert len(student["cells"]) == len(ref["cells"])
    text = json.dumps(student)
    elsewhere = "\n".join(source(c) for c in ref["cells"] if c not in answers)
    for a in answers:
        body = [line.strip() for line in source(a).split("\n")[1:]
                if len(line.strip()) > 12 and line.strip() not in elsewhere]
        assert body and not [line for line in body if line in text], body
        assert a["outputs"] and a["outputs"][0]["data"]["text/plain"][0] not in text     # the shown answer
    for cell in tagged(student, "solution") + tagged(student, "check"):
        assert cell["outputs"] == [] and cell["execution_count"] is None
    stub = source(tagged(student, "solution")[0])
    with pytest.raises(NotImplementedError, match="Exercise 1"):
        exec(stub, dict(ns))
    kept = [c for c in student["cells"] if c.get("outputs")]
    assert kept, "the lecture's other outputs (figures, tables) stay"
    with pytest.raises(FileExistsError, match="--force"):
        course.student_notebook(LECTURE, str(tmp_path))
