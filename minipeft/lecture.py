"""Helpers for the lecture notebooks (lectures/*.ipynb), and the runner that executes them.

The notebooks import the library and compute everything with it; this module only holds what
every notebook needs around the computation:

    from minipeft.lecture import fast_mode, save_figure, save_table, table
    FAST = fast_mode()                            # MINIPEFT_FAST=1: the CI-sized run
    path = save_figure(fig, "01_trainable_params")  # -> lectures/figures/01_trainable_params.png
    save_table(rows, "01_parameter_counts")       # -> lectures/figures/01_parameter_counts.csv
    table(rows, ["arch", "trainable"])            # a Markdown table shown in the notebook

Running notebooks (nbclient, with a kernel on *this* interpreter):

    python -m minipeft.lecture lectures/*.ipynb                 # full mode, outputs saved in place
    python -m minipeft.lecture --fast lectures/01_parameter_counts.ipynb   # fast: never saved

`make lectures` runs the first line; tests/test_notebooks.py calls `execute_notebook(..., fast=True)`.

Modes. `MINIPEFT_FAST=1` in the kernel's environment asks a notebook for its fast mode: the
same cells on smaller settings, minutes on two CPU cores, run by the tests. Without it (full
mode) a notebook runs the settings whose outputs are committed and refreshes lectures/figures.

Figures and tables go to `figures_dir()`: $MINIPEFT_FIGURES when set, else a scratch folder,
`runs/lab-figures` of this checkout (git ignores runs/). So a notebook opened in Jupyter and run
by hand never overwrites the committed figures in lectures/figures: only `make lectures` (the
runner below, a saved full run) points MINIPEFT_FIGURES at lectures/figures. The tests, `--fast`
and `--no-save` point it at a temporary folder. To refresh the committed figures by hand, start
Jupyter with MINIPEFT_FIGURES=lectures/figures.

The kernel. `execute_notebook` installs an ipykernel kernel spec for `sys.executable` into a
temporary prefix and starts the kernel through a KernelSpecManager that looks only there, so
the notebook runs on the interpreter that runs the caller (the project venv under `make test`),
whatever kernels a user has installed under ~/.local/share/jupyter or elsewhere. The kernel's
PYTHONPATH starts with this checkout, so it imports the same minipeft as the caller.

Host-side only: matplotlib and the standard library; arrays come from `backend.host()`.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import sys
import tempfile
import time

FAST_ENV = "MINIPEFT_FAST"
FIGURES_ENV = "MINIPEFT_FIGURES"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LECTURES = os.path.join(REPO, "lectures")
COMMITTED_FIGURES = os.path.join(LECTURES, "figures")      # written only when asked (make lectures)
SCRATCH_FIGURES = os.path.join(REPO, "runs", "lab-figures")  # an interactive run's figures


# ----------------------------------------------------------------------------- inside a notebook

def fast_mode() -> bool:
    """True when MINIPEFT_FAST is set to 1/true/yes (the tests' setting)."""
    return os.environ.get(FAST_ENV, "").strip().lower() in ("1", "true", "yes")


def figures_dir() -> str:
    """Where figures and result tables go ($MINIPEFT_FIGURES, else the scratch folder
    runs/lab-figures, never lectures/figures unless asked); created."""
    d = os.environ.get(FIGURES_ENV) or SCRATCH_FIGURES
    os.makedirs(d, exist_ok=True)
    return d


def save_figure(fig, name: str, dpi: int = 120) -> str:
    """Write `fig` as figures_dir()/<name>.png and return that path.
    The PNG carries no software/date metadata, so re-running a notebook gives the same bytes
    when the plot is the same."""
    path = os.path.join(figures_dir(), f"{name}.png")
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path


def save_table(rows: list, name: str, columns: list | None = None) -> str:
    """Write a list of dicts as figures_dir()/<name>.csv (columns: the first row's keys by default)."""
    columns = list(columns or rows[0].keys())
    path = os.path.join(figures_dir(), f"{name}.csv")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return path


def save_json(obj, name: str) -> str:
    """Write figures_dir()/<name>.json (sorted keys, indented)."""
    path = os.path.join(figures_dir(), f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def _cell(v, fmt):
    if fmt is not None:
        return fmt(v) if callable(fmt) else format(v, fmt)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(rows: list, columns: list | None = None, headers: list | None = None, formats: dict | None = None):
    """A Markdown table of a list of dicts (or of lists), to show as a cell's result.

    columns: keys to show (default: the first row's); headers: their titles; formats: key ->
    format spec (",", ".3f") or a function. Integers get thousands separators by default."""
    from IPython.display import Markdown
    formats = formats or {}
    if rows and not isinstance(rows[0], dict):
        columns = columns or list(range(len(rows[0])))
    columns = list(columns or rows[0].keys())
    headers = [str(h) for h in (headers or columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r[c], formats.get(c)) for c in columns) + " |")
    return Markdown("\n".join(lines))


def run_settings() -> dict:
    """What a reader needs to compare a run: mode, versions, the library's commit (with "+dirty"
    when minipeft/ had uncommitted changes), CPU count, backend (no paths)."""
    from . import backend
    return {"mode": "fast" if fast_mode() else "full", "minipeft": _version(), "commit": _commit(),
            "python": platform.python_version(), "numpy": backend.host().__version__,
            "backend": backend.name, "cpus": os.cpu_count(), "machine": platform.machine()}


def _commit() -> str:
    """The checkout's short commit, "+dirty" if minipeft/ has uncommitted changes; "unknown"
    outside a git checkout (an installed copy)."""
    import subprocess
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,  # noqa: E731
                                        check=True, timeout=10).stdout.strip()
        return run("rev-parse", "--short", "HEAD") + ("+dirty" if run("status", "--porcelain", "--", "minipeft") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version() -> str:
    from . import __version__
    return __version__


# ----------------------------------------------------------------------------- running notebooks

def _kernel_manager(prefix: str, kernel_name: str = "python3"):
    """An AsyncKernelManager for an ipykernel on sys.executable, its spec installed under `prefix`."""
    from ipykernel.kernelspec import install
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    install(kernel_name=kernel_name, prefix=prefix, display_name=f"Python 3 ({os.path.basename(sys.executable)})")
    ksm = KernelSpecManager(kernel_dirs=[os.path.join(prefix, "share", "jupyter", "kernels")],
                            ensure_native_kernel=False)
    # async: nbclient polls the kernel from an event loop; a blocking manager would stall it (and its timeouts)
    return AsyncKernelManager(kernel_name=kernel_name, kernel_spec_manager=ksm)


def machine_paths(nb, extra: tuple = ()) -> list:
    """Lines of a notebook's outputs that name this machine's folders (checkout, home, temp)."""
    needles = {REPO, os.path.expanduser("~"), tempfile.gettempdir(), *extra} - {"", "/"}
    hits = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            texts = [out.get("text", "")] + [v for k, v in out.get("data", {}).items()
                                              if k.startswith("text/") and isinstance(v, str)]
            texts += out.get("traceback", [])
            for t in texts:
                for line in str(t).splitlines():
                    if any(n in line for n in needles):
                        hits.append(f"cell {i}: {line.strip()[:200]}")
    return hits


def execute_notebook(path: str, fast: bool, timeout: float | None = None, save: bool = False,
                     figures: str | None = None, env: dict | None = None):
    """Run the notebook at `path` top to bottom; return (executed notebook, wall seconds).

    fast: set MINIPEFT_FAST=1 in the kernel's environment. timeout: seconds for the whole
    notebook (each cell gets what is left), None for no limit. save: write the executed notebook
    back to `path` (outputs included). figures: MINIPEFT_FIGURES for the kernel (None: the
    notebook's default, the scratch folder runs/lab-figures). env: more environment variables for the kernel.
    Raises nbclient's CellExecutionError (with the cell's traceback) when a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    from . import backend
    nb = nbformat.read(path, as_version=4)
    kenv = dict(os.environ)
    kenv.pop(FAST_ENV, None)
    if fast:
        kenv[FAST_ENV] = "1"
    if figures is not None:
        kenv[FIGURES_ENV] = figures
    kenv["PYTHONPATH"] = os.pathsep.join([REPO] + [p for p in kenv.get("PYTHONPATH", "").split(os.pathsep) if p])
    # notebooks import matplotlib (hence NumPy) before minipeft: set the OpenBLAS settings that
    # minipeft/cpu.py would set, so that the kernel runs one pool of threads on every core (cpu.rows)
    kenv.setdefault("OPENBLAS_NUM_THREADS", "1")
    kenv.setdefault("OPENBLAS_THREAD_TIMEOUT", backend.OPENBLAS_THREAD_TIMEOUT)
    kenv.update(env or {})
    start = time.perf_counter()
    deadline = None if timeout is None else start + timeout

    def cell_timeout(cell):
        return None if deadline is None else max(1, int(deadline - time.perf_counter()))

    with tempfile.TemporaryDirectory(prefix="minipeft-kernel-") as prefix:
        client = NotebookClient(nb, km=_kernel_manager(prefix), timeout_func=cell_timeout,
                                startup_timeout=120, record_timing=False,
                                resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
        client.execute(env=kenv)
    seconds = time.perf_counter() - start
    # open with the user's own Python 3 kernel, not the temporary spec this run installed
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    if save:
        nbformat.write(nb, path)
    return nb, seconds


def main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m minipeft.lecture",
                                description="Execute lecture notebooks with nbclient (full mode unless --fast).")
    p.add_argument("notebooks", nargs="+")
    p.add_argument("--fast", action="store_true",
                   help="MINIPEFT_FAST=1 (the CI mode); a fast run is never written back: the committed outputs "
                        "are the full run's")
    p.add_argument("--no-save", action="store_true",
                   help="do not write the executed notebooks back, nor their figures into lectures/figures")
    p.add_argument("--timeout", type=float, default=None, help="seconds per notebook (default: none)")
    a = p.parse_args(argv)
    save = not (a.no_save or a.fast)        # only a full run replaces a notebook's committed outputs
    status = 0
    for path in a.notebooks:
        # Only a saved full run refreshes lectures/figures. A fast or unsaved run writes its figures and
        # tables to a temporary folder ($MINIPEFT_FIGURES if set), so it never overwrites the committed
        # full-run figures that the committed notebook's outputs describe.
        with tempfile.TemporaryDirectory(prefix="minipeft-figures-") as tmp:
            if os.environ.get(FIGURES_ENV):
                figures = None                                    # the caller's choice, kept
            else:
                figures = COMMITTED_FIGURES if save else tmp
            try:
                nb, seconds = execute_notebook(path, fast=a.fast, timeout=a.timeout, save=save, figures=figures)
            except KeyboardInterrupt:
                done = a.notebooks[:a.notebooks.index(path)]
                print(f"\ninterrupted while running {path}: it was not saved (a notebook is written only when it "
                      f"has run to the end); {len(done)} finished before it"
                      f"{' and were saved' if done and save else ''}"
                      f"{'; the figures it wrote are in lectures/figures (git diff shows them)' if figures == COMMITTED_FIGURES else ''}",
                      file=sys.stderr)
                return 130
        leaks = machine_paths(nb)
        print(f"{path}: {'fast' if a.fast else 'full'} mode, {seconds:.1f} s"
              f"{', saved with outputs' if save else ', not saved'}")
        for line in leaks:
            print(f"  output names a local folder: {line}", file=sys.stderr)
        status = status or (1 if leaks else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
