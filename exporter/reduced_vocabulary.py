"""Reduced-vocabulary draft levels: a copy of a draft level whose lm_head computes only N of the vocabulary's rows.

The 0.5B draft's lm_head (151,936 x 896) is about a third of its weights, read on every draft step. A draft
only proposes; the level above verifies, so restricting what the draft can propose to the N most frequent
tokens (token_frequency.py) loses no exactness, only the proposals of rare tokens.

The rewrite slices the lm_head's weight constants along the output axis (a BF16 weight, or a quantized
weight with its scales and zero points) and leaves the decompression subgraph as it was, so OpenVINO's CPU
plugin (and specqd's MXFP4 kernel) still fuse it into the MatMul: the level then outputs N logits. The
embedding keeps the whole vocabulary, since the draft must read any token. The table of kept ids is saved
beside the IR (`vocabulary_ids.npy`) and named in the manifest, and the runtime maps the N logits back to
full-vocabulary ids (runtime/kvmodel.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from specqd.models.cache import say
from specqd.runtime.manifest import Level, Manifest

from . import ir, token_frequency
from .errors import ExportError

IDS_FILE = "vocabulary_ids.npy"


def level_name(base: str, size: int) -> str:
    """draft-int4_sym with 32768 tokens -> draft-int4_sym-v32k."""
    return f"{base}-v{size // 1024}k" if size % 1024 == 0 else f"{base}-v{size}"


def restrict_lm_head(model, ids: np.ndarray) -> None:
    """Keep only rows `ids` of the lm_head in `model` (an ov.Model, changed in place).

    Every constant on the lm_head's weight path whose first axis is the vocabulary is sliced to those rows;
    a Reshape's target shape naming the vocabulary is changed to N. Sub-byte types (INT4, FP4) are packed
    row after row, so rows are sliced as bytes.
    """
    import openvino as ov
    from openvino import op

    lm_head = find_lm_head(model)
    vocabulary = lm_head.get_output_partial_shape(0)[-1].get_length()
    if not lm_head.get_attributes().get("transpose_b"):
        raise ExportError("the lm_head's weight is not stored [vocabulary, hidden] (transpose_b): cannot slice rows")
    seen, stack, constants = set(), [lm_head.input_value(1).get_node()], []
    while stack:
        node = stack.pop()
        if node.get_friendly_name() in seen:
            continue
        seen.add(node.get_friendly_name())
        if len(node.output(0).get_target_inputs()) != 1:
            raise ExportError(f"the lm_head's weight node {node.get_friendly_name()} is shared with another layer "
                              "(tied embeddings in one constant): cannot slice it")
        if node.get_type_name() == "Constant":
            constants.append(node)
        else:
            stack.extend(value.get_node() for value in node.input_values())
    for constant in constants:
        shape = list(constant.get_output_partial_shape(0).to_shape())
        if shape and shape[0] == vocabulary:
            rows = constant.get_tensor_view().data.view(np.uint8).reshape(vocabulary, -1)
            sliced = ov.Tensor(constant.get_output_element_type(0), [len(ids), *shape[1:]])
            sliced.data.view(np.uint8).reshape(len(ids), -1)[:] = rows[ids]
            new = op.Constant(sliced, shared_memory=False)
        elif constant.get_output_element_type(0) in (ov.Type.i64, ov.Type.i32) and vocabulary in constant.get_data():
            values = constant.get_data().copy()
            values[values == vocabulary] = len(ids)
            new = op.Constant(values)
        else:
            continue
        new.set_friendly_name(constant.get_friendly_name())
        constant.output(0).replace(new.output(0))
    model.validate_nodes_and_infer_types()
    if lm_head.get_output_partial_shape(0)[-1].get_length() != len(ids):
        raise ExportError("slicing the lm_head's weights did not shrink its output: unexpected weight subgraph")


def find_lm_head(model):
    """The MatMul whose output is the logits."""
    logits = next(output for output in model.outputs if "logits" in output.get_names())
    node = logits.get_node()
    node = node.input_value(0).get_node() if node.get_type_name() == "Result" else node
    if node.get_type_name() != "MatMul":
        raise ExportError(f"unexpected IR: logits come from {node.get_type_name()}, not the lm_head MatMul")
    return node


def special_ids(level_dir: Path) -> set[int]:
    """Every added token of the tokenizer (EOS, chat markers, ...) and the configs' EOS ids."""
    from specqd.runtime.pipeline import eos_ids

    added = json.loads((level_dir / "tokenizer.json").read_text()).get("added_tokens", [])
    return {int(token["id"]) for token in added} | eos_ids(level_dir)


def write_level(base_dir: Path, out: Path, ids: np.ndarray) -> None:
    """A copy of the level in `base_dir` whose lm_head keeps rows `ids`, with the id table beside the IR."""
    import openvino as ov

    model = ov.Core().read_model(base_dir / ir.MODEL_XML)
    restrict_lm_head(model, ids)
    shutil.copytree(base_dir, out, ignore=shutil.ignore_patterns(ir.MODEL_XML, ir.MODEL_BIN))
    ov.save_model(model, out / ir.MODEL_XML, compress_to_fp16=False)
    np.save(out / IDS_FILE, ids.astype(np.int64))


def add_levels(export_dir: Path, base: str, sizes: list[int], corpus: token_frequency.Corpus | None = None,
               force: bool = False, cache: Path | None = None) -> list[Level]:
    """Add one reduced copy of level `base` per size to an export, each folder whole or not at all.

    `corpus` (default: installed text) is what the tokens are counted on; `cache` holds the counts.
    """
    manifest = Manifest.read(export_dir)
    base_level = manifest.level(base)
    if base_level.role == "target":
        raise ExportError(f"{base} is the target: a reduced vocabulary is for draft levels only (the target's "
                          "tokens are the output)")
    if base_level.vocabulary:
        raise ExportError(f"{base} already has a reduced vocabulary; reduce its full-vocabulary level instead")
    base_dir = export_dir / base_level.path
    if not (base_dir / ir.MODEL_XML).is_file():
        raise ExportError(f"{base} is not an OpenVINO IR level (no {ir.MODEL_XML}): only IR levels can be reduced")
    names = [level_name(base, size) for size in sizes]
    existing = {level.name for level in manifest.levels}
    if not force and set(names) & existing:
        raise ExportError(f"{', '.join(sorted(set(names) & existing))}: already in {export_dir}; pass --force to "
                          "replace")
    vocabulary = json.loads((base_dir / "config.json").read_text())["vocab_size"]
    counts = token_frequency.count(base_dir / "tokenizer.json", corpus or token_frequency.Corpus.installed(),
                                   vocabulary, cache)
    always = special_ids(base_dir)
    added = []
    for name, size in zip(names, sizes):
        started = time.perf_counter()
        ids = token_frequency.most_frequent(counts, size, always)
        coverage = counts[ids].sum() / max(counts.sum(), 1)
        say(f"[{name}] lm_head restricted to {size} of {vocabulary} tokens ({coverage:.2%} of the counted tokens)")
        scratch = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=export_dir))
        try:
            write_level(base_dir, scratch / name, ids)
            if (export_dir / name).exists():
                shutil.rmtree(export_dir / name)
            os.replace(scratch / name, export_dir / name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        added.append(replace(base_level, name=name, path=name, bytes=ir.folder_bytes(export_dir / name),
                             export_seconds=round(time.perf_counter() - started, 1), vocabulary=size,
                             vocabulary_ids=IDS_FILE))
    manifest = Manifest.read(export_dir)  # again: another tool may have written it meanwhile
    manifest.levels = [level for level in manifest.levels if level.name not in names] + added
    manifest.write(export_dir)
    return added
