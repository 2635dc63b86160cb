"""The course kit: assignments built from the reference code, and the autograder that grades them.

A part of the library that a student writes is marked where it lives, in the reference code:

    def relu(x):
        # BEGIN SOLUTION relu_forward
        return x * (x > 0)
        # END SOLUTION

`minipeft assignment build NAME --out DIR` copies the repository to DIR and replaces every region
of that assignment's tasks by a stub,

        # TODO task relu_forward: ... (graded by: minipeft grade --task relu_forward)
        raise NotImplementedError("task relu_forward: ...")

writes DIR/ASSIGNMENT.md (what to read, what to write, how it is graded) and DIR/.assignment.json
(what `minipeft grade` reads). Regions of other assignments keep their code (only their marker
lines go). Tests listed as
hidden stay out of the student copy; `minipeft grade --hidden-from REFERENCE` puts them back at
grading time.

Lecture notebooks carry checkable exercises the same way: a code cell tagged "solution" holds the
answer, a cell tagged "check" asserts it; `minipeft assignment notebook LECTURE.ipynb --out DIR`
writes the student version (answers stubbed, their outputs cleared).

`minipeft grade [DIR]` runs each task's tests (pytest, in DIR, importing DIR's minipeft) and prints
a table: task, points, passed/failed, the first failing assertion. `--json FILE` writes the
results in the format Gradescope's autograder reads (score, and one entry per task).

The tests are the specification: each task names the pytest arguments that select its tests (a
file and a -k expression), and the reference code scores full marks (tests/test_course.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN SOLUTION (?P<task>\w+)\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
RECORD = ".assignment.json"


@dataclass
class Task:
    name: str            # the id in `# BEGIN SOLUTION <name>`
    points: int
    what: str            # what the student implements, one sentence
    tests: list          # pytest arguments that select the tests grading it


@dataclass
class Assignment:
    name: str
    title: str
    read: list           # files to read first
    tasks: list
    hidden: list = field(default_factory=list)   # test files kept out of the student copy


ASSIGNMENTS = {a.name: a for a in [
    Assignment(
        "backward", "Backward passes: GELU, layer norm, softmax cross-entropy and attention",
        read=["minipeft/autograd.py (Function, ctx.save_for_backward, ctx.needs_input_grad)",
              "minipeft/ops/reference.py (each docstring: the forward and the derivative lines)",
              "minipeft/gradcheck.py"],
        tasks=[
            Task("gelu_backward", 2, "GELU.backward: dx = g (h + x h'), h' = 2 h (1 - h) u'",
                 ["tests/ops/test_reference.py", "-k", "gelu"]),
            Task("layer_norm_backward", 3, "LayerNorm.backward: db, dw and dx = (gh - mean(gh) - xhat "
                 "mean(gh xhat)) / sigma", ["tests/ops/test_reference.py", "-k", "layer_norm"]),
            Task("cross_entropy_backward", 2, "CrossEntropy.backward: dx_i = (softmax(x_i) - onehot(t_i)) "
                 "keep_i g / n", ["tests/ops/test_reference.py", "-k", "cross_entropy"]),
            Task("attention_backward", 5, "Attention.backward: dV' = A^T G, dA = G V'^T, dS = A (dA - "
                 "rowsum(dA A)) (0 where masked), dQ = dS K' s, dK' = dS^T Q s",
                 ["tests/ops/test_reference.py", "-k", "attention and not prefix and not infix"]),
        ]),
    Assignment(
        "prefix", "Prefix tuning inside the attention op",
        read=["minipeft/ops/reference.py (Attention: K' = [K_prefix ; K])", "minipeft/peft/prefix.py",
              "lectures/03_prefix_tuning.ipynb"],
        tasks=[
            Task("prefix_attention", 4, "Attention.forward: prepend the prefix rows, K' = [K_prefix ; K] and "
                 "V' = [V_prefix ; V], one shared prefix (leading size 1) broadcast over the batch",
                 ["tests/ops/test_reference.py", "-k", "attention and (prefix or infix)"]),
            Task("prefix_gradient", 3, "_split: the prefix's gradient is the first P rows of dK' (dV'), "
                 "summed over the batch when one prefix is shared", ["tests/ops/test_reference.py", "-k",
                                                                     "reference_attention and (prefix or infix)"]),
        ]),
    Assignment(
        "lora", "LoRA: the low-rank update, and merging it into the weight",
        read=["minipeft/peft/lora.py (the docstring: the equation and the shapes)", "lectures/02_lora.ipynb",
              "tests/peft/test_lora.py"],
        tasks=[
            Task("lora_delta", 6, "LoraLinear.delta: (alpha/r) B A dropout(x), the scaling on the thin "
                 "(..., r) activation", ["tests/peft/test_lora.py", "-k",
                                         "gradcheck or starts_exactly or w0x_plus or dropout_acts or add_up"]),
            Task("lora_merge", 4, "delta_weight, merge and unmerge: W0 <- W0 +/- (alpha/r) B A",
                 ["tests/peft/test_lora.py", "-k", "merge"]),
        ]),
    Assignment(
        "adapters", "Bottleneck adapters, BitFit and the parameter-count formulas",
        read=["minipeft/peft/adapter.py", "minipeft/peft/bitfit.py", "minipeft/peft/count.py",
              "lectures/01_parameter_counts.ipynb", "lectures/05_adapters_bitfit.ipynb"],
        tasks=[
            Task("adapter_forward", 4, "the bottleneck f(h) = act(h W_down + b_down) W_up + b_up, the sequential "
                 "adapter h + f(h) and the parallel one sublayer(x) + s f(x)",
                 ["tests/peft/test_adapter.py", "-k", "gradcheck or sequential_layer or parallel_layer or "
                  "init_scale_zero or near_identity"]),
            Task("bitfit_select", 2, "BitFit's trained set: every bias (and the LayerNorm gains when asked)",
                 ["tests/peft/test_bitfit_full.py", "-k", "bitfit"]),
            Task("count_formulas", 3, "the closed forms: LoRA r (d_in + d_out) per matrix, an adapter 2 m d + d + m",
                 ["tests/peft/test_count.py", "-k", "counted_trainable_equals_formula and (lora or adapter) "
                  "or published_counts"]),
        ]),
    Assignment(
        "pasta", "PASTA: special-token adaptation, a vector per block and special token",
        read=["minipeft/peft/pasta.py (the docstring: the equation, the ablations, the count L S d)",
              "minipeft/nn/transformer.py (Transformer.encode: block_inputs)", "tests/peft/test_pasta.py"],
        tasks=[
            Task("pasta_index", 3, "vector_index: which of the S vectors each position adds ([CLS] 0, [SEP] 1, "
                 "one shared vector: 0), S (the zero row) elsewhere and outside the routed rows",
                 ["tests/peft/test_pasta.py", "-k", "land_on or without_sep or kv_cache"]),
            Task("pasta_vectors", 3, "encode_inputs: the (B, T, d) block input m_{s(i)} at the special tokens "
                 "and 0 elsewhere, a gather from the vectors plus one zero row",
                 ["tests/peft/test_pasta.py", "-k", "gradcheck or init_std_zero or land_on"]),
            Task("pasta_count", 1, "formula: L S d (plus the task head)",
                 ["tests/peft/test_pasta.py", "-k", "count_is"]),
        ]),
]}


# ============================================================================= regions

@dataclass
class Region:
    path: str            # relative to the repository root
    task: str
    start: int           # line index of "# BEGIN SOLUTION"
    end: int             # line index of "# END SOLUTION"
    indent: str


def find_regions(root: str = ROOT) -> list[Region]:
    """Every solution region under root/minipeft, in file order. A BEGIN without its END (or an
    END without a BEGIN, or nested regions) is an error naming the file and line."""
    out = []
    for path in _python_files(os.path.join(root, "minipeft")):
        rel = os.path.relpath(path, root)
        if rel == os.path.join("minipeft", "course.py"):          # its docstring shows a region
            continue
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        open_ = None
        for i, line in enumerate(lines):
            m = BEGIN.match(line)
            if m:
                if open_ is not None:
                    raise ValueError(f"{rel}:{i + 1}: a solution region starts inside the one at line {open_.start + 1}")
                open_ = Region(rel, m.group("task"), i, -1, m.group("indent"))
            elif END.match(line):
                if open_ is None:
                    raise ValueError(f"{rel}:{i + 1}: '# END SOLUTION' without a '# BEGIN SOLUTION <task>'")
                open_.end = i
                out.append(open_)
                open_ = None
        if open_ is not None:
            raise ValueError(f"{rel}:{open_.start + 1}: '# BEGIN SOLUTION {open_.task}' has no '# END SOLUTION'")
    return out


def _python_files(top):
    for d, dirs, files in os.walk(top):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(d, f)


def stub(region: Region, task: Task) -> list[str]:
    """The lines that replace a region in the student copy."""
    how = f"graded by: minipeft grade --task {task.name}"
    msg = f"task {task.name}: {task.what} ({how})"
    return [f"{region.indent}# TODO task {task.name}: {task.what}",
            f"{region.indent}# ({how}; tests: {' '.join(task.tests)})",
            f"{region.indent}raise NotImplementedError({msg!r})"]


# ============================================================================= building

def get(name: str) -> Assignment:
    if name not in ASSIGNMENTS:
        raise ValueError(f"no assignment {name!r}; the assignments are {sorted(ASSIGNMENTS)} "
                         f"(`minipeft assignment list`)")
    return ASSIGNMENTS[name]


def _files(root: str) -> list[str]:
    """The repository's files: what git tracks plus untracked files it does not ignore; outside a
    git checkout every file but .git, .venv, caches and runs/."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True).stdout.decode()
        return sorted(p for p in set(out.split("\0")) if p and os.path.isfile(os.path.join(root, p)))
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".hypothesis", "runs"}
        found = []
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in skip]
            found += [os.path.relpath(os.path.join(d, f), root) for f in files]
        return sorted(found)


def build(name: str, out: str, root: str = ROOT, force: bool = False) -> dict:
    """Write the student copy of assignment `name` to `out` (which must not exist, or be empty;
    force=True replaces it). Returns the record written to out/.assignment.json."""
    a = get(name)
    regions = find_regions(root)
    tasks = {t.name: t for t in a.tasks}
    missing = [t for t in tasks if not any(r.task == t for r in regions)]
    if missing:
        raise ValueError(f"assignment {name!r}: no '# BEGIN SOLUTION {missing[0]}' region in {root}/minipeft")
    out = os.path.abspath(out)
    if os.path.exists(out) and os.listdir(out):
        if not force:
            raise FileExistsError(f"{out} exists and is not empty; choose another folder or pass --force "
                                  f"to replace it")
        if os.path.abspath(root) in (out, os.path.dirname(out)) or out == "/":
            raise ValueError(f"refusing to replace {out}: it holds the reference repository")
        shutil.rmtree(out)
    tmp = tempfile.mkdtemp(prefix=".assignment-", dir=os.path.dirname(out) or ".")
    try:
        hidden = set(a.hidden)
        for rel in _files(root):
            if rel in hidden:
                continue
            dst = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), dst)
        by_file = {}                      # every region: this assignment's become stubs, the others
        for r in regions:                 # keep their code and lose only their two marker lines
            by_file.setdefault(r.path, []).append(r)
        places = {t: [] for t in tasks}                            # task -> "file:line" in the student copy
        for rel, rs in sorted(by_file.items()):
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                lines = f.read().split("\n")
            shift = 0
            for r in sorted(rs, key=lambda r: r.start):
                at = r.start + shift
                old = lines[at:at + r.end - r.start + 1]
                new = stub(r, tasks[r.task]) if r.task in tasks else old[1:-1]
                lines[at:at + len(old)] = new
                shift += len(new) - len(old)
                if r.task in tasks:
                    places[r.task].append(f"{rel}:{at + 1}")
            with open(os.path.join(tmp, rel), "w", encoding="utf-8") as f:
                f.write("\n".join(lines))
        record = {"assignment": a.name, "tasks": [asdict(t) for t in a.tasks], "hidden": a.hidden,
                  "places": places}
        with open(os.path.join(tmp, RECORD), "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
        with open(os.path.join(tmp, "ASSIGNMENT.md"), "w", encoding="utf-8") as f:
            f.write(readme(a, places))
        if os.path.exists(out):
            os.rmdir(out)                                           # empty: checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record


def readme(a: Assignment, places: dict) -> str:
    total = sum(t.points for t in a.tasks)
    lines = [f"# Assignment: {a.title}", "",
             "## Read first", *[f"- {r}" for r in a.read], "",
             f"## Write ({total} points)", "",
             "Each task is a `raise NotImplementedError` in the library, marked `# TODO task <name>`:", ""]
    for t in a.tasks:
        where = ", ".join(f"`{p}`" for p in places[t.name])
        lines.append(f"- **{t.name}** ({t.points} points): {t.what}. In {where}. "
                     f"Its tests: `python -m pytest {' '.join(_quote(x) for x in t.tests)}`.")
    lines += ["", "## Check your work", "",
              "    make test                  # the environment, then the whole suite: your tasks' tests fail first",
              "    .venv/bin/minipeft grade   # the score table of this assignment", ""]
    if a.hidden:
        lines += ["Some tests are kept for grading and are not in this copy.", ""]
    return "\n".join(lines)


def _quote(arg: str) -> str:
    return f'"{arg}"' if " " in arg else arg


# ============================================================================= notebooks

NOTEBOOK_STUB = ("# your answer: define the names that the check cell below uses\n"
                 "raise NotImplementedError({msg!r})")


def student_notebook(src: str, dst: str, force: bool = False) -> int:
    """Write the student version of a lecture notebook: every code cell tagged "solution" keeps
    its first comment line (the exercise) and gets a NotImplementedError stub; the outputs of the
    solution cells and of the "check" cells (which assert the answer) are cleared, so no answer is
    left in it. Returns how many answers were removed. (A notebook is JSON: no Jupyter needed.)"""
    with open(src, encoding="utf-8") as f:
        nb = json.load(f)
    n = 0
    for cell in nb.get("cells", []):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.get("cell_type") != "code" or not ({"solution", "check"} & set(tags)):
            continue
        if "solution" in tags:
            text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            first = text.split("\n", 1)[0]
            what = first.lstrip("# ").strip() if first.startswith("#") else "this exercise"
            cell["source"] = (first + "\n" if first.startswith("#") else "") + NOTEBOOK_STUB.format(
                msg=f"{what}: write the answer, then run the check cell below")
            n += 1
        cell["outputs"], cell["execution_count"] = [], None
    if n == 0:
        raise ValueError(f"{src} has no cell tagged 'solution': nothing to turn into an exercise")
    if os.path.isdir(dst):
        dst = os.path.join(dst, os.path.basename(src))
    if os.path.exists(dst) and not force:
        raise FileExistsError(f"{dst} exists; pass --force to replace it")
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(nb, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, dst)
    return n


# ============================================================================= grading

def grade(directory: str = ".", name: str | None = None, only: str | None = None,
          hidden_from: str | None = None, python: str | None = None) -> dict:
    """Run each task's tests in `directory` and score them. The assignment is the one recorded by
    `build` in directory/.assignment.json, or `name`. A task scores its points when all its tests
    pass (and at least one ran). Returns {"assignment", "score", "max_score", "tasks": [...]}."""
    directory = os.path.abspath(directory)
    rec_path = os.path.join(directory, RECORD)
    if name is None:
        if not os.path.isfile(rec_path):
            raise FileNotFoundError(f"{directory} has no {RECORD} (it is not a built assignment); pass "
                                    f"--assignment NAME, one of {sorted(ASSIGNMENTS)}")
        with open(rec_path, encoding="utf-8") as f:
            rec = json.load(f)
        a = Assignment(rec["assignment"], "", [], [Task(**t) for t in rec["tasks"]], rec.get("hidden", []))
    else:
        a = get(name)
    tasks = [t for t in a.tasks if only in (None, t.name)]
    if not tasks:
        raise ValueError(f"no task {only!r} in assignment {a.name!r}; its tasks are {[t.name for t in a.tasks]}")
    if hidden_from:
        for rel in a.hidden:
            dst = os.path.join(directory, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(hidden_from, rel), dst)
    results = [_run_task(directory, t, python or sys.executable) for t in tasks]
    return {"assignment": a.name, "score": sum(r["score"] for r in results),
            "max_score": sum(t.points for t in tasks), "tasks": results}


def _run_task(directory: str, t: Task, python: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "junit.xml")
        env = dict(os.environ, PYTHONPATH=directory + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                               *t.tests], cwd=directory, env=env, capture_output=True, text=True)
        ran, failed, first = _read_junit(xml) if os.path.exists(xml) else (0, 0, proc.stdout[-500:] + proc.stderr[-500:])
    passed = ran > 0 and failed == 0
    if ran == 0 and not first:
        first = "no test ran: the task's tests select nothing"
    return {"task": t.name, "points": t.points, "score": t.points if passed else 0, "tests": ran,
            "failed": failed, "passed": passed, "first_failure": "" if passed else first}


def _read_junit(path: str):
    """(tests run, failed or errored, the first failure's message) from a JUnit XML report."""
    root = ET.parse(path).getroot()
    ran = failed = 0
    first = ""
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            continue
        ran += 1
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed += 1
            if not first:
                msg = (bad.get("message") or bad.text or "").strip().split("\n")[0]
                first = f"{case.get('name')}: {msg}"[:300]
    return ran, failed, first


def table(result: dict) -> str:
    rows = [f"{'task':24s} {'points':>6s}  {'result':8s}  first failing assertion", "-" * 88]
    for r in result["tasks"]:
        state = "passed" if r["passed"] else "failed"
        rows.append(f"{r['task']:24s} {r['score']:>2d} / {r['points']:<2d}  {state:8s}  {r['first_failure']}")
    rows.append(f"{'total':24s} {result['score']:>2d} / {result['max_score']:<2d}")
    return "\n".join(rows)


def gradescope(result: dict) -> dict:
    """The results.json that Gradescope's autograder reads."""
    return {"score": result["score"],
            "tests": [{"name": r["task"], "score": r["score"], "max_score": r["points"],
                       "status": "passed" if r["passed"] else "failed",
                       "output": r["first_failure"] or f"{r['tests']} tests passed"} for r in result["tasks"]]}


# ============================================================================= the command line

def cli_assignment(a) -> None:
    if a.action == "notebook":
        if not a.name or not a.out:
            raise ValueError("usage: minipeft assignment notebook LECTURE.ipynb --out DIR")
        n = student_notebook(a.name, a.out, force=a.force)
        print(f"wrote the student version of {a.name} to {a.out}: {n} answers replaced by stubs")
        return
    if a.action == "list":
        for x in ASSIGNMENTS.values():
            pts = sum(t.points for t in x.tasks)
            print(f"{x.name:10s} {pts:3d} points  {x.title}  (tasks: {', '.join(t.name for t in x.tasks)})")
        return
    if not a.name or not a.out:
        raise ValueError("usage: minipeft assignment build NAME --out DIR")
    rec = build(a.name, a.out, force=a.force)
    stubs = [p for ps in rec["places"].values() for p in ps]
    print(f"wrote the student copy of {a.name!r} to {a.out}: {len(stubs)} stubs ({', '.join(stubs)}); "
          f"the student starts with: cd {a.out} && make test")


def cli_grade(a) -> None:
    result = grade(a.directory, name=a.assignment, only=a.task, hidden_from=a.hidden_from)
    print(table(result))
    if a.json:
        tmp = a.json + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(gradescope(result), f, indent=1)
        os.replace(tmp, a.json)
