"""Notebook 10's study: which directions are scored, their excerpts, and the judge's own check.

What: `direction_sets(held, sae, n, seed)` draws, on one held-out view (`heldout.HeldOut`), n directions
of each dictionary the scores compare:
- "SAE": n latents drawn at random among those with enough activating tokens to sample
  (`latent_samples.can_sample`); a latent is activating where its code is > 0;
- "neurons", "PCA", "random": n of the residual stream's own coordinates, of its principal directions
  (fitted on the held-out rows), and of a Haar-random rotation (`baselines`). These are dense, signed
  directions; each is read at its + end, and its activating tokens are its top q of tokens, q = the
  median firing density of the drawn SAE latents, so that every dictionary is judged on the same
  share of tokens.
`samples(sets, tokens_ST, ...)` gives each direction's `LatentSample` (explanation and test excerpts).
`token_class_latents(...)` builds the judge check: pseudo-latents that fire exactly on one class of
tokens (digits, Python keywords, ...), each with the explanation that is true by construction. A judge
that cannot score those above chance cannot score anything, so notebook 10 prints that check beside
every LLM number.
Why: an interpretability score means something only beside baselines scored the same way (Paulo et al.,
arXiv 2410.13928, score neurons beside latents; SAEBench compares against PCA and random directions),
and only for a judge shown to be able to do the task.
"""

from __future__ import annotations

import argparse
import keyword
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.analysis import autointerp, baselines, embedding_score, sparse_probing
from helpers.analysis.latent_samples import LatentSample, active_mask, can_sample, sample_latents

DENSE = ("neurons", "PCA", "random")


@dataclass
class DirectionSet:
    """n directions of one dictionary, laid out on the held-out sequences."""

    name: str
    """SAE, neurons, PCA or random."""
    latents: np.ndarray
    """[n] indices into the dictionary (SAE latent ids, residual dimensions, principal-component ranks)."""
    grid_STL: np.ndarray
    """[n_seq, T, n] each direction's value at every held-out token (0 where the view leaves it out)."""
    top_fraction: float | None
    """Dense directions: the share of tokens that counts as activating; None for SAE latents (> 0)."""


def sae_directions(held, sae, n: int, seed: int = 0, n_train: int = 10) -> DirectionSet:
    """n SAE latents drawn at random (seeded) among those `can_sample` accepts (all of them if fewer)."""
    density = held.density(sae)
    candidates = np.flatnonzero(density * held.n_tokens >= n_train + 2)
    grid = held.grid(sae, candidates.tolist())
    ok = [j for j in range(len(candidates)) if can_sample(active_mask(grid[..., j]), n_train)]
    if not ok:
        raise ValueError(f"no latent fires on {n_train + 2}+ held-out tokens; collect more tokens")
    pick = np.sort(np.random.default_rng(seed).choice(ok, min(n, len(ok)), replace=False))
    return DirectionSet("SAE", candidates[pick], grid[..., pick], None)


def dense_dictionaries(x: torch.Tensor, seed: int = 0) -> dict[str, baselines.Dictionary]:
    """{neurons, PCA, random}: the dense bases of `baselines`, centred on (and PCA fitted to) x."""
    return {
        "neurons": baselines.neuron_basis(x),
        "PCA": baselines.pca(x),
        "random": baselines.random_basis(x, seed),
    }


def dense_directions(held, dictionary, name: str, n: int, top_fraction: float, seed: int = 0) -> DirectionSet:
    """n directions of a dense dictionary drawn at random (seeded), their codes laid out on the view."""
    m = dictionary.decoder.shape[0]
    pick = np.sort(np.random.default_rng(seed).choice(m, min(n, m), replace=False))
    codes = dictionary.codes(held.x)[:, torch.as_tensor(pick)]
    return DirectionSet(name, pick, held.layout(codes.numpy()), top_fraction)


def direction_sets(held, sae, n: int, seed: int = 0, n_train: int = 10) -> list[DirectionSet]:
    """SAE, neurons, PCA and random: n directions each (module docstring)."""
    first = sae_directions(held, sae, n, seed, n_train)
    q = float(np.median(held.density(sae)[first.latents]))
    dense = dense_dictionaries(held.x, seed)
    return [first] + [dense_directions(held, dense[k], k, n, q, seed) for k in DENSE]


def samples(
    sets: list[DirectionSet], tokens_ST: np.ndarray, n_train: int = 10, n_test: int = 10, seed: int = 0
) -> dict[str, list[LatentSample]]:
    """{dictionary: its directions' samples}; a direction that cannot be sampled is left out."""
    out = {}
    for s in sets:
        got, _ = sample_latents(
            s.grid_STL, tokens_ST, s.latents, s.top_fraction, n_train=n_train, n_test=n_test, seed=seed
        )
        out[s.name] = got
    return out


def token_classes(token_text: Callable[[int], str], vocab_size: int) -> dict[str, tuple[str, set[int]]]:
    """{name: (true explanation, token ids)} for classes of tokens that need no judgement to define:
    numbers (the token is digits, a leading space allowed) and Python keywords."""
    texts = {i: token_text(i).strip() for i in range(vocab_size)}
    return {
        "digits": ("numbers and digits", {i for i, t in texts.items() if t.isdigit()}),
        "keywords": (
            "Python keywords such as def, return, import, if",
            {i for i, t in texts.items() if t in keyword.kwlist and t.islower()},
        ),
    }


def token_class_latents(
    tokens_ST: np.ndarray, classes: dict[str, tuple[str, set[int]]], n_train: int = 10, n_test: int = 10
) -> tuple[list[LatentSample], list[str], list[str]]:
    """(samples, class names, true explanations) of pseudo-latents that are 1 exactly on a class's tokens."""
    names = [k for k, (_, ids) in classes.items() if ids]
    grid = np.stack([np.isin(tokens_ST, list(classes[k][1])).astype(np.float32) for k in names], -1)
    grid[:, 0] = 0
    got, skipped = sample_latents(grid, tokens_ST, range(len(names)), n_train=n_train, n_test=n_test)
    keep = [names[s.latent] for s in got]
    return got, keep, [classes[k][0] for k in keep]


# --- the three scores as tables ------------------------------------------------------------------------
def judge_and_tokenizer(profile):
    """(the profile's LLM judge, the profile model's tokenizer): the judge is `interp_judge` (a local
    instruct model folder) or, by default, the profile's own model, whose tokenizer it then shares."""
    from helpers.analysis.judges import TransformersJudge
    from helpers.model.models import load_hf

    if profile.interp_judge:
        return TransformersJudge.from_folder(profile.interp_judge), load_hf(profile.model)[1]
    judge = TransformersJudge.of_model(profile.model)
    return judge, judge.tokenizer


def embedding_table(sample_sets: dict[str, list[LatentSample]], decode, encoder) -> pd.DataFrame:
    """One row per (dictionary, direction): `embedding_score.EmbeddingScore`'s fields."""
    rows = []
    for name, got in sample_sets.items():
        rows += [
            {"dictionary": name, **asdict(s)} for s in embedding_score.score_latents(got, decode, encoder)
        ]
    return pd.DataFrame(rows)


def llm_table(judge, sample_sets, n: int, decode, out_dir=None, seed: int = 0) -> pd.DataFrame:
    """The first n samples of each dictionary explained and scored (`autointerp.score_latents`), one row
    per direction; the audits go to out_dir/<dictionary>/latent_<id>.json."""
    rows = []
    for name, got in sample_sets.items():
        where = None if out_dir is None else Path(out_dir) / name
        for s in autointerp.score_latents(judge, got[:n], decode, where, seed):
            rows.append({"dictionary": name, **{k: v for k, v in asdict(s).items() if k != "judgements"}})
    return pd.DataFrame(rows)


def judge_check(judge, tokens_ST, tokenizer, decode, n_test: int, seed: int = 0) -> pd.DataFrame:
    """The judge scored on pseudo-latents with true explanations (`token_class_latents`), one row each."""
    classes = token_classes(lambda i: tokenizer.decode([i]), len(tokenizer))
    got, names, texts = token_class_latents(tokens_ST, classes, n_test=n_test)
    if not got:  # no class fires often enough in this text
        return pd.DataFrame(columns=["class", "explanation", "detection_auroc", "fuzzing_auroc"])
    given = [autointerp.Explanation(s.latent, t, []) for s, t in zip(got, texts)]
    scores = autointerp.score_explained(judge, got, given, decode, seed=seed)
    return pd.DataFrame(
        [
            {"class": c, **{k: v for k, v in asdict(s).items() if k not in ("judgements", "latent")}}
            for c, s in zip(names, scores)
        ]
    )


def feature_sets(sae, x_fit: torch.Tensor, seed: int = 0) -> dict:
    """{dictionary: rows x -> features} for sparse probing: the SAE's latents, the d neurons, d principal
    directions (fitted on x_fit) and as many random directions as the SAE has latents."""
    pca = baselines.pca(x_fit)  # fitted once, read by every task
    return {
        "SAE": lambda x: sparse_probing.sae_features(sae, x),
        "neurons": sparse_probing.neuron_features,
        "PCA": lambda x: pca.codes(torch.as_tensor(x)).numpy(),
        "random": lambda x: sparse_probing.random_features(x, sae.cfg.d_sae, seed),
    }


def probe_table(tasks, sets: dict, seeds: int, ks=sparse_probing.KS) -> pd.DataFrame:
    """Mean and sd over `seeds` splits (each task's own split rule) of each (task, dictionary, k) test
    accuracy, with each dictionary's shuffled-label control as "<name> (shuffled)". Features are
    computed once per task and dictionary."""
    rows = []
    for task in tasks:
        for name, fn in sets.items():
            F = task.features(fn)
            for seed in range(seeds):
                shuffled = np.random.default_rng(seed).permutation(task.y)
                for y, tag in ((task.y, ""), (shuffled, " (shuffled)")):
                    train, test = sparse_probing.split_indices(y, seed=seed, groups=task.groups)
                    res = sparse_probing.probe(F[train], y[train], F[test], y[test], ks, seed)
                    rows += [
                        {
                            "task": task.name,
                            "dictionary": name + tag,
                            "k": r.k,
                            "accuracy": r.accuracy,
                            "n_pool": res.n_pool,
                            "n_train": res.n_train,
                            "n_test": res.n_test,
                        }
                        for r in res.per_k
                    ]
    df = pd.DataFrame(rows)
    out = df.groupby(["task", "dictionary", "k"], sort=False).agg(
        accuracy=("accuracy", "mean"),
        sd=("accuracy", "std"),
        n_pool=("n_pool", "first"),
        n_train=("n_train", "first"),
        n_test=("n_test", "first"),
    )
    return out.reset_index()


def probe_tasks(held, held_other, tokenizer) -> tuple[list, dict[str, str]]:
    """(tasks, {task: why it was skipped}): noun vs verb (split by word, so no word is on both sides),
    code vs prose and corpus vs corpus (mean-pooled windows, split by row: the held-out shard has too few
    sequences to keep them apart); a task whose text has too few rows of a class is skipped, with why."""
    builders = {
        "noun vs verb": lambda: sparse_probing.pos_task(held, tokenizer, split_by="word"),
        "code vs prose": lambda: sparse_probing.code_vs_prose_task(held, tokenizer),
        "corpus": lambda: sparse_probing.corpus_task(held, held_other),
    }
    tasks, skipped = [], {}
    for name, build in builders.items():
        try:
            tasks.append(build())
        except sparse_probing.ProbeError as e:
            skipped[name] = str(e)
    return tasks, skipped


def example_lines(llm: pd.DataFrame, n_best: int = 3, n_worst: int = 2) -> list[str]:
    """The SAE's best and worst explained latents by detection AUROC, one line each, for the record."""
    sae = llm[llm.dictionary == "SAE"].sort_values("detection_auroc", ascending=False)
    pick = pd.concat([sae.head(n_best), sae.tail(n_worst)]).drop_duplicates("latent")
    return [
        f'SAE latent {r.latent} "{r.explanation}" {r.detection_auroc:.2f} / {r.fuzzing_auroc:.2f}'
        for r in pick.itertuples()
    ]


# --- `python -m helpers.interp`: the LLM scores at any size --------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m helpers.interp",
        description="Explain and score a profile's base SAE latents with an LLM judge, beside as many "
        "neurons, PCA and random directions (notebook 10's section 2, at the size you choose). Reads the "
        "store of notebook 01 and the SAE of notebook 02.",
    )
    p.add_argument("--profile", default="offline", help="profile name or .toml path (default: offline)")
    p.add_argument("--latents", type=int, help="directions per dictionary (default: interp_llm_latents)")
    p.add_argument("--test", type=int, help="activating and random excerpts judged per direction")
    p.add_argument("--judge", help="a local instruct model folder (default: interp_judge, else the model)")
    p.add_argument("--base-url", help="an OpenAI-compatible server instead, e.g. http://localhost:8000/v1")
    p.add_argument("--model", help="the server's model name (with --base-url)")
    p.add_argument("--dictionaries", nargs="+", default=["SAE", *DENSE], help="which to score")
    p.add_argument("--out", help="folder for scores.csv, judge_check.csv and the audits")
    return p.parse_args(argv)


def main(argv=None) -> pd.DataFrame:
    """The command: writes <out>/scores.csv (one row per direction), judge_check.csv and the audits."""
    from dataclasses import replace

    from helpers import paths
    from helpers.analysis.heldout import HeldOut
    from helpers.analysis.judges import OpenAIJudge
    from helpers.data.store import ActivationStore
    from helpers.model.models import load_hf
    from helpers.profiles import get_profile
    from helpers.training import experiments

    a = parse_args(argv)
    if bool(a.base_url) != bool(a.model):
        raise ValueError("--base-url and --model go together: pass both to use a server")
    unknown = sorted(set(a.dictionaries) - {"SAE", *DENSE})
    if unknown:
        raise ValueError(f"unknown dictionaries {unknown}; choose from SAE, {', '.join(DENSE)}")
    profile = get_profile(a.profile)
    profile = replace(profile, interp_judge=a.judge or profile.interp_judge)
    n, n_test = a.latents or profile.interp_llm_latents, a.test or profile.interp_llm_test
    store = ActivationStore(paths.store_dir(profile.name, profile.main_corpus), verify="none")
    sae = experiments.load(experiments.seed_pair(profile, store.d_model)[0], paths.sae_dir(profile.name))
    held = HeldOut(store, profile.main_layer, profile.massive_ratio)
    if a.base_url:
        judge, tokenizer = OpenAIJudge(a.base_url, a.model), load_hf(profile.model)[1]
    else:
        judge, tokenizer = judge_and_tokenizer(profile)
    out = Path(a.out) if a.out else paths.data_dir() / "interp" / f"{profile.name}-cli"
    sets = [s for s in direction_sets(held, sae, n) if s.name in a.dictionaries]
    check = judge_check(judge, held.sequence_tokens, tokenizer, tokenizer.decode, n_test)
    table = llm_table(judge, samples(sets, held.sequence_tokens, n_test=n_test), n, tokenizer.decode, out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "scores.csv", index=False)
    check.to_csv(out / "judge_check.csv", index=False)
    cols = ["detection_auroc", "fuzzing_auroc"]
    print(f"judge {judge.name}; check (true explanations):\n{check.round(3).to_string(index=False)}")
    print(table.groupby("dictionary", sort=False)[cols].median().round(3).to_string())
    print(f"wrote {out}/scores.csv, judge_check.csv and one audit per direction")
    return table
