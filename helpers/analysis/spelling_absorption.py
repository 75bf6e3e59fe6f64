"""First-letter feature absorption of an SAE, scored as SAEBench's absorption eval scores it.

What: `k_sparse_main_latents` (k_sparse_probing.py: an L1 probe on the SAE's codes ranks latents per
letter; k-sparse logistic probes on its top k = 1..max_k; the main latents are the top k up to the
last k whose test F1 rose by more than 0.03), `word_absorption` (feature_absorption_calculator.py:
each word's absorption fraction and whether it is fully absorbed) and `first_letter_absorption(sae,
probes, acts)`, which runs both on the words of helpers.analysis.spelling_probes and aggregates per
letter as main.py does, into `FirstLetterAbsorption`.
Why: absorption is an SAE's first-letter latent staying silent on a word whose residual still
carries the letter, because a more specific latent (one aligned with the letter's probe) fires in its
place. It is scored only when the probe reads >= 20 letters (SpellingProbes.criterion_met).

The SAE is any object with `encode(x [n, d]) -> codes [n, m]` and `W_dec [m, d]`; like SAEBench, the
score uses the codes and the decoder directions' cosine with the probe, not `b_dec`.
Differences from SAEBench: the absorption step reuses the test words' residuals from the probe
step (SAEBench re-runs the model on fresh prompts of the same format, with ICL examples drawn from
the whole vocabulary); the k-sparse loop stops at the first k without a jump (SAEBench fits every k
up to max_k, then applies the same rule, so the main latents are the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor

from helpers.analysis.spelling_probes import LETTERS, SpellingActivations, SpellingProbes, train_probe

MAX_K = 10  # eval_config.py max_k_value
F1_JUMP = 0.03  # eval_config.py f1_jump_threshold
K_SPARSE_L1 = 0.01  # eval_config.py k_sparse_probe_l1_decay
FULL_COS = 0.025  # feature_absorption.py FULL_ABSORPTION_PROBE_COS_THRESHOLD
FRACTION_COS = 0.1  # ABSORPTION_FRACTION_PROBE_COS_THRESHOLD
PROJ_SHARE = 0.4  # ABSORPTION_PROBE_PROJECTION_PROPORTION_THRESHOLD
MAX_ABSORBERS = 3  # ABSORPTION_FRACTION_MAX_ABSORBING_LATENTS
EPS = 1e-8  # feature_absorption_calculator.py: a main latent below this did not fire
WORD_COLUMNS = ["letter", "word", "absorption_fraction", "full_absorption", "top_latent"]


@torch.no_grad()
def sae_codes(sae, x: Tensor, batch: int = 4096) -> Tensor:
    """sae.encode over the rows of x [n, d], in batches, as float32 on the CPU [n, m]."""
    W = sae.W_dec
    return torch.cat([sae.encode(c.to(W.device, W.dtype)).float().cpu() for c in x.split(batch)])


def _f1(truth: np.ndarray, pred: np.ndarray) -> float:
    tp, fp, fn = (truth & pred).sum(), (~truth & pred).sum(), (truth & ~pred).sum()
    return float(2 * tp / (2 * tp + fp + fn)) if tp else 0.0


def k_sparse_main_latents(
    codes_train: Tensor,
    y_train: Tensor,
    codes_test: Tensor,
    y_test: Tensor,
    max_k: int = MAX_K,
    f1_jump: float = F1_JUMP,
    l1: float = K_SPARSE_L1,
    min_steps: int = 500,
    seed: int = 0,
) -> tuple[dict[int, list[int]], pd.DataFrame]:
    """({letter: main latents}, test F1 of the k-sparse probe [letter x k]) from SAE codes.

    k_sparse_probing.py: train_sparse_multi_probe (train_probe with batch 4096, 50 epochs, lr 1e-2,
    L2 1e-6, L1 0.01; but >= `min_steps` steps, see train_probe: SAEBench's whole vocabulary of SmolLM2,
    47,078 alphabetic tokens, gives 500 steps at batch 4096, where our 2,400 training words give 50)
    ranks latents by their weight for the letter (topk, not |w|: a latent must predict the letter);
    for each k, sklearn LogisticRegression(max_iter=500, class_weight="balanced") on those k latents'
    codes, scored by F1 of decision > 0 on the test split;
    add_feature_splits_to_metrics_df keeps k while F1 > best so far + f1_jump (k = 1 always).
    Letters without training words, or with only them, are skipped (no probe can be fit)."""
    W, _ = train_probe(
        codes_train,
        y_train,
        batch_size=4096,
        lr=1e-2,
        end_lr=1e-5,
        weight_decay=1e-6,
        l1=l1,
        min_steps=min_steps,
        seed=seed,
    )
    xtr, xte = codes_train.numpy(), codes_test.numpy()
    f1 = pd.DataFrame(np.nan, index=pd.Index(list(LETTERS), name="letter"), columns=range(1, max_k + 1))
    main: dict[int, list[int]] = {}
    for letter in range(len(LETTERS)):
        ytr, yte = (y_train == letter).numpy(), (y_test == letter).numpy()
        if ytr.all() or not ytr.any():
            continue
        best = -100.0
        for k in range(1, max_k + 1):
            ids = W[letter].topk(k).indices.numpy()
            clf = LogisticRegression(max_iter=500, class_weight="balanced").fit(xtr[:, ids], ytr)
            score = _f1(yte, clf.decision_function(xte[:, ids]) > 0)
            f1.iloc[letter, k - 1] = score
            if score <= best + f1_jump:
                break
            best, main[letter] = score, [int(i) for i in ids]
    return main, f1


@torch.no_grad()
def word_absorption(
    x: Tensor, codes: Tensor, W_dec: Tensor, direction: Tensor, main: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(absorption fraction [n], fully absorbed [n] bool, top-projecting latent [n]) of words whose
    residuals are x [n, d] and SAE codes [n, m], for one letter's probe `direction` [d] and main latents.

    feature_absorption_calculator.py calculate_absorption, with u the unit probe direction, cos_j the
    cosine of u with decoder row j, and latent j's probe projection p_j = code_j * cos_j:
    - fraction: A = x . u, M = sum of p_j over main latents, S = the sum of the (at most 3) largest
      positive p_j among other latents with cos_j >= 0.1. 0 if M >= A or S / A < 0.4; else 1 if M <= 0;
      else min(S, A - M) / (min(S, A - M) + M).
    - full: every main latent's code < 1e-8, and the latent of largest p_j has cos >= 0.025 and
      p_j / A >= 0.4, with A >= 0."""
    W = W_dec.float().cpu()
    u = direction.float().cpu() / direction.float().norm()
    cos = torch.nn.functional.cosine_similarity(u[None], W, dim=-1)  # [m]
    A = x.float() @ u  # [n]
    p = codes.float() * cos  # [n, m]
    idx = torch.tensor(main, dtype=torch.long)
    M = p[:, idx].sum(1)
    others = p.clone()
    others[:, idx] = 0
    others[:, cos < FRACTION_COS] = 0
    S = others.clamp(min=0).topk(min(MAX_ABSORBERS, p.shape[1]), dim=1).values.sum(1)
    absorbed = torch.minimum(S, A - M)
    frac = torch.where(M <= 0, torch.ones_like(A), (absorbed / (absorbed + M)).clamp(0, 1))
    frac = torch.where((M >= A) | (S / A < PROJ_SHARE), torch.zeros_like(A), frac)
    top = p.argmax(1)
    top_p = p.gather(1, top[:, None])[:, 0]
    full = (codes[:, idx] < EPS).all(1) & (cos[top] >= FULL_COS) & (A >= 0) & (top_p / A >= PROJ_SHARE)
    return frac.numpy(), full.numpy(), top.numpy()


@dataclass
class FirstLetterAbsorption:
    """An SAE's first-letter absorption, per letter and averaged as SAEBench main.py reports it."""

    table: pd.DataFrame
    """Index letter; columns f1_probe, main_latents, n_main, k_sparse_f1 (test F1 at the chosen k),
    n_probe_true_positives (test words of the letter the probe gets right: the words scored),
    n_full_absorption, full_absorption_rate, mean_absorption_fraction (sum of fractions / true
    positives) and scored (probe F1 > 0.6, main latents found and >= 1 true positive)."""
    f1_by_k: pd.DataFrame
    """Test F1 of the k-sparse probe, letter x k (NaN after the k where the jump rule stopped)."""
    words: pd.DataFrame
    """One row per scored word: letter, word, absorption_fraction, full_absorption, top_latent."""
    mean_absorption_fraction: float
    """Mean over scored letters of mean_absorption_fraction (SAEBench mean_absorption_fraction_score)."""
    mean_full_absorption: float
    """Mean over scored letters of full_absorption_rate (SAEBench mean_full_absorption_score)."""
    mean_num_split_features: float
    """Mean over scored letters of n_main (SAEBench mean_num_split_features)."""
    letters_scored: list[str]
    """The letters the means run over."""
    criterion_met: bool
    """The probe's criterion (>= 20 letters with F1 > 0.6); when False nothing was scored."""
    n_letters_ok: int = 0
    """Letters whose probe F1 exceeds 0.6."""
    layer: int = -1
    """The probe's layer."""
    extra: dict = field(default_factory=dict)
    """Settings used (max_k, f1_jump)."""

    @property
    def verdict(self) -> str:
        if self.table.empty:
            return (
                f"layer {self.layer}: absorption not scored: only {self.n_letters_ok}/26 letters reach probe "
                "F1 > 0.6 (SAEBench needs >= 20)."
            )
        t = self.table[self.table["scored"]]
        worst = t["mean_absorption_fraction"].sort_values(ascending=False).index[:3]
        n = t["n_probe_true_positives"]
        top = ", ".join(f"{k} {t.loc[k, 'mean_absorption_fraction']:.2f} of {n[k]} words" for k in worst)
        return (
            f"layer {self.layer}: mean absorption fraction {self.mean_absorption_fraction:.3f}, full "
            f"absorption rate {self.mean_full_absorption:.3f} over {len(self.letters_scored)} letters "
            f"(highest: {top}), {self.mean_num_split_features:.2f} main latents per letter"
            + ("." if self.criterion_met else f"; scored although only {self.n_letters_ok}/26 letters pass.")
        )


def first_letter_absorption(
    sae,
    probes: SpellingProbes,
    acts: SpellingActivations,
    max_k: int = MAX_K,
    f1_jump: float = F1_JUMP,
    seed: int = 0,
    require_criterion: bool = True,
) -> FirstLetterAbsorption:
    """SAEBench's absorption of `sae` on the words of `acts` (first_letter_probes at the SAE's layer).

    Main latents from `k_sparse_main_latents`; each letter's words scored are the test words of that
    letter whose probe logit is > 0 (feature_absorption.py get_stats_and_likely_false_negative_tokens);
    per letter, main.py's _aggregate_results_df divides the summed fractions and full-absorption
    count by their number. `require_criterion=False` scores even when the probe fails SAEBench's
    criterion (main.py stops there)."""
    extra = {"max_k": max_k, "f1_jump": f1_jump}
    if require_criterion and not probes.criterion_met:
        empty = pd.DataFrame()
        nan = float("nan")
        return FirstLetterAbsorption(
            empty, empty, empty, nan, nan, nan, [], False, probes.n_letters_ok, probes.layer, extra
        )
    c_train, c_test = sae_codes(sae, acts.x_train), sae_codes(sae, acts.x_test)
    main, f1_by_k = k_sparse_main_latents(
        c_train, acts.y_train, c_test, acts.y_test, max_k=max_k, f1_jump=f1_jump, seed=seed
    )
    logits = acts.x_test.float() @ probes.weight.T + probes.bias
    rows, word_rows = [], []
    for i, letter in enumerate(LETTERS):
        tp = (acts.y_test == i) & (logits[:, i] > 0)
        feats = main.get(i, [])
        row = {
            "letter": letter,
            "f1_probe": float(probes.f1["f1"].iloc[i]),
            "main_latents": feats,
            "n_main": len(feats),
            "k_sparse_f1": float(f1_by_k.iloc[i, len(feats) - 1]) if feats else float("nan"),
            "n_probe_true_positives": int(tp.sum()),
        }
        if feats and tp.any():
            frac, full, top = word_absorption(
                acts.x_test[tp], c_test[tp], sae.W_dec.detach(), probes.weight[i], feats
            )
            words = [w for w, keep in zip(acts.words_test, tp.tolist()) if keep]
            word_rows += [
                dict(zip(WORD_COLUMNS, (letter, w, float(f), bool(u), int(t))))
                for w, f, u, t in zip(words, frac, full, top)
            ]
            row.update(
                n_full_absorption=int(full.sum()),
                full_absorption_rate=float(full.sum() / len(full)),
                mean_absorption_fraction=float(frac.sum() / len(frac)),
            )
        rows.append(row)
    table = pd.DataFrame(rows).set_index("letter")
    table["scored"] = (
        (table["f1_probe"] > probes.min_f1) & (table["n_main"] > 0) & (table["n_probe_true_positives"] > 0)
    )
    s = table[table["scored"]]
    return FirstLetterAbsorption(
        table,
        f1_by_k,
        pd.DataFrame(word_rows, columns=WORD_COLUMNS),
        float(s["mean_absorption_fraction"].mean()),
        float(s["full_absorption_rate"].mean()),
        float(s["n_main"].mean()),
        list(s.index),
        probes.criterion_met,
        probes.n_letters_ok,
        probes.layer,
        extra,
    )


def summary(results: dict[str, FirstLetterAbsorption]) -> dict[str, dict[str, float]]:
    """The SAE fields of findings.FirstLetterFindings: per SAE label its mean absorption fraction and the
    median over scored letters of its k-sparse probe's test F1 (empty dicts where nothing was scored)."""
    scored = {k: r for k, r in results.items() if r.letters_scored}
    return {
        "absorption": {k: float(r.mean_absorption_fraction) for k, r in scored.items()},
        "k_sparse_f1": {
            k: float(r.table.loc[r.letters_scored, "k_sparse_f1"].median()) for k, r in scored.items()
        },
    }


SCORED_COLUMNS = ["f1_probe", "n_main", "k_sparse_f1", "n_probe_true_positives", "mean_absorption_fraction"]


def score_saes(
    saes: dict, probes: SpellingProbes, acts: SpellingActivations
) -> dict[str, FirstLetterAbsorption]:
    """{label: `first_letter_absorption`} for each SAE; {} where the probes miss SAEBench's criterion."""
    if not probes.criterion_met:
        return {}
    return {label: first_letter_absorption(sae, probes, acts) for label, sae in saes.items()}


def scored_table(res: FirstLetterAbsorption) -> pd.DataFrame:
    """The scored letters (columns) with the probe's F1, main latents, their k-sparse F1, the words scored
    and the absorption fraction (rows): what each SAE's score rests on."""
    return res.table.loc[res.letters_scored, SCORED_COLUMNS].T
