"""Run the numbered notebooks headless with papermill for one profile (the main job).

    python scripts/run_notebooks.py --profile offline          # all notebooks
    python scripts/run_notebooks.py --profile tiny --only 01 02

Executed copies go to data/executed/<profile>/ (not committed); figures to figures/.
Prints each notebook's wall time and writes data/executed/<profile>/timings.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="offline")
    p.add_argument("--only", nargs="*", help="notebook number prefixes, e.g. 01 03")
    a = p.parse_args(argv)

    import papermill as pm

    from helpers.paths import data_dir
    from helpers.profiles import get_profile

    get_profile(a.profile)  # one-line error on an unknown profile
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1" if a.profile != "gpt2" else "0")
    out_dir = data_dir() / "executed" / a.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if a.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in a.only]
    timings = {}
    for nb in notebooks:
        print(f"--- {nb.name} (profile {a.profile})", flush=True)
        t0 = time.perf_counter()
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters={"PROFILE": a.profile},
                            cwd=str(ROOT / "notebooks"), progress_bar=False, log_output=True,
                            kernel_name="python3")
        timings[nb.name] = round(time.perf_counter() - t0, 1)
        print(f"--- {nb.name}: {timings[nb.name]} s", flush=True)
    timings["total"] = round(sum(timings.values()), 1)
    (out_dir / "timings.json").write_text(json.dumps(timings, indent=1))
    print(json.dumps(timings, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
