"""Numbers the notebooks compute, kept for the README: findings are rendered from the run, never typed.

What: `record(profile, key, **values)` merges values into data/findings/<profile>.json (notebooks call
it beside the printed sentence); `render(findings, timings)` turns them into the README's
"What the offline run shows" block, and `update_readme(path, block)` replaces the text between the
README's markers. `scripts/write_findings.py` runs both at the end of `make reproduce`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from helpers.paths import data_dir
from helpers.precision import cpuinfo_field

START, END = (
    "<!-- findings:start (written by scripts/write_findings.py from the run) -->",
    "<!-- findings:end -->",
)


def _path(profile: str) -> Path:
    return data_dir() / "findings" / f"{profile}.json"


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def record(profile: str, key: str, **values: Any) -> None:
    """Merge {key: values} into the profile's findings file (atomic replace)."""
    path = _path(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = {**data.get(key, {}), **_plain(values)}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def load(profile: str) -> dict[str, dict[str, Any]]:
    path = _path(profile)
    if not path.exists():
        raise FileNotFoundError(f"no findings at {path}; run the notebooks first (make reproduce)")
    return json.loads(path.read_text())


def machine_summary(cpuinfo: str | None = None, n_cores: int | None = None) -> str:
    """'AMD EPYC, 2 cores, AVX512-BF16, no AMX': the CPU the run's numbers come from (/proc/cpuinfo)."""
    model = cpuinfo_field("model name", cpuinfo)
    flags = set(cpuinfo_field("flags", cpuinfo).split())
    n = n_cores if n_cores is not None else len(os.sched_getaffinity(0))
    bf16 = "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16"
    amx = "AMX-BF16" if "amx_bf16" in flags else "no AMX"
    return f"{model or 'unknown CPU'}, {n} cores, {bf16}, {amx}"


def render(
    f: dict[str, dict[str, Any]], timings: dict[str, float] | None = None, machine: str | None = None
) -> str:
    """The README block, sentence by sentence from the recorded numbers (missing keys are skipped)."""
    out = []
    t = timings or {}
    if t:
        parts = ", ".join(f"{k[:2]} {v / 60:.1f} min" for k, v in t.items() if k.endswith(".ipynb"))
        on = f" on {machine}" if machine else ""
        out.append(f"Notebook wall times of this run{on}: {parts} (total {t.get('total', 0) / 60:.1f} min).")
    if "collection" in f:
        c = f["collection"]
        out.append(
            f"- **Collection** ran at {c['tokens_per_s']:,.0f} tokens/s over {c['n_layers']} layers with "
            f"{c['precision']} matmuls ({c['tokens']:,} tokens on the main corpus)."
        )
    if "massive" in f:
        m = f["massive"]
        out.append(
            f"- **Massive tokens are not only the first.** At layer {m['layer']}, {m['count']} of "
            f"{m['n_tokens']:,} non-separator tokens exceed {m['ratio']:g}x the median norm (up to "
            f"{m['max_x_median']:.0f}x) and carry {m['variance_share']:.0%} of the variance about the mean; "
            f"most common: {m['top']}. SAEs train without them and FVU is reported without them."
        )
    if "convergence" in f:
        v = f["convergence"]
        out.append(f"- **Convergence.** {v['line']}")
    if "training" in f:
        tr = f["training"]
        out.append(
            f"- **SAEs** ({tr['n_saes']} of them, {tr['train_tokens']:,} tokens each, d_sae {tr['d_sae']}): "
            f"held-out FVU of the base SAE {tr['base_fvu']:.3f} without massive tokens "
            f"({tr['base_fvu_all']:.3f} "
            f"with them), median per-token relative error {tr['base_rel_err']:.3f}, dead "
            f"{tr['base_dead']:.1%}; "
            f"across SAEs FVU {tr['fvu_min']:.3f}-{tr['fvu_max']:.3f}, BatchTopK inference L0 "
            f"{tr['batchtopk_l0']:.1f} (k {tr['k']}), ReLU+L1 L0 {tr['relu_l0']:.1f}."
        )
    if "positions" in f:
        p = f["positions"]
        out.append(
            f"- **Position.** The first token's mean nonzero SAE activation is {p['first_ratio_max']:.0f}x "
            "the "
            f"rest at layer {p['first_ratio_layer']}; position features (corrected eta^2 >= 0.5) per layer: "
            f"{p['position_features']}."
        )
    if "factors" in f:
        fa = f["factors"]
        out.append(
            "- **Which factor changes features most** (Hungarian shared fraction on decoder rows at cos > "
            "0.7, "
            f"seed pairs as the noise floor at {fa['seed_floor']:.1%}): {fa['ranking']}."
        )
    if "cross_corpus" in f:
        cc = f["cross_corpus"]
        cells = "; ".join(f"{k} FVU {v['fvu']:.3f}, dCE {v['delta_ce']:+.3f}" for k, v in cc["cells"].items())
        better = "beats" if cc["fvu_in"] < cc["fvu_out"] else "does not beat"
        out.append(
            f"- **Cross-corpus.** In-domain {better} out-of-domain: mean held-out FVU {cc['fvu_in']:.3f} on "
            f"an SAE's own corpus against {cc['fvu_out']:.3f} on the other "
            f"({cc['fvu_out'] / cc['fvu_in']:.1f}x), "
            f"CE increase spliced in {cc['ce_in']:+.3f} against {cc['ce_out']:+.3f} nats ({cells})."
        )
    if "atlas" in f:
        a = f["atlas"]
        out.append(
            "- **Atlas.** The feature page's example latent (rule: found by both seeds at cos > 0.9, firing "
            "on "
            f"0.05-2% of tokens) is latent {a['example']} (match {a['match']:.2f}, density "
            f"{a['density']:.2%})."
            + (
                f" The second rule (top contexts over several tokens) adds latents "
                f"{', '.join(str(c) for c in a['context'])}."
                if a.get("context")
                else ""
            )
        )
    if "using_features" in f:
        u = f["using_features"]
        kinds = u.get("kinds", ["token"] * len(u["features"]))
        feats = ", ".join(
            f"{n} ({t!r}{', context' if k == 'context' else ''})"
            for n, t, k in zip(u["features"], u["tokens"], kinds)
        )
        lifts = ", ".join(f"{v:.1f}x" for v in u["effect_lift_a4"])
        kls = ", ".join(f"{v:.2f}" for v in u["kl_a4"])
        out.append(
            f"- **Using features** (latents {feats}, picked by rule): steering at 4x their typical "
            "activation "
            f"made the tokens it promotes {lifts} as probable on unseen text at KL {kls} nats/token; "
            f"their logit-lens tokens moved {', '.join(f'{v:.2f}x' for v in u['lens_lift_a4'])}. "
            "Zero-ablation "
            f"changed next-token loss by {', '.join(f'{v:+.3f}' for v in u['ablation_fired'])} nats where "
            f"each fired."
        )
        if "ablation_mean_fired" in u:
            out.append(
                "- **Ablations** where each latent fired (nats): zero "
                + ", ".join(f"{v:+.3f}" for v in u["ablation_fired"])
                + "; mean "
                + ", ".join(f"{v:+.3f}" for v in u["ablation_mean_fired"])
                + "; resample "
                + ", ".join(f"{v:+.3f}" for v in u["ablation_resample_fired"])
                + "."
            )
        if "caa" in u:
            c = u["caa"]
            out.append(
                f"- **CAA vs SAE steering.** The mean-difference vector between the corpora has best |cos| "
                f"{c['cos_best']:.2f} with an SAE decoder row (latent {c['latent']}). {c['sentence']}"
            )
        fv, pm = u["fvu"], u["proxy_median"]
        base = {k: v for k, v in fv.items() if k != "SAE"}
        out.append(
            f"- **SAE vs baselines** at {u['k']} terms per token (held-out FVU): SAE {fv['SAE']:.3f}; "
            + ", ".join(f"{k} {v:.3f}" for k, v in base.items())
            + f". Token-concentration proxy (median share of a direction's top-20 tokens on one token): SAE "
            f"{pm['SAE']:.0%}, "
            + ", ".join(f"{k} {v:.0%}" for k, v in pm.items() if k != "SAE")
            + f". ICA kept {u['n_ica']} components"
            + ("." if u["ica_converged"] else " and did not converge in its iteration budget.")
        )
    out += _dictionaries(f)
    return "\n".join(out)


def _dictionaries(f: dict[str, dict[str, Any]]) -> list[str]:
    """Notebook 07's sentences: the crosscoder, tied SAEs, width stitching."""
    out = []
    if "crosscoder" in f:
        c = f["crosscoder"]
        layers = ", ".join(f"L{k} {v:.1%}" for k, v in c["shared"].items())
        fvu = ", ".join(f"L{k} {c['fvu_cc'][k]:.3f} vs {c['fvu_sae'][k]:.3f}" for k in c["fvu_cc"])
        alone = ", ".join(f"{k} {v:.0%}" for k, v in c["one_layer"].items())
        out.append(
            f"- **Crosscoder** over layers {', '.join(map(str, c['layers']))} ({c['n_live']} of {c['d_sae']} "
            f"latents live): {c['spans']:.0%} span layers (no layer holds 70% of the decoder norm); {alone}. "
            f"Shared one-to-one with the per-layer SAEs at cos > 0.7: {layers} (random directions "
            f"{c['random_shared']:.1%}). FVU per layer, crosscoder vs per-layer SAE, at L0 "
            f"{c['l0_cc']:.0f} vs {c['l0_sae']:.0f} in total: {fvu}. {c['verdict']}"
        )
    if "tied" in f:
        t = f["tied"]
        rows = "; ".join(
            f"{name}: FVU {r['held-out FVU']:.3f}, L0 {r['L0']:.1f}, "
            f"enc/dec cos {r['median enc/dec cos']:.2f}"
            + (
                f", seed-pair shared {r['seed-pair shared']:.1%}"
                if not math.isnan(r["seed-pair shared"])
                else ""
            )
            for name, r in t["table"].items()
        )
        out.append(
            f"- **Tied vs untied** (held-out, main layer): {rows} (random-direction baseline "
            f"{t['random_shared']:.1%}). Tied pair: {t['verdict']}"
        )
    if "stitching" in f:
        s = f["stitching"]["fractions"]
        r = f["stitching"]["random"]
        out.append(
            f"- **Width stitching** (base SAE against the half-width one, {f['stitching']['n_live']} live "
            f"latents): {s['identical']:.0%} identical, {s['split']:.0%} split, {s['novel']:.0%} novel, "
            f"i.e. {s['identical'] + s['split']:.0%}/{s['novel']:.0%} against the published 65/35 (random "
            f"directions: {r['novel']:.0%} novel)."
        )
    return out


def update_readme(readme: str | Path, block: str) -> None:
    """Replace the text between the README's findings markers with `block`."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no findings markers; add the lines {START!r} and {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{block}\n{END}{tail}")
