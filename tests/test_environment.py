"""environment.yml (conda users) must list the same packages as pyproject.toml (pip users)."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = {_name(r) for r in project["dependencies"]}
    want |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    have = {_name(r) for r in pip}
    assert have == want, (
        f"only in pyproject: {sorted(want - have)}; only in environment.yml: {sorted(have - want)}"
    )


def test_torch_is_pinned_to_the_local_cpu_build_everywhere():
    env = (ROOT / "environment.yml").read_text()
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "torch==2.13.0" in env and "pip install torch==2.13.0" in setup
    assert setup.index("torch==2.13.0") < setup.index("install -e"), "torch must come first"
