"""One level's compiled IR with a paged KV cache that several token sequences share, block by block.

The exported stateful IR is rewritten to OpenVINO's paged-attention form (the one openvino-genai runs): the KV
cache becomes tensors of 32-token blocks that this class owns, and each call says, per sequence, which blocks
hold it and how many cached positions are valid. Two things follow:
- rolling back rejected draft tokens is free and leaves nothing behind: the next call starts from the shorter
  valid length and overwrites the stale slots (docs/kv-rollback.md has the measurements behind the choice);
- one forward pass can extend many sequences at once (a server's requests), each by its own number of tokens,
  and give each the logits it asks for: that is how a batch of requests is verified in a single pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
from openvino._offline_transformations import paged_attention_transformation

from . import onnx_level
from .mxfp4_kernel import Kernel
from .vocabulary_map import VocabularyMap

PRECISIONS = ("bf16", "f32")
BLOCK = 32               # tokens per KV block: the only size OpenVINO's CPU plugin accepts
FIRST_CAPACITY = 2048    # tokens the cache holds before it first grows
LOGITS_INDICES = "logits_indices"
WARM_UP_TOKENS = 8       # a warm-up pass's length: any length makes the CPU plugin prepare every weight


class CacheFull(RuntimeError):
    """The level's block pool reached its limit; the caller frees sequences or waits."""


def cpu_config(precision: str, threads: int = 0) -> dict:
    """Compile properties of every level: one stream on all cores, an f16 KV cache in bf16 precision."""
    config = {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": "f16" if precision == "bf16" else "f32",
              "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


@dataclass
class LoadTimes:
    """Where one level's load time goes, in seconds (scripts/footprint.py reports it per phase).

    compile_model runs on one core; the first pass runs on all of them and costs far more than later passes,
    because OpenVINO's CPU plugin repacks every weight for its kernels then (outside any node's own time).
    """
    read: float = 0.0       # read the IR; an MXFP4 IR is first rewritten for specqd's kernel (mxfp4_kernel)
    rewrite: float = 0.0    # to paged attention, and the lm_head over chosen rows only
    compile: float = 0.0    # OpenVINO's compile_model
    warm_up: float = 0.0    # the first forward pass (0 until warm_up() or a first `run`)


@dataclass
class Sequence:
    """One token sequence's place in a level's cache."""
    cached: list[int] = field(default_factory=list)   # tokens whose keys and values are valid, in order
    blocks: list[int] = field(default_factory=list)   # pool blocks holding them, in order
    computed: int = 0                                  # tokens run through the model for it


class KVModel:
    def __init__(self, core: ov.Core, folder: Path, precision: str, kernel: Kernel, threads: int = 0,
                 max_blocks: int | None = None, vocabulary: VocabularyMap | None = None):
        started = time.perf_counter()
        if onnx_level.is_onnx_level(folder):
            ir = onnx_level.read(core, folder, precision, kernel)
        else:
            ir = kernel.read_model(core, folder / "openvino_model.xml", precision)
        self.kernel = ir.kernel
        read = time.perf_counter()
        paged_attention_transformation(ir.model)
        model = _logits_for_chosen_positions(ir.model)
        rewritten = time.perf_counter()
        self.compiled = core.compile_model(model, "CPU", cpu_config(precision, threads))
        self.load_times = LoadTimes(read - started, rewritten - read, time.perf_counter() - rewritten)
        self._weights = ir.weights
        self.vocabulary = vocabulary         # a reduced-vocabulary level: its logits go back to full-vocabulary ids
        self.request = self.compiled.create_infer_request()
        self._caches = [port for port in self.compiled.inputs if port.get_any_name().startswith(("key_cache.", "value_cache."))]
        self.max_blocks = max_blocks         # None: the pool grows as long as memory lasts
        self._pool_blocks = 0                # blocks the cache tensors hold
        self._free: list[int] = []
        self.solo = Sequence()               # the sequence of `logits`, for one-sequence callers (profile, tune)
        self.passes = 0                      # forward passes since load (server metrics)
        self.tokens_computed = 0             # tokens run through the model since load
        self.seconds = 0.0                   # spent in forward passes since load

    # One sequence: what profiling and tuning use.
    def logits(self, tokens: list[int], last: int) -> np.ndarray:
        """Logits (float32, [last, vocab]) at the final `last` positions of `tokens`, in the solo sequence."""
        return self.run([(self.solo, tokens, last)])[0]

    def reset(self) -> None:
        self.free(self.solo)
        self.solo.computed = 0

    def warm_up(self) -> None:
        """Run the costly first pass now (on a few arbitrary tokens) unless it ran, so that the next runs at speed."""
        if self.passes == 0:
            self.logits(list(range(WARM_UP_TOKENS)), 1)
            self.reset()

    # Many sequences in one pass.
    def run(self, batch: list[tuple[Sequence, list[int], int]]) -> list[np.ndarray]:
        """One forward pass over every (sequence, tokens, last) entry: the logits at each one's final `last` positions.

        For each entry only the tokens after the longest prefix its cache shares with `tokens` run through the
        model (leaving at least `last` positions to compute); its cache entries past that prefix are overwritten.
        """
        news, positions, past, begins, block_ids, block_begins, rows = [], [], [], [0], [], [0], []
        for sequence, tokens, last in batch:
            keep = min(_common_prefix(sequence.cached, tokens), len(tokens) - last)
            self._grow(sequence, len(tokens))
            news.extend(tokens[keep:])
            sequence.computed += len(tokens) - keep
            positions.extend(range(keep, len(tokens)))
            past.append(keep)
            begins.append(len(news))
            rows.extend(range(len(news) - last, len(news)))
            block_ids.extend(sequence.blocks[:-(-len(tokens) // BLOCK)])
            block_begins.append(len(block_ids))
        started = time.perf_counter()
        first = self.passes == 0
        self.request.infer({
            "input_ids": np.array(news, np.int64),
            "position_ids": np.array(positions, np.int64),
            "past_lens": np.array(past, np.int32),
            "subsequence_begins": np.array(begins, np.int32),
            "block_indices": np.array(block_ids, np.int32),
            "block_indices_begins": np.array(block_begins, np.int32),
            "max_context_len": np.array(max(len(tokens) for _, tokens, _ in batch), np.int32),
            LOGITS_INDICES: np.array(rows, np.int64),
        })
        for sequence, tokens, _ in batch:
            sequence.cached = list(tokens)
        self.seconds += time.perf_counter() - started
        if first:
            self.load_times.warm_up = time.perf_counter() - started
        self.tokens_computed += len(news)
        self.passes += 1
        logits = self.request.get_tensor("logits").data[:, 0].astype(np.float32)
        if self.vocabulary is not None:
            logits = self.vocabulary.expand(logits)
        ends = np.cumsum([last for _, _, last in batch])
        return np.split(logits, ends[:-1])

    def close(self) -> None:
        """Drop the compiled model, its request and the KV cache tensors, so that their memory is freed."""
        self.request = self.compiled = self._weights = None
        self._caches, self._free, self._pool_blocks = [], [], 0

    def free(self, sequence: Sequence) -> None:
        """Give a finished sequence's blocks back to the pool."""
        self._free.extend(sequence.blocks)
        sequence.blocks, sequence.cached = [], []

    @property
    def blocks_used(self) -> int:
        return self._pool_blocks - len(self._free)

    @property
    def blocks_total(self) -> int:
        """Blocks the pool may hold: its limit, or what it holds now when unlimited."""
        return self.max_blocks or self._pool_blocks

    def blocks_free(self) -> int:
        return self.blocks_total - self.blocks_used

    def shares_cache_layout(self, other: "KVModel") -> bool:
        """Same layers, heads, head size and precision: one model's keys and values fit the other's cache."""
        return [(p.get_any_name(), p.get_element_type(), str(p.get_partial_shape())) for p in self._caches] == \
               [(p.get_any_name(), p.get_element_type(), str(p.get_partial_shape())) for p in other._caches]

    def adopt_cache(self, sequence: Sequence, other: "KVModel", theirs: Sequence) -> None:
        """Give `sequence` the keys and values `other` holds for `theirs`, instead of computing them.

        Used for a quantized copy of the target: the target's own cache of the prompt is as good a context
        for it as its own (better, if anything), and copying a few MB costs nothing next to a prompt read.
        """
        self._grow(sequence, len(theirs.cached))
        count = -(-len(theirs.cached) // BLOCK)
        mine_ids, their_ids = sequence.blocks[:count], theirs.blocks[:count]
        for mine, port in zip(self._caches, other._caches):
            self.request.get_tensor(mine).data[mine_ids] = other.request.get_tensor(port).data[their_ids]
        sequence.cached = list(theirs.cached)

    def _grow(self, sequence: Sequence, tokens: int) -> None:
        """Give `sequence` enough blocks for `tokens` positions, growing the pool (doubling) when it runs out."""
        needed = -(-tokens // BLOCK) - len(sequence.blocks)
        if needed <= 0:
            return
        if needed > len(self._free):
            self._grow_pool(self._pool_blocks + needed - len(self._free))
        sequence.blocks.extend(self._free[:needed])
        del self._free[:needed]

    def _grow_pool(self, at_least: int) -> None:
        blocks = max(FIRST_CAPACITY // BLOCK, 2 * self._pool_blocks, at_least)
        if self.max_blocks is not None:
            if at_least > self.max_blocks:
                raise CacheFull(f"the KV cache needs {at_least} blocks; its limit is {self.max_blocks}")
            blocks = min(blocks, self.max_blocks)
        for port in self._caches:
            shape = port.get_partial_shape().get_min_shape()
            shape[0] = blocks
            grown = ov.Tensor(port.get_element_type(), shape)
            if self._pool_blocks:
                grown.data[:self._pool_blocks] = self.request.get_tensor(port).data
            self.request.set_tensor(port, grown)
        self._free.extend(range(self._pool_blocks, blocks))
        self._pool_blocks = blocks


def _logits_for_chosen_positions(model: ov.Model) -> ov.Model:
    """Compute the lm_head only for the token rows whose logits are read, given by a new input.

    Without it a prompt of 300 tokens runs the 151,936-wide lm_head 300 times and copies all the results out,
    though only the last position's logits are used; a verify step needs the last k + 1 of each sequence in the
    batch (openvino-genai gathers the same way). Paged attention puts the tokens on the first axis
    ([tokens, 1, hidden]).
    """
    logits = next(output for output in model.outputs if "logits" in output.get_names())
    lm_head = logits.get_node().input_value(0).get_node()
    if lm_head.get_type_name() not in ("MatMul", "MXFP4MatMul"):
        raise ValueError(f"unexpected IR: logits come from {lm_head.get_type_name()}, not the lm_head MatMul")
    indices = ops.parameter([-1], ov.Type.i64, name=LOGITS_INDICES)
    indices.output(0).set_names({LOGITS_INDICES})
    chosen = ops.gather(lm_head.input_value(0), indices, ops.constant(0))
    lm_head.input(0).replace_source_output(chosen.output(0))
    model.add_parameters([indices])
    model.validate_nodes_and_infer_types()
    return model


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
