"""The main job's plan: a re-run executes only what changed (helpers.report.rerun) and each notebook's
estimate scales a reference run by this machine's calibration (helpers.report.eta)."""

import json
from pathlib import Path

import nbformat
import pytest

from helpers.report import eta, rerun

PROFILE = {"name": "offline", "train_tokens": 2_500_000}


def _notebooks(tmp_path: Path) -> dict[str, Path | None]:
    steps = {}
    for key in ("01", "02", "03", "04", "05", "06", "07"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {key}"), nbformat.v4.new_code_cell(f"x = {key!r}")]
        path = tmp_path / f"{key}_demo.ipynb"
        nbformat.write(nb, path)
        steps[key] = path
    steps["lab"] = None
    return steps


def _finish_all(steps, fps, state, figs: Path) -> None:
    for key in steps:
        fig = figs / f"{key}_figure.png"
        fig.write_bytes(b"png")
        state.finished(key, fps[key], 1.0, [fig.name])


def _running(reasons: dict) -> list[str]:
    return [k for k, why in reasons.items() if why]


@pytest.fixture
def finished_run(tmp_path):
    steps = _notebooks(tmp_path)
    figs = tmp_path / "figures"
    figs.mkdir()
    state = rerun.RunState(tmp_path / "state.json")
    fps = rerun.fingerprints(steps, PROFILE)
    _finish_all(steps, fps, state, figs)
    return steps, figs, tmp_path / "state.json"


def test_first_run__everything_runs(tmp_path):
    steps = _notebooks(tmp_path)
    state = rerun.RunState(tmp_path / "state.json")
    reasons = rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), state, tmp_path)
    assert _running(reasons) == list(steps)
    assert reasons["01"] == "never finished here"


def test_nothing_changed__nothing_runs(finished_run):
    steps, figs, state_path = finished_run
    state = rerun.RunState(state_path)  # read back from disk, as the next run does
    assert _running(rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), state, figs)) == []


def test_editing_06__only_06_runs(finished_run):
    steps, figs, state_path = finished_run
    nb = nbformat.read(steps["06"], as_version=4)
    nb.cells[1].source += "\ny = 2"
    nbformat.write(nb, steps["06"])
    reasons = rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), rerun.RunState(state_path), figs)
    assert _running(reasons) == ["06"]
    assert reasons["06"] == "cells changed"


def test_outputs_and_metadata_of_a_notebook_do_not_count(finished_run):
    steps, figs, state_path = finished_run
    nb = nbformat.read(steps["04"], as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hello")]
    nb.cells[1].execution_count = 7
    nb.metadata["papermill"] = {"duration": 3.0}
    nbformat.write(nb, steps["04"])
    assert (
        _running(rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), rerun.RunState(state_path), figs))
        == []
    )


def test_editing_03__03_and_what_reads_it_run(finished_run):
    steps, figs, state_path = finished_run
    nb = nbformat.read(steps["03"], as_version=4)
    nb.cells[0].source = "# 03, retold"
    nbformat.write(nb, steps["03"])
    reasons = rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), rerun.RunState(state_path), figs)
    assert _running(reasons) == ["03", "05", "lab"]  # 05 shows 03's position statistics
    assert reasons["05"] == "reads 03, which runs"


def test_helpers_or_profile_change__every_notebook_runs(finished_run, monkeypatch):
    steps, figs, state_path = finished_run
    state = rerun.RunState(state_path)
    monkeypatch.setattr(rerun, "helpers_digest", lambda: "edited")
    reasons = rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), state, figs)
    assert _running(reasons) == list(steps)
    assert reasons["04"].startswith("helpers changed")
    monkeypatch.undo()
    bigger = dict(PROFILE, train_tokens=5_000_000)
    assert _running(rerun.to_run(steps, rerun.fingerprints(steps, bigger), state, figs)) == list(steps)


def test_a_deleted_figure_reruns_its_notebook_and_those_downstream(finished_run):
    steps, figs, state_path = finished_run
    (figs / "02_figure.png").unlink()
    reasons = rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), rerun.RunState(state_path), figs)
    assert _running(reasons) == ["02", "03", "04", "05", "06", "07", "lab"]
    assert "outputs are gone (02_figure.png" in reasons["02"]


def test_only_and_force(finished_run):
    steps, figs, state_path = finished_run
    fps, state = rerun.fingerprints(steps, PROFILE), rerun.RunState(state_path)
    assert _running(rerun.to_run(steps, fps, state, figs, only={"03"}, force={"03"})) == ["03"]
    forced = rerun.to_run(steps, fps, state, figs, force=set(steps))
    assert _running(forced) == list(steps) and forced["01"] == "asked for"


def test_an_interrupted_step_is_forgotten_and_runs_again(finished_run):
    steps, figs, state_path = finished_run
    state = rerun.RunState(state_path)
    state.forget("07")
    reasons = rerun.to_run(steps, rerun.fingerprints(steps, PROFILE), rerun.RunState(state_path), figs)
    assert _running(reasons) == ["07"]


CAL_REF = eta.Calibration(step_tokens_per_s=40_000, gemm_gflops=200, precision="float32", cpu="ref")


def test_estimate_scales_training_by_the_step_and_the_rest_by_the_gemm():
    ref = eta.Reference({"01": 600.0, "02": 1200.0, "07": 300.0, "lab": 60.0}, CAL_REF, "test")
    now = eta.Calibration(step_tokens_per_s=20_000, gemm_gflops=400, precision="float32", cpu="now")
    est = eta.estimate(["01", "02", "07", "lab", "08"], ref, now)
    # 01, lab: GEMM twice as fast -> half; 02, 07: step half as fast -> twice; 08 not in the reference
    assert est == {"01": 300.0, "02": 2400.0, "07": 600.0, "lab": 30.0, "08": None}
    assert eta.estimate(["01"], None, now) == {"01": None}


def test_reference_prefers_this_machines_last_run(tmp_path):
    plan = eta.Plan(CAL_REF, {"01": 500.0}, {"01": 512.0})
    plan.save(tmp_path / "plan.json")
    ref = eta.reference_for("offline", tmp_path / "plan.json")
    assert ref.seconds == {"01": 512.0} and ref.calibration == CAL_REF
    assert ref.source == "this machine's last run"
    assert eta.reference_for("no-such-profile", tmp_path / "absent.json") is None


def test_write_reference_round_trips(tmp_path):
    eta.Plan(CAL_REF, {}, {"01": 512.0, "02": 900.0}).save(tmp_path / "plan.json")
    path = tmp_path / "ref.json"
    eta.write_reference("quick", tmp_path / "plan.json", path)
    raw = json.loads(path.read_text())
    assert raw["quick"]["seconds"] == {"01": 512.0, "02": 900.0}
    monkey = eta.REFERENCE_PATH
    try:
        eta.REFERENCE_PATH = path
        assert eta.reference_for("quick").seconds["02"] == 900.0
    finally:
        eta.REFERENCE_PATH = monkey


def test_committed_reference_covers_every_notebook_of_the_main_and_quick_profiles():
    raw = json.loads(eta.REFERENCE_PATH.read_text())
    keys = {p.name[:2] for p in (Path(rerun.REPO_ROOT) / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    for profile in ("offline",):
        assert keys <= set(raw[profile]["seconds"]), (
            f"{profile}: {sorted(keys - set(raw[profile]['seconds']))}"
        )
        assert (
            "AMD EPYC" in raw[profile]["calibration"]["cpu"] or "Intel" in raw[profile]["calibration"]["cpu"]
        )


@pytest.mark.slow
def test_calibrate_takes_seconds_and_measures_positive_rates():
    import time

    t = time.perf_counter()
    cal = eta.calibrate()
    assert time.perf_counter() - t < 30
    assert cal.step_tokens_per_s > 1000 and cal.gemm_gflops > 1
