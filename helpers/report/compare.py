"""Compare any two SAEs one-to-one, offline, and write a versioned report.

    python -m helpers.compare A B --out DIR      # A, B: SAE directories in any layout load_sae reads

What: decoder and encoder top-k cosine histograms (B's latents against A's), the Hungarian one-to-one
matching of decoder rows with the shared fraction at cos > 0.7 beside the lab's null model
(`helpers.analysis.similarity.null_shared_fraction`: B's decoder turned by a Haar-random rotation, same
geometry, no alignment), MMCS and the mean matched cosine, and every latent's match. Written as
DIR/compare.json (`schema_version`, both sources, the numbers under top-level keys, the matches),
DIR/compare.html and the PNGs it shows. The numbers are helpers.analysis.similarity's, as in notebook 04.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from helpers.analysis.similarity import (
    NULL_SEED,
    SHARED_COS,
    hungarian_match,
    null_shared_fraction,
    shared_fraction,
    topk_cosine,
)
from helpers.cli import run_cli
from helpers.report.plots import save_figure
from helpers.report.plots.matching_study import plot_topk_histograms
from helpers.sae import SAEError, load_sae

SCHEMA_VERSION = 1


@dataclass
class Comparison:
    """Everything compare.json holds besides the per-latent matches."""

    shared_fraction: float
    random_baseline_shared_fraction: float
    mmcs: float
    mean_matched_cos: float
    encoder_mmcs: float
    threshold: float
    seconds: float


def compare_saes(sae_a, sae_b, threshold: float = SHARED_COS, seed: int = NULL_SEED):
    """(Comparison, matches [(a, b, cos)], decoder top-k [n_B, 4], encoder top-k [n_B, 4])."""
    if sae_a.cfg.d_in != sae_b.cfg.d_in:
        raise SAEError(
            f"the SAEs read different widths (d_in {sae_a.cfg.d_in} vs {sae_b.cfg.d_in}); compare SAEs of "
            "the same model and hook"
        )
    t0 = time.perf_counter()
    A, B = sae_a.W_dec.detach().float(), sae_b.W_dec.detach().float()
    dec = topk_cosine(A, B, min(4, A.shape[0]))[0]
    enc = topk_cosine(sae_a.W_enc.detach().float().T, sae_b.W_enc.detach().float().T, min(4, A.shape[0]))[0]
    m = hungarian_match(A, B)
    res = Comparison(
        shared_fraction=shared_fraction(m.similarities, threshold),
        random_baseline_shared_fraction=null_shared_fraction(A, B, threshold, seed),
        mmcs=float(dec[:, 0].mean()),
        mean_matched_cos=float(m.similarities.mean()),
        encoder_mmcs=float(enc[:, 0].mean()),
        threshold=threshold,
        seconds=time.perf_counter() - t0,
    )
    rows_a, rows_b, sims = m
    matches = [(int(a), int(b), float(c)) for a, b, c in zip(rows_a, rows_b, sims)]
    return res, matches, dec.numpy(), enc.numpy()


def _describe(source: str, sae) -> dict:
    c = sae.cfg
    meta = {k: v for k, v in c.metadata.items() if isinstance(v, (str, int, float, bool)) or v is None}
    return {
        "source": str(source),
        "architecture": c.architecture,
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "k": c.k,
        "metadata": meta,
    }


def write_report(a: str, b: str, out: Path, threshold: float = SHARED_COS) -> dict:
    """Load both sources, compare them and write compare.json, compare.html and the PNGs under `out`."""
    sae_a, sae_b = load_sae(a), load_sae(b)
    res, matches, dec, enc = compare_saes(sae_a, sae_b, threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "schema_version": SCHEMA_VERSION,
        "a": _describe(a, sae_a),
        "b": _describe(b, sae_b),
        **asdict(res),
        "matches": [{"a": i, "b": j, "cos": round(c, 6)} for i, j, c in matches],
    }
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    figs = {
        "compare_decoder_topk": plot_topk_histograms(
            {"decoder": dec}, title="B's decoder rows: best cosines in A"
        ),
        "compare_encoder_topk": plot_topk_histograms(
            {"encoder": enc}, title="B's encoder columns: best cosines in A"
        ),
    }
    pngs = [save_figure(fig, name, out, formats=("png",))[0] for name, fig in figs.items()]
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
        for k, v in asdict(res).items()
        if k not in ("seconds",)
    )
    imgs = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in pngs
    )
    (out / "compare.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>compare</title><body style='font-family:sans-serif'>"
        f"<h2>A: {html.escape(str(a))}<br>B: {html.escape(str(b))}</h2>"
        f"<p>{len(matches)} one-to-one matches; shared = matched cosine &gt; {threshold:g}; "
        "the baseline turns "
        f"B's decoder by a random rotation.</p><table>{rows}</table>{imgs}</body>"
    )
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a", help="SAE directory (SAELens, dictionary_learning or sparsify layout)")
    p.add_argument("b", help="SAE directory to match into A")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threshold", type=float, default=SHARED_COS)
    a = p.parse_args(argv)
    r = write_report(a.a, a.b, a.out, a.threshold)
    print(
        f"shared {r['shared_fraction']:.1%} of latents one-to-one at cos > {r['threshold']:g} "
        "(random-rotation "
        f"baseline {r['random_baseline_shared_fraction']:.1%}); MMCS {r['mmcs']:.3f}, mean matched cos "
        f"{r['mean_matched_cos']:.3f}, encoder MMCS {r['encoder_mmcs']:.3f} ({r['seconds']:.1f} s) -> "
        f"{a.out / 'compare.json'}"
    )


if __name__ == "__main__":
    run_cli(main)
