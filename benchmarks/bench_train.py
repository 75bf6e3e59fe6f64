"""Training speed of our SAEs against SAELens and dictionary_learning, timed in the same run.

What: tokens/s of one full training step (forward, backward, decoder-gradient projection, clip,
Adam, decoder renorm, dead-latent counters, logging) at d_in 576, d_sae 4608, batch 4096, k 32,
torch 2 threads, synthetic activations, for ReLU+L1, TopK (with and without AuxK), BatchTopK.
"With AuxK" forces the auxiliary loss on with every latent counted dead (the peers' worst case;
in a short run neither peer's AuxK would fire). Peers are installed by this script into their own
venvs under ~/.cache/sae-lab/bench-venvs/ (torch==2.13.0 first; the project venv is never
touched) and timed by a small server script run with that venv's python: median step time of
the library's own training step (SAELens: TrainingSAE.training_forward_pass + the body of
SAETrainer._train_step; dictionary_learning 0.1.0: trainer.update(step, x)). The libraries take
turns config by config in several rounds, so load from other processes on a shared machine hits
them alike; the table gives medians over rounds and each round's ratio. Also prints the fp32
GEMM FLOP bound measured in the same run.

    python benchmarks/bench_train.py            # 3 rounds x 5 timed steps, 5 configs
    python benchmarks/bench_train.py --quick    # 2 rounds x 3 steps, relu / topk / topk_auxk
    python benchmarks/bench_train.py --profile topk_auxk   # torch.profiler table of our step
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peer_venvs import PEERS as ALL_PEERS
from peer_venvs import PeerServer

B, D, M, K = 4096, 576, 4608, 32
PEERS = {name: ALL_PEERS[name] for name in ("saelens", "dictlearn")}  # the two whose trainers are timed
TARGETS = {"relu": 1.3, "topk": 2.5, "topk_auxk": 3.0}
CONFIGS = ["relu", "topk", "topk_auxk", "batchtopk", "batchtopk_auxk"]

PEER_SNIPPET = r"""
# A timing server: builds each config's model on first use, then answers "CONFIG N" lines on stdin
# with "RESULT {config: median seconds of N steps}" (after 2 untimed warm-up steps on first use).
import json, sys, time, statistics, torch
torch.set_num_threads(2)
lib, B, D, M, K = sys.argv[1], 4096, 576, 4608, 32
torch.manual_seed(0)
x = torch.randn(B, D)

if lib == "saelens":
    import dataclasses
    from sae_lens.saes.sae import TrainStepInput, TrainCoefficientConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    def make(c):
        if c == "relu":
            sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D, d_sae=M, l1_coefficient=5.0))
        elif c.startswith("batchtopk"):
            sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=M, k=K,
            aux_loss_coefficient=1/32))
        elif c == "topk_sparse":  # sparse decode; its backward fails with the default decoder-norm rescaling
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=M, k=K, aux_loss_coefficient=1/32,
                                                        use_sparse_activations=True,
                                                        rescale_acts_by_decoder_norm=False))
        else:
            sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=M, k=K, aux_loss_coefficient=1/32))
        opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
        coefs = {k: (v.value if isinstance(v, TrainCoefficientConfig) else v)
                 for k, v in sae.get_coefficients().items()}
        since = torch.zeros(M)
        dead = torch.ones(M, dtype=torch.bool) if c.endswith("auxk") else torch.zeros(M, dtype=torch.bool)
        names = {f.name for f in dataclasses.fields(TrainStepInput)}
        def step(i):  # the body of sae_lens.training.sae_trainer.SAETrainer._train_step
            sae.train()
            kw = dict(sae_in=x, dead_neuron_mask=dead, coefficients=coefs, n_training_steps=i,
            is_logging_step=False)
            step_input = TrainStepInput(**{k: v for k, v in kw.items() if k in names})
            o = sae.training_forward_pass(step_input=step_input)
            with torch.no_grad():
                firing = o.feature_acts.bool().float()
                did_fire = firing.sum(-2).bool()
                if did_fire.is_sparse:
                    did_fire = did_fire.to_dense()
                since.add_(1); since[did_fire] = 0
            o.loss.backward()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step(); opt.zero_grad()
        return step
else:
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate, StandardTrainer
    from dictionary_learning.trainers.top_k import TopKTrainer, AutoEncoderTopK
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer, BatchTopKSAE
    from dictionary_learning.dictionary import AutoEncoder
    common = dict(steps=10**6, activation_dim=D, dict_size=M, layer=0, lm_name="bench", device="cpu")
    def make(c):
        if c == "relu":
            tr = StandardTrainer(dict_class=AutoEncoder, l1_penalty=5.0, warmup_steps=1, **common)
        elif c == "relu_april":
            tr = StandardTrainerAprilUpdate(dict_class=AutoEncoder, l1_penalty=5.0, warmup_steps=1, **common)
        elif c.startswith("batchtopk"):
            tr = BatchTopKTrainer(dict_class=BatchTopKSAE, k=K, warmup_steps=1, **common)
        else:
            tr = TopKTrainer(dict_class=AutoEncoderTopK, k=K, warmup_steps=1, **common)
        if c.endswith("auxk"):  # every latent dead for the aux loss: tokens_since_fired >= 0 always holds
            tr.dead_feature_threshold = 0  # (filling the counters is not enough: update() resets them first)
        return lambda i: tr.update(i, x)

steps, counters = {}, {}
print("READY", flush=True)
for line in sys.stdin:
    c, n = line.split()
    if c not in steps:
        steps[c], counters[c] = make(c), 0
        for _ in range(2):
            steps[c](counters[c]); counters[c] += 1
    ts = []
    for _ in range(int(n)):
        t = time.perf_counter(); steps[c](counters[c]); ts.append(time.perf_counter() - t); counters[c] += 1
    print("RESULT " + json.dumps({c: statistics.median(ts)}), flush=True)
"""


class Peer(PeerServer):
    """A peer library's timing server (PEER_SNIPPET) running in its own venv."""

    def __init__(self, name: str):
        self.tmp = tempfile.TemporaryDirectory()
        super().__init__(name, PEER_SNIPPET, [], Path(self.tmp.name))

    def time(self, config: str, n: int) -> float:
        return json.loads(self.ask(f"{config} {n}"))[config]

    def close(self) -> None:
        super().close()
        self.tmp.cleanup()


def our_run(config: str):
    from helpers.training.config import TrainConfig
    from helpers.training.train import TrainingRun

    arch = config.split("_")[0]
    cfg = TrainConfig(
        d_in=D, d_sae=M, architecture=arch, k=K, total_tokens=10**10, warmup_steps=1, batch_size=B
    )
    run = TrainingRun(cfg, Path(tempfile.mkdtemp(prefix="bench_")), torch.device("cpu"))
    run.open_log(None)
    return run


class Ours:
    """Our trainer's step per config, built on first use (2 untimed warm-up steps)."""

    def __init__(self):
        torch.manual_seed(0)
        self.x = torch.randn(B, D)
        self.runs: dict[str, Any] = {}
        self.count = 0

    def time(self, config: str, n: int) -> float:
        if config not in self.runs:
            self.runs[config] = our_run(config)
            self._step(config, 2)
        return statistics.median(self._step(config, n))

    def _step(self, config: str, n: int) -> list[float]:
        run, ts = self.runs[config], []
        for _ in range(n):
            t = time.perf_counter()
            if config.endswith("auxk"):  # every latent dead: AuxK with k_aux = d_in/2 on every token
                run.since_fired.fill_(10**12)
            run.step(self.x, 1.0, 1000 + self.count, 0)
            ts.append(time.perf_counter() - t)
            self.count += 1
        return ts


def gemm_gflops() -> float:
    a, w = torch.randn(B, D), torch.randn(D, M)
    for _ in range(2):
        a @ w
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        a @ w
        ts.append(time.perf_counter() - t)
    return 2 * B * D * M / sorted(ts)[2] / 1e9


def profile(config: str) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    x = torch.randn(B, D)
    run = our_run(config)
    for i in range(3):
        run.since_fired.fill_(10**12 if config.endswith("auxk") else 0)
        run.step(x, 1.0, 1000 + i, 0)
    with prof(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for i in range(3):
            run.since_fired.fill_(10**12 if config.endswith("auxk") else 0)
            run.step(x, 1.0, 2000 + i, 0)
    print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds x 3 steps; relu, topk, topk_auxk only")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 2)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per round and config (default 5, quick 3)"
    )
    ap.add_argument("--no-peers", action="store_true", help="time only ours")
    ap.add_argument("--profile", choices=CONFIGS, help="print a torch.profiler table of our step and exit")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.profile:
        return profile(args.profile)
    n, rounds = args.steps or (3 if args.quick else 5), args.rounds or (2 if args.quick else 3)
    configs = CONFIGS[:3] if args.quick else CONFIGS
    extra = {"saelens": {"topk": "topk_sparse"}, "dictlearn": {"relu": "relu_april"}}
    peers = [] if args.no_peers else [Peer(name) for name in PEERS]
    ours = Ours()
    gf = []
    # times[lib][config] -> one median per round; libraries alternate within each round so that
    # load from other processes on the machine hits all of them alike
    times: dict[str, dict[str, list[float]]] = {
        lib: {} for lib in ["ours", *PEERS, *(f"{p}+" for p in PEERS)]
    }
    for r in range(rounds):
        gf.append(gemm_gflops())
        for c in configs:
            times["ours"].setdefault(c, []).append(ours.time(c, n))
            for p in peers:
                times[p.name].setdefault(c, []).append(p.time(c, n))
                if c in extra[p.name]:
                    times[p.name + "+"].setdefault(c, []).append(p.time(extra[p.name][c], n))
        print(
            f"round {r + 1}/{rounds}: "
            + ", ".join(f"{c} {B / times['ours'][c][-1]:,.0f}" for c in configs)
            + " tok/s (ours)",
            flush=True,
        )
    for p in peers:
        p.close()
    g = statistics.median(gf)
    print(
        f"\nfp32 GEMM [{B}x{D}]@[{D}x{M}]: {g:.0f} GFLOP/s (median of rounds "
        f"{', '.join(f'{v:.0f}' for v in gf)})"
        f" -> dense SAE step bound (6 GEMMs) {g * 1e9 / (6 * 2 * D * M):,.0f} tok/s; encoder GEMM alone "
        f"{g * 1e9 / (2 * D * M):,.0f} tok/s"
    )
    tps = lambda ts: B / statistics.median(ts) if ts else float("nan")  # noqa: E731
    head = ["config", "ours", "SAELens", "SL sparse", "DL", "DL april", "best peer", "ratio"]
    print(
        "\n"
        + "".join(f"{h:>11}" if i else f"{h:<15}" for i, h in enumerate(head))
        + "  per-round    target"
        + "   (tokens/s)"
    )
    for c in configs:
        cols = [times[k].get(c, []) for k in ("ours", "saelens", "saelens+", "dictlearn", "dictlearn+")]
        peer_cols = [t for t in cols[1:] if t]
        best = max((tps(t) for t in peer_cols), default=float("nan"))
        # per round: ours / the best peer of that round
        rr = [min(pt[i] for pt in peer_cols) / cols[0][i] for i in range(rounds)] if peer_cols else []
        cell = lambda t: f"{tps(t):>11,.0f}" if t else f"{'-':>11}"  # noqa: E731
        tgt = TARGETS.get(c)
        print(
            f"{c:<15}"
            + "".join(cell(t) for t in cols)
            + f"{best:>11,.0f}{tps(cols[0]) / best:>11.2f}  "
            + f"{'/'.join(f'{v:.2f}' for v in rr):<13}"
            + f"{(f'>={tgt}' if tgt else '-'):<8}"
        )
    print(
        "\nSL sparse = SAELens TopK with use_sparse_activations (and rescale_acts_by_decoder_norm off);"
        " DL april = StandardTrainerAprilUpdate. ratio = ours / best peer (medians over rounds)."
    )
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
