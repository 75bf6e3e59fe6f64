"""Profiles without editing code: TOML files, models by local path or hub id, corpora from local files."""

import json
from pathlib import Path

import pytest
import torch

from helpers.data.corpora import CorpusError, load_corpus
from helpers.hub import HubUnavailableError
from helpers.profiles import PROFILES, ProfileError, get_profile, load_profile_toml


def _toml(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_profile__starts_from_its_base_and_resolves_paths_next_to_the_file(tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "sae").mkdir()
    path = _toml(
        tmp_path,
        """
base = "tiny"
layers = [1, 2]
main_layer = 2
tokens_main = 8192
[corpora]
notes = "texts/"
pile = "hf:NeelNanda/pile-10k"
kjv = "kjv"
[saes]
1 = "sae"
""",
    )
    p = get_profile(str(path))
    assert p.name == "study" and p.model == "tiny-llama" and p.seq_len == PROFILES["tiny"].seq_len
    assert (p.layers, p.main_layer, p.tokens_main) == ((1, 2), 2, 8192)
    assert p.corpora == ("notes", "pile", "kjv") and p.main_corpus == "notes"
    assert p.corpus_source("notes") == str(tmp_path / "texts")
    assert p.corpus_source("pile") == "hf:NeelNanda/pile-10k" and p.corpus_source("kjv") is None
    assert p.sae_source(1) == str(tmp_path / "sae") and p.sae_source(2) is None
    assert p.needs_hub, "a hub corpus makes the profile need the hub (or its cache)"


def test_toml_profile__without_a_base_sets_every_required_field(tmp_path):
    full = _toml(
        tmp_path,
        """
name = "mine"
model = "EleutherAI/pythia-70m"
layers = [3]
main_layer = 3
seq_len = 128
tokens_main = 4096
tokens_other = 4096
[corpora]
kjv = "kjv"
""",
    )
    p = load_profile_toml(full)
    assert (p.name, p.model, p.corpora, p.needs_hub) == ("mine", "EleutherAI/pythia-70m", ("kjv",), True)
    assert p.expansion_factor == 8 and p.eval_seqs == 4, "unset fields keep the dataclass defaults"
    short = _toml(tmp_path, 'model = "tiny-llama"\n', "short.toml")
    with pytest.raises(
        ProfileError, match=r"short.toml: .* a profile sets at least .*corpora, layers, main_layer"
    ):
        load_profile_toml(short)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'base = "tiny"\nlayer = [1]\n',
            r"unknown key 'layer' \(did you mean 'layers'\?\); a profile sets the fields of",
        ),
        ('base = "nope"\n', r"base 'nope' is not a built-in profile"),
        ('base = "tiny"\nmain_layer = 7\n', r"main_layer 7 is not one of layers \[0, 1, 2, 3\]"),
        ('base = "tiny"\n[corpora]\n"my notes" = "x/"\n', r"corpus name 'my notes' names a folder"),
        ('base = "tiny"\n[saes]\nfirst = "x"\n', r"\[saes\] keys are layer numbers"),
        ('base = "tiny"\n[saes]\n9 = "x"\n', r"\[saes\] names layer 9, which is not in layers"),
        ('base = "tiny"\nlayers = [1\n', r"is not valid TOML"),
    ],
)
def test_toml_profile__bad_input_fails_in_one_line_naming_the_file(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(ProfileError, match=message) as e:
        load_profile_toml(path)
    assert "\n" not in str(e.value) and "study.toml" in str(e.value)


def test_get_profile__names_built_ins_and_toml_files():
    assert get_profile("gpt2-jb").sae_source(8) == "sae_lens:gpt2-small-res-jb/blocks.8.hook_resid_pre"
    assert get_profile("gpt2-jb").layers == tuple(range(12)) and get_profile("gpt2").sae_sources == ()
    with pytest.raises(
        ProfileError, match=r"unknown profile 'fast'; choose one of .* or pass the path of a .toml"
    ):
        get_profile("fast")
    with pytest.raises(ProfileError, match=r"profile file missing.toml not found"):
        get_profile("missing.toml")


def test_figures_of_user_profiles_stay_out_of_the_repo(monkeypatch, tmp_path):
    from helpers import paths

    monkeypatch.delenv("SAE_LAB_FIGURES", raising=False)
    monkeypatch.setenv("SAE_LAB_DATA", str(tmp_path))
    assert paths.figures_dir("offline") == paths.REPO_ROOT / "figures"
    assert paths.figures_dir("gpt2-jb") == paths.REPO_ROOT / "figures" / "gpt2-jb"
    assert paths.figures_dir("study") == tmp_path / "figures" / "study"


# ---------------------------------------------------------------------------- local corpora
def test_local_corpus__a_folder_of_txt_files_is_one_document_per_file(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.txt").write_text("first document\nwith two lines")
    (tmp_path / "a" / "b" / "two.txt").write_text("second document")
    (tmp_path / "a" / "README").write_text("not a corpus file, skipped")
    ds = load_corpus("notes", source=str(tmp_path / "a"))
    assert sorted(ds["text"]) == ["first document\nwith two lines", "second document"]
    assert load_corpus("notes", source=str(tmp_path / "a" / "one.txt"))["text"] == [
        "first document\nwith two lines"
    ]


def test_local_corpus__jsonl_and_parquet_rows_carry_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "docs.jsonl").write_text(
        "\n".join(json.dumps({"text": f"doc {i}", "id": i}) for i in range(3))
    )
    assert load_corpus("j", source=str(tmp_path / "docs.jsonl"))["text"] == ["doc 0", "doc 1", "doc 2"]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": ["x", "y"]}), tmp_path / "pq" / "part-0.parquet")
    assert load_corpus("p", source=str(tmp_path / "pq"), max_docs=1)["text"] == ["x"]


def test_local_corpus__bad_sources_fail_in_one_line_naming_the_fix(tmp_path):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("a")
    (tmp_path / "mixed" / "b.jsonl").write_text('{"text": "b"}\n')
    with pytest.raises(CorpusError, match="mixes json and text files; keep one kind per corpus folder"):
        load_corpus("m", source=str(tmp_path / "mixed"))
    (tmp_path / "body.jsonl").write_text('{"body": "no text key"}\n')
    with pytest.raises(
        CorpusError, match=r"has columns \['body'\], no 'text'; write each document under a 'text'"
    ):
        load_corpus("b", source=str(tmp_path / "body.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt, .md, .rst, .py, .jsonl or .parquet files to read"):
        load_corpus("e", source=str(tmp_path / "empty"))
    with pytest.raises(CorpusError, match="is neither a built-in corpus .* nor an existing file or folder"):
        load_corpus("n", source=str(tmp_path / "nowhere"))


def test_hub_corpus_offline_and_uncached__fails_in_one_line_naming_the_offline_profile(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)
    with pytest.raises(
        HubUnavailableError, match=r"corpus 'pile' \(someone/absent\) is not in the local .*PROFILE=offline"
    ):
        load_corpus("pile", source="hf:someone/absent")


# ---------------------------------------------------------------------------- models by path or hub id
@pytest.mark.parametrize(
    "registry, blocks, learned", [("tiny-gpt2", "transformer.h", True), ("tiny-llama", "model.layers", False)]
)
def test_local_model_directory__spec_read_off_its_config_and_residuals_are_hidden_states(
    tmp_path, registry, blocks, learned
):
    from helpers.model.models import get_spec, load_model, spec_of
    from helpers.model.residuals import residuals
    from helpers.model.tiny import byte_tokenizer, tiny_hf

    tiny_hf(get_spec(registry)).save_pretrained(tmp_path / "m")
    byte_tokenizer().save_pretrained(tmp_path / "m")
    spec = get_spec(str(tmp_path / "m"))
    assert (spec.layers_path, spec.n_layers, spec.d_model, spec.bos_id, spec.learned_positions) == (
        blocks,
        4,
        64,
        256,
        learned,
    )
    model = load_model(str(tmp_path / "m"))
    assert spec_of(model) == spec
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        hidden = model._module(ids, output_hidden_states=True).hidden_states
    for layer, x in residuals(model, ids, [1, 3]).items():
        torch.testing.assert_close(x, hidden[layer])


def test_hub_model_offline_and_uncached__fails_in_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    from helpers.model.models import get_spec, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(
        HubUnavailableError, match=r"model 'someone/absent-lm' is not in the local .*PROFILE=offline"
    ) as e:
        get_spec("someone/absent-lm")
    assert "\n" not in str(e.value)
    assert get_spec("gpt2").d_model == 768, "the registry still knows GPT-2's shape without the hub"
    with pytest.raises(
        HubUnavailableError, match=r"model 'gpt2' \(openai-community/gpt2\) is not in the local"
    ):
        load_model("gpt2")
