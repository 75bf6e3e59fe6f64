"""SAEs written by the peer libraries themselves load here with the same encode, to 1e-5 relative.

For each peer (benchmarks/peer_venvs.py: its own venv, torch==2.13.0 first), a snippet run with that
venv's python builds small SAEs with the library's own code and saves them with its own writer:
- dictionary_learning 0.1.0: `trainSAE` (30 steps on random data, normalize_activations=True, so the
  saved biases are rescaled as in real runs) for AutoEncoder (April-update trainer), AutoEncoderTopK,
  BatchTopKSAE, JumpReluAutoEncoder and MatryoshkaBatchTopKSAE; every parameter then moved off its
  start (30 steps leave b_dec and thresholds near it), saved as trainSAE does (torch.save of the state
  dict) and loaded back with each class's default `from_pretrained`;
- eai-sparsify: `SparseCoder(...).save_to_disk` (the writer its trainer uses), reloaded with
  `SparseCoder.load_from_disk`;
- SAELens: StandardSAE, TopKSAE and JumpReLUSAE with `save_model`, and a MatryoshkaBatchTopKTrainingSAE with
  `save_inference_model` (how SAELens saves its trained Matryoshka SAEs: a JumpReLU export), reloaded
  with `SAE.load_from_disk`; and the other way, SAEs saved here (`write_ours`: relu, topk, jumprelu,
  matryoshka_batchtopk) read by SAELens's `SAE.load_from_disk`, its encode against ours;
  and the pre-v6 gpt2-small-res-jb layout that the CI hub fixture writes (tests/hub_fixture.py), read
  with SAELens's own `SAE.load_from_disk`, so the fixture's layout is SAELens's, not a guess.
Parameters are perturbed off their initialisation so that encode is not trivial. The snippet
records 1,000 random inputs and the library's own `encode` of them; then this lab's
`helpers.sae.load_sae` reads each directory and encodes the same inputs.

    python benchmarks/check_peer_formats.py                      # check, print the table
    python benchmarks/check_peer_formats.py --fixtures tests/fixtures/peer_saes   # and refresh the
        # CI fixtures (the same directories with 200 of the inputs and their codes)

Exits 1 if any SAE differs by more than 1e-5 relative (||ours - theirs|| / ||theirs||).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from peer_venvs import PEERS, ensure_venv

from helpers.sae import SAEConfig, get_sae_class, load_sae, make_sae, save_sae

TOL = 1e-5
N_FIXTURE = 200

COMMON = r"""
import json, shutil, sys
from pathlib import Path
import numpy as np
import torch
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
D, M, K = 16, 64, 4
X = torch.randn(1000, D, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
def record(path, codes):
    np.savez_compressed(Path(path) / "reference.npz", x=X.numpy(), codes=codes.detach().float().numpy())
def perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
"""

SNIPPETS = {
    "dictlearn": COMMON
    + r"""
from dictionary_learning.training import trainSAE
from dictionary_learning.dictionary import AutoEncoder, JumpReluAutoEncoder
from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate
from dictionary_learning.trainers.top_k import TopKTrainer, AutoEncoderTopK
from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer, BatchTopKSAE
from dictionary_learning.trainers.jumprelu import JumpReluTrainer
from dictionary_learning.trainers.matryoshka_batch_top_k import (
    MatryoshkaBatchTopKSAE,
    MatryoshkaBatchTopKTrainer,
)
STEPS = 30
g = torch.Generator().manual_seed(0)
data = iter([torch.randn(256, D, generator=g) * 3 + 0.5 for _ in range(STEPS + 2)])
base = dict(steps=STEPS, activation_dim=D, dict_size=M, layer=3, lm_name="toy", device="cpu", warmup_steps=2)
configs = [
    dict(base, trainer=StandardTrainerAprilUpdate, dict_class=AutoEncoder, lr=1e-2, sparsity_warmup_steps=2),
    dict(base, trainer=TopKTrainer, dict_class=AutoEncoderTopK, k=K, lr=1e-2, threshold_start_step=5),
    dict(base, trainer=BatchTopKTrainer, dict_class=BatchTopKSAE, k=K, lr=1e-2, threshold_start_step=5),
    dict(base, trainer=JumpReluTrainer, dict_class=JumpReluAutoEncoder, lr=1e-2, sparsity_warmup_steps=2),
    dict(base, trainer=MatryoshkaBatchTopKTrainer, dict_class=MatryoshkaBatchTopKSAE, k=K, lr=1e-2,
         group_fractions=[1 / 8, 3 / 8, 1 / 2], threshold_start_step=5),
]
trainSAE(data, configs, steps=STEPS, save_dir=str(out / "run"), device="cpu", normalize_activations=True)
for i, (name, cls) in enumerate([("standard", AutoEncoder), ("topk", AutoEncoderTopK),
                                 ("batchtopk", BatchTopKSAE), ("jumprelu", JumpReluAutoEncoder),
                                 ("matryoshka", MatryoshkaBatchTopKSAE)]):
    src = out / "run" / f"trainer_{i}"
    dst = out / f"dictlearn_{name}"
    shutil.copytree(src, dst)
    # 30 steps leave b_dec and the thresholds near their start: move every parameter (and, for the
    # standard SAE, the decoder norms that from_pretrained renormalises) so that each one matters
    kw = {"normalize_decoder": False} if cls is AutoEncoder else {}
    ae = cls.from_pretrained(str(dst / "ae.pt"), **kw)
    perturb(ae, i)
    with torch.no_grad():
        if cls is AutoEncoder:
            ae.decoder.weight.mul_(torch.rand(M, generator=torch.Generator().manual_seed(9)) + 0.5)
        if cls in (BatchTopKSAE, MatryoshkaBatchTopKSAE):
            ae.threshold.fill_(1.0)
        if cls is JumpReluAutoEncoder:
            ae.threshold.copy_(torch.rand(M, generator=torch.Generator().manual_seed(9)))
    torch.save(ae.state_dict(), dst / "ae.pt")  # the library's own state dict, as trainSAE saves it
    ae = cls.from_pretrained(str(dst / "ae.pt"))  # and its default way back
    with torch.no_grad():
        record(dst, ae.encode(X))
    print("wrote", dst)
""",
    "sparsify": COMMON
    + r"""
from sparsify import SparseCoder, SparseCoderConfig
sae = SparseCoder(D, SparseCoderConfig(num_latents=M, k=K), device="cpu")
perturb(sae, 0)
dst = out / "sparsify_topk" / "layers.3"
sae.save_to_disk(dst)
back = SparseCoder.load_from_disk(dst)
with torch.no_grad():
    enc = back.encode(X)
    codes = torch.zeros(len(X), M).scatter_(1, enc.top_indices, enc.top_acts)
record(dst, codes)
print("wrote", dst)
""",
    "saelens": COMMON
    + r"""
from sae_lens import SAE, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
made = {
    "standard": StandardSAE(StandardSAEConfig(d_in=D, d_sae=M)),
    "topk": TopKSAE(TopKSAEConfig(d_in=D, d_sae=M, k=K)),
    "jumprelu": JumpReLUSAE(JumpReLUSAEConfig(d_in=D, d_sae=M)),
}
for i, (name, sae) in enumerate(made.items()):
    torch.manual_seed(i)
    with torch.no_grad():
        for n, p in sae.named_parameters():
            p.copy_(torch.randn_like(p) * (0.02 if n == "threshold" else 0.3))
        if name == "jumprelu":
            sae.threshold.abs_()
    dst = out / f"saelens_{name}"
    sae.save_model(str(dst))
    back = SAE.load_from_disk(str(dst))
    with torch.no_grad():
        record(dst, back.encode(X))
    print("wrote", dst)
from sae_lens.saes.matryoshka_batchtopk_sae import (
    MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig,
)
# a trained Matryoshka BatchTopK SAE as SAELens saves it: save_inference_model (a JumpReLU export)
mat = MatryoshkaBatchTopKTrainingSAE(
    MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=M, k=K, matryoshka_widths=[8, 24, M])
)
torch.manual_seed(7)
with torch.no_grad():
    for n, p in mat.named_parameters():
        p.copy_(torch.randn_like(p) * 0.3)
    mat.topk_threshold.fill_(0.4)
dst = out / "saelens_matryoshka_batchtopk"
mat.save_inference_model(str(dst))
back = SAE.load_from_disk(str(dst))
with torch.no_grad():
    record(dst, back.encode(X))
print("wrote", dst, "read back as", type(back).__name__)
# SAEs saved by this lab (benchmarks/check_peer_formats.py `write_ours`), read by SAELens's own loader
for d in sorted((out / "ours").glob("*")):
    ref = np.load(d / "ours.npz")
    back = SAE.load_from_disk(str(d))
    with torch.no_grad():
        codes = back.encode(torch.from_numpy(ref["x"]))
    np.savez_compressed(d / "saelens_read.npz", codes=codes.float().numpy())
    print("read", d, "as", type(back).__name__)
jb = out / "saelens_pre6_jb_layout"  # the CI hub fixture's gpt2-small-res-jb folder (copied in by main)
if jb.exists():
    back = SAE.load_from_disk(str(jb))
    X = torch.randn(1000, back.cfg.d_in, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        record(jb, back.encode(X))
    print("read", jb, "as", type(back).__name__, back.cfg.metadata.hook_name)
""",
}


def copy_jb_fixture(out: Path) -> None:
    """One layer of tests/hub_fixture.py's SAE repo (the release's pre-v6 flat cfg.json layout, written
    by hand for CI) into `out`, so that SAELens's own loader is the judge of that layout."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from hub_fixture import JB_REPO, REV, build_hub_cache

    with tempfile.TemporaryDirectory() as tmp:
        build_hub_cache(Path(tmp))
        repo = Path(tmp) / "hub" / f"models--{JB_REPO.replace('/', '--')}" / "snapshots" / REV
        shutil.copytree(repo / "blocks.2.hook_resid_pre", out / "saelens_pre6_jb_layout")


OURS = ("relu", "topk", "jumprelu", "matryoshka_batchtopk")  # saved here, read by SAELens (`write_ours`)


def write_ours(out: Path) -> None:
    """SAEs saved by this lab's `save_sae` (parameters moved off their start), with 1,000 inputs and
    our encode of them, for SAELens's `SAE.load_from_disk` to read (the other direction)."""
    x = torch.randn(1000, 16, generator=torch.Generator().manual_seed(5)) * 3
    for i, arch in enumerate(OURS):
        sae = make_sae(SAEConfig(arch, 16, 64, k=4 if get_sae_class(arch).uses_k else None), seed=i)
        g = torch.Generator().manual_seed(50 + i)
        with torch.no_grad():
            for p in sae.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            if arch == "jumprelu":
                sae.set_threshold(torch.rand(64, generator=g) * 0.5)
            if arch == "matryoshka_batchtopk":
                sae.topk_threshold.fill_(0.4)
                sae.set_widths((8, 24, 64))
            codes = sae.encode(x)
        save_sae(sae, out / "ours" / arch)
        np.savez_compressed(out / "ours" / arch / "ours.npz", x=x.numpy(), codes=codes.numpy())


def check_ours(out: Path) -> list[tuple[str, str, float, float]]:
    """(directory, architecture, relative error, max abs error) of SAELens's encode of our files."""
    rows = []
    for d in sorted((out / "ours").glob("*")):
        ours, theirs = np.load(d / "ours.npz")["codes"], np.load(d / "saelens_read.npz")["codes"]
        rel = float(np.linalg.norm(theirs - ours) / max(np.linalg.norm(ours), 1e-12))
        rows.append((f"{d.relative_to(out)} -> SAELens", d.name, rel, float(np.abs(theirs - ours).max())))
    return rows


def run_peer(name: str, out: Path) -> None:
    py = ensure_venv(name, PEERS[name])
    script = out / f"_{name}.py"
    script.write_text(SNIPPETS[name])
    res = subprocess.run([str(py), str(script), str(out)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{name} snippet failed:\n{res.stderr[-3000:]}")


def sae_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("reference.npz"))


def check(d: Path, n: int | None = None) -> tuple[float, float]:
    """(relative error, max abs error) of our encode against the recorded one."""
    ref = np.load(d / "reference.npz")
    x, theirs = torch.from_numpy(ref["x"][:n]), torch.from_numpy(ref["codes"][:n])
    with torch.no_grad():
        ours = load_sae(d).encode(x)
    rel = float((ours - theirs).norm() / theirs.norm().clamp_min(1e-12))
    return rel, float((ours - theirs).abs().max())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers", nargs="*", default=list(PEERS))
    p.add_argument("--fixtures", type=Path, help="also copy the directories (200 inputs each) here")
    a = p.parse_args(argv)
    out = Path(tempfile.mkdtemp(prefix="peer_formats_"))
    if "saelens" in a.peers:
        copy_jb_fixture(out)
        write_ours(out)
    for name in a.peers:
        run_peer(name, out)
    rows, bad = [], 0
    for d in sae_dirs(out):
        rel, mx = check(d)
        bad += rel > TOL
        rows.append((str(d.relative_to(out)), load_sae(d).architecture, rel, mx))
    if "saelens" in a.peers:
        rows += check_ours(out)
        bad += sum(r[2] > TOL for r in rows if r[0].endswith("SAELens"))
    print(
        f"{'directory (written by the peer library)':<40} {'loaded as':<21} {'rel. error':>11} "
        f"{'max |diff|':>11}"
    )
    for r in rows:
        print(f"{r[0]:<40} {r[1]:<21} {r[2]:>11.2e} {r[3]:>11.2e}")
    print(
        f"{len(rows)} SAEs, 1,000 inputs each: "
        f"{'all within' if not bad else f'{bad} beyond'} {TOL:g} relative"
    )
    if a.fixtures:
        for d in sae_dirs(out):
            dst = a.fixtures / d.relative_to(out)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(d, dst, ignore=shutil.ignore_patterns("reference.npz", "checkpoints"))
            ref = np.load(d / "reference.npz")
            np.savez_compressed(dst / "reference.npz", x=ref["x"][:N_FIXTURE], codes=ref["codes"][:N_FIXTURE])
        print("fixtures written to", a.fixtures)
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
