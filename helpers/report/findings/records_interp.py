"""The typed records of notebook 10 (are the features interpretable?); see records.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from helpers.report.findings.base import Finding


def _by_dictionary(values: dict[str, float], fmt: str = ".2f") -> str:
    return ", ".join(f"{k} {v:{fmt}}" for k, v in values.items())


@dataclass(frozen=True)
class EmbeddingScoreFindings(Finding):
    key: ClassVar[str] = "embedding_score"
    notebook: ClassVar[str] = "10"
    encoder: str
    """The sentence-embedding model."""
    n_per_dictionary: dict[str, int]
    """{dictionary: directions scored} (drawn at random; a direction too rare to sample is left out)."""
    median_auroc: dict[str, float]
    """{dictionary: median over its directions of the AUROC of activating vs random excerpts}."""
    share_above: dict[str, float]
    """{dictionary: share of its directions with AUROC > 0.75}."""
    verdict: str
    """The base SAE pair's convergence verdict (notebook 02)."""

    def sentences(self) -> list[str]:
        n = _by_dictionary(self.n_per_dictionary, "d")
        return [
            f"**Embedding score** ({self.encoder}; activating vs random held-out excerpts by similarity to "
            f"the top ones, AUROC; directions per dictionary: {n}): median "
            f"{_by_dictionary(self.median_auroc)}; share above 0.75: "
            f"{_by_dictionary(self.share_above, '.0%')}. {self.verdict}"
        ]


@dataclass(frozen=True)
class LLMScoreFindings(Finding):
    key: ClassVar[str] = "llm_score"
    notebook: ClassVar[str] = "10"
    judge: str
    """The LLM that explained and judged."""
    n_per_dictionary: dict[str, int]
    """{dictionary: directions explained and scored}."""
    detection_auroc: dict[str, float]
    """{dictionary: median detection AUROC (activating vs random excerpts, unmarked)}."""
    fuzzing_auroc: dict[str, float]
    """{dictionary: median fuzzing AUROC (right vs wrong marks on activating excerpts)}."""
    check_detection: dict[str, float]
    """{token class: detection AUROC of the judge given the TRUE explanation of a pseudo-latent that fires
    exactly on that class}: what the judge can do at best."""
    check_fuzzing: dict[str, float]
    """The same for fuzzing."""
    examples: list[str]
    """A few explanations with their dictionary and detection / fuzzing AUROC."""
    verdict: str
    """The base SAE pair's convergence verdict (notebook 02)."""

    def sentences(self) -> list[str]:
        n = _by_dictionary(self.n_per_dictionary, "d")
        check = ", ".join(
            f"{c} {self.check_detection[c]:.2f} / {self.check_fuzzing[c]:.2f}" for c in self.check_detection
        )
        return [
            f"**LLM scores** (judge {self.judge}; directions per dictionary: {n}): median detection AUROC "
            f"{_by_dictionary(self.detection_auroc)}; fuzzing {_by_dictionary(self.fuzzing_auroc)}. The "
            f"judge given true explanations of token classes (detection / fuzzing AUROC): {check}; where "
            f"those are near 0.5 the judge, not the features, sets every score above. Examples: "
            + "; ".join(self.examples)
            + f". {self.verdict}"
        ]


@dataclass(frozen=True)
class ProbingFindings(Finding):
    key: ClassVar[str] = "sparse_probing"
    notebook: ClassVar[str] = "10"
    k: int
    """The probe size the sentence quotes."""
    accuracy: dict[str, dict[str, float]]
    """{task: {dictionary: mean test accuracy of a k-latent probe over the splits}}."""
    shuffled_max: dict[str, float]
    """{task: the highest mean accuracy any dictionary reaches with shuffled labels}."""
    test_rows: dict[str, int]
    """{task: balanced test rows per split}."""
    seeds: int
    """Splits averaged."""
    verdict: str
    """The base SAE pair's convergence verdict (notebook 02)."""

    def sentences(self) -> list[str]:
        tasks = "; ".join(
            f"{t}: {_by_dictionary(a)} (shuffled labels at most {self.shuffled_max[t]:.2f}, "
            f"{self.test_rows[t]} test rows)"
            for t, a in self.accuracy.items()
        )
        return [
            f"**Sparse probing** (k = {self.k}, test accuracy, mean of {self.seeds} splits): {tasks}. "
            f"{self.verdict}"
        ]
