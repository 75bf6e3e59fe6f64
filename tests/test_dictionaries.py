"""Notebook 07's helpers: the crosscoder's kinds, summary and per-layer reconstruction, the tied table and
its published comparison, the stitching table and examples, on tiny hand-built inputs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.analysis import crosscoders, stitching, tied
from helpers.analysis.crosscoders import LayerKinds
from helpers.analysis.stitching import StitchingSplit
from helpers.report import findings
from helpers.sae import SAEConfig, make_sae

pytestmark = pytest.mark.usefixtures("one_thread")


def kinds() -> LayerKinds:
    """Live latents 2, 5, 7 of a crosscoder over layers 4 and 8: 2 at L4 alone, 5 spans, 7 at L8 alone."""
    shares = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    return LayerKinds(shares, np.array([2, 5, 7]), shares.argmax(1), shares.max(1) >= 0.7, (4, 8))


def test_crosscoder_example_lines__show_each_latents_own_shares_and_indent_its_contexts():
    lines = crosscoders.example_lines(kinds(), lambda j: [f"ctx {j}"], n=1)
    assert lines == [
        "L4 only: latent 2 (decoder-norm shares L4 0.90 / L8 0.10)",
        "     ctx 2",
        "L8 only: latent 7 (decoder-norm shares L4 0.20 / L8 0.80)",
        "     ctx 7",
        "spans layers: latent 5 (decoder-norm shares L4 0.50 / L8 0.50)",
        "     ctx 5",
    ], "shares must be looked up by the latent's row among the live ones, not by its id"


def recon_table() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "layer": 4,
                "crosscoder FVU": 0.1,
                "per-layer SAE FVU": 0.2,
                "crosscoder L0": 12.4,
                "per-layer SAE L0": 4.0,
            },
            {
                "layer": 8,
                "crosscoder FVU": 0.3,
                "per-layer SAE FVU": 0.5,
                "crosscoder L0": 12.4,
                "per-layer SAE L0": 6.0,
            },
            {
                "layer": "all (total L0)",
                "crosscoder FVU": 0.2,
                "per-layer SAE FVU": 0.35,
                "crosscoder L0": 12.4,
                "per-layer SAE L0": 10.0,
            },
        ]
    )


def test_crosscoder_summary__is_the_records_fields_from_the_three_tables():
    match = pd.DataFrame(
        {"layer": [4, 8], "shared (cos > 0.7)": [0.25, 0.5], "random baseline shared": [0.01, 0.03]}
    )
    got = crosscoders.summary(kinds(), match, recon_table(), d_sae=16)
    assert got == {
        "layers": [4, 8],
        "n_live": 3,
        "d_sae": 16,
        "spans": pytest.approx(1 / 3),
        "one_layer": {"L4 only": pytest.approx(1 / 3), "L8 only": pytest.approx(1 / 3)},
        "shared": {4: 0.25, 8: 0.5},
        "random_shared": 0.03,  # the largest over layers
        "fvu_cc": {4: 0.1, 8: 0.3},  # the total row left out
        "fvu_sae": {4: 0.2, 8: 0.5},
        "l0_cc": 12.4,
        "l0_sae": 10.0,
    }
    rec = findings.CrosscoderFindings(**got, verdict="V")
    assert "3 of 16 latents live" in str(rec) and "L4 25.0%" in str(rec) and "12 vs 10" in str(rec)


def test_crosscoder_published_comparison__our_total_l0_and_mean_explained_variance():
    t = crosscoders.published_comparison(recon_table())
    assert t["quantity"].tolist() == ["L0", "explained variance"]
    assert t["published"].tolist() == ["81", "77%"]
    assert t["ours"].tolist() == ["12", "80% (mean over layers)"]


def test_per_layer_reconstruction__hand_fvu_and_l0_whatever_the_batch_size():
    L, d = 2, 4
    cc = make_sae(SAEConfig("crosscoder", L * d, 6, n_layers=L), seed=0)
    with torch.no_grad():
        cc.b_enc.fill_(0.5)  # some codes fire on random inputs
    saes = {
        4: make_sae(SAEConfig("topk", d, 6, k=2), seed=1),
        8: make_sae(SAEConfig("topk", d, 6, k=2), seed=2),
    }
    with torch.no_grad():
        for sae in saes.values():
            sae.b_enc.fill_(5.0)  # every pre-activation positive: TopK keeps exactly k
    x = torch.randn(10, L * d, generator=torch.Generator().manual_seed(0))
    one = crosscoders.per_layer_reconstruction(cc, saes, x, batch_size=10)
    pd.testing.assert_frame_equal(one, crosscoders.per_layer_reconstruction(cc, saes, x, batch_size=3))
    with torch.no_grad():
        xs, x_hat = x.view(10, L, d).double(), cc(x).view(10, L, d).double()
        codes = cc.encode(x)
    for i in range(L):
        want = (xs[:, i] - x_hat[:, i]).pow(2).sum() / (xs[:, i] - xs[:, i].mean(0)).pow(2).sum()
        assert one["crosscoder FVU"][i] == pytest.approx(float(want))
    assert one["crosscoder L0"][0] == pytest.approx(float((codes > 0).sum(1).double().mean()))
    assert one["per-layer SAE L0"].tolist() == [2.0, 2.0, 4.0], "TopK k=2 per layer; the total adds them"


def test_tied_table__rows_from_the_sae_its_twin_and_the_reconstruction_callable():
    untied = make_sae(SAEConfig("topk", 8, 16, k=2), seed=0)
    with torch.no_grad():
        untied.W_enc.copy_(-untied.W_dec.t())  # every encoder column opposite its decoder row: cos -1
    tied_sae = make_sae(SAEConfig("relu", 8, 16, tied=True), seed=1)
    fake = {id(untied): {"fvu": 0.1, "l0": 2.0}, id(tied_sae): {"fvu": 0.25, "l0": 5.5}}
    table = tied.tied_table({"U": (untied, untied), "T": (tied_sae, None)}, lambda s: fake[id(s)])
    assert table["SAE"].tolist() == ["U", "T"]
    assert table["architecture"].tolist() == ["topk", "relu"] and table["tied"].tolist() == [False, True]
    assert table["held-out FVU"].tolist() == [0.1, 0.25] and table["L0"].tolist() == [2.0, 5.5]
    assert table["seed-pair shared"][0] == 1.0 and math.isnan(table["seed-pair shared"][1])
    assert table["median enc/dec cos"].tolist() == pytest.approx([-1.0, 1.0])
    rows = tied.table_rows(table)
    assert rows["U"] == {
        "architecture": "topk",
        "tied": False,
        "fvu": 0.1,
        "l0": 2.0,
        "seed_shared": 1.0,
        "enc_dec_cos": pytest.approx(-1.0),
    }
    assert findings.TiedRow(**rows["T"]).tied and math.isnan(rows["T"]["seed_shared"])


def test_tied_published_comparison__reads_the_rows_by_architecture_and_tying():
    table = pd.DataFrame(
        [
            {
                "SAE": "a",
                "architecture": "relu",
                "tied": True,
                "held-out FVU": 0.2,
                "L0": 20.1,
                "median enc/dec cos": 1.0,
            },
            {
                "SAE": "b",
                "architecture": "topk",
                "tied": False,
                "held-out FVU": 0.1,
                "L0": 32.0,
                "median enc/dec cos": 0.61,
            },
            {
                "SAE": "c",
                "architecture": "relu",
                "tied": False,
                "held-out FVU": 0.15,
                "L0": 33.3,
                "median enc/dec cos": 0.55,
            },
        ]
    )
    s = tied.published_comparison(table)
    assert s.startswith("Published: untied L0 ~100 vs tied ~20")
    assert "TopK enc/dec cosine 0.61, ReLU+L1 0.55" in s
    assert "L0 33.3 untied vs 20.1 tied at FVU 0.150 vs 0.200" in s
    with pytest.raises(ValueError, match="no tied relu"):
        tied.published_comparison(table.iloc[1:])


def test_stitching_comparison_table__ours_the_null_and_the_published_split():
    t = stitching.comparison_table(
        {"identical": 0.2, "split": 0.3, "novel": 0.5}, {"identical": 0.0, "split": 0.01, "novel": 0.99}
    )
    assert t.columns.tolist() == ["", "identical", "split", "novel", "identical or split"]
    assert t[""].tolist() == ["ours", "random rotation", "published (GPT-2, Pythia-410M)"]
    assert t["identical or split"].tolist() == pytest.approx([0.5, 0.01, 0.65])
    assert t["novel"].tolist() == [0.5, 0.99, 0.35] and np.isnan(t["identical"][2])


def test_stitching_example_lines__name_the_match_except_for_novel_latents():
    split = StitchingSplit(
        np.array(["identical", "split", "split", "novel"]),
        np.array([0.9, 0.8, 0.75, 0.3]),
        np.array([0, 1, 1, -1]),
        0.7,
    )
    lines = stitching.example_lines(split, lambda j: [f"c{j}"] if j != 3 else [], n=1)
    assert lines == [
        "identical: base latent 0, best cos 0.90 to half-width latent 0",
        "     c0",
        "split: base latent 1, best cos 0.80 to half-width latent 1",
        "     c1",
        "novel: base latent 3, best cos 0.30",
    ]


def test_plot_layer_shares__default_title_names_the_layers_and_live_latents():
    import matplotlib.pyplot as plt

    from helpers.report.plots.dictionaries import plot_layer_shares

    fig = plot_layer_shares(kinds())
    assert fig._suptitle.get_text() == "Crosscoder over layers 4, 8: 3 live latents"
    plt.close(fig)
