"""`python -m helpers.compare A B --out DIR`: match two SAEs one-to-one and write a versioned report.

The command's entry point; the comparison itself is helpers.report.compare (an entry point may
import every stage: tests/test_layout.py lists it in ENTRY_POINTS).
"""

from helpers.cli import run_cli
from helpers.report.compare import main

if __name__ == "__main__":
    run_cli(main)
