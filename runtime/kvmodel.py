"""One level's compiled stateful IR with a KV cache that follows whatever token sequence it is asked about.

Rollback after a rejection is by masking (see docs/kv-rollback.md for the measurement behind the choice):
rejected entries stay in the OpenVINO state, their attention_mask columns become 0 and position_ids stay
logical, so a rollback costs nothing and never copies the cache. The dead entries are compacted away by one
state rewrite when they outnumber the live ones, which keeps the amortized cost per round flat in context.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from .mxfp4_kernel import Kernel

PRECISIONS = ("bf16", "f32")
COMPACTION_SLACK = 64  # dead slots tolerated beyond as many as there are live ones
LOGITS_COUNT = "logits_count"


class KVModel:
    def __init__(self, core: ov.Core, folder: Path, precision: str, kernel: Kernel, threads: int = 0):
        config = {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": "f16" if precision == "bf16" else "f32",
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        ir = kernel.read_model(core, folder / "openvino_model.xml", precision)
        self.kernel = ir.kernel
        self.compiled = core.compile_model(_logits_for_last_positions(ir.model), "CPU", config)
        self._weights = ir.weights
        self.request = self.compiled.create_infer_request()
        self.cached: list[int] = []          # tokens whose keys and values are live in the cache, in order
        self.mask = np.zeros(0, np.int64)    # one entry per physical cache slot: 1 live, 0 rolled back

    def logits(self, tokens: list[int], last: int) -> np.ndarray:
        """Logits (float32, [last, vocab]) at the final `last` positions of `tokens`.

        The cache is first rolled back to the longest prefix it shares with `tokens` (leaving at least
        `last` positions to compute), then only the remaining tokens run through the model.
        """
        keep = min(_common_prefix(self.cached, tokens), len(tokens) - last)
        self._roll_back(keep)
        new = tokens[keep:]
        mask = np.concatenate([self.mask, np.ones(len(new), np.int64)])
        self.request.infer({
            "input_ids": np.array([new], np.int64),
            "attention_mask": mask[None],
            "position_ids": np.arange(keep, keep + len(new), dtype=np.int64)[None],
            "beam_idx": np.zeros(1, np.int32),
            LOGITS_COUNT: np.array([last], np.int64),
        })
        self.mask = mask
        self.cached = list(tokens)
        return self.request.get_tensor("logits").data[0].astype(np.float32)

    def reset(self) -> None:
        self.request.reset_state()
        self.mask = np.zeros(0, np.int64)
        self.cached = []

    def _roll_back(self, keep: int) -> None:
        if keep == 0:
            self.reset()
        else:
            live = np.flatnonzero(self.mask)
            self.mask[live[keep:]] = 0
            if len(self.mask) > 2 * keep + COMPACTION_SLACK:
                self._compact(live[:keep])
        self.cached = self.cached[:keep]

    def _compact(self, live: np.ndarray) -> None:
        """Drop dead slots from every KV state tensor ([batch, heads, slots, head_dim]) in one rewrite."""
        for state in self.request.query_state():
            data = state.state.data
            state.state = ov.Tensor(np.ascontiguousarray(data[:, :, live, :]))
        self.mask = np.ones(len(live), np.int64)


def _logits_for_last_positions(model: ov.Model) -> ov.Model:
    """Compute the lm_head only for the positions whose logits are read, given by a new input.

    Without it a prompt of 300 tokens runs the 151,936-wide lm_head 300 times and copies all the results out,
    though only the last position's logits are used; a verify step needs the last k + 1.
    """
    logits = next(output for output in model.outputs if "logits" in output.get_names())
    lm_head = logits.get_node().input_value(0).get_node()
    if lm_head.get_type_name() not in ("MatMul", "MXFP4MatMul"):
        raise ValueError(f"unexpected IR: logits come from {lm_head.get_type_name()}, not the lm_head MatMul")
    count = ops.parameter([1], ov.Type.i64, name=LOGITS_COUNT)
    count.output(0).set_names({LOGITS_COUNT})
    hidden = lm_head.input_value(0)
    last_positions = ops.slice(hidden, ops.negative(count), ops.constant([np.iinfo(np.int64).max]),
                               ops.constant([1]), ops.constant([1]))
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
