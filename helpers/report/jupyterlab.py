"""The lab as a person uses it: JupyterLab on 127.0.0.1, driven by headless Chromium.

`run_in_jupyterlab` starts a JupyterLab server on localhost (random token, no browser), opens a
notebook in Debian's Chromium through Playwright (`executable_path`, no browser download), runs
its cells with JupyterLab's own commands, and hands back the live page so a caller can click the
ipywidgets feature browser. Used by tests/test_notebooks.py (tiny) and scripts/run_notebooks.py
(the two screenshots in figures/).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from helpers.report.chromium import OFFLINE_FLAGS, find_chromium


def parameterized_copy(notebook, out_dir, profile: str, extra_cells=()) -> Path:
    """Copy `notebook` into out_dir with its 'parameters' cell set to PROFILE = profile and
    `extra_cells` (sources) appended as code cells."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = re.sub(r"^PROFILE\s*=.*$", f'PROFILE = "{profile}"', cell.source, flags=re.M)
    nb.cells += [nbformat.v4.new_code_cell(src) for src in extra_cells]
    out = Path(out_dir) / Path(notebook).name
    nbformat.write(nb, out)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab_server(root_dir, env: dict | None = None, timeout: float = 120.0):
    """Yield the base URL (with ?token=) of a JupyterLab server on 127.0.0.1 serving root_dir."""
    port, token = _free_port(), secrets.token_hex(16)
    # Render every cell (JupyterLab 4 virtualises off-screen cells; a test must find them all).
    settings = Path(root_dir) / ".lab-settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"})
    )
    # No "get notified about news" toast over the screenshots, no update checks (and no requests).
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True})
    )
    log = open(Path(root_dir) / "jupyterlab.log", "w")  # noqa: SIM115 - closed below
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root_dir}",
        "--LabApp.expose_app_in_browser=True",
        f"--LabApp.user_settings_dir={settings}",
        "--ServerApp.port_retries=0",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI runners
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.time() - t0 > timeout:
                    raise TimeoutError(
                        f"jupyter lab did not answer on {base} in {timeout:.0f} s; see {log.name}"
                    ) from None
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


_STATE_JS = """() => {
  const app = window.jupyterapp; if (!app) return null;
  const nb = app.shell.currentWidget;
  if (!nb || !nb.content || !nb.sessionContext || !nb.sessionContext.session) return null;
  const k = nb.sessionContext.session.kernel;
  const cells = nb.content.widgets.map(c => c.model.type === 'code' ? c.model.executionCount : -1);
  const busy = document.querySelectorAll('.jp-InputPrompt').length &&
               [...document.querySelectorAll('.jp-InputPrompt')].some(p => p.textContent.includes('[*]'));
  const errors = [];
  nb.content.widgets.forEach((c, i) => { if (c.model.type !== 'code') return;
    for (const o of c.model.outputs.toJSON())
      if (o.output_type === 'error') errors.push(`cell ${i}: ${o.ename}: ${String(o.evalue).slice(0, 300)}`);
      });
  return {kernel: k ? k.status : null, cells, busy, errors};
}"""


def wait_for_kernel(page, timeout_s: float = 300.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        state = page.evaluate(_STATE_JS)
        if state and state["kernel"] == "idle":
            return state
        page.wait_for_timeout(500)
    raise TimeoutError(f"kernel not idle after {timeout_s:.0f} s")


def run_cells(page, cells=None, timeout_s: float = 600.0) -> dict:
    """Run all cells (cells=None) or the code cells at the given indices; wait until done.
    Returns the final state; raises with the cell index if a cell raised."""
    if cells is None:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        targets = None
    else:
        for i in cells:
            page.evaluate(
                """async (i) => { const app = window.jupyterapp;
                app.shell.currentWidget.content.activeCellIndex = i;
                await app.commands.execute('notebook:run-cell'); }""",
                i,
            )
        targets = list(cells)
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        page.wait_for_timeout(1000)
        state = page.evaluate(_STATE_JS)
        todo = [i for i, n in enumerate(state["cells"]) if n is None and (targets is None or i in targets)]
        if state["errors"]:
            raise RuntimeError(f"a notebook cell raised in JupyterLab: {'; '.join(state['errors'])}")
        if not todo and not state["busy"] and state["kernel"] == "idle":
            return state
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s")


@contextlib.contextmanager
def open_notebook(
    notebook,
    profile: str,
    work_dir,
    env: dict | None = None,
    viewport=(1400, 1000),
    headless: bool = True,
    extra_cells=(),
):
    """Yield a Playwright page with `notebook` (parameterised for `profile`) open in JupyterLab."""
    from playwright.sync_api import sync_playwright

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    nb = parameterized_copy(notebook, work_dir, profile, extra_cells)
    with jupyterlab_server(work_dir, env) as (base, token), sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=find_chromium(),
            headless=headless,
            args=[*OFFLINE_FLAGS, "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.goto(f"{base}/lab/tree/{nb.name}?token={token}&reset", timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            wait_for_kernel(page, 180)
            yield page
        finally:
            browser.close()


# ------------------------------------------------------------- the feature browser, clicked
WIDGET = ".jp-OutputArea-output .widget-vbox"


def card_title(page) -> str:
    return page.locator(f"{WIDGET} .widget-html-content h2").first.inner_text()


def _wait_title_change(page, old: str, timeout_s: float = 60.0) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        new = card_title(page)
        if new != old:
            return new
        page.wait_for_timeout(250)
    raise TimeoutError(f"feature card stayed at {old!r} for {timeout_s:.0f} s")


def click_through_browser(page, out_dir, feature: int | None = None) -> dict:
    """Use the ipywidgets feature browser like a person: pick the SAE, type a feature, click the
    arrows; after each step the card must change and its plot image must render.
    Returns {'titles': [...], 'screenshots': [...]} (PNG paths in out_dir)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    w = page.locator(WIDGET).first
    w.scroll_into_view_if_needed()
    w.locator("img").first.wait_for(timeout=60_000)
    titles = [card_title(page)]
    shots = [out_dir / "lab_widget_0.png"]
    w.screenshot(path=str(shots[-1]))
    select = w.locator("select").first
    options = select.locator("option").all_inner_texts()
    select.select_option(options[-1])  # the SAE dropdown (same SAE if there is one)
    box = w.locator("input[type=number]").first
    target = feature if feature is not None else int(re.search(r"feature (\d+)", titles[0]).group(1)) + 2
    box.fill(str(target))
    box.press("Enter")
    titles.append(_wait_title_change(page, titles[-1]))
    if f"feature {target}" not in titles[-1]:
        raise AssertionError(f"typed feature {target}, card shows {titles[-1]!r}")
    for label in ("▶", "◀"):
        w.locator("button", has_text=label).first.click()
        titles.append(_wait_title_change(page, titles[-1]))
    w.locator("img").first.wait_for(timeout=60_000)
    shots.append(out_dir / "lab_widget_1.png")
    whole_element_screenshot(page, w, shots[-1])
    img_ok = page.evaluate(f"""() => [...document.querySelectorAll('{WIDGET} img')]
                               .some(i => i.complete && i.naturalWidth > 50)""")
    if not img_ok:
        raise AssertionError("the feature browser's plot image did not render")
    return {"titles": titles, "screenshots": shots, "options": options}


def whole_element_screenshot(page, element, png_path) -> Path:
    """Screenshot all of `element`: the viewport grows to hold it first (a card taller than the
    window would otherwise be cut off at the notebook panel's edge), then returns to its size."""
    size = page.viewport_size
    box = element.bounding_box()
    need = int(box["height"]) + 400 if box else size["height"]
    if need > size["height"]:
        page.set_viewport_size({"width": size["width"], "height": need})
    try:
        element.scroll_into_view_if_needed()
        page.wait_for_timeout(300)  # let the panel re-lay out at the new height
        element.screenshot(path=str(png_path))
    finally:
        page.set_viewport_size(size)
    return Path(png_path)


def screenshot_figure(page, png_path) -> Path:
    """Screenshot the cell of the last static figure in the notebook (widget images excluded)."""
    imgs = page.locator(".jp-OutputArea-output img")
    i = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output img')]
                         .map((e, i) => e.closest('.widget-vbox') ? -1 : i).filter(i => i >= 0).pop() ?? 0""")
    img = imgs.nth(i)
    img.scroll_into_view_if_needed()
    cell = img.locator("xpath=ancestor::div[contains(concat(' ', @class, ' '), ' jp-Cell ')][1]")
    (cell if cell.count() else img).screenshot(path=str(png_path))  # the cell: input + figure
    return Path(png_path)


# Notebook 05 saves its figures without showing them; this cell, appended to the served copy
# only, draws the per-layer atlas inline so the screenshot shows a figure as the notebook renders it.
FIGURE_CELL = (
    "# appended by helpers.report.jupyterlab for the screenshot: the per-layer atlas, inline\n"
    "%matplotlib inline\n"
    "umap_views.plot_layer_grid(per_layer, density)"
)


def lab_screenshots(
    profile: str, out_dir, work_dir, notebook=None, cells=None, env=None, timeout_s: float = 600.0
) -> dict:
    """Open notebook 05 in JupyterLab, run it (or `cells`), click the feature browser, and write
    05_lab_widget.png (the live widget) and 05_lab_figure.png (a figure in the notebook)."""
    from helpers.paths import REPO_ROOT

    notebook = notebook or REPO_ROOT / "notebooks" / "05_umap_atlas.ipynb"
    out_dir = Path(out_dir)
    with open_notebook(notebook, profile, work_dir, env, extra_cells=(FIGURE_CELL,)) as page:
        run_cells(page, cells, timeout_s)
        res = click_through_browser(page, work_dir)
        shutil.copyfile(res["screenshots"][-1], out_dir / "05_lab_widget.png")
        fig = screenshot_figure(page, out_dir / "05_lab_figure.png")
        page.screenshot(path=str(Path(work_dir) / "lab_page.png"))
    res["widget_png"], res["figure_png"] = out_dir / "05_lab_widget.png", fig
    (Path(work_dir) / "lab_result.json").write_text(json.dumps(res, default=str, indent=1))
    return res
