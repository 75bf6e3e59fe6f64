"""Run the numbered notebooks headless with papermill for one profile (the main job).

    python scripts/run_notebooks.py --profile offline          # all notebooks, then the lab screenshots
    python scripts/run_notebooks.py --profile tiny --only 01 02
    python scripts/run_notebooks.py --profile offline --lab-only   # only the JupyterLab screenshots

Executed copies go to data/executed/<profile>/ (not committed); figures to figures/.
The terminal shows which notebook and which cell runs, the notebooks' own progress bars
(tokens/s, steps/s, ETA: the kernel's tqdm is switched to plain text and streamed here), and a
summary at the end (time per notebook, figures written, executed notebooks). After the notebooks,
notebook 05 is opened in JupyterLab in headless Chromium (helpers/report/jupyterlab.py) to screenshot the live
feature browser (05_lab_widget.png) and a figure in the notebook (05_lab_figure.png).
Writes data/executed/<profile>/timings.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in each kernel before the notebook (an IPython startup file): progress bars as plain text
# on stderr, which papermill streams to this terminal (tqdm.auto would draw ipywidgets nobody sees).
KERNEL_STARTUP = """\
import tqdm.auto as _auto, tqdm.std as _std


class _TextTqdm(_std.tqdm):
    def __init__(self, *a, **kw):
        kw.setdefault("mininterval", 2.0)  # one refresh per 2 s keeps the terminal readable
        kw.setdefault("ncols", 100)
        super().__init__(*a, **kw)


_auto.tqdm = _TextTqdm
_auto.trange = lambda *a, **kw: _TextTqdm(range(*a), **kw)
"""
# ipykernel warns on every start that its TCP transport is unencrypted; the kernel listens on
# 127.0.0.1 only and lives for one notebook, so the warning is noise in this job's output.
KERNEL_CONFIG = 'c.IPKernelApp.log_level = "ERROR"\n'


def quiet_kernel_dir() -> Path:
    """An IPYTHONDIR whose default profile quiets the kernel and makes tqdm plain text."""
    d = Path(tempfile.mkdtemp(prefix="sae-lab-ipython-"))
    prof = d / "profile_default"
    (prof / "startup").mkdir(parents=True)
    (prof / "ipython_kernel_config.py").write_text(KERNEL_CONFIG)
    (prof / "startup" / "00-sae-lab-progress.py").write_text(KERNEL_STARTUP)
    return d


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


class CellReporter:
    """nbclient hook: one line per code cell ('[03 · cell 7/24] first line of the cell')."""

    def __init__(self, nb_name: str, n_code: int):
        self.tag, self.n, self.i, self.t0 = nb_name[:2], n_code, 0, time.perf_counter()

    def __call__(self, cell, cell_index, **_):
        if cell.cell_type != "code":
            return
        self.i += 1
        first = next(
            (ln for ln in cell.source.splitlines() if ln.strip() and not ln.startswith("#")),
            cell.source.strip().split("\n")[0] if cell.source.strip() else "",
        )
        print(
            f"\n[{self.tag} · cell {self.i}/{self.n} · {_fmt(time.perf_counter() - self.t0)}] {first[:90]}",
            file=sys.stderr,
            flush=True,
        )


def execute(nb: Path, out: Path, parameters: dict, n_code: int, cwd: Path = ROOT / "notebooks"):
    """papermill with the kernel's stdout/stderr streamed here and a line per cell.
    Call after os.environ["IPYTHONDIR"] = str(quiet_kernel_dir())."""
    import papermill as pm

    return pm.execute_notebook(
        str(nb),
        str(out),
        parameters=parameters,
        cwd=str(cwd),
        progress_bar=False,
        log_output=False,
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
        kernel_name="python3",
        on_cell_execute=CellReporter(nb.name, n_code + 1),
    )  # + papermill's parameters cell


def run_lab_screenshots(profile: str, out_dir: Path, name: str | None = None) -> list[Path]:
    """Notebook 05 live in JupyterLab (headless Chromium): two PNGs into the figures folder."""
    from helpers.paths import figures_dir
    from helpers.report.jupyterlab import lab_screenshots

    figs = figures_dir(name or profile)
    print(f"--- JupyterLab: notebook 05 in headless Chromium (profile {profile})", flush=True)
    t0 = time.perf_counter()
    res = lab_screenshots(profile, figs, out_dir / "lab", timeout_s=1800)
    print(
        f"--- JupyterLab: clicked through {len(res['titles'])} cards "
        f"({' -> '.join(res['titles'])}) in {_fmt(time.perf_counter() - t0)}",
        flush=True,
    )
    return [res["widget_png"], res["figure_png"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="offline")
    p.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 03")
    p.add_argument("--no-lab", action="store_true", help="skip the JupyterLab screenshots")
    p.add_argument("--lab-only", action="store_true", help="only the JupyterLab screenshots")
    a = p.parse_args(argv)

    import nbformat

    from helpers.paths import data_dir, figures_dir
    from helpers.profiles import PROFILES, get_profile

    profile = get_profile(a.profile)  # one-line error on an unknown profile or a bad .toml
    if a.profile not in PROFILES:  # a .toml path: the kernels run in notebooks/
        a.profile = str(Path(a.profile).resolve())
    os.environ.setdefault("HF_DATASETS_OFFLINE", "0" if profile.needs_hub else "1")
    os.environ["IPYTHONDIR"] = str(quiet_kernel_dir())
    out_dir = data_dir() / "executed" / profile.name
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in a.only]
    if a.lab_only:
        notebooks = []
    t_start = time.time()
    timings = {}
    for k, nb in enumerate(notebooks, 1):
        n_code = sum(c.cell_type == "code" for c in nbformat.read(nb, as_version=4).cells)
        print(f"=== [{k}/{len(notebooks)}] {nb.name} (profile {a.profile}, {n_code} code cells)", flush=True)
        t0 = time.perf_counter()
        execute(nb, out_dir / nb.name, {"PROFILE": a.profile}, n_code)
        timings[nb.name] = round(time.perf_counter() - t0, 1)
        print(f"\n=== {nb.name}: {_fmt(timings[nb.name])}", flush=True)
    lab_pngs = []
    run_lab = not a.no_lab and (a.lab_only or not a.only or "05" in a.only)
    if run_lab:
        t0 = time.perf_counter()
        try:
            lab_pngs = run_lab_screenshots(a.profile, out_dir, profile.name)
        except Exception as err:  # noqa: BLE001 - the notebooks' results stand without the screenshots
            print(f"WARNING: JupyterLab screenshots failed: {str(err).splitlines()[0][:300]}", flush=True)
        timings["jupyterlab screenshots"] = round(time.perf_counter() - t0, 1)
    timings["total"] = round(sum(timings.values()), 1)
    tfile = out_dir / "timings.json"
    if (
        a.lab_only and tfile.exists() and "jupyterlab screenshots" in timings
    ):  # keep the notebooks' timings of the last full run
        old = json.loads(tfile.read_text())
        old["jupyterlab screenshots"] = timings["jupyterlab screenshots"]
        old["total"] = round(sum(v for k, v in old.items() if k != "total"), 1)
        tfile.write_text(json.dumps(old, indent=1))
    else:
        tfile.write_text(json.dumps(timings, indent=1))

    figs = figures_dir(profile.name)
    written = sorted(f for f in figs.glob("*.*") if f.stat().st_mtime >= t_start - 1)
    print("\n=== summary " + "=" * 60)
    for name, sec in timings.items():
        print(f"  {name:<32} {_fmt(sec):>14}")
    pngs = [f.name for f in written if f.suffix == ".png"]
    print(f"  figures written: {len(written)} files in {figs} ({len(pngs)} PNG)")
    for i in range(0, len(pngs), 3):
        print("    " + "  ".join(pngs[i : i + 3]))
    if lab_pngs:
        print(f"  JupyterLab screenshots: {', '.join(str(p) for p in lab_pngs)}")
    print(f"  executed notebooks: {out_dir}/")
    print(f"  timings: {out_dir / 'timings.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
