#!/usr/bin/env bash
# GPU training speed: our trainer against SAELens and eai-sparsify on synthetic activations generated on
# the GPU, d_in 768, d_sae 24,576, k 32, on CUDA; prints tokens/s per library and the ratios ours / peer
# (benchmarks/bench_gpu.py says what each library's step includes). A thin wrapper: it picks the python,
# sets the threads, installs carried peer wheels, and tees the output to $OUT/bench_gpu.log (where $OUT
# is set, as on the lent device machine) or /tmp/bench_gpu.log.
#
#   benchmarks/bench_gpu.sh [bench_gpu.py options]   e.g. --quick | --ops | --configs topk | --batch 8192
#   benchmarks/bench_gpu.sh --fetch-wheels           on a machine with pip and PyPI: the peers' wheels -> .whl/
#
# Python: $PYTHON if set; else the project's .venv/bin/python when its torch sees a GPU; else python3 (on
# the lent H200 machine that is its image's /opt/torch/.venv/bin/python3: torch 2.11+cu130 with Triton,
# numpy, safetensors and tqdm, all that helpers/ needs to train). No GPU: bench_gpu.py says so, exit 2.
#
# Peers: imported by that python. The lent device has no network, and the real model and activation
# stores cannot travel to it (64 MiB), hence the synthetic data; the peers travel as wheels:
#   1. here, with the network:  benchmarks/bench_gpu.sh --fetch-wheels
#      downloads SAELens 6.54.12, eai-sparsify 1.3.3 and the packages they import that the device image
#      lacks (PEER_WHEELS below, pinned to the versions benchmarks/peer_venvs.py's venvs resolved), built
#      for CPython 3.12 manylinux x86_64, into .whl/ (git-ignored; about 30 MiB, mostly wandb, which
#      sae_lens imports at import time);
#   2. carry .whl with the run, e.g. the device tool's  run(command="bash benchmarks/bench_gpu.sh",
#      carry=[".whl"], timeout_s=480);  this script then installs them with
#      pip --no-index --no-deps --target /tmp/sae-lab-peers and puts that on PYTHONPATH.
# A peer that still does not import (a missing or clashing package) is skipped with one line naming the
# error; ours always runs. The CPU venvs of benchmarks/peer_venvs.py (bench_train.py) are not used here.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PEER_WHEELS=(
    sae-lens==6.54.12 transformer-lens==3.9.0 eai-sparsify==1.3.3
    datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 natsort==8.4.0 schedulefree==1.4.1
    simple-parsing==0.1.9 docstring-parser==0.18.0 better-abc==0.0.3
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 platformdirs==4.14.9 sniffio==1.3.1
    wandb==0.31.0 truststore==0.10.5 googleapis-common-protos==1.76.0
    opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2
    opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-otlp-proto-http==1.45.2
    opentelemetry-exporter-otlp-proto-common==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
    opentelemetry-exporter-http-transport==0.66b2
)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p .whl
    PLATFORMS=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
        manylinux1_x86_64; do
        PLATFORMS+=(--platform "$p")
    done
    "${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d .whl "${PEER_WHEELS[@]}"
    du -sh .whl
    echo "carry .whl with the device run: run(command=\"bash benchmarks/bench_gpu.sh\", carry=[\".whl\"])"
    exit 0
fi

# the first of the candidates whose torch sees a GPU, else the first with torch (it then says "no CUDA")
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    CANDIDATES=(.venv/bin/python "$(command -v python3 || true)")
    for want in 'torch.cuda.is_available()' 'True'; do
        for c in "${CANDIDATES[@]}"; do
            if [[ -n "$c" && -x "$c" ]] && "$c" -c "import sys, torch; sys.exit(0 if $want else 1)" 2>/dev/null; then
                PY="$c"
                break 2
            fi
        done
    done
fi
if [[ -z "$PY" ]]; then
    echo "bench_gpu: no python with torch found (tried .venv/bin/python, python3); set PYTHON=" >&2
    exit 2
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "[setup] installing the carried peer wheels (.whl/) into /tmp/sae-lab-peers"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/sae-lab-peers .whl/*.whl
    export PYTHONPATH="/tmp/sae-lab-peers${PYTHONPATH:+:$PYTHONPATH}"
fi

# the step is GPU work launched from one Python thread; a few CPU threads serve the host-side ops
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-8}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LOG="${BENCH_LOG:-${OUT:-/tmp}/bench_gpu.log}"
echo "[bench_gpu] $PY benchmarks/bench_gpu.py $* | tee $LOG"
"$PY" benchmarks/bench_gpu.py "$@" 2>&1 | tee "$LOG"
