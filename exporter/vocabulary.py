"""Tokenizer fingerprints: levels of one chain must map text to the same token ids.

A draft proposes token ids that the level above verifies as its own; if the two tokenizers differ in any
id, merge or special token, accepted drafts would be wrong text. The fingerprint covers everything that
decides the id sequence of a text and nothing cosmetic (chat template, model max length).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ExportError

_DECISIVE_PARTS = ("normalizer", "pre_tokenizer", "model", "decoder", "added_tokens")


def fingerprint(checkpoint: Path) -> str:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    except Exception as error:
        raise ExportError(f"{checkpoint}: cannot load its tokenizer ({error})") from None
    if not hasattr(tokenizer, "backend_tokenizer"):
        raise ExportError(f"{checkpoint}: only fast (tokenizer.json) tokenizers are supported")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    decisive = {part: spec.get(part) for part in _DECISIVE_PARTS}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()


def check_same(target_name: str, target_print: str, draft_name: str, draft_print: str) -> None:
    if target_print != draft_print:
        raise ExportError(
            f"the tokenizer of draft {draft_name} differs from the tokenizer of target {target_name} "
            f"(fingerprints {draft_print[:12]} vs {target_print[:12]}); a draft must share the target's vocabulary, "
            "merges and special tokens: choose a draft from the same model family"
        )
