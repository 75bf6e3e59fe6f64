"""Did the SAEs converge? Seed agreement and drift from initialisation along a run.

What: `drift_from_init(W_dec, W_init)` (median cosine of each trained decoder row to its own
initial direction), `convergence_curve(dir_a, dir_b)` (two seeds trained on the same data in the
same order, matched at every decoder snapshot the trainer saved: Hungarian shared fraction at
cos > 0.7, median top-1 cosine, and each SAE's drift), and `certify(...)` -> `Verdict`, the
one line notebooks print beside any conclusion drawn from the SAEs.
Why: an SAE that has not forgotten its random start "shares" features with any SAE that started
from the same decoder, and shares almost none with another seed. Matching, UMAP and feature pages
mean something only once two seeds agree (Paulo & Belrose 2025 call a latent shared at
cos > 0.7; the reference post's decoder top-1 across seeds peaks near 0.92 on GPT-2).
The trainer saves W_dec at 0 tokens (the init) and at `TrainConfig.snapshot_tokens` under
<sae dir>/snapshots/ (helpers.training.run_dir.load_snapshot reads them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from helpers.analysis.similarity import SHARED_COS, hungarian_match, shared_fraction, topk_cosine
from helpers.sae import load_sae
from helpers.training.experiments import SAERun, sae_path
from helpers.training.run_dir import load_snapshot, snapshot_tokens


def row_cosines(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """[n] cosine of row i of A with row i of B."""
    A, B = A.detach().float(), B.detach().float()
    return ((A * B).sum(1) / (A.norm(dim=1) * B.norm(dim=1)).clamp_min(1e-12)).numpy()


def drift_from_init(W_dec: torch.Tensor, W_init: torch.Tensor) -> float:
    """Median over latents of cos(trained row, its initial row): ~1 = not moved, ~0 = forgotten
    (two random directions in d dims have |cos| ~ 1/sqrt(d))."""
    return float(np.median(row_cosines(W_dec, W_init)))


def drift(run: SAERun, sae_root: Path) -> float:
    """`drift_from_init` of a planned SAE: its trained decoder against the trainer's snapshot at 0 tokens."""
    path = sae_path(sae_root, run)
    return drift_from_init(load_sae(path).W_dec, load_snapshot(path, 0))


@dataclass
class CurvePoint:
    tokens: int
    shared_fraction: float  # Hungarian one-to-one on decoder rows, share of pairs with cos > threshold
    median_top1: float  # median over B's latents of the best cosine to any latent of A
    drift_a: float  # median cos to init of A (and B)
    drift_b: float


def convergence_curve(
    dir_a: str | Path, dir_b: str | Path, threshold: float = SHARED_COS
) -> list[CurvePoint]:
    """Seed agreement of two SAEs at every snapshot both have (trained together on one stream)."""
    common = sorted(set(snapshot_tokens(dir_a)) & set(snapshot_tokens(dir_b)))
    if 0 not in common:
        raise FileNotFoundError(
            f"{dir_a} and {dir_b} share no initial-decoder snapshot; train them with "
            "TrainConfig.snapshot_tokens set"
        )
    init_a, init_b = load_snapshot(dir_a, 0), load_snapshot(dir_b, 0)
    out = []
    for t in common:
        A, B = load_snapshot(dir_a, t), load_snapshot(dir_b, t)
        match = hungarian_match(A, B)
        top1 = topk_cosine(A, B, 1)[0][:, 0].numpy()
        out.append(
            CurvePoint(
                t,
                shared_fraction(match.similarities, threshold),
                float(np.median(top1)),
                drift_from_init(A, init_a),
                drift_from_init(B, init_b),
            )
        )
    return out


@dataclass(frozen=True)
class Criteria:
    """What 'converged' means here: the seed pair shares >= 30% of latents one-to-one at
    cos > 0.7 with median top-1 >= 0.7, and every SAE's decoder has left its start (median cos to
    init <= 0.3)."""

    min_shared: float = 0.30
    min_median_top1: float = 0.70
    max_drift: float = 0.30


@dataclass
class Verdict:
    converged: bool
    shared_fraction: float
    median_top1: float
    worst_drift: float
    worst_drift_sae: str
    tokens: int
    criteria: Criteria = field(default_factory=Criteria)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        c = self.criteria
        head = "CONVERGED" if self.converged else "NOT CONVERGED"
        facts = (
            f"seed pair after {self.tokens:,} tokens shares {self.shared_fraction:.1%} of latents "
            f"(need >= {c.min_shared:.0%}), median top-1 cos {self.median_top1:.2f} (need >= "
            f"{c.min_median_top1:.2f}); largest drift-to-init median cos {self.worst_drift:.2f} "
            f"({self.worst_drift_sae}; need <= {c.max_drift:.2f})"
        )
        tail = (
            "" if self.converged else " -- read every match below as provisional: " + "; ".join(self.failures)
        )
        return f"Convergence verdict: {head}: {facts}{tail}"

    def to_dict(self) -> dict:
        return asdict(self)


def certify(curve: list[CurvePoint], drifts: dict[str, float], criteria: Criteria | None = None) -> Verdict:
    """Verdict from the seed pair's final curve point and every SAE's drift {name: median cos to init},
    against `criteria` (default: Criteria())."""
    criteria = criteria or Criteria()
    if not curve or not drifts:
        raise ValueError("certify needs a non-empty convergence curve and at least one SAE's drift")
    last = curve[-1]
    worst = max(drifts, key=drifts.get)
    fails = []
    if last.shared_fraction < criteria.min_shared:
        fails.append(f"seed-shared {last.shared_fraction:.1%} < {criteria.min_shared:.0%}")
    if last.median_top1 < criteria.min_median_top1:
        fails.append(f"median top-1 {last.median_top1:.2f} < {criteria.min_median_top1:.2f}")
    if drifts[worst] > criteria.max_drift:
        n_bad = sum(v > criteria.max_drift for v in drifts.values())
        fails.append(f"{n_bad} SAE(s) still within cos {criteria.max_drift:.2f} of their init")
    return Verdict(
        not fails, last.shared_fraction, last.median_top1, drifts[worst], worst, last.tokens, criteria, fails
    )


CERTIFICATE = "convergence.json"


def save_certificate(
    sae_root: str | Path,
    curve: list[CurvePoint],
    drifts: dict[str, float],
    verdict: Verdict,
    pair: tuple[str, str],
) -> Path:
    """<sae_root>/convergence.json: the seed pair's curve, every SAE's drift and the verdict
    (notebook 02 writes it; notebooks 04-05 print its verdict beside their conclusions)."""
    import json

    path = Path(sae_root) / CERTIFICATE
    path.write_text(
        json.dumps(
            {
                "pair": list(pair),
                "curve": [asdict(p) for p in curve],
                "drifts": drifts,
                "verdict": verdict.to_dict(),
                "line": verdict.line(),
            },
            indent=1,
        )
    )
    return path


def load_certificate(sae_root: str | Path) -> dict:
    """The dict `save_certificate` wrote; "line" is the verdict to print."""
    import json

    path = Path(sae_root) / CERTIFICATE
    if not path.exists():
        raise FileNotFoundError(f"no convergence certificate at {path}; run notebook 02 first")
    return json.loads(path.read_text())


def pair_verdict(a: SAERun, b: SAERun, sae_root: str | Path, criteria: Criteria | None = None) -> Verdict:
    """The verdict of any seed pair trained together on one stream (the crosscoder's, the tied SAEs'
    in notebook 07): its own curve's last point and both SAEs' drift, by the same criteria."""
    curve = convergence_curve(sae_path(sae_root, a), sae_path(sae_root, b))
    return certify(curve, {r.name: drift(r, sae_root) for r in (a, b)}, criteria)
