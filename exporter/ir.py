"""Write one level: the BF16 stateful IR of a checkpoint, or a weight-quantized copy of such an IR.

Every level folder is self-contained (model IR, tokenizer and detokenizer IRs, config and tokenizer files),
so it also loads in optimum-intel or openvino-genai for side-by-side comparison.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

MODEL_XML = "openvino_model.xml"
MODEL_BIN = "openvino_model.bin"

# Weight formats for quantized levels → (NNCF mode name, group size). MXFP formats fix the group at 32
# (one e8m0 scale per 32 weights); NVFP4 at 16; INT8 is per output channel.
QUANTIZED_FORMATS: dict[str, tuple[str, int]] = {
    "mxfp4": ("MXFP4", 32),
    "int4_sym": ("INT4_SYM", 32),
    "nvfp4": ("NVFP4", 16),
    "mxfp8": ("MXFP8_E4M3", 32),
    "int8": ("INT8_ASYM", -1),
}
# 8-bit modes quantize every layer, embedding and lm_head included; only the 4-bit modes have a choice.
FORMATS_WITH_EMBEDDING_CHOICE = ("mxfp4", "int4_sym", "nvfp4")


def export_bf16(checkpoint: Path, out: Path) -> None:
    """optimum's export with an explicit config: without one it quantizes models above 1B params to int8."""
    from optimum.exporters.openvino import main_export
    from optimum.intel import OVConfig
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dozens of TracerWarnings that say nothing about the result
        main_export(str(checkpoint), output=out, task="text-generation-with-past", ov_config=OVConfig(),
                    convert_tokenizer=True, stateful=True)


def quantize(bf16_level: Path, out: Path, weight_format: str, embeddings: str) -> None:
    """Quantize the weights of a BF16 level; `embeddings` is "bf16" to keep embedding and lm_head BF16."""
    import nncf
    import openvino as ov

    mode_name, group_size = QUANTIZED_FORMATS[weight_format]
    options = {"mode": getattr(nncf.CompressWeightsMode, mode_name), "group_size": group_size}
    if weight_format in FORMATS_WITH_EMBEDDING_CHOICE:
        # NNCF's default backup for these modes is 8-bit, which the CPU plugin decompresses whole on every
        # inference for lm_head; BF16 backup (or all layers quantized) avoids that.
        options |= {"all_layers": True} if embeddings == "quantized" else {"backup_mode": nncf.BackupMode.NONE}
    model = ov.Core().read_model(bf16_level / MODEL_XML)
    compressed = nncf.compress_weights(model, **options)
    shutil.copytree(bf16_level, out, ignore=shutil.ignore_patterns(MODEL_XML, MODEL_BIN))
    ov.save_model(compressed, out / MODEL_XML, compress_to_fp16=False)


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())
