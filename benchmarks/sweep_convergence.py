"""The recorded sweep behind the offline profile's SAE training settings (issue #9).

For each (width, lr, batch) it trains a seed pair (seeds 0 and 1, same data, same order) of TopK
SAEs at one layer of a stored activation set, with massive tokens and separators excluded, for
`--tokens` tokens (epochs over the train shards; all pairs of one batch size in one pass), snapshotting
decoders along the way. It prints
one row per config and snapshot: seed-pair Hungarian shared fraction at cos > 0.7, median top-1
cosine, drift from init (median cos to initial rows), and at the end held-out FVU (massive tokens
excluded), median per-token relative error, L0 and dead fraction; then the config it chooses: the
cheapest (fewest tokens x width) one meeting helpers.analysis.convergence.Criteria, else the one with the
highest shared fraction. Results also go to data/sweeps/<name>.json.

    python benchmarks/sweep_convergence.py --store data/activations/offline/python-docs --layer 12 \
        --widths 1152 2304 --lrs 2e-3 4e-3 --batches 2048 --tokens 4000000
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from helpers.analysis import convergence as C
from helpers.analysis.evaluate import reconstruction_eval
from helpers.data.massive import DEFAULT_RATIO, massive_threshold
from helpers.data.store import ActivationStore
from helpers.paths import data_dir
from helpers.training.config import TrainConfig
from helpers.training.train import train_saes

DECAY = TrainConfig.decay_fraction  # the trainer's default


def _train_stream(store, layer, batch, max_norm):
    """(train stream, held-out shards, excluded token ids): the same tokens the main job trains on."""
    train, held = store.split(1)
    bos = (int(store.manifest["bos_id"]),)
    stream = store.batches(
        layer,
        batch,
        seed=0,
        exclude_positions=(0,),
        epochs=None,
        shards=train,
        exclude_tokens=bos,
        max_norm=max_norm,
    )
    return stream, held, bos


def run_batch(
    store, layer, configs, batch, tokens, k, out_root, max_norm, n_snapshots=7, arch="topk", tied=False
):
    """Train every (width, lr) seed pair at this batch size in ONE pass over the same stream. `layer` a
    tuple: a crosscoder over those layers (arch batchtopk_crosscoder or crosscoder)."""
    stream, held, bos = _train_stream(store, layer, batch, max_norm)
    layers = tuple(layer) if isinstance(layer, tuple) else ()
    steps = tokens // batch
    snaps = tuple(sorted({max(1, round(steps * 2.0**-i)) * batch for i in range(n_snapshots)}))
    names, cfgs, dirs = [], [], []
    for width, lr, decay in configs:
        where = "+".join(map(str, layers)) if layers else layer
        name = f"L{where}-{arch}{'-tied' * tied}-m{width}-lr{lr:g}-b{batch}-t{tokens}"
        name += f"-decay{decay:g}" if decay != DECAY else ""
        names.append(name)
        for s in (0, 1):
            cfgs.append(
                TrainConfig(
                    d_in=store.d_model * max(1, len(layers)),
                    architecture=arch,
                    tied=tied,
                    layers=layers,
                    d_sae=width,
                    k=k,
                    lr=lr,
                    batch_size=batch,
                    total_tokens=tokens,
                    seed=s,
                    warmup_steps=max(1, steps // 20),
                    decay_fraction=decay,
                    snapshot_tokens=snaps,
                    log_every=50,
                )
            )
            dirs.append(out_root / name / f"s{s}")
    t0 = time.perf_counter()
    saes = train_saes(cfgs, stream, dirs, progress=True, resume=True)
    seconds = time.perf_counter() - t0
    out = []
    for i, (name, (width, lr, decay)) in enumerate(zip(names, configs)):
        curve = C.convergence_curve(dirs[2 * i], dirs[2 * i + 1])
        ev = (
            reconstruction_eval(saes[2 * i], store, layer, held, exclude_tokens=bos, max_norm=max_norm)
            if not layers
            else {
                "fvu": float("nan"),
                "median_relative_error": float("nan"),
                "l0": float("nan"),
                "dead_fraction": float("nan"),
            }  # crosscoders: notebook 07 evaluates them per layer
        )
        out.append(
            {
                "name": name,
                "width": width,
                "lr": lr,
                "decay_fraction": decay,
                "batch": batch,
                "tokens": tokens,
                "seconds_all_configs": seconds,
                "curve": [p.__dict__ for p in curve],
                "heldout": ev,
            }
        )
    return out


def relu_l1_sweep(store, layer, width, lr, batch, tokens, l1s, k, out_root, max_norm) -> float:
    """ReLU+L1 SAEs (or, with `layer` a tuple, L1 crosscoders over those layers) with each coefficient
    in one pass; prints L0 and FVU (held-out for an SAE; a crosscoder's from its last training batches,
    eval_summary.json) and returns the coefficient whose L0 is closest to k, the setting to use."""
    stream, held, bos = _train_stream(store, layer, batch, max_norm)
    layers = tuple(layer) if isinstance(layer, tuple) else ()
    arch = "crosscoder" if layers else "relu"
    cfgs = [
        TrainConfig(
            d_in=store.d_model * max(1, len(layers)),
            architecture=arch,
            layers=layers,
            d_sae=width,
            options={"l1": l1},
            lr=lr,
            batch_size=batch,
            total_tokens=tokens,
            seed=10 + i,
            warmup_steps=max(1, tokens // batch // 20),
            log_every=50,
        )
        for i, l1 in enumerate(l1s)
    ]
    where = "+".join(map(str, layers)) if layers else str(layer)
    dirs = [out_root / f"L{where}-{arch}-m{width}-l1{l1:g}-t{tokens}" for l1 in l1s]
    t0 = time.perf_counter()
    saes = train_saes(cfgs, stream, dirs, progress=True, resume=True)
    print(f"{len(cfgs)} {arch} runs in one pass: {time.perf_counter() - t0:.0f} s")
    l0s = {}
    for l1, sae, d in zip(l1s, saes, dirs):
        if layers:
            ev = json.loads((d / "eval_summary.json").read_text())["eval"]
            where_ev = "last training batches"
        else:
            ev = reconstruction_eval(sae, store, layer, held, exclude_tokens=bos, max_norm=max_norm)
            where_ev = "held-out"
        l0s[l1] = ev["l0"]
        print(f"{arch} m{width} l1 {l1:g}: {where_ev} L0 {ev['l0']:.1f}, FVU {ev['fvu']:.3f}")
    best = min(l0s, key=lambda c: abs(l0s[c] - k))
    print(f"{arch}: chosen l1 {best:g} (L0 {l0s[best]:.1f}, closest to k={k})")
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--layer", type=int, default=12)
    p.add_argument("--layers", type=int, nargs="*", default=[], help="a crosscoder over these layers")
    p.add_argument("--arch", default="topk", help="topk, batchtopk, batchtopk_crosscoder, crosscoder")
    p.add_argument("--tied", action="store_true", help="W_enc = W_dec^T (TrainConfig.tied)")
    p.add_argument("--widths", type=int, nargs="+", default=[1152, 2304])
    p.add_argument("--lrs", type=float, nargs="+", default=[2e-3, 4e-3])
    p.add_argument("--batches", type=int, nargs="+", default=[2048])
    p.add_argument(
        "--decays", type=float, nargs="+", default=[DECAY], help="share of the run over which lr decays to 0"
    )
    p.add_argument("--tokens", type=int, default=4_000_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--name", default="convergence")
    p.add_argument("--relu-only", action="store_true", help="only the ReLU+L1 coefficient sweep")
    p.add_argument(
        "--relu-l1s",
        type=float,
        nargs="*",
        default=[],
        help="also train ReLU+L1 SAEs (first width, first lr, first batch) with these coefficients",
    )
    p.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 on a machine shared with other jobs)"
    )
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    store = ActivationStore(a.store)
    layer = tuple(a.layers) if a.layers else a.layer
    max_norm = (
        massive_threshold(store, a.layer, DEFAULT_RATIO)
        if not a.layers
        else [massive_threshold(store, lay, DEFAULT_RATIO) for lay in a.layers]
    )
    out_root = data_dir() / "sweeps" / a.name
    results = []
    print(f"{'config':40s} {'tokens':>9s} {'shared':>7s} {'top1':>5s} {'drift':>5s}")
    for batch in a.batches if a.lrs and not a.relu_only else []:
        configs = list(itertools.product(a.widths, a.lrs, a.decays))
        for r in run_batch(
            store, layer, configs, batch, a.tokens, a.k, out_root, max_norm, arch=a.arch, tied=a.tied
        ):
            results.append(r)
            for pt in r["curve"]:
                print(
                    f"{r['name']:40s} {pt['tokens']:9d} {pt['shared_fraction']:7.1%} "
                    f"{pt['median_top1']:5.2f} "
                    f"{max(pt['drift_a'], pt['drift_b']):5.2f}"
                )
            h = r["heldout"]
            print(
                f"{r['name']:40s} held-out FVU {h['fvu']:.3f} (massive excluded), median rel err "
                f"{h['median_relative_error']:.3f}, L0 {h['l0']:.1f}, dead {h['dead_fraction']:.1%}",
                flush=True,
            )
        print(
            f"batch {batch}: {len(configs)} seed pairs trained in one pass in {r['seconds_all_configs']:.0f} "
            "s"
        )
    if a.relu_l1s:
        relu_l1_sweep(
            store, layer, a.widths[0], a.lrs[0], a.batches[0], a.tokens, a.relu_l1s, a.k, out_root, max_norm
        )
        if not results:
            return
    crit = C.Criteria()

    def ok(r):
        last = r["curve"][-1]
        return (
            last["shared_fraction"] >= crit.min_shared
            and last["median_top1"] >= crit.min_median_top1
            and max(last["drift_a"], last["drift_b"]) <= crit.max_drift
        )

    passing = [r for r in results if ok(r)]
    chosen = (
        min(passing, key=lambda r: r["tokens"] * r["width"])
        if passing
        else max(results, key=lambda r: r["curve"][-1]["shared_fraction"])
    )
    print(
        f"chosen: {chosen['name']} ({'meets' if passing else 'best, does not meet'} the convergence criteria)"
    )
    out = data_dir() / "sweeps" / f"{a.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "chosen": chosen["name"]}, indent=1))


if __name__ == "__main__":
    main()
