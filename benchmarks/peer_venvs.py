"""The peer libraries, each in its own venv: what the benchmarks and the format checks compare against.

Each venv lives under ~/.cache/sae-lab/bench-venvs/<name>, gets torch==2.13.0 first (an unpinned torch
pulls gigabytes of CUDA wheels) and then the library at the version named here; the project's own
venv is never touched. Run from the repository root as `python benchmarks/<script>.py`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VENV_ROOT = Path.home() / ".cache" / "sae-lab" / "bench-venvs"
PEERS = {
    "saelens": "sae-lens==6.54.12",
    "dictlearn": "dictionary-learning==0.1.0",
    "sparsify": "eai-sparsify==1.3.3",
}


def ensure_venv(name: str, spec: str) -> Path:
    """Create VENV_ROOT/name with torch==2.13.0 installed first, then `spec`; return its python."""
    venv = VENV_ROOT / name
    py = venv / "bin" / "python"
    if (venv / ".installed").exists():
        return py
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    print(f"[setup] {name}: pip install torch==2.13.0, then {spec}", flush=True)
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["torch==2.13.0", spec], check=True)  # torch named again so pip never replaces it
    # nnsight pulls torchvision, whose PyPI wheel does not load against the CPU torch build (and then
    # breaks `import transformers`); neither peer's trainer needs it
    if subprocess.run([str(py), "-c", "import torchvision"], capture_output=True).returncode:
        subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision"], check=False)
    (venv / ".installed").write_text(spec + "\n")
    return py
