"""torchrun on CPU (gloo, 2 ranks, tiny model): sharded collection is byte-identical to one process,
DDP training matches one process to float rounding, SAE-parallel training equals sequential
training exactly, and a DDP run whose rank is SIGKILLed resumes to the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.data.collect import collect, make_request, rank_shards
from helpers.data.store import ActivationStore
from helpers.distributed import Dist, backend_for, init_dist
from helpers.model.models import load_model
from helpers.sae import load_sae
from helpers.training.config import TrainConfig
from helpers.training.run_dir import load_training_log
from helpers.training.train import train_saes
from helpers.training.train_dist import scratch_dir

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
LAYER = 2


def torchrun(args: list[str], **popen) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def run_ok(args: list[str]) -> str:
    proc = torchrun(args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    req = make_request(
        "tiny-llama", "synthetic-a", [LAYER], n_tokens=48 * 32, seq_len=32, dtype="float32", shard_seqs=16
    )
    return collect(req, tmp_path_factory.mktemp("store"), load_model("tiny-llama"), progress=False)


def cfg(**kw) -> dict:
    base = dict(
        d_in=64,
        architecture="topk",
        d_sae=128,
        k=8,
        lr=3e-3,
        batch_size=128,
        total_tokens=128 * 16,
        warmup_steps=3,
        norm_estimate_tokens=256,
        options={"auxk_coef": 0.0},
        precision="float32",
    )  # exactness across ranks is an fp32 claim: bf16 rounds each half-batch GEMM apart
    return base | kw


def stream(store):
    return store.batches(LAYER, 128, seed=0, exclude_positions=[0], epochs=None)


def write_plan(path: Path, items: list[tuple[dict, Path]]) -> Path:
    path.write_text(json.dumps([{"out_dir": str(d), **c} for c, d in items]))
    return path


# ---------------------------------------------------------------------------- plumbing
def test_plain_process_is_a_world_of_one_and_backend_follows_cuda(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_dist() == Dist() and not Dist().active
    assert backend_for(cuda=False) == "gloo" and backend_for(cuda=True) == "nccl"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="RANK is not set; launch with `torchrun"):
        init_dist()


def test_rank_shards__round_robin_minus_done_covers_every_shard_once():
    parts = [rank_shards(7, r, 3, done={1, 4}) for r in range(3)]
    assert parts == [[0, 3, 6], [], [2, 5]]
    assert sorted(sum(parts, []) + [1, 4]) == list(range(7))


# ---------------------------------------------------------------------------- collection
@pytest.mark.slow
def test_sharded_collection__byte_identical_to_one_process(tmp_path):
    args = [
        "--model",
        "tiny-llama",
        "--corpus",
        "synthetic-b",
        "--layers",
        "1",
        "3",
        "--tokens",
        str(40 * 16),
        "--seq-len",
        "16",
        "--shard-seqs",
        "6",
        "--batch-size",
        "4",
        "--dtype",
        "float16",
    ]
    req = make_request("tiny-llama", "synthetic-b", [1, 3], 40 * 16, 16, "float16", shard_seqs=6)
    collect(req, tmp_path / "one", load_model("tiny-llama"), batch_size=4, progress=False)
    out = run_ok(["-m", "helpers.data.collect", *args, "--out", str(tmp_path / "two")])
    assert "rank 1/2: 3 shards" in out, "7 shards: rank 0 takes 0, 2, 4, 6 and rank 1 takes 1, 3, 5"
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()), "no progress or .tmp files may be left"
    for name in names:  # the manifest too: same request, shard entries, versions
        assert (one / name).read_bytes() == (two / name).read_bytes(), f"{name} differs"
    ActivationStore(two, verify="full")


@pytest.mark.slow
def test_sharded_collection__rank_killed_with_sigkill_resumes_to_the_same_store(tmp_path):
    args = [
        "-m",
        "helpers.data.collect",
        "--model",
        "tiny-llama",
        "--corpus",
        "synthetic-a",
        "--layers",
        "1",
        "--tokens",
        str(96 * 32),
        "--seq-len",
        "32",
        "--shard-seqs",
        "1",
        "--batch-size",
        "1",
        "--dtype",
        "float16",
    ]
    killed = tmp_path / "killed"
    proc = torchrun([*args, "--out", str(killed)])
    progress, t0 = killed / "manifest.rank1.json", time.time()
    while True:  # kill rank 1 once it has finished 3 shards
        try:
            if len(json.loads(progress.read_text())["shards"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        assert proc.poll() is None and time.time() - t0 < 120, "collection ended before the kill"
        time.sleep(0.005)
    os.kill(_workers(proc.pid)[1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and not json.loads((killed / "manifest.json").read_text())["complete"]
    assert len(json.loads(progress.read_text())["shards"]) < 48, "rank 1 finished before the kill"
    run_ok([*args, "--out", str(killed)])
    req = make_request("tiny-llama", "synthetic-a", [1], 96 * 32, 32, "float16", shard_seqs=1)
    collect(req, tmp_path / "one", load_model("tiny-llama"), batch_size=1, progress=False)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in killed.iterdir())
    for name in names:
        assert (tmp_path / "one" / name).read_bytes() == (killed / name).read_bytes(), f"{name} differs"


# ---------------------------------------------------------------------------- training
@pytest.mark.slow
def test_ddp__two_ranks_end_with_the_single_process_weights(store, tmp_path):
    items = [
        (cfg(seed=1), tmp_path / "ddp_topk"),
        (cfg(architecture="relu", seed=2, options={"l1": 1.0}), tmp_path / "ddp_relu"),
    ]
    plan = write_plan(tmp_path / "plan.json", items)
    run_ok(
        [
            "-m",
            "helpers.training.train_dist",
            "--mode",
            "ddp",
            "--store",
            str(store.path),
            "--layer",
            str(LAYER),
            "--plan",
            str(plan),
        ]
    )
    ref = train_saes(
        [TrainConfig(**c) for c, _ in items],
        stream(store),
        [tmp_path / "one_topk", tmp_path / "one_relu"],
        progress=False,
    )
    for (c, d), want in zip(items, ref):
        got = load_sae(d, c["architecture"])
        if c["architecture"] == "relu":  # same maths, but rounding can flip a pre-activation near 0
            bad = (~torch.isclose(got.W_enc, want.W_enc, rtol=1e-4, atol=1e-5)).any(0).nonzero().flatten()
            assert len(bad) <= 2, (
                f"relu latents {bad.tolist()} differ; expected at most a near-zero flip or two"
            )
            keep = torch.ones(c["d_sae"], dtype=torch.bool)
            keep[bad] = False
            torch.testing.assert_close(got.W_dec[keep], want.W_dec[keep], rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.b_dec, want.b_dec, rtol=1e-3, atol=1e-4)
        else:
            for name, p in want.state_dict().items():
                torch.testing.assert_close(
                    got.state_dict()[name],
                    p,
                    rtol=1e-4,
                    atol=1e-5,
                    msg=lambda m, c=c, name=name: f"{c['architecture']} {name}: {m}",
                )
        a, b = load_training_log(d), load_training_log(tmp_path / f"one_{c['architecture']}")
        assert [r["step"] for r in a] == list(range(16))
        assert a[-1]["loss"] == pytest.approx(b[-1]["loss"], rel=1e-4), "logged loss is the global batch's"
        assert a[-1]["l0"] == pytest.approx(b[-1]["l0"], rel=1e-4), "fired counts are summed over ranks"


@pytest.mark.slow
def test_sae_parallel__four_sae_plan_equals_sequential_training(store, tmp_path):
    configs = [
        cfg(seed=1),
        cfg(seed=2, k=4),
        cfg(architecture="relu", seed=3, options={"l1": 1.0}),
        cfg(architecture="batchtopk", seed=4, options={"auxk_coef": 1 / 32}, dead_window_tokens=256),
    ]
    items = [(c, tmp_path / f"par{i}") for i, c in enumerate(configs)]
    run_ok(
        [
            "-m",
            "helpers.training.train_dist",
            "--mode",
            "sae",
            "--store",
            str(store.path),
            "--layer",
            str(LAYER),
            "--plan",
            str(write_plan(tmp_path / "plan.json", items)),
        ]
    )
    ref = train_saes(
        [TrainConfig(**c) for c in configs],
        stream(store),
        [tmp_path / f"seq{i}" for i in range(4)],
        progress=False,
    )
    for (c, d), want in zip(items, ref):
        got = load_sae(d, c["architecture"])
        for name, p in want.state_dict().items():
            assert torch.equal(got.state_dict()[name], p), f"SAE {d.name} {name} differs from sequential"


KILL_SCRIPT = """
import sys, time
from helpers.data.store import ActivationStore
from helpers.training.config import TrainConfig
from helpers.training.train_dist import train_ddp

class Slow:  # the store's stream, slowed down so the test can kill a rank mid-run
    def __init__(self, it):
        self.it = it
    def __iter__(self):
        for b in self.it:
            time.sleep(0.03)
            yield b

store = ActivationStore(sys.argv[1])
train_ddp([TrainConfig(**{cfg!r})], Slow(store.batches({layer}, 128, seed=0, exclude_positions=[0],
epochs=None)),
          [sys.argv[2]], resume=True, progress=False)
"""


def _workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the torchrun launcher's worker processes."""
    out = {}
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank:
            out[int(rank[0][5:])] = int(pid)
    return out


@pytest.mark.slow
def test_ddp__rank_killed_with_sigkill_resumes_to_the_same_result(store, tmp_path):
    c = cfg(seed=5, total_tokens=128 * 40, checkpoint_every_tokens=128 * 5)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(cfg=c, layer=LAYER))
    run_dir = tmp_path / "killed"
    proc = torchrun([str(script), str(store.path), str(run_dir)])
    t0 = time.time()
    while not list(run_dir.glob("ckpt_*.pt")):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - t0 < 120, "no checkpoint after 120 s"
        time.sleep(0.02)
    time.sleep(0.3)
    workers = _workers(proc.pid)
    assert set(workers) == {0, 1}, workers
    os.kill(workers[1], signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0, "torchrun must fail when a rank dies"
    assert not (run_dir / "eval_summary.json").exists(), (
        "run finished before the kill; the test proves nothing"
    )
    assert 0 < len(load_training_log(run_dir)) < 40

    run_ok([str(script), str(store.path), str(run_dir)])
    want = train_saes([TrainConfig(**c)], stream(store), [tmp_path / "one"], progress=False)[0]
    got = load_sae(run_dir, "topk")
    for name, p in want.state_dict().items():
        torch.testing.assert_close(got.state_dict()[name], p, rtol=1e-4, atol=1e-5)
    assert [r["step"] for r in load_training_log(run_dir)] == list(range(40)), "each step logged once"
    assert not list(run_dir.glob("ckpt_*")) and not scratch_dir([run_dir], 1).exists(), (
        "rank 1's scratch is removed"
    )


# ---------------------------------------------------------------------------- remote (NDIF)
@pytest.fixture
def no_ndif_key(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    return CONFIG


def test_remote_model__without_key_fails_at_once_with_one_line_naming_ndif_api_key(no_ndif_key):
    from helpers.model.models import RemoteUnavailableError

    t0 = time.perf_counter()
    with pytest.raises(
        RemoteUnavailableError, match=r"needs an API key: set NDIF_API_KEY .*set_default_api_key"
    ) as e:
        load_model("llama-3.1-8b")
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 1.0


def test_remote_model__unreachable_host_fails_within_seconds_naming_the_network(no_ndif_key, monkeypatch):
    from helpers.model.models import RemoteUnavailableError

    monkeypatch.setenv("NDIF_API_KEY", "not-a-real-key")
    monkeypatch.setenv("NDIF_HOST", "http://127.0.0.1:9")  # discard port: refused at once, no retries
    monkeypatch.setattr(no_ndif_key.API, "HOST", no_ndif_key.API.HOST)  # restored after the test
    t0 = time.perf_counter()
    with pytest.raises(
        RemoteUnavailableError, match=r"http://127.0.0.1:9 is unreachable .*needs the network"
    ) as e:
        load_model("llama-3.1-8b")
    assert "\n" not in str(e.value) and time.perf_counter() - t0 < 5.0


def test_remote_local_dry_run__residuals_through_the_serialised_request_equal_local(one_thread):
    from helpers.model.residuals import residuals

    local, dry = load_model("tiny-llama"), load_model("tiny-llama", remote="local")
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = 256
    want, got = residuals(local, ids, [0, 2]), residuals(dry, ids, [0, 2])
    assert dry._sae_lab_remote == "local" and set(got) == {0, 2}
    for layer in (0, 2):
        torch.testing.assert_close(got[layer], want[layer])
