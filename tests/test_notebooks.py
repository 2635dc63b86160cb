"""Every lecture notebook runs top to bottom in fast mode (as LLMs-from-scratch runs its notebooks in CI).

Each `lectures/*.ipynb` is executed with nbclient through `minipeft.lecture.execute_notebook`:
- the kernel is an ipykernel on this interpreter (sys.executable: the project venv under
  `make test`), from a kernel spec installed into a temporary prefix, so kernels installed
  elsewhere on the machine are never picked up; its PYTHONPATH starts with this checkout;
- MINIPEFT_FAST=1 (each notebook's fast mode) and MPLBACKEND=Agg in the kernel's environment;
- MINIPEFT_FIGURES points at a temporary folder: the committed full-run figures stay untouched;
- a notebook fails on the first cell that raises (the notebooks `assert` their numbers against
  the papers' arithmetic, so a broken formula fails here), or when it runs past 300 s in all.
The executed notebook is not written back; `make lectures` does that in full mode.
"""
from __future__ import annotations

import glob
import os

import pytest

pytest.importorskip("nbclient", reason="nbclient is needed to run the lecture notebooks (requirements.txt)")
pytest.importorskip("ipykernel", reason="ipykernel is needed to run the lecture notebooks (requirements.txt)")

from minipeft.lecture import LECTURES, execute_notebook, machine_paths  # noqa: E402

NOTEBOOKS = sorted(glob.glob(os.path.join(LECTURES, "*.ipynb")))
TIMEOUT_S = 300


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks found in lectures/ ({LECTURES})"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path):
    figures = tmp_path / "figures"
    nb, seconds = execute_notebook(path, fast=True, timeout=TIMEOUT_S, save=False, figures=str(figures),
                                   env={"MPLBACKEND": "Agg"})
    assert seconds < TIMEOUT_S, f"{os.path.basename(path)} took {seconds:.0f} s in fast mode (limit {TIMEOUT_S} s)"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"error outputs: {errors}"
    leaks = machine_paths(nb, extra=(str(tmp_path),))
    assert not leaks, "outputs name local folders (print names relative to the repo instead):\n" + "\n".join(leaks)
