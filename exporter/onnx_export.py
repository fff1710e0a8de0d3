"""A Hugging Face checkpoint → an ONNX causal LM with past key/values, in the form `export-mxfp4` reads back.

torch's dynamo exporter at opset 23 writes attention as ONNX's own `Attention` op, which OpenVINO turns into
ScaledDotProductAttention: the op the runtime's paged-attention rewrite needs. Opset 18 (and every exporter
built on it: TorchScript, optimum-onnx) writes attention decomposed into MatMul/Softmax, which the runtime
cannot drive (see onnx_source.py). Inputs and outputs carry optimum's names (`past_key_values.N.key`,
`present.N.key`, ...), the names optimum-intel's `patch_stateful` looks for. Weights are written in f32: ONNX
runtimes do not all take bf16, and f32 holds the BF16 checkpoint's values exactly.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.utils import logging as transformers_logging

from specqd.models.cache import say
from specqd.runtime.onnx_level import ONNX_NAME

from .export import replacing

OPSET = 23  # the first opset with ONNX's Attention op; 18 writes it decomposed (what export-mxfp4 refuses)
# Everything beside the weights that a tokenizer or config loader reads; the ONNX carries none of it.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "chat_template.jinja")


def export_onnx(checkpoint: Path, out: Path, opset: int = OPSET) -> Path:
    """Write `out`/model.onnx (+ model.onnx.data) with `checkpoint`'s config and tokenizer files.

    `out` appears whole or not at all, and replaces an existing folder only once complete.
    """
    transformers_logging.set_verbosity_error()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    started = time.perf_counter()
    say(f"exporting {checkpoint} to ONNX (torch dynamo, opset {opset}, f32 weights)")
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    wrapper = FlatCache(model)
    example, dynamic_shapes, input_names, output_names = _example_inputs(model.config)
    with replacing(out) as scratch:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # exporter chatter about guards and dynamic shapes
            torch.onnx.export(wrapper, example, str(scratch / ONNX_NAME), dynamo=True, opset_version=opset,
                              input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes,
                              external_data=True, verbose=False)
        for name in SIDE_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, scratch / name)
    say(f"exported {out / ONNX_NAME} in {time.perf_counter() - started:.0f} s")
    return out / ONNX_NAME


class FlatCache(torch.nn.Module):
    """The model with its KV cache as flat tensors: an ONNX graph takes tensors, not cache objects."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        cache = DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=cache, use_cache=True)
        return (output.logits, *[tensor for layer in output.past_key_values.layers
                                 for tensor in (layer.keys, layer.values)])


def _example_inputs(config) -> tuple[tuple, tuple, list[str], list[str]]:
    """Example tensors (2 sequences, 2 new tokens after 3 cached ones), their dynamic axes, and optimum's names."""
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    batch, new, cached = 2, 2, 3  # no size 1 or 0: torch.export would fix such an axis to it
    ids = torch.zeros((batch, new), dtype=torch.int64)
    mask = torch.ones((batch, cached + new), dtype=torch.int64)
    positions = torch.arange(cached, cached + new, dtype=torch.int64).expand(batch, new)
    past = tuple(torch.zeros((batch, kv_heads, cached, head_size)) for _ in range(2 * layers))
    batch_dim, new_dim, total_dim, past_dim = (torch.export.Dim(name)
                                               for name in ("batch", "sequence", "total", "past"))
    dynamic_shapes = ({0: batch_dim, 1: new_dim}, {0: batch_dim, 1: total_dim}, {0: batch_dim, 1: new_dim},
                      tuple({0: batch_dim, 2: past_dim} for _ in past))
    kv = [f"{layer}.{kind}" for layer in range(layers) for kind in ("key", "value")]
    input_names = ["input_ids", "attention_mask", "position_ids", *[f"past_key_values.{name}" for name in kv]]
    output_names = ["logits", *[f"present.{name}" for name in kv]]
    return (ids, mask, positions, *past), dynamic_shapes, input_names, output_names
