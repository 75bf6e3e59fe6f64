"""Which notebooks a run of the main job executes: make's rule, applied to notebooks.

A notebook runs again when its fingerprint differs from the one recorded when it last finished
(data/executed/<profile>/state.json), or when a file it wrote into the figures folder, or its
executed copy, is gone. The fingerprint has five parts, so a run can say why it reruns something:
  cells     the notebook's cells (type and source; outputs and metadata do not count),
  helpers   every code file under helpers/ (.py and the C kernels),
  profile   the profile's resolved fields (a .toml profile by what it resolves to),
  env       the versions of the libraries that compute results (torch, transformers, nnsight, ...),
  upstream  the fingerprints of the notebooks it reads (NEEDS).
So: nothing changed -> nothing runs; edit only notebook 06 -> only 06 runs (nothing reads 06); edit
helpers/ -> every notebook runs, and inside them the stores and SAEs whose request or config match are
read from disk, not recomputed (notebook 01 and the trainer print "reused" for each).
The JupyterLab screenshots are one more step ("lab"), which reads notebook 05.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from helpers.data.store import write_json_atomic
from helpers.paths import REPO_ROOT

# What each notebook reads from the ones before it (the README's "Start here" says the same in words):
# 01 writes the activation stores, 02 the SAEs, 03 the per-position statistics that 05's pages show.
NEEDS: dict[str, tuple[str, ...]] = {
    "01": (),
    "02": ("01",),
    "03": ("01", "02"),
    "04": ("01", "02"),
    "05": ("01", "02", "03"),
    "06": ("01", "02"),
    "07": ("01", "02"),
    "08": ("01", "02"),
    "09": ("01", "02"),
    "10": ("01", "02"),
    "lab": ("05",),
}
LIBRARIES = ("torch", "transformers", "nnsight", "numpy", "scikit-learn", "umap-learn", "scipy")
STATE_NAME = "state.json"
PARTS = ("cells", "helpers", "profile", "env", "upstream")
UPSTREAM_REASON = "a notebook it reads reran since"


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:16]


def cells_digest(notebook: Path) -> str:
    """The notebook's cells, type and source only (running a notebook changes neither)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    return _sha(json.dumps([(c["cell_type"], "".join(c["source"])) for c in cells]))


def helpers_digest(root: Path = REPO_ROOT / "helpers") -> str:
    """Every code file under helpers/, by relative path and content."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(root).rglob("*") if p.suffix in (".py", ".c") and p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def env_digest() -> str:
    """The versions of the libraries whose numbers end up in the results."""
    versions = []
    for lib in LIBRARIES:
        try:
            versions.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{lib}=absent")
    return _sha(";".join(versions))


def step_key(notebook: Path | str) -> str:
    """'02' for notebooks/02_train_saes.ipynb; 'lab' for the screenshots step."""
    name = Path(notebook).name
    return name if name == "lab" else name[:2]


@dataclass(frozen=True)
class Fingerprint:
    """The five parts a step's result depends on (module docstring)."""

    cells: str
    helpers: str
    profile: str
    env: str
    upstream: str

    @property
    def digest(self) -> str:
        return _sha(json.dumps(asdict(self), sort_keys=True))

    def changed(self, old: Fingerprint) -> list[str]:
        """The parts that differ from `old`, in PARTS order."""
        return [p for p in PARTS if getattr(self, p) != getattr(old, p)]


def fingerprints(steps: dict[str, Path | None], profile_fields: dict) -> dict[str, Fingerprint]:
    """{step key: Fingerprint} for the steps in data-flow order ({key: notebook path, or None for
    'lab'}); a step's upstream part chains the digests of the steps in NEEDS that are given."""
    shared = dict(
        helpers=helpers_digest(), profile=_sha(json.dumps(profile_fields, sort_keys=True)), env=env_digest()
    )
    out: dict[str, Fingerprint] = {}
    for key, path in steps.items():
        up = "+".join(out[n].digest for n in NEEDS.get(key, ()) if n in out)
        cells = cells_digest(path) if path is not None else "lab"
        out[key] = Fingerprint(cells=cells, upstream=_sha(up), **shared)
    return out


@dataclass
class StepRecord:
    """What state.json keeps of a step's last finished execution."""

    fingerprint: dict
    """Fingerprint fields when it finished."""
    seconds: float
    """Its wall time then."""
    outputs: list[str] = field(default_factory=list)
    """The files it wrote (figures, the executed copy), relative to the figures folder or absolute."""


class RunState:
    """data/executed/<profile>/state.json: one StepRecord per step, written after each step finishes
    (atomically: an interrupted run keeps every step recorded before it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        raw = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.steps = {k: StepRecord(**v) for k, v in raw.items()}

    def reason(self, key: str, fp: Fingerprint, figures: Path) -> str | None:
        """Why `key` must run (None: it is up to date)."""
        rec = self.steps.get(key)
        if rec is None:
            return "never finished here"
        changed = fp.changed(Fingerprint(**rec.fingerprint))
        if changed:
            words = {"upstream": UPSTREAM_REASON, "env": "library versions changed"}
            return "; ".join(words.get(p, f"{p} changed") for p in changed)
        missing = [o for o in rec.outputs if not (Path(figures) / o).exists()]
        if missing:
            return f"{len(missing)} of its outputs are gone ({Path(missing[0]).name}, ...)"
        return None

    def finished(self, key: str, fp: Fingerprint, seconds: float, outputs: list[str]) -> None:
        self.steps[key] = StepRecord(asdict(fp), round(seconds, 1), sorted(outputs))
        self._save()

    def forget(self, key: str) -> None:
        """Drop a step's record (it failed or was interrupted: it runs next time)."""
        if self.steps.pop(key, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {k: asdict(v) for k, v in self.steps.items()})


def to_run(
    steps: dict[str, Path | None],
    fps: dict[str, Fingerprint],
    state: RunState,
    figures: Path,
    only: set[str] | None = None,
    force: set[str] = frozenset(),
) -> dict[str, str | None]:
    """{step: why it runs, or None when it does not}, in data-flow order.

    A step runs when its own fingerprint or outputs say so, or when a step it reads runs (its upstream
    digest is then new): the reason names that step. `force`: steps that run whatever their state
    (`--only`, `--force`). `only`: when given, no step outside it runs (a user asking for 03 gets 03,
    even if 01 is stale)."""
    reasons: dict[str, str | None] = {}
    for key in steps:
        if only is not None and key not in only:
            reasons[key] = None
            continue
        why = "asked for" if key in force else state.reason(key, fps[key], figures)
        ups = [n for n in NEEDS.get(key, ()) if reasons.get(n)]
        if ups and why in (None, UPSTREAM_REASON):
            why = f"reads {', '.join(ups)}, which runs"
        reasons[key] = why
    return reasons
