"""The peer libraries, each in its own venv: what the benchmarks and the format checks compare against.

Each venv lives under ~/.cache/sae-lab/bench-venvs/<name>, gets torch==2.13.0 first (an unpinned torch
pulls gigabytes of CUDA wheels) and then the library at the version named here; the project's own
venv is never touched. Run from the repository root as `python benchmarks/<script>.py`.
"""

from __future__ import annotations

import json
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


class PeerServer:
    """A peer library's server script run with its venv's python: `script` is written to `workdir`,
    started as `python script *args`, answers lines on stdin with "<PREFIX> payload" lines on stdout
    (a "FAILED <json>" line raises); stderr goes to a file quoted when the process dies."""

    def __init__(self, name: str, script: str, args: list[str], workdir: Path):
        py = ensure_venv(name, PEERS[name])
        path = Path(workdir) / f"peer_{name}.py"
        path.write_text(script)
        self.name, self.err_path = name, Path(workdir) / f"peer_{name}.stderr"
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [str(py), str(path), name, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.read("READY")

    def read(self, prefix: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
            if line.startswith("FAILED "):
                raise RuntimeError(f"[{self.name}] {json.loads(line[7:])}")
        self.err.flush()
        raise RuntimeError(f"[{self.name}] peer process died:\n{self.err_path.read_text()[-3000:]}")

    def ask(self, line: str) -> str:
        """Send one line; the payload of the next RESULT line."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read("RESULT ")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()
        self.err.close()
