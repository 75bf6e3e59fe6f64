"""`python -m helpers.interp --latents N [--judge FOLDER | --base-url URL --model NAME]`: notebook 10's LLM
explanation and scores of the base SAE's latents and its baselines, at the size a user has time for.

The command's entry point; the study itself is helpers.analysis.interp_study (an entry point may
import every stage: tests/test_layout.py lists it in ENTRY_POINTS).
"""

from helpers.analysis.interp_study import main
from helpers.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
