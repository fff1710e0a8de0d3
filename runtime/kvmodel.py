"""One level's compiled IR with a KV cache that follows whatever token sequence it is asked about.

The exported stateful IR is rewritten to OpenVINO's paged-attention form (the one openvino-genai runs): the KV
cache becomes tensors this class owns, and each call says how many cached positions are valid. Rolling back
rejected draft tokens is then free and leaves nothing behind: the next call starts from the shorter valid
length and overwrites the stale slots (see docs/kv-rollback.md for the measurements behind the choice).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino._offline_transformations import paged_attention_transformation

from .mxfp4_kernel import Kernel

PRECISIONS = ("bf16", "f32")
BLOCK = 32               # tokens per KV block: the only size OpenVINO's CPU plugin accepts
FIRST_CAPACITY = 2048    # tokens the cache holds before it first grows
LOGITS_COUNT = "logits_count"


def cpu_config(precision: str, threads: int = 0) -> dict:
    """Compile properties of every level: batch 1 on all cores, an f16 KV cache in bf16 precision."""
    config = {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": "f16" if precision == "bf16" else "f32",
              "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class KVModel:
    def __init__(self, core: ov.Core, folder: Path, precision: str, kernel: Kernel, threads: int = 0):
        ir = kernel.read_model(core, folder / "openvino_model.xml", precision)
        self.kernel = ir.kernel
        paged_attention_transformation(ir.model)
        self.compiled = core.compile_model(_logits_for_last_positions(ir.model), "CPU", cpu_config(precision, threads))
        self._weights = ir.weights
        self.request = self.compiled.create_infer_request()
        self._caches = [port for port in self.compiled.inputs if port.get_any_name().startswith(("key_cache.", "value_cache."))]
        self._capacity = 0                   # tokens the cache tensors hold
        self.cached: list[int] = []          # tokens whose keys and values are valid in the cache, in order
        self.tokens_computed = 0             # tokens run through the model since the last reset

    def logits(self, tokens: list[int], last: int) -> np.ndarray:
        """Logits (float32, [last, vocab]) at the final `last` positions of `tokens`.

        Only the tokens after the longest prefix the cache shares with `tokens` run through the model
        (leaving at least `last` positions to compute); cache entries past that prefix are overwritten.
        """
        keep = min(_common_prefix(self.cached, tokens), len(tokens) - last)
        new = tokens[keep:]
        self._reserve(len(tokens))
        blocks = -(-len(tokens) // BLOCK)
        self.request.infer({
            "input_ids": np.array(new, np.int64),
            "position_ids": np.arange(keep, len(tokens), dtype=np.int64),
            "past_lens": np.array([keep], np.int32),
            "subsequence_begins": np.array([0, len(new)], np.int32),
            "block_indices": np.arange(blocks, dtype=np.int32),
            "block_indices_begins": np.array([0, blocks], np.int32),
            "max_context_len": np.array(len(tokens), np.int32),
            LOGITS_COUNT: np.array([last], np.int64),
        })
        self.cached = list(tokens)
        self.tokens_computed += len(new)
        return self.request.get_tensor("logits").data[:, 0].astype(np.float32)

    def reset(self) -> None:
        self.cached = []
        self.tokens_computed = 0

    def shares_cache_layout(self, other: "KVModel") -> bool:
        """Same layers, heads, head size and precision: one model's keys and values fit the other's cache."""
        return [(p.get_any_name(), p.get_element_type(), str(p.get_partial_shape())) for p in self._caches] == \
               [(p.get_any_name(), p.get_element_type(), str(p.get_partial_shape())) for p in other._caches]

    def adopt_cache(self, other: "KVModel") -> None:
        """Take over the keys and values `other` holds for its cached tokens, instead of computing them.

        Used for a quantized copy of the target: the target's own cache of the prompt is as good a context
        for it as its own (better, if anything), and copying a few MB costs nothing next to a prompt read.
        """
        self._reserve(len(other.cached))
        blocks = -(-len(other.cached) // BLOCK)
        for mine, theirs in zip(self._caches, other._caches):
            self.request.get_tensor(mine).data[:blocks] = other.request.get_tensor(theirs).data[:blocks]
        self.cached = list(other.cached)

    def _reserve(self, tokens: int) -> None:
        """Grow the cache tensors (doubling, contents kept) so that they hold `tokens` positions."""
        if tokens <= self._capacity:
            return
        capacity = max(FIRST_CAPACITY, 2 * self._capacity, -(-tokens // BLOCK) * BLOCK)
        for port in self._caches:
            shape = port.get_partial_shape().get_min_shape()
            shape[0] = capacity // BLOCK
            grown = ov.Tensor(port.get_element_type(), shape)
            if self._capacity:
                grown.data[:self._capacity // BLOCK] = self.request.get_tensor(port).data
            self.request.set_tensor(port, grown)
        self._capacity = capacity


def _logits_for_last_positions(model: ov.Model) -> ov.Model:
    """Compute the lm_head only for the positions whose logits are read, given by a new input.

    Without it a prompt of 300 tokens runs the 151,936-wide lm_head 300 times and copies all the results out,
    though only the last position's logits are used; a verify step needs the last k + 1. Paged attention puts
    the tokens on the first axis ([tokens, 1, hidden]).
    """
    logits = next(output for output in model.outputs if "logits" in output.get_names())
    lm_head = logits.get_node().input_value(0).get_node()
    if lm_head.get_type_name() not in ("MatMul", "MXFP4MatMul"):
        raise ValueError(f"unexpected IR: logits come from {lm_head.get_type_name()}, not the lm_head MatMul")
    count = ops.parameter([1], ov.Type.i64, name=LOGITS_COUNT)
    count.output(0).set_names({LOGITS_COUNT})
    hidden = lm_head.input_value(0)
    last_positions = ops.slice(hidden, ops.negative(count), ops.constant([np.iinfo(np.int64).max]),
                               ops.constant([1]), ops.constant([0]))
    lm_head.input(0).replace_source_output(last_positions.output(0))
    model.add_parameters([count])
    model.validate_nodes_and_infer_types()
    return model


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
