"""GGUF file → BF16 Hugging Face checkpoint (safetensors + tokenizer files).

transformers dequantizes GGUF on load but refuses to save a model loaded that way ("quantized with gguf and
is not serializable"). So the weights are loaded once, then moved into a fresh model built from the same
config without its quantization_config, which saves normally.
"""

from __future__ import annotations

import time
from pathlib import Path

from specqd.models.cache import atomic_path, say

from .errors import ExportError


def read_gguf_architecture(gguf: Path) -> str:
    """Read `general.architecture` without loading tensors, so bad input fails in milliseconds."""
    import gguf as gguf_lib

    try:
        reader = gguf_lib.GGUFReader(str(gguf))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except KeyError:
        raise ExportError(f"{gguf}: GGUF file has no general.architecture field") from None
    except Exception as error:  # the gguf package raises ValueError, struct errors, IndexError...
        raise ExportError(f"{gguf}: not a readable GGUF file ({error}); the file is corrupt or truncated") from None


def convert(gguf: Path, out: Path) -> Path:
    """Write the BF16 checkpoint for `gguf` to `out` atomically; return `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    say(f"converting {gguf.name} to a BF16 checkpoint (dequantizing; about 2 minutes for 1.5B parameters)")
    with atomic_path(out) as scratch:
        folder, name = str(gguf.parent), gguf.name
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.bfloat16)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.bfloat16
        state = loaded.state_dict()
        del loaded
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        report = fresh.load_state_dict(state, strict=True)
        if report.missing_keys or report.unexpected_keys:
            raise ExportError(f"{gguf}: converted weights do not match the architecture "
                              f"(missing {report.missing_keys}, unexpected {report.unexpected_keys})")
        del state
        fresh.save_pretrained(scratch)
        del fresh
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(scratch)
    say(f"converted {gguf.name} in {time.perf_counter() - started:.0f} s")
    return out
