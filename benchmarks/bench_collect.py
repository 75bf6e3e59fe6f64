"""Collection speed: nnsight (several layers, one pass, stopped after the deepest) vs a plain
transformers forward truncated after the same layer, on the same batches in the same run.

    python benchmarks/bench_collect.py [--model smollm2-135m] [--quick]

Prints tokens/s of each and the ratio ours / truncated-transformers (target >= 0.9). Also shows
what the early stop buys: a full forward (all blocks + unembedding), as the naive baseline.
Rounds alternate between methods so background load hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from helpers.data.corpora import load_corpus, token_windows
from helpers.model.models import hf_blocks, load_model, spec_of
from helpers.model.residuals import residuals
from helpers.profiles import get_profile

warnings.filterwarnings("ignore")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="offline")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(2)
    prof = get_profile(a.profile)
    seq_len = a.seq_len or prof.seq_len
    model = load_model(prof.model)
    spec, hf = spec_of(model), model._module
    texts = load_corpus(prof.main_corpus)["text"]
    windows = torch.from_numpy(
        token_windows(texts, model.tokenizer, seq_len, spec.bos_id, a.batch * a.rounds, 0)
    ).long()
    batches = windows.split(a.batch)
    rounds = 2 if a.quick else a.rounds

    def ours(ids, layers):
        return residuals(model, ids, layers)

    def truncated(ids, layers):
        # the same model object, its block list cut after the deepest layer, no unembedding
        blocks = hf_blocks(hf, spec)
        parent, attr = (hf.model, "layers") if spec.layers_path == "model.layers" else (hf.transformer, "h")
        setattr(parent, attr, blocks[: max(layers) + 1])
        try:
            with torch.no_grad():
                hs = getattr(hf, "model", None) or hf.transformer
                out = hs(ids, output_hidden_states=True).hidden_states
            return {layer: out[layer] for layer in layers}
        finally:
            setattr(parent, attr, blocks)

    def full(ids, layers):
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True).hidden_states
        return {layer: out[layer] for layer in layers}

    configs = {"profile layers": list(prof.layers), "main layer only": [prof.main_layer]}
    print(f"{spec.name}, batch {a.batch} x {seq_len} tokens, torch threads {torch.get_num_threads()}")
    print(f"{'layers':34s} {'nnsight (ours)':>15s} {'truncated HF':>13s} {'full HF':>9s} {'ratio':>6s}")
    for label, layers in configs.items():
        ok = ours(batches[0], layers)
        ref = truncated(batches[0], layers)
        for layer in layers:  # same numbers, or the speed means nothing
            torch.testing.assert_close(ok[layer], ref[layer])
        times = {"ours": [], "truncated": [], "full": []}
        for r in range(rounds):
            ids = batches[r % len(batches)]
            for name, fn in (("ours", ours), ("truncated", truncated), ("full", full)):
                t = time.perf_counter()
                fn(ids, layers)
                times[name].append(time.perf_counter() - t)
        tps = {k: ids.numel() / statistics.median(v) for k, v in times.items()}
        print(
            f"{label + ' ' + str(layers):34.34s} {tps['ours']:13,.0f}/s {tps['truncated']:11,.0f}/s "
            f"{tps['full']:7,.0f}/s {tps['ours'] / tps['truncated']:6.2f}"
        )


if __name__ == "__main__":
    main()
