"""Findings are typed records: stored and loaded back as the same dataclass, rendered from their own
sentence templates with the numbers they hold, and loud about a missing field."""

import ast
import dataclasses
import json
import math
from pathlib import Path

import pytest

from helpers.report import findings as F
from helpers.report.findings import records as R

CAA = F.CaaComparison(
    cos_best=0.41,
    latent=3,
    cos_latent=0.38,
    kl=1.25,
    lift_caa=7.5,
    lift_sae=2.5,
    winner="the CAA vector",
    sentence="CAA-S.",
)
# One record of every type, with numbers that appear nowhere else, and what its rendering must show.
SAMPLES = [
    (
        F.CollectionFindings(tokens_per_s=1434.4, n_layers=7, tokens=327_680, precision="bfloat16"),
        [
            "1,434 tokens/s",
            "7 layers",
            "327,680 tokens",
            "bfloat16",
        ],
    ),
    (
        F.MassiveFindings(
            layer=12,
            count=85,
            n_tokens=326_982,
            ratio=10.0,
            max_x_median=179.4,
            variance_share=0.92,
            top="'x'",
        ),
        ["layer 12", "85 of", "326,982", "10x", "179x", "92%", "'x'"],
    ),
    (F.ConvergenceFindings(line="VERDICT-LINE", converged=True), ["VERDICT-LINE"]),
    (
        F.TrainingFindings(
            n_saes=14,
            train_tokens=2_500_000,
            min_train_tokens=1_500_000,
            d_sae=2304,
            k=32,
            base_fvu=0.131,
            base_fvu_all=0.234,
            base_rel_err=0.221,
            base_dead=0.037,
            fvu_min=0.041,
            fvu_max=0.192,
            batchtopk_l0=32.4,
            relu_l0=33.3,
        ),
        [
            "14 of",
            "2,500,000",
            "2304",
            "k 32",
            "0.131",
            "0.234",
            "0.221",
            "3.7%",
            "0.041-0.192",
            "32.4",
            "33.3",
        ],
    ),
    (
        F.PositionFindings(
            first_ratio_max=280.2,
            first_ratio_layer=12,
            position_features={0: 0, 4: 2, 8: 3},
            sink_latents={0: 0, 4: 1, 8: 5},
        ),
        [
            "280x",
            "layer 12",
            "L0 0, L4 2, L8 3",
            "sink latents (firing at position 0): L0 0, L4 1, L8 5",
        ],
    ),
    (
        F.FactorFindings(seed_floor=0.499, ranking={"corpus": 0.046, "layer": 0.066}, null_shared=0.002),
        [
            "49.9%",
            "chance 0.2%",
            "corpus 4.6% > layer 6.6%",
        ],
    ),
    (
        F.CrossCorpusFindings(
            fvu_in=0.125,
            fvu_out=0.5,
            ce_in=0.185,
            ce_out=2.499,
            cells={"a->a": F.CorpusCell(fvu=0.131, delta_ce=0.296, dead=0.0)},
        ),
        ["beats", "0.125", "0.500", "(4.0x)", "+0.185", "+2.499", "a->a FVU 0.131, dCE +0.296"],
    ),
    (
        F.AtlasFindings(example=2256, match=0.97, density=0.0088, context=[314, 1206]),
        [
            "latent 2256",
            "0.97",
            "0.88%",
            "314, 1206",
        ],
    ),
    (
        F.UsingFeaturesFindings(
            features=[270, 314],
            kinds=["token", "context"],
            tokens=[" by", "None"],
            effect_lift_a4=[34.4, 2.4],
            lens_lift_a4=[8.71, 1.67],
            kl_a4=[1.65, 0.16],
            ablation_fired=[0.203, -0.015],
            ablation_elsewhere=[0.001, 0.002],
            ablation_mean_fired=[0.202, -0.071],
            ablation_resample_fired=[0.204, -0.067],
            caa=CAA,
            k=32,
            fvu={"SAE": 0.132, "PCA": 0.333},
            mmcs={"SAE": 1.0, "PCA": 0.27},
            proxy_median={"SAE": 0.4, "PCA": 0.15},
            n_ica=256,
            ica_converged=False,
        ),
        [
            "270 (' by'), 314 ('None', context)",
            "34.4x, 2.4x",
            "1.65, 0.16",
            "8.71x, 1.67x",
            "zero +0.203, -0.015; mean +0.202, -0.071; resample +0.204, -0.067",
            "best cos 0.41",
            "latent that fires, 3, has cos 0.38",
            "has cos 0.38. CAA-S.",
            "32 terms",
            "SAE 0.132; PCA 0.333",
            "PCA 0.27",
            "SAE 40%, PCA 15%",
            "256 components",
            "did not converge",
        ],
    ),
    (
        F.CrosscoderFindings(
            layers=[8, 12],
            n_live=2000,
            d_sae=2304,
            spans=0.41,
            one_layer={"L8 only": 0.2, "L12 only": 0.39},
            shared={8: 0.123, 12: 0.2},
            random_shared=0.001,
            fvu_cc={8: 0.101, 12: 0.202},
            fvu_sae={8: 0.111, 12: 0.212},
            l0_cc=96.0,
            l0_sae=64.0,
            verdict="CC-VERDICT",
        ),
        ["8, 12", "2000 of 2304", "41%", "L8 only 20%", "L8 12.3%", "0.1%", "L8 0.101 vs 0.111", "96 vs 64"],
    ),
    (
        F.TiedFindings(
            table={
                "TopK": F.TiedRow(
                    architecture="topk", tied=False, fvu=0.13, l0=32.1, seed_shared=0.52, enc_dec_cos=0.61
                ),
                "ReLU+L1 tied": F.TiedRow(
                    architecture="relu", tied=True, fvu=0.2, l0=40.2, seed_shared=0.3, enc_dec_cos=1.0
                ),
            },
            random_shared=0.002,
            verdict="TIED-VERDICT",
        ),
        ["TopK: FVU 0.130, L0 32.1, enc/dec cos 0.61, seed-pair shared 52.0%", "0.2%", "TIED-VERDICT"],
    ),
    (
        F.StitchingFindings(
            fractions={"identical": 0.4, "split": 0.3, "novel": 0.3},
            random={"identical": 0.0, "split": 0.01, "novel": 0.99},
            n_live=2200,
            verdict="V",
        ),
        ["2200 live", "40% identical", "30% split", "70%/30%", "99% novel"],
    ),
    (
        F.ToyAbsorptionFindings(
            absorption={"topk": [0.2, 0.21], "matryoshka_batchtopk": [0.0, 0.01]},
            random={"topk": 0.1, "matryoshka_batchtopk": 0.11},
            parent_miss={"topk": 0.27, "matryoshka_batchtopk": 0.004},
            child_mmcs={"topk": 0.82, "matryoshka_batchtopk": 0.69},
            l0={"topk": 4.0, "matryoshka_batchtopk": 3.96},
        ),
        ["hierarchy** (per seed, lowest first): Matryoshka 0.000 and 0.010 (untrained 0.110", "TopK 0.200"],
    ),
    (
        F.MatryoshkaFindings(
            verdict="V",
            vs_batchtopk=0.42,
            vs_batchtopk_null=0.001,
            first_width=72,
            fvu_first={"Matryoshka": 0.4, "BatchTopK": 0.97},
            fvu_full={"Matryoshka": 0.15, "BatchTopK": 0.13},
            prefix_in_narrow={216: [0.5, 0.05, 0.0]},
        ),
        [
            "first 72 latents alone give held-out FVU Matryoshka 0.400, BatchTopK 0.970",
            "42.0% shared",
            "width 216: Matryoshka prefix 50%, BatchTopK first latents 5%, random 0%",
            "pair: V",
        ],
    ),
    (
        F.FirstLetterFindings(
            layer=12,
            letters_ok=21,
            letters_total=26,
            median_f1=0.76,
            absorption={"Matryoshka": 0.9},
            k_sparse_f1={"Matryoshka": 0.31},
            verdict="V",
        ),
        [
            "on 21 of 26 letters (median 0.76); SAEBench's mean absorption fraction: Matryoshka 0.900 "
            "(k-sparse F1 of its letter latents 0.31)",
            "pair: V",
        ],
    ),
    (
        F.LayerCKAFindings(
            models=["a", "b"],
            n_words=9000,
            main_layer=12,
            matched_layer=7,
            cka_matched=0.81,
            cka_shuffled=0.02,
            monotone=0.95,
        ),
        ["9,000 word-aligned", "a resid_pre L12 is closest to b L7 (CKA 0.81; words shuffled 0.02)", "0.95"],
    ),
    (
        F.CrossModelFindings(
            models=["a", "b"],
            layers=[12, 7],
            threshold=0.5,
            shared={"other model": 0.2, "random directions": 0.01},
            best_shared={"other model": 0.3, "random directions": 0.02},
            cap={"other model": 0.57, "random directions": 1.0},
            median_best={"other model": 0.45, "random directions": 0.1},
            verdicts=["V1", "V2"],
        ),
        [
            "a L12 vs b L7",
            "r > 0.5): other model 20.0% of at most 57.0% (many-to-one 30.0%, median best r 0.45); "
            "random directions 1.0% (many-to-one 2.0%",
            "a pair: V1 b pair: V2",
        ],
    ),
    (
        F.HookPointFindings(
            layer=12,
            rows={
                "blocks.12.hook_mlp_out": {
                    "fvu": 0.2,
                    "l0": 32.0,
                    "dead": 0.01,
                    "position_features": 3,
                    "in_resid": 0.05,
                    "in_resid_null": 0.0,
                    "resid_cos": 0.41,
                    "resid_cos_null": 0.12,
                },
                "blocks.12.mlp.hook_post": {
                    "fvu": 0.3,
                    "l0": 32.0,
                    "dead": 0.02,
                    "position_features": 1,
                },
            },
            verdict="V",
        ),
        [
            "hook_mlp_out: FVU 0.200, L0 32.0, dead 1.0%, 3 position features, 5.0% with a resid_pre latent "
            "at cos > 0.7 (random 0.0%; median best cos 0.41, random 0.12)",
            "mlp.hook_post: FVU 0.300, L0 32.0, dead 2.0%, 1 position features. Base pair: V",
        ],
    ),
    (
        F.EmbeddingScoreFindings(
            encoder="MiniLM",
            n_per_dictionary={"SAE": 100, "random": 98},
            median_auroc={"SAE": 0.81, "random": 0.62},
            share_above={"SAE": 0.6, "random": 0.2},
            verdict="V",
        ),
        [
            "MiniLM",
            "SAE 100, random 98",
            "median SAE 0.81, random 0.62",
            "above 0.75: SAE 60%, random 20%. V",
        ],
    ),
    (
        F.LLMScoreFindings(
            judge="J",
            n_per_dictionary={"SAE": 8},
            detection_auroc={"SAE": 0.55},
            fuzzing_auroc={"SAE": 0.61},
            check_detection={"digits": 0.52},
            check_fuzzing={"digits": 0.48},
            examples=['SAE 12 "numbers" 0.60 / 0.70'],
            verdict="V",
        ),
        ["judge J", "detection AUROC SAE 0.55; fuzzing SAE 0.61", "digits 0.52 / 0.48", '"numbers" 0.60'],
    ),
    (
        F.ProbingFindings(
            k=1,
            accuracy={"noun vs verb": {"SAE": 0.91, "neurons": 0.84}},
            shuffled_max={"noun vs verb": 0.56},
            test_rows={"noun vs verb": 40},
            seeds=5,
            verdict="V",
        ),
        [
            "k = 1",
            "mean of 5 splits",
            "noun vs verb: SAE 0.91, neurons 0.84 (shuffled labels at most 0.56, 40",
        ],
    ),
]


RECS = [rec for rec, _ in SAMPLES]


def test_there_is_a_sample_of_every_record_type():
    assert sorted(type(r).__name__ for r in RECS) == sorted(t.__name__ for t in R.RECORD_TYPES)


@pytest.mark.parametrize("rec, shows", SAMPLES, ids=[type(r).__name__ for r in RECS])
def test_rendering_puts_the_records_numbers_in(rec, shows):
    block = F.render([rec])
    for shown in shows:
        assert shown in block, f"{type(rec).__name__}: {shown!r} not in {block!r}"
    assert block.startswith("- **") and all(line.startswith("- ") for line in block.splitlines())
    # the notebook's printed summary comes from the same templates
    assert str(rec) == rec.summary() == "\n".join(s.replace("**", "") for s in rec.sentences())
    assert rec.summary().splitlines() == [line[2:].replace("**", "") for line in block.splitlines()]


def test_rendering_follows_the_records_numbers():
    base = next(r for r in RECS if isinstance(r, F.CrossCorpusFindings))
    worse = dataclasses.replace(base, fvu_in=0.61)
    assert "does not beat" in F.render([worse]) and "0.610" in F.render([worse])
    uf = next(r for r in RECS if isinstance(r, F.UsingFeaturesFindings))
    assert "did not converge" not in F.render([dataclasses.replace(uf, ica_converged=True)])
    atlas = next(r for r in RECS if isinstance(r, F.AtlasFindings))
    assert "second rule" not in F.render([dataclasses.replace(atlas, context=[])])
    tied = next(r for r in RECS if isinstance(r, F.TiedFindings))
    row = dataclasses.replace(tied.table["ReLU+L1 tied"], seed_shared=math.nan)  # no seed twin
    block = F.render([dataclasses.replace(tied, table={"ReLU+L1 tied": row})])
    assert "L0 40.2, enc/dec cos 1.00 (random" in block


def test_record_then_load_gives_equal_records_in_readme_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    for rec in reversed(RECS):
        F.record("p", rec)
    got = F.load("p")
    assert list(got) == [t.key for t in R.RECORD_TYPES]
    assert list(got.values()) == RECS  # dataclass equality: every field, nested types included
    pos = got["positions"]
    assert isinstance(pos, F.PositionFindings) and list(pos.position_features) == [0, 4, 8], "int keys back"
    assert isinstance(got["using_features"].caa, F.CaaComparison)
    assert F.render(got) == F.render(RECS) == F.render(reversed(RECS))
    assert [p.name for p in (tmp_path / "findings").iterdir()] == ["p.json"], "no temporary file left"


def test_record_replaces_its_key_and_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    old = F.ConvergenceFindings(line="old", converged=False)
    atlas = next(r for r in RECS if isinstance(r, F.AtlasFindings))
    F.record("p", old)
    F.record("p", atlas)
    F.record("p", dataclasses.replace(old, line="new"))
    assert F.load("p") == {"convergence": F.ConvergenceFindings(line="new", converged=False), "atlas": atlas}
    with pytest.raises(TypeError):  # not JSON: the write fails before the file is replaced
        F.record("p", F.ConvergenceFindings(line=object(), converged=True))
    assert F.load("p")["convergence"].line == "new"
    assert [p.name for p in (tmp_path / "findings").iterdir()] == ["p.json"]
    with pytest.raises(TypeError, match="findings record such as"):
        F.record("p", {"line": "x"})


def test_a_missing_field_fails_loudly_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    with pytest.raises(TypeError, match="converged"):
        F.ConvergenceFindings(line="x")
    uf = next(r for r in RECS if isinstance(r, F.UsingFeaturesFindings))
    F.record("p", uf)
    path = tmp_path / "findings" / "p.json"
    data = json.loads(path.read_text())
    del data["using_features"]["values"]["kl_a4"]
    del data["using_features"]["values"]["caa"]["winner"]
    data["using_features"]["values"]["stale"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=r"'using_features'.*missing field\(s\) kl_a4; unknown field\(s\) stale"
    ):
        F.load("p")
    del data["using_features"]["values"]["stale"]
    data["using_features"]["values"]["kl_a4"] = [1.0, 2.0]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"caa \(CaaComparison\): missing field\(s\) winner"):
        F.load("p")
    path.write_text(json.dumps({"factors": {"seed_floor": 0.3, "ranking": "layer 5.0%"}}))  # an older run's
    with pytest.raises(ValueError, match="'factors' is not a typed record.*rerun notebook 04"):
        F.load("p")
    with pytest.raises(FileNotFoundError, match="make reproduce"):
        F.load("other")


def test_every_field_of_every_record_has_a_docstring():
    src = Path(R.__file__).read_text()
    for cls in ast.walk(ast.parse(src)):
        if not isinstance(cls, ast.ClassDef) or cls.name == "Finding":
            continue
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and "ClassVar" not in ast.unparse(node.annotation):
                doc = body[i + 1] if i + 1 < len(body) else None
                assert (
                    isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and doc.value.value
                ), f"{cls.name}.{node.target.id} has no docstring"


def test_timing_line_and_update_readme(tmp_path):
    rec = F.ConvergenceFindings(line="L", converged=True)
    block = F.render({"convergence": rec}, {"01_a.ipynb": 120.0, "total": 150.0}, "AMD EPYC, 2 cores")
    assert (
        block.splitlines()[0]
        == "Notebook wall times of this run on AMD EPYC, 2 cores: 01 2.0 min (total 2.5 min)."
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{F.START}\nold numbers\n{F.END}\nrest\n")
    F.update_readme(readme, block)
    text = readme.read_text()
    assert (
        "old numbers" not in text and text.startswith("intro\n") and text.endswith("rest\n") and block in text
    )
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="findings markers"):
        F.update_readme(readme, block)


def test_machine_summary__names_the_cpu_and_its_bf16_support():
    info = "processor: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    assert F.machine_summary(info, 2) == "AMD EPYC, 2 cores, AVX512-BF16, no AMX"
    assert (
        F.machine_summary("flags : amx_bf16 amx_tile", 4) == "unknown CPU, 4 cores, no AVX512-BF16, AMX-BF16"
    )


def test_first_letter_findings__say_why_nothing_is_scored_when_the_probes_do_not_qualify():
    rec = F.FirstLetterFindings(
        layer=12, letters_ok=8, letters_total=26, median_f1=0.41, absorption={}, k_sparse_f1={}, verdict="V"
    )
    assert rec.sentences() == [
        "**First-letter probes** (SAEBench's prompt, resid_pre L12): F1 > 0.6 on 8 of 26 letters (median "
        "0.41), short of SAEBench's 20: first-letter absorption is not scored on this model."
    ]
