"""Rewrite the README's "What the offline run shows" block from the run's recorded numbers.

    python scripts/write_findings.py --profile offline

Reads the typed records in data/findings/<profile>.json (written by the notebooks) and
data/executed/<profile>/timings.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helpers.paths import data_dir
from helpers.report import findings

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="offline")
    a = p.parse_args(argv)
    timings_path = data_dir() / "executed" / a.profile / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    block = findings.render(findings.load(a.profile), timings, findings.machine_summary())
    findings.update_readme(ROOT / "README.md", block)
    print(block)


if __name__ == "__main__":
    main()
