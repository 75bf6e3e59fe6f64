"""bf16 against fp32 on this machine, in one run: SAE training steps and model collection.

    python benchmarks/bench_bf16.py            # 3 rounds; peers' fp32 steps timed alongside
    python benchmarks/bench_bf16.py --no-peers --quick

1. Training: tokens/s of our full training step (helpers.training.train.TrainingRun.step) at d_in 576, d_sae
4608,
   batch 4096, k 32, in fp32 and with bf16 GEMMs (fp32 master weights and Adam; helpers.precision),
   for TopK (target >= 2.5x), ReLU+L1 and BatchTopK, beside the peers' fp32 steps (SAELens,
   dictionary_learning in their own venvs, as in bench_train.py), rounds interleaved.
2. Collection: tokens/s of `residuals()` on the offline model at the profile's layers, fp32 vs bf16
   autocast (target >= 2x), the residuals' relative error against fp32 (target < 1%: per-token
   median and aggregate ||dx|| / ||x||, massive tokens reported apart), and the change of the
   next-token CE when the whole forward runs under bf16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_train as BT  # noqa: E402

from helpers.data.corpora import load_corpus, token_windows  # noqa: E402
from helpers.data.massive import DEFAULT_RATIO  # noqa: E402
from helpers.model.models import load_model, spec_of  # noqa: E402
from helpers.model.residuals import residuals  # noqa: E402
from helpers.precision import autocast, bf16_is_fast  # noqa: E402
from helpers.profiles import get_profile  # noqa: E402
from helpers.sae.metrics import token_ce  # noqa: E402

warnings.filterwarnings("ignore")
PRECISIONS = ("float32", "bfloat16")


class OursAt(BT.Ours):
    """bench_train.Ours with a precision per config ("topk@bfloat16")."""

    def time(self, config: str, n: int) -> float:
        if config not in self.runs:
            name, precision = config.split("@")
            run = BT.our_run(name)
            run.state.matmul_dtype = getattr(torch, precision)
            self.runs[config] = run
            self._step(config, 2)
        return statistics.median(self._step(config, n))


def training(rounds: int, n: int, configs: list[str], peers: bool) -> None:
    ours = OursAt()
    peer_objs = [BT.Peer(name) for name in BT.PEERS] if peers else []
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for c in configs:
            for p in PRECISIONS:
                times.setdefault(f"{c}@{p}", []).append(ours.time(f"{c}@{p}", n))
            for peer in peer_objs:
                times.setdefault(f"{c}@{peer.name}", []).append(peer.time(c, n))
        print(f"round {r + 1}/{rounds} done", flush=True)
    for peer in peer_objs:
        peer.close()
    tps = lambda k: BT.B / statistics.median(times[k]) if k in times else float("nan")  # noqa: E731
    print(
        f"\nTraining step, d_in {BT.D}, d_sae {BT.M}, batch {BT.B}, k {BT.K}, {torch.get_num_threads()} "
        "threads "
        f"(tokens/s, medians of {rounds} rounds)"
    )
    head = (
        f"{'config':<11}{'ours fp32':>11}{'ours bf16':>11}{'bf16/fp32':>10}{'SAELens':>10}{'DL':>10}"
        f"{'bf16/best peer':>16}"
    )
    print(head)
    for c in configs:
        f32, b16 = tps(f"{c}@float32"), tps(f"{c}@bfloat16")
        peer = [tps(f"{c}@{p}") for p in BT.PEERS]
        best = max((v for v in peer if v == v), default=float("nan"))
        target = "  (target >= 2.5)" if c == "topk" else ""
        print(
            f"{c:<11}{f32:>11,.0f}{b16:>11,.0f}{b16 / f32:>10.2f}{peer[0]:>10,.0f}{peer[1]:>10,.0f}"
            f"{b16 / best:>16.2f}"
            f"{target}"
        )


def collection(rounds: int, batch: int) -> None:
    prof = get_profile("offline")
    model = load_model(prof.model)
    spec = spec_of(model)
    texts = load_corpus(prof.main_corpus)["text"]
    ids = torch.from_numpy(
        token_windows(texts, model.tokenizer, prof.seq_len, spec.bos_id, batch * rounds, 0)
    ).long()
    batches = ids.split(batch)
    layers = list(prof.layers)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    residuals(model, batches[0][:2], layers, precision="bfloat16")  # warm-up
    errs, errs_massive, agg_num, agg_den = [], [], 0.0, 0.0
    for r in range(rounds):
        out = {}
        for p in PRECISIONS:
            t = time.perf_counter()
            out[p] = residuals(model, batches[r], layers, precision=p)
            times[p].append(time.perf_counter() - t)
        keep = batches[r] != spec.bos_id
        for layer in layers:
            x, y = out["float32"][layer][keep], out["bfloat16"][layer][keep]
            norm = x.norm(dim=-1)
            rel = (y - x).norm(dim=-1) / norm.clamp_min(1e-12)
            massive = norm > DEFAULT_RATIO * norm.median()
            errs.append(rel[~massive])
            errs_massive.append(rel[massive])
            agg_num += float((y - x)[~massive].pow(2).sum())
            agg_den += float(x[~massive].pow(2).sum())
    tps = {p: batch * prof.seq_len / statistics.median(v) for p, v in times.items()}
    ce = {
        p: float(token_ce(_logits(model, batches[0], getattr(torch, p)), batches[0]).mean())
        for p in PRECISIONS
    }
    rel = torch.cat(errs)
    relm = torch.cat(errs_massive)
    print(f"\nCollection, {spec.name}, layers {layers}, batch {batch} x {prof.seq_len}, {rounds} rounds")
    print(
        f"fp32 {tps['float32']:,.0f} tok/s, bf16 {tps['bfloat16']:,.0f} tok/s: ratio "
        f"{tps['bfloat16'] / tps['float32']:.2f} (target >= 2)"
    )
    print(
        f"residual relative error of bf16 vs fp32 (BOS and massive tokens apart): median per token "
        f"{float(rel.median()):.3%}, 99th percentile {float(rel.quantile(0.99)):.3%}, aggregate "
        f"{(agg_num / agg_den) ** 0.5:.3%} (target < 1%); massive tokens ({len(relm)}): median "
        f"{float(relm.median()) if len(relm) else float('nan'):.3%}"
    )
    print(
        f"next-token CE: fp32 {ce['float32']:.4f}, bf16 {ce['bfloat16']:.4f} nats "
        f"(change {ce['bfloat16'] - ce['float32']:+.4f})"
    )


@torch.no_grad()
def _logits(model, ids, dtype):
    """Logits of a full forward with the model's matmuls in `dtype` (fp32: no autocast)."""
    with autocast(dtype):
        return model._module(ids).logits.float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, TopK only")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-collect", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(f"native bf16 on this CPU (AMX/AVX512-BF16): {bf16_is_fast('cpu')}")
    rounds = 2 if a.quick else a.rounds
    training(
        rounds, 3 if a.quick else 5, ["topk"] if a.quick else ["topk", "relu", "batchtopk"], not a.no_peers
    )
    if not a.no_collect:
        collection(rounds, 8)


if __name__ == "__main__":
    main()
