"""Numbers the notebooks compute, kept for the README as typed records: findings are rendered from the
run, never typed in.

What: each notebook builds a record per finding (helpers.report.findings.records: `CollectionFindings`,
`TrainingFindings`, ...; each holds its own sentence templates) and `record(profile, rec)` stores it in
data/findings/<profile>.json under the record's key, with its type name (atomic replace: an
interrupted write leaves the previous file). `load(profile)` gives the typed records back;
`render(records, timings, machine)` composes the README's "What the offline run shows" block from the
records' own sentences, and `update_readme(path, block)` replaces the text between the README's
markers. `scripts/write_findings.py` runs both at the end of `make reproduce`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from helpers.paths import data_dir
from helpers.precision import cpuinfo_field
from helpers.report.findings.base import Finding, from_values
from helpers.report.findings.records import (  # noqa: F401  (the record types, re-exported for the notebooks)
    RECORD_TYPES,
    CollectionFindings,
    ConvergenceFindings,
    CorpusCell,
    CrossCorpusFindings,
    FactorFindings,
    MassiveFindings,
    PositionFindings,
    TrainingFindings,
)
from helpers.report.findings.records_across import (  # noqa: F401
    CrossModelFindings,
    HookPointFindings,
    LayerCKAFindings,
)
from helpers.report.findings.records_features import (  # noqa: F401
    AtlasFindings,
    CaaComparison,
    CrosscoderFindings,
    StitchingFindings,
    TiedFindings,
    TiedRow,
    UsingFeaturesFindings,
)
from helpers.report.findings.records_hierarchy import (  # noqa: F401
    FirstLetterFindings,
    MatryoshkaFindings,
    ToyAbsorptionFindings,
)
from helpers.report.findings.records_interp import (  # noqa: F401
    EmbeddingScoreFindings,
    LLMScoreFindings,
    ProbingFindings,
)

START, END = (
    "<!-- findings:start (written by scripts/write_findings.py from the run) -->",
    "<!-- findings:end -->",
)
_BY_NAME = {t.__name__: t for t in RECORD_TYPES}
_BY_KEY = {t.key: t for t in RECORD_TYPES}


def from_json(key: str, entry: dict, where: str = "") -> Finding:
    """The typed record of a findings-file entry {"type": name, "values": {...}}; fails loudly, naming
    the entry and the notebook to rerun."""
    nb = _BY_KEY[key].notebook if key in _BY_KEY else "?"
    where = f"{where}findings {key!r}"
    if not isinstance(entry, dict) or "type" not in entry or "values" not in entry:
        raise ValueError(f"{where} is not a typed record (an older run's?); rerun notebook {nb}")
    cls = _BY_NAME.get(entry["type"])
    if cls is None or cls.key != key:
        raise ValueError(f"{where}: unknown record type {entry['type']!r}; rerun notebook {nb}")
    return from_values(cls, entry["values"], where)


def _path(profile: str) -> Path:
    return data_dir() / "findings" / f"{profile}.json"


def record(profile: str, rec: Finding) -> None:
    """Store `rec` under its key in the profile's findings file, replacing that key's previous record
    (the file is rewritten atomically: a temporary file in the same folder, then os.replace)."""
    if not isinstance(rec, Finding):
        raise TypeError(
            f"record() takes a findings record such as CollectionFindings(...), not {type(rec).__name__}"
        )
    path = _path(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[rec.key] = rec.to_json()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(profile: str) -> dict[str, Finding]:
    """{key: typed record} of the profile's findings file, in the README's order."""
    path = _path(profile)
    if not path.exists():
        raise FileNotFoundError(f"no findings at {path}; run the notebooks first (make reproduce)")
    data = json.loads(path.read_text())
    recs = {key: from_json(key, entry, f"{path}: ") for key, entry in data.items()}
    order = {t.key: i for i, t in enumerate(RECORD_TYPES)}
    return dict(sorted(recs.items(), key=lambda kv: order.get(kv[0], len(order))))


def machine_summary(cpuinfo: str | None = None, n_cores: int | None = None) -> str:
    """'AMD EPYC, 2 cores, AVX512-BF16, no AMX': the CPU the run's numbers come from (/proc/cpuinfo)."""
    model = cpuinfo_field("model name", cpuinfo)
    flags = set(cpuinfo_field("flags", cpuinfo).split())
    n = n_cores if n_cores is not None else len(os.sched_getaffinity(0))
    bf16 = "AVX512-BF16" if "avx512_bf16" in flags else "no AVX512-BF16"
    amx = "AMX-BF16" if "amx_bf16" in flags else "no AMX"
    return f"{model or 'unknown CPU'}, {n} cores, {bf16}, {amx}"


def render(
    records: Mapping[str, Finding] | Iterable[Finding],
    timings: dict[str, float] | None = None,
    machine: str | None = None,
) -> str:
    """The README block: the timing line, then each record's own sentences as bullets, in the README's
    order (findings not recorded are left out)."""
    recs = list(records.values() if isinstance(records, Mapping) else records)
    order = {t: i for i, t in enumerate(RECORD_TYPES)}
    recs.sort(key=lambda r: order.get(type(r), len(order)))
    out = []
    t = timings or {}
    if t:
        parts = ", ".join(f"{k[:2]} {v / 60:.1f} min" for k, v in t.items() if k.endswith(".ipynb"))
        on = f" on {machine}" if machine else ""
        out.append(f"Notebook wall times of this run{on}: {parts} (total {t.get('total', 0) / 60:.1f} min).")
    out += [f"- {s}" for r in recs for s in r.sentences()]
    return "\n".join(out)


def update_readme(readme: str | Path, block: str) -> None:
    """Replace the text between the README's findings markers with `block`."""
    readme = Path(readme)
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no findings markers; add the lines {START!r} and {END!r}")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{block}\n{END}{tail}")
