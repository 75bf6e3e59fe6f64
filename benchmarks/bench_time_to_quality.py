"""Time to quality: wall time and tokens for ours, SAELens and dictionary_learning to reach a held-out FVU.

What: on the same stored activations (the offline main job's layer-12 python-docs store; a synthetic
stand-in when it is absent, and the output says so), trains our TopK SAE, SAELens's TopK trainer and
dictionary_learning's TopK trainer at the same width, k and batch, in two rows: (a) each library with
its own default recipe (learning rate, schedule, init, decoder handling, AuxK: named in the output
with the peer source lines they come from, see PEER_SNIPPET), (b) every library at our learning rate
(8e-3), all else its default. Every `--eval-every` tokens each run's held-out FVU (massive tokens and
the BOS excluded) is measured with its own encode/decode; the table gives per library the tokens and
the training wall seconds (evaluation excluded) to reach FVU <= 0.15 and to reach 90% of ours at the
end, the best and the final FVU within the budget, tokens/s, and the ratios to ours.

"90% of ours": explained variance EV = 1 - FVU reaching 90% of our final explained variance, i.e.
    FVU <= 1 - 0.9 * (1 - FVU_ours_final)
(ours reaches it too, earlier than the end, and the ratios compare like with like). A threshold counts
as reached at the first evaluation point at or below it (resolution: `--eval-every` tokens), with the
cumulative training seconds up to that point. Ratios: time ratio = peer seconds / our seconds to the
same threshold (> 1: ours is faster); where a peer never gets there, "> x" is its whole training time
over ours (a lower bound).

Why: bench_train.py times one step; this asks what the steps buy, i.e. how long each library's
recipe takes to reach a usable SAE on the lab's data.

How: the train stream is exactly what the lab trains on (helpers.training.experiments.train_plan:
store.batches(layer, exclude_positions=(0,), exclude_tokens=BOS, max_norm=the massive cut, all shards
but the last), the last shard held out for evaluation. It is materialised once in a temp dir as the
distinct rows (fp16, the store's dtype) plus the row index of every streamed token, so every library
reads the same file in the same order. Peers run in their own venvs (benchmarks/peer_venvs.py) as a
small server on stdin/stdout; the five runs (ours, SAELens x 2, dictionary_learning x 2) take turns
one eval interval at a time, in a rotating order, each with torch at `--threads` threads, so load from
other processes on the machine hits all of them alike. FVU = sum ||x - x_hat||^2 / sum ||x - mean||^2
over the held-out tokens (helpers.sae.metrics.ReconstructionStats; the peers return their sum of
squared errors and the denominator is computed once). Ours runs the lab's step at the profile's
precision ("auto": bf16 GEMMs where measured faster); the peers run their fp32 defaults.

The store defaults to this checkout's data/activations/offline/python-docs (helpers.paths.store_dir,
SAE_LAB_DATA honoured); `--store` names another (e.g. the main job's, in another checkout).

    python benchmarks/bench_time_to_quality.py            # offline profile: 2.5M tokens, eval every 51,200
    python benchmarks/bench_time_to_quality.py --quick    # synthetic data, 40,960 tokens (a smoke test)
    python benchmarks/bench_time_to_quality.py --store PATH --tokens 4000000 --eval-every 102400
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peer_venvs import PEERS as ALL_PEERS
from peer_venvs import PeerServer

# helpers from this checkout (the venv's editable install may point at another copy of the repo)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PEERS = {name: ALL_PEERS[name] for name in ("saelens", "dictlearn")}
LABELS = {"ours": "ours", "saelens": "SAELens", "dictlearn": "dictionary_learning"}
FVU_TARGET = 0.15
OF_OURS = 0.9  # "90% of ours": EV >= OF_OURS * our final EV
EVAL_CHUNK = 4096

# A training server run with a peer venv's python: argv = lib, spec (JSON), threads. Lines on stdin:
#   build NAME LR      a trainer with the library's default recipe (LR "default") or that lr
#   train NAME N       its next N steps on the shared stream; RESULT {"seconds": training time}
#   eval NAME          RESULT {"sse", "nnz", "n"} on the held-out rows, with the library's encode/decode
# Batch i = train_rows[train_order[i*B:(i+1)*B]], the same rows in the same order for every library;
# fetching it is outside the timed region, as for ours.
PEER_SNIPPET = r"""
import json, sys, time, traceback, numpy as np, torch
lib, spec, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
D, M, K, B, STEPS = spec["d_in"], spec["d_sae"], spec["k"], spec["batch"], spec["steps"]
rows = np.load(spec["train_rows"], mmap_mode="r")
order = np.load(spec["train_order"], mmap_mode="r")
held = torch.from_numpy(np.load(spec["heldout"]).astype(np.float32))
batch = lambda i: torch.from_numpy(rows[np.asarray(order[i * B:(i + 1) * B])].astype(np.float32))

if lib == "saelens":
    # sae-lens 6.54.12, every default as shipped (paths under site-packages/sae_lens/):
    # - saes/topk_sae.py:351-354 TopKTrainingSAEConfig: aux_loss_coefficient=1.0,
    #   rescale_acts_by_decoder_norm=True (the decoder is never renormalised; its row norms rescale the
    #   codes), use_sparse_activations=False; AuxK (topk_sae.py:498-533): k_aux = d_in // 2 dead latents,
    #   unnormalised MSE of the residual, scaled by min(n_dead / k_aux, 1)
    # - saes/sae.py:412-424 + 1053-1059 init: W_dec kaiming_uniform_, rows rescaled to decoder_init_norm
    #   = 0.1 (sae.py:901), W_enc = W_dec^T, b_dec = 0; topk_sae.py:577-582 b_enc = 0
    # - saes/sae.py:157-163 apply_b_dec_to_input=True, normalize_activations="none" (raw inputs)
    # - config.py:257-276 LanguageModelSAERunnerConfig: Adam betas (0.9, 0.999), lr 3e-4,
    #   lr_scheduler_name "constant", lr_warm_up_steps 0, lr_decay_steps 0, dead_feature_window 1000
    #   steps; config.py:356-357 lr_end = lr / 10 (unused by "constant"); config.py:242 seed 42
    # - training/sae_trainer.py:106-124 Adam + get_lr_scheduler; :379-416 _train_step (clip_grad_norm
    #   1.0 at :412, dead mask = steps since fired > dead_feature_window, :155-157)
    # The step is SAETrainer's own: the body of fit()'s loop (sae_trainer.py:189-202) without wandb.
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    def build(lr):
        lr = 3e-4 if lr is None else lr  # config.py:264
        torch.manual_seed(42)  # config.py:242
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=M, k=K))
        cfg = SAETrainerConfig(total_training_samples=STEPS * B, train_batch_size_samples=B, lr=lr,
                               lr_end=lr / 10)
        tr = SAETrainer(cfg, sae, data_provider=iter(()))

        def step(i, x):
            tr.maybe_reset_sparsity()
            tr.step(x)
            tr.n_training_steps += 1

        def recon(x):
            sae.eval()
            codes = sae.encode(x)
            out = sae.decode(codes)
            sae.train()
            return out, codes

        c = sae.cfg
        recipe = dict(lr=lr, schedule=f"constant (warm-up {cfg.lr_warm_up_steps}, decay "
                      f"{cfg.lr_decay_steps})", betas=[cfg.adam_beta1, cfg.adam_beta2],
                      decoder_init_norm=c.decoder_init_norm,
                      rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm,
                      aux_loss_coefficient=c.aux_loss_coefficient,
                      dead_feature_window_steps=cfg.dead_feature_window,
                      normalize_activations=c.normalize_activations, b_dec_init="zeros", grad_clip=1.0,
                      seed=42)
        return step, recon, recipe
else:
    # dictionary-learning 0.1.0 (paths under site-packages/dictionary_learning/):
    # - trainers/top_k.py:158-167 TopKTrainer: lr None, auxk_alpha 1/32, warmup_steps 1000,
    #   decay_start None, threshold_beta 0.999, threshold_start_step 1000, seed None
    # - top_k.py:199-201 lr = 2e-4 / sqrt(dict_size / 2**14); :213 Adam betas (0.9, 0.999); :215-217
    #   LambdaLR(get_lr_schedule(steps, warmup_steps, decay_start)); trainers/trainer.py:114-162 the schedule:
    #   step / warmup_steps during warm-up, then 1.0 (no decay when decay_start is None); it asserts
    #   warmup_steps < steps
    # - top_k.py:72-81 init: nn.Linear decoder (kaiming-uniform) with unit-norm rows, encoder = decoder^T,
    #   encoder bias 0, b_dec 0; :312-317 b_dec = geometric median of the first batch
    # - top_k.py:204-205 dead after 10M tokens without firing, k_aux = d_in // 2; :219-247 AuxK MSE
    #   normalised by the residual's variance (OpenAI's)
    # - top_k.py:320-341 update(): backward, remove the decoder-gradient component parallel to each row,
    #   clip_grad_norm 1.0, Adam, scheduler, decoder rows back to unit norm
    # - training.py:125 trainSAE(normalize_activations=False): raw inputs by default
    from dictionary_learning.trainers.top_k import TopKTrainer

    def build(lr):
        torch.manual_seed(0)  # TopKTrainer's seed defaults to None (top_k.py:164); fixed for repeatability
        kw = {} if lr is None else {"lr": lr}
        warm = 1000  # top_k.py:160
        if warm >= STEPS:  # the default asserts warmup_steps < steps (trainer.py:148): shorten it to fit
            kw["warmup_steps"] = warm = max(0, STEPS - 1)
        tr = TopKTrainer(steps=STEPS, activation_dim=D, dict_size=M, k=K, layer=spec["layer"],
                         lm_name="time-to-quality", device="cpu", **kw)
        step = lambda i, x: tr.update(i, x)

        def recon(x):
            codes = tr.ae.encode(x)
            return tr.ae.decode(codes), codes

        recipe = dict(lr=tr.lr, schedule=f"linear warm-up {tr.warmup_steps} steps from 0, then constant "
                      f"(decay_start {tr.decay_start})", betas=[0.9, 0.999], decoder="unit-norm rows, "
                      "parallel grad removed", auxk_alpha=tr.auxk_alpha, dead_feature_threshold_tokens=
                      tr.dead_feature_threshold, k_aux=tr.top_k_aux, b_dec_init="geometric median of batch 0",
                      normalize_activations=False, grad_clip=1.0, seed=0,
                      warmup_shortened=warm != 1000)
        return step, recon, recipe

runs = {}
print("READY", flush=True)
for line in sys.stdin:
    cmd, name, *rest = line.split()
    try:
        if cmd == "build":
            step, recon, recipe = build(None if rest[0] == "default" else float(rest[0]))
            runs[name] = {"step": step, "recon": recon, "i": 0}
            out = recipe
        elif cmd == "train":
            r, secs = runs[name], 0.0
            for _ in range(int(rest[0])):
                x = batch(r["i"])
                t = time.perf_counter()
                r["step"](r["i"], x)
                secs += time.perf_counter() - t
                r["i"] += 1
            out = {"seconds": secs, "step": r["i"]}
        else:
            sse, nnz = 0.0, 0
            with torch.no_grad():
                for j in range(0, len(held), 4096):
                    x = held[j:j + 4096]
                    x_hat, codes = runs[name]["recon"](x)
                    sse += float((x.double() - x_hat.double()).pow(2).sum())
                    nnz += int((codes != 0).sum())
            out = {"sse": sse, "nnz": nnz, "n": len(held)}
        print("RESULT " + json.dumps(out), flush=True)
    except Exception:
        print("FAILED " + json.dumps(traceback.format_exc()), flush=True)
"""


# ---------------------------------------------------------------------------- the shared data
def synthetic_rows(n: int, d: int, seed: int = 0, n_features: int = 4096) -> np.ndarray:
    """[n, d] float16 stand-in for residual activations: sparse features in superposition plus a mean
    and dense noise, at a residual-like scale.

    x = mu + sum_f c_f u_f + eps: u_f random unit directions (n_features > d); each token gets
    Poisson(24) feature occurrences on average, feature f drawn with Zipf-like probability
    ~ 1 / (rank + 10), each occurrence with magnitude Exp(1) * s_f, s_f ~ LogNormal(0, 0.5) per feature;
    mu a fixed offset as large as the sparse part's typical norm; eps isotropic Gaussian with ~4% of the
    variance (an FVU floor no dictionary removes); all scaled to a median norm of 100 (raw residual
    norms on SmolLM2 are ~100). Unlike toy.py's uniform-probability features, a TopK SAE of 2,304
    latents cannot give every feature its own latent, so FVU falls quickly and then slowly, as on real
    activations.
    """
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_features, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    p = 1.0 / (torch.arange(1, n_features + 1, dtype=torch.float64) + 10)
    p /= p.sum()
    s = torch.exp(0.5 * torch.randn(n_features, generator=g))
    lam = 24.0
    typical = math.sqrt(lam * 2 * float((p * s.double() ** 2).sum()))  # E||sparse||^2 ~ lam E[m^2 s^2]
    mu = torch.randn(d, generator=g)
    mu *= typical / mu.norm()
    sigma = math.sqrt(0.04 / 0.96 * typical**2 / d)
    out = np.empty((n, d), np.float16)
    scale = None
    for i in range(0, n, 8192):
        m = min(8192, n - i)
        cnt = int(torch.poisson(torch.tensor(lam * m, dtype=torch.float64), generator=g))
        tok = torch.randint(0, m, (cnt,), generator=g)
        feat = torch.multinomial(p, cnt, replacement=True, generator=g)
        val = torch.empty(cnt).exponential_(1.0, generator=g) * s[feat]
        codes = torch.sparse_coo_tensor(torch.stack([tok, feat]), val, (m, n_features), check_invariants=True)
        x = mu + torch.sparse.mm(codes, dirs) + sigma * torch.randn(m, d, generator=g)
        if scale is None:
            scale = 100.0 / float(x.norm(dim=1).median())
        out[i : i + m] = (x * scale).numpy().astype(np.float16)
    return out


def materialise(args, tmp: Path, n_tokens: int) -> dict[str, Any]:
    """Write train_rows.npy (distinct rows), train_order.npy (row of every streamed token, n_tokens),
    heldout.npy into tmp; return their paths and a description of the data."""
    from helpers.paths import store_dir

    path = Path(args.store) if args.store else store_dir("offline", "python-docs")
    have = (path / "manifest.json").exists()
    if args.store and not have:
        raise SystemExit(f"no activation store at {path}; collect it (notebook 01) or drop --store")
    if args.synthetic or not have:
        n_train = args.synthetic_rows
        why = "--synthetic" if args.synthetic else f"no store at {path}"
        rows = synthetic_rows(n_train + args.eval_tokens, args.d_in, seed=0)
        train, held = rows[:n_train], rows[n_train:]
        rng = np.random.default_rng(0)  # epochs over the rows, a fresh permutation each (toy.TensorBatches)
        epochs = -(-n_tokens // n_train)
        order = np.concatenate([rng.permutation(n_train) for _ in range(epochs)])[:n_tokens]
        desc = (
            f"SYNTHETIC stand-in ({why}): {n_train:,} train rows, {len(held):,} held-out rows, d {args.d_in} "
            f"(synthetic_rows: Zipf-frequency features in superposition + a mean + 4% noise)"
        )
        info = {"synthetic": True, "store": None, "max_norm": None}
    else:
        from helpers.data.store import ActivationStore
        from helpers.profiles import get_profile
        from helpers.training.experiments import EXCLUDE_POSITIONS, excluded_tokens, max_norm

        store = ActivationStore(path)
        if store.d_model != args.d_in:
            raise SystemExit(f"the store at {path} has d_model {store.d_model}, not --d-in {args.d_in}")
        train_shards, held_shards = store.split(1)
        cut = max_norm(store, args.layer, get_profile("offline"))
        kw = dict(exclude_positions=EXCLUDE_POSITIONS, exclude_tokens=excluded_tokens(store), max_norm=cut)
        dt = np.float16 if store.request.dtype == "float16" else np.float32  # exact copies of stored values
        stream = store.batches(
            args.layer, batch_size=args.batch, seed=0, epochs=None, shards=train_shards, **kw
        )
        index: dict[bytes, int] = {}
        pool: list[np.ndarray] = []
        order = np.empty(n_tokens, np.int32)
        pos = 0
        for x in stream:  # the lab's stream (train_plan), to n_tokens; distinct rows kept once
            xb = np.ascontiguousarray(x.numpy().astype(dt))
            keys = xb.view(np.dtype((np.void, xb.shape[1] * xb.itemsize))).ravel().tolist()
            for j, key in enumerate(keys):
                if key not in index:
                    index[key] = len(index)
                    pool.append(xb[j])
                order[pos + j] = index[key]
            pos += len(xb)
            if pos >= n_tokens:
                break
        train = np.stack(pool)
        eval_stream = store.batches(args.layer, batch_size=4096, shuffle=False, shards=held_shards, **kw)
        held = np.concatenate([x.numpy().astype(dt) for x in eval_stream])[: args.eval_tokens]
        desc = (
            f"{path} layer {args.layer}: train shards 0-{train_shards[-1]} ({len(train):,} distinct rows, "
            f"streamed {n_tokens / len(train):.1f}x), held-out shard {held_shards} ({len(held):,} tokens); "
            f"BOS and position 0 excluded, massive tokens (norm > {cut:.1f}) excluded"
        )
        info = {"synthetic": False, "store": str(path), "max_norm": cut}
    files = {"train_rows": tmp / "train_rows.npy", "train_order": tmp / "train_order.npy"}
    files["heldout"] = tmp / "heldout.npy"
    np.save(files["train_rows"], train)
    np.save(files["train_order"], order.astype(np.int32))
    np.save(files["heldout"], held)
    return {**info, "desc": desc, "files": {k: str(v) for k, v in files.items()}, "n_train_rows": len(train)}


class Data:
    """The materialised files, read the way every library reads them."""

    def __init__(self, files: dict[str, str], batch: int):
        self.rows = np.load(files["train_rows"], mmap_mode="r")
        self.order = np.load(files["train_order"], mmap_mode="r")
        self.held = torch.from_numpy(np.load(files["heldout"]).astype(np.float32))
        self.batch_size = batch
        h = self.held.double()  # the denominator of ReconstructionStats.result() (helpers/sae/metrics.py)
        self.var = float(h.pow(2).sum()) - float(h.sum(0).pow(2).sum()) / len(h)

    def batch(self, i: int) -> torch.Tensor:
        B = self.batch_size
        return torch.from_numpy(self.rows[np.asarray(self.order[i * B : (i + 1) * B])].astype(np.float32))


# ---------------------------------------------------------------------------- the runs
class Ours:
    """Our trainer, stepped as helpers.training.train.train_saes steps it (TrainingRun.step), with the
    offline profile's recipe (helpers.training.experiments.SAERun.train_config)."""

    def __init__(self, args, data: Data, steps: int, out_dir: Path):
        from helpers.profiles import get_profile
        from helpers.sae.fast import kernels
        from helpers.training.experiments import base_run
        from helpers.training.train import TrainingRun

        prof = dataclasses.replace(
            get_profile("offline"),
            train_tokens=steps * args.batch,
            train_batch_size=args.batch,
            k=args.k,
            train_lr=args.lr,
            train_precision=args.precision,
        )
        cfg = base_run(prof, args.d_in).train_config(prof, args.d_in, 0)
        cfg = dataclasses.replace(cfg, d_sae=args.d_sae, snapshot_tokens=(), checkpoint_every_tokens=None)
        self.cfg, self.data, self.i, self.inited = cfg, data, 0, False
        self.run = TrainingRun(cfg, out_dir, torch.device("cpu"))
        self.run.open_log(None)
        kernels.library()  # the step's C kernels compile on first use (cached): not inside the timing
        self.recipe = {
            "lr": cfg.lr,
            "schedule": f"linear warm-up {max(1, min(cfg.warmup_steps, steps // 10))} steps, constant, "
            f"linear decay to 0 over the last {cfg.decay_fraction:.0%}",
            "betas": list(cfg.betas),
            "decoder": "unit-norm rows (parallel grad removed, renormalised), W_enc = W_dec^T",
            "b_dec_init": cfg.b_dec_init,
            "normalize_activations": f"E||s x|| = sqrt(d_in), s from the first {cfg.norm_estimate_tokens:,}",
            "auxk_coef": cfg.options.auxk_coef,
            "dead_window_tokens": cfg.dead_window,
            "k_aux": cfg.d_in // 2,
            "grad_clip": cfg.grad_clip,
            "precision": str(self.run.state.matmul_dtype).removeprefix("torch."),
            "seed": cfg.seed,
        }

    def _init(self) -> float:
        """What train_saes does before its loop (timed, like dictionary_learning's b_dec init in its first
        update): the input scale s = sqrt(d_in) / mean ||x|| (helpers/training/train.py's docstring) and
        b_dec from the first rows, scaled."""
        from helpers.sae.base import init_b_dec

        cfg, B = self.cfg, self.data.batch_size
        n = -(-min(cfg.norm_estimate_tokens, cfg.total_steps * cfg.batch_size) // B)
        first = [self.data.batch(j) for j in range(min(n, cfg.total_steps))]
        t = time.perf_counter()
        x = torch.cat(first)
        if cfg.normalize_activations:
            self.run.scale = math.sqrt(cfg.d_in) / float(x.norm(dim=1).mean())
        init_b_dec(self.run.sae, x[:65_536] * self.run.scale, cfg.b_dec_init)
        self.inited = True
        return time.perf_counter() - t

    def train(self, n: int) -> float:
        secs = 0.0 if self.inited else self._init()
        B = self.cfg.batch_size
        for _ in range(n):
            x = self.data.batch(self.i)
            t = time.perf_counter()
            # the per-batch work of train_saes' loop: finiteness check, batch variance (for the log), step
            if not bool(torch.isfinite(x).all()):
                raise RuntimeError(f"batch {self.i} holds NaN/inf")
            var_raw = float((x - x.mean(0)).pow(2).sum(1).mean())
            self.run.step(x, var_raw, self.i, (self.i + 1) * B)
            secs += time.perf_counter() - t
            self.i += 1
        return secs

    @torch.no_grad()
    def eval(self) -> dict[str, float]:
        sae, s, sse, nnz = self.run.sae, self.run.scale, 0.0, 0
        for j in range(0, len(self.data.held), EVAL_CHUNK):
            x = self.data.held[j : j + EVAL_CHUNK]
            codes = sae.encode(x * s)  # trained on s x: x_hat = decode(encode(s x)) / s
            x_hat = sae.decode(codes) / s
            sse += float((x.double() - x_hat.double()).pow(2).sum())
            nnz += int((codes != 0).sum())
        return {"sse": sse, "nnz": nnz, "n": len(self.data.held)}

    def close(self) -> None:
        self.run.log_f.close()


class Peer(PeerServer):
    """A peer library's training server (PEER_SNIPPET) in its own venv; holds several runs."""

    def __init__(self, name: str, spec: dict, threads: int, tmp: Path):
        super().__init__(name, PEER_SNIPPET, [json.dumps(spec), str(threads)], tmp)

    def ask(self, line: str) -> dict:
        return json.loads(super().ask(line))


class PeerRun:
    """One run (library x recipe) inside a Peer server."""

    def __init__(self, peer: Peer, name: str, lr: float | None):
        self.peer, self.name = peer, name
        self.recipe = peer.ask(f"build {name} {'default' if lr is None else repr(lr)}")

    def train(self, n: int) -> float:
        return self.peer.ask(f"train {self.name} {n}")["seconds"]

    def eval(self) -> dict[str, float]:
        return self.peer.ask(f"eval {self.name}")


# ---------------------------------------------------------------------------- the numbers
def first_reach(curve: list[dict], fvu: float) -> dict | None:
    """The first evaluation point with FVU <= fvu (None: never within the budget)."""
    return next((p for p in curve if p["fvu"] <= fvu), None)


def summarise(curves: dict[str, list[dict]], target90: float) -> dict[str, dict]:
    out = {}
    for key, c in curves.items():
        r15, r90 = first_reach(c, FVU_TARGET), first_reach(c, target90)
        out[key] = {
            "tokens_to_0.15": r15 and r15["tokens"],
            "seconds_to_0.15": r15 and r15["seconds"],
            "tokens_to_90pct": r90 and r90["tokens"],
            "seconds_to_90pct": r90 and r90["seconds"],
            "best_fvu": min(p["fvu"] for p in c),
            "final_fvu": c[-1]["fvu"],
            "final_l0": c[-1]["l0"],
            "train_seconds": c[-1]["seconds"],
            "tokens_per_second": c[-1]["tokens"] / max(c[-1]["seconds"], 1e-9),
        }
    return out


def ratio(peer: dict, ours: dict, what: str) -> str:
    """peer / ours seconds to a threshold; '> x' (peer's whole training time over ours) if never."""
    o, p = ours[f"seconds_{what}"], peer[f"seconds_{what}"]
    if o is None:
        return "-"
    if p is None:
        return f"> {peer['train_seconds'] / o:.1f}"
    return f"{p / o:.2f}"


def table(rows: list[tuple[str, str]], summary: dict[str, dict], target90: float) -> str:
    tok = lambda v: "never" if v is None else f"{v:,}"
    sec = lambda v: "never" if v is None else f"{v:.1f}"
    head = [
        "row",
        "library",
        "tokens to FVU<=0.15",
        "s to FVU<=0.15",
        f"tokens to 90% of ours (FVU<={target90:.3f})",
        "s to 90% of ours",
        "best FVU",
        "final FVU",
        "final L0",
        "tokens/s",
        "time ratio 0.15 (peer/ours)",
        "time ratio 90% (peer/ours)",
        "best FVU ratio (peer/ours)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ours = summary["ours"]
    for row, key in rows:
        s = summary[key]
        lib = LABELS[key.split(":")[0]]
        peer = key != "ours"
        lines.append(
            "| "
            + " | ".join(
                [
                    row,
                    lib,
                    tok(s["tokens_to_0.15"]),
                    sec(s["seconds_to_0.15"]),
                    tok(s["tokens_to_90pct"]),
                    sec(s["seconds_to_90pct"]),
                    f"{s['best_fvu']:.4f}",
                    f"{s['final_fvu']:.4f}",
                    f"{s['final_l0']:.1f}",
                    f"{s['tokens_per_second']:,.0f}",
                    ratio(s, ours, "to_0.15") if peer else "1",
                    ratio(s, ours, "to_90pct") if peer else "1",
                    f"{s['best_fvu'] / ours['best_fvu']:.2f}" if peer else "1",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    from helpers.paths import data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: synthetic data, 40,960 tokens")
    ap.add_argument("--store", help="activation store (default: data/activations/offline/python-docs)")
    ap.add_argument("--layer", type=int, default=12)
    ap.add_argument(
        "--synthetic", action="store_true", help="use the synthetic stand-in even if a store exists"
    )
    ap.add_argument("--synthetic-rows", type=int, default=None, help="synthetic train rows (300k; quick 20k)")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per run (2.5M; quick 40,960)")
    ap.add_argument(
        "--eval-every", type=int, default=None, help="tokens between evaluations (51,200; quick 10,240)"
    )
    ap.add_argument(
        "--eval-tokens",
        type=int,
        default=None,
        help="held-out tokens evaluated, at most (16,384; quick 8,192)",
    )
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument(
        "--d-sae", type=int, default=None, help="latents (default: the offline profile's 4 x d_in)"
    )
    ap.add_argument("--k", type=int, default=None, help="TopK k (default: the offline profile's 32)")
    ap.add_argument("--batch", type=int, default=None, help="tokens per step (default: the profile's 2048)")
    ap.add_argument(
        "--lr", type=float, default=None, help="our lr, also row (b)'s (default: the profile's 8e-3)"
    )
    ap.add_argument(
        "--precision", default=None, help="our step's GEMM precision (default: the profile's auto)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads in every process")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS), help="peers to run")
    ap.add_argument("--out", default=str(data_dir() / "benchmarks" / "time_to_quality.json"))
    ap.add_argument("--keep-data", action="store_true", help="keep the materialised temp dir")
    args = ap.parse_args()

    from helpers.profiles import get_profile

    prof = get_profile("offline")
    args.d_sae = args.d_sae or prof.expansion_factor * args.d_in
    args.k = args.k or prof.k
    args.batch = args.batch or prof.train_batch_size
    args.lr = args.lr or prof.train_lr
    args.precision = args.precision or prof.train_precision
    args.synthetic = args.synthetic or (args.quick and not args.store)
    args.synthetic_rows = args.synthetic_rows or (20_480 if args.quick else 300_000)
    args.eval_tokens = args.eval_tokens or (8_192 if args.quick else 16_384)
    tokens = args.tokens or (40_960 if args.quick else prof.train_tokens)
    every = args.eval_every or (10_240 if args.quick else 51_200)
    B = args.batch
    steps, every_steps = tokens // B, max(1, every // B)
    if steps < 1:
        raise SystemExit(f"--tokens {tokens} is less than one batch of {B}")
    bounds = sorted({*range(every_steps, steps, every_steps), steps})  # eval after these many steps
    torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="ttq_"))
    t_start = time.perf_counter()
    try:
        t0 = time.perf_counter()
        mat = materialise(args, tmp, steps * B)
        print(f"data: {mat['desc']} (materialised in {time.perf_counter() - t0:.0f} s)", flush=True)
        data = Data(mat["files"], B)
        spec = {"d_in": args.d_in, "d_sae": args.d_sae, "k": args.k, "batch": B, "steps": steps}
        spec |= {"layer": args.layer, **mat["files"]}
        runs: dict[str, Any] = {"ours": Ours(args, data, steps, tmp / "ours")}
        peers = [Peer(name, spec, args.threads, tmp) for name in args.peers]
        for p in peers:
            runs[f"{p.name}:default"] = PeerRun(p, "default", None)
            runs[f"{p.name}:our_lr"] = PeerRun(p, "our_lr", args.lr)
        config = (
            f"d_in {args.d_in}, d_sae {args.d_sae}, k {args.k}, batch {B}, {steps * B:,} tokens "
            f"({steps} steps), eval every {every_steps * B:,} tokens on {len(data.held):,} held-out tokens, "
            f"torch {args.threads} threads per process"
        )
        print(f"config: {config}", flush=True)
        keys = list(runs)
        curves: dict[str, list[dict]] = {k: [] for k in keys}
        seconds = dict.fromkeys(keys, 0.0)
        done = 0
        for c, end in enumerate(bounds):
            # one eval interval per run, in a rotating order, so machine load hits all runs alike
            for key in keys[c % len(keys) :] + keys[: c % len(keys)]:
                seconds[key] += runs[key].train(end - done)
                ev = runs[key].eval()
                curves[key].append(
                    {
                        "tokens": end * B,
                        "seconds": seconds[key],
                        "fvu": ev["sse"] / data.var,
                        "l0": ev["nnz"] / ev["n"],
                    }
                )
            done = end
            print(
                f"{end * B:>10,} tokens: "
                + " | ".join(f"{k} FVU {curves[k][-1]['fvu']:.4f} ({seconds[k]:.0f} s)" for k in keys),
                flush=True,
            )
        for p in peers:
            p.close()
        runs["ours"].close()
    finally:
        if not args.keep_data:
            shutil.rmtree(tmp, ignore_errors=True)

    wall = time.perf_counter() - t_start
    target90 = 1 - OF_OURS * (1 - curves["ours"][-1]["fvu"])
    summary = summarise(curves, target90)
    rows = [("(a) own defaults", "ours")]
    rows += [("(a) own defaults", f"{p}:default") for p in args.peers]
    rows += [(f"(b) all at lr {args.lr:g}", "ours")] + [
        (f"(b) all at lr {args.lr:g}", f"{p}:our_lr") for p in args.peers
    ]
    recipes = {k: runs[k].recipe for k in keys}
    print(f"\n## Time to quality{' (SYNTHETIC DATA)' if mat['synthetic'] else ''}\n")
    print(f"data: {mat['desc']}")
    print(f"config: {config}")
    print(
        f"thresholds: FVU <= {FVU_TARGET}; 90% of ours = EV >= {OF_OURS} x our final EV "
        f"({1 - curves['ours'][-1]['fvu']:.4f}), i.e. FVU <= {target90:.4f}. Seconds = training steps only "
        "(evaluation excluded), at the first evaluation point at or below the threshold.\n"
    )
    print(table(rows, summary, target90))
    print("\n(b)'s ours is the same run as (a)'s: our default lr is the profile's.\nrecipes:")
    for k in keys:
        lib = LABELS[k.split(":")[0]]
        tag = "" if k == "ours" else f" [{k.split(':')[1]}]"
        print(f"- {lib}{tag}: " + ", ".join(f"{a}={v}" for a, v in recipes[k].items()))
    print(
        "sources: ours helpers/training/config.py + experiments.SAERun.train_config (offline profile); "
        f"SAELens {PEERS['saelens']} and dictionary_learning {PEERS['dictlearn']}: file:line in "
        "PEER_SNIPPET's comments"
    )
    result = {
        "config": config,
        "data": {k: v for k, v in mat.items() if k != "files"},
        "args": vars(args) | {"tokens": steps * B, "eval_every": every_steps * B},
        "thresholds": {"fvu": FVU_TARGET, "of_ours": OF_OURS, "fvu_90pct_of_ours": target90},
        "recipes": recipes,
        "curves": curves,
        "summary": summary,
        "wall_seconds_total": wall,
        "versions": {"torch": torch.__version__, **{p: PEERS[p] for p in args.peers}},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    print(f"total wall {wall:.0f} s (data, peer start-up and every evaluation included)")


if __name__ == "__main__":
    main()
