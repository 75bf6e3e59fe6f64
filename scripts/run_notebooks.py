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
Before anything runs it prints the plan: which notebooks run and why (helpers.report.rerun: a notebook
whose cells, helpers/, profile, library versions and upstream notebooks are as when it last finished,
and whose figures are still there, is skipped, as make would), each one's estimated minutes on this
machine from a few seconds of calibration (helpers.report.eta), and the ETA; at the end, estimated
against actual. `--force` runs everything; `--only` runs the named notebooks whatever their state.
Writes data/executed/<profile>/timings.json (each notebook's last wall time), state.json (what ran,
with which fingerprint) and plan.json (calibration, estimates, actual: the next run's reference here).
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
T_START = time.time()

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


def _outputs_since(figs: Path, t0: float) -> list[str]:
    """Files written into the figures folder since t0, relative to it."""
    return [str(f.relative_to(figs)) for f in figs.rglob("*") if f.is_file() and f.stat().st_mtime >= t0 - 1]


def print_plan(steps, reasons, predicted, ref, cal, only=None) -> None:
    """The plan: each step, whether it runs and why, and its estimated minutes here; then the ETA."""
    from helpers.report import eta

    print("=== plan " + "=" * 63)
    if cal is not None:
        print(
            f"  this machine: TopK step {cal.step_tokens_per_s:,.0f} tok/s, GEMM {cal.gemm_gflops:.0f} "
            f"GFLOP/s ({cal.precision}; {cal.cpu})"
        )
        source = ref.source if ref else "no reference run of this profile (none until it ran once)"
        print(f"  estimates from {source}")
    for key in steps:
        why = reasons[key]
        est = eta.fmt_minutes(predicted.get(key)) if why else "-"
        skipped = "not asked for" if only is not None and key not in only else "up to date, skipped"
        print(f"  {key:<4} {('runs: ' + why) if why else skipped:<58} {est:>9}")
    todo = [predicted.get(k) for k in steps if reasons[k]]
    if todo and None not in todo:
        total = sum(todo)
        done_at = time.strftime("%H:%M", time.localtime(time.time() + total))
        print(f"  ETA: {eta.fmt_minutes(total)} (done about {done_at})", flush=True)
    elif not todo:
        print("  nothing changed since the last run: no notebook runs", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="offline")
    p.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 03 (run even if up to date)")
    p.add_argument("--force", action="store_true", help="run every notebook, up to date or not")
    p.add_argument("--no-lab", action="store_true", help="skip the JupyterLab screenshots")
    p.add_argument("--lab-only", action="store_true", help="only the JupyterLab screenshots")
    a = p.parse_args(argv)

    import nbformat

    from helpers.paths import data_dir, figures_dir
    from helpers.profiles import PROFILES, get_profile
    from helpers.report import eta, rerun

    profile = get_profile(a.profile)  # one-line error on an unknown profile or a bad .toml
    if a.profile not in PROFILES:  # a .toml path: the kernels run in notebooks/
        a.profile = str(Path(a.profile).resolve())
    os.environ.setdefault("HF_DATASETS_OFFLINE", "0" if profile.needs_hub else "1")
    os.environ["IPYTHONDIR"] = str(quiet_kernel_dir())
    out_dir = data_dir() / "executed" / profile.name
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = figures_dir(profile.name)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    steps: dict[str, Path | None] = {nb.name[:2]: nb for nb in notebooks}
    steps["lab"] = None  # the JupyterLab screenshots of notebook 05
    if a.lab_only:
        only, force = {"lab"}, {"lab"}
    elif a.only:  # the notebooks named run whatever their state; the screenshots follow 05
        only, force = set(a.only) | ({"lab"} if "05" in a.only else set()), set(a.only)
    else:
        only, force = None, set(steps) if a.force else set()
    if a.no_lab:
        only = (only if only is not None else set(steps)) - {"lab"}
    fps = rerun.fingerprints(steps, profile.to_dict())
    state = rerun.RunState(out_dir / rerun.STATE_NAME)
    reasons = rerun.to_run(steps, fps, state, figs, only=only, force=force)
    plan_path = out_dir / "plan.json"
    runs = [k for k in steps if reasons[k]]
    cal = eta.calibrate() if runs else None
    ref = eta.reference_for(profile.name, plan_path)
    predicted = eta.estimate(list(steps), ref, cal) if cal else {}
    print_plan(steps, reasons, predicted, ref, cal, only)
    old_plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    plan = eta.Plan(cal, predicted, dict(old_plan.get("actual", {}))) if cal else None
    tfile = out_dir / "timings.json"
    timings = json.loads(tfile.read_text()) if tfile.exists() else {}
    timings.pop("total", None)
    ran: dict[str, float] = {}
    for key in runs:
        t0 = time.perf_counter()
        t_wall = time.time()
        try:
            if key == "lab":
                run_lab_screenshots(a.profile, out_dir, profile.name)
                name = "jupyterlab screenshots"
            else:
                nb = steps[key]
                n_code = sum(c.cell_type == "code" for c in nbformat.read(nb, as_version=4).cells)
                print(f"=== {nb.name} (profile {a.profile}, {n_code} code cells; {reasons[key]})", flush=True)
                execute(nb, out_dir / nb.name, {"PROFILE": a.profile}, n_code)
                name = nb.name
        except Exception as err:
            state.forget(key)  # it runs again next time
            if key != "lab":
                raise
            # the notebooks' results stand without the screenshots
            print(f"WARNING: JupyterLab screenshots failed: {str(err).splitlines()[0][:300]}", flush=True)
            continue
        ran[key] = timings[name] = round(time.perf_counter() - t0, 1)
        outputs = _outputs_since(figs, t_wall) + ([str(out_dir / name)] if key != "lab" else [])
        state.finished(key, fps[key], ran[key], outputs)
        if plan is not None:
            plan.actual[key] = ran[key]
            plan.save(plan_path)
        print(f"\n=== {name}: {_fmt(ran[key])} (estimated {eta.fmt_minutes(predicted.get(key))})", flush=True)
    timings["total"] = round(sum(timings.values()), 1)
    tfile.write_text(json.dumps(timings, indent=1))

    print("\n=== summary " + "=" * 60)
    print(f"  {'step':<32} {'estimated':>10} {'actual':>14}")
    for key in steps:
        if key in ran:
            print(f"  {key:<32} {eta.fmt_minutes(predicted.get(key)):>10} {_fmt(ran[key]):>14}")
        elif only is None or key in only:
            print(f"  {key:<32} {'':>10} {'up to date':>14}")
    if ran:
        est = [predicted.get(k) for k in ran]
        est_s = eta.fmt_minutes(sum(est)) if None not in est else "?"
        print(f"  {'this run':<32} {est_s:>10} {_fmt(sum(ran.values())):>14}")
    written = sorted(f for f in figs.glob("*.*") if f.stat().st_mtime >= T_START - 1)
    pngs = [f.name for f in written if f.suffix == ".png"]
    print(f"  figures written: {len(written)} files in {figs} ({len(pngs)} PNG)")
    for i in range(0, len(pngs), 3):
        print("    " + "  ".join(pngs[i : i + 3]))
    print(f"  executed notebooks: {out_dir}/")
    print(f"  timings: {tfile}; plan, estimates and actual: {plan_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
