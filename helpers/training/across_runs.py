"""Notebook 09's SAEs: a seed pair on the second model, and one SAE per hook point of the main layer.

- The second model (Profile.second_model) runs as a profile of its own, `second_profile`: same corpus,
  sequence length, width factor, k, lr and training tokens as the first model's base SAE, one layer (the
  one most CKA-similar to the first model's main layer, chosen in notebook 09), its own store and SAE
  folders (data/activations/<profile>.<model>/, data/saes/<profile>.<model>/). Its seed pair gives its
  own convergence verdict and the noise floor of cross-model matching.
- Hook points (`hook_runs`): the base SAE's configuration (TopK, width expansion_factor x d_model, k)
  on attn_out, mlp_out and the MLP hidden activation of the main layer, one seed each, for
  `hook_train_tokens` (default half the base SAE's: they get no convergence verdict of their own, and
  the budget of notebook 09 is ~10 min on a Zen 3); the MLP hidden SAE keeps the same number of latents
  (2,304 on the offline profile) over its wider input.
"""

from __future__ import annotations

import re
from dataclasses import replace

from helpers.profiles import Profile
from helpers.training.experiments import SAERun, base_run

HOOK_SEED = 50  # hook-point SAEs: 50, 51, 52 (the grid's seeds are 0-10, the layers' 100+)


def second_profile(profile: Profile, layer: int) -> Profile:
    """The second model as a profile: its `layer`, the main corpus, `second_tokens` collected there, and
    the first model's SAE settings (lr; width factor, k and training tokens where `second_expansion_factor`,
    `second_k`, `second_train_tokens` are not set)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", profile.second_model).strip("-")[-60:]
    main = profile.main_corpus
    return replace(
        profile,
        name=f"{profile.name}.{slug}",
        model=profile.second_model,
        corpora=(main,),
        corpus_sources=tuple((c, s) for c, s in profile.corpus_sources if c == main),
        layers=(layer,),
        main_layer=layer,
        tokens_main=profile.second_tokens,
        expansion_factor=profile.second_expansion_factor or profile.expansion_factor,
        k=profile.second_k or profile.k,
        train_tokens=profile.second_train_tokens or profile.train_tokens,
        sae_sources=(),
        crosscoder_layers=(),
    )


def hook_runs(profile: Profile, d_model: int) -> dict[str, SAERun]:
    """{hook kind: SAERun} on the main layer and corpus, the base SAE's width and k, one seed each."""
    base = base_run(profile, d_model)
    hook_tokens = profile.hook_train_tokens or profile.train_tokens // 2
    return {
        kind: replace(base, hook=kind, seed=HOOK_SEED + i, tokens=hook_tokens)
        for i, kind in enumerate(profile.hook_kinds)
    }
