"""`specqd.json`: what an export folder holds, written by the exporter and read by the runtime.

It lives in the runtime package because the runtime must read it without the exporter's heavy
dependencies; the exporter imports it from here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MANIFEST_NAME = "specqd.json"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    pass


@dataclass
class Level:
    name: str              # folder name and chain element, e.g. "target", "target-mxfp4", "draft"
    role: str              # "target" for the BF16 target; "draft" for every other level, its quantized copies included
    format: str            # "bf16", "mxfp4", "int4_sym", ...
    path: str              # relative to the export folder
    bytes: int             # size on disk of the level folder
    bf16_bytes: int        # size of the same model's BF16 level, for compression ratios
    source: str            # registry name, checkpoint folder or GGUF file it came from
    source_sha256: str
    tokenizer_sha256: str  # fingerprint of vocabulary, merges and special tokens; equal across levels
    embeddings: str        # "bf16" when embedding and lm_head stay BF16, else the level's format
    export_seconds: float  # time to make this folder (a quantized level: its quantization only)
    # A draft level whose lm_head keeps only the N most frequent tokens (exporter/reduced_vocabulary.py): N, and
    # the file in its folder listing the full-vocabulary id of each of its N logits. None: the whole vocabulary.
    vocabulary: int | None = None
    vocabulary_ids: str | None = None


@dataclass
class Manifest:
    levels: list[Level]
    tools: dict[str, str]
    version: int = MANIFEST_VERSION
    tuned: dict | None = None  # `specqd tune`'s choice: chain, k per level, predicted and measured speed

    def level(self, name: str) -> Level:
        for level in self.levels:
            if level.name == name:
                return level
        known = ", ".join(level.name for level in self.levels)
        raise ManifestError(f"unknown level {name!r}; this export has: {known}")

    def write(self, folder: Path) -> None:
        """Atomically: `specqd tune` rewrites the manifest of an existing export."""
        scratch = folder / f".{MANIFEST_NAME}.partial"
        scratch.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(scratch, folder / MANIFEST_NAME)

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise ManifestError(f"{folder}: not a specqd export (no {MANIFEST_NAME}); create one with export-mxfp4")
        try:
            data = json.loads(path.read_text())
            if data.get("version") != MANIFEST_VERSION:
                raise ManifestError(f"{path}: manifest version {data.get('version')} is not {MANIFEST_VERSION}; "
                                    "export again with this version of specqd")
            return cls(levels=[Level(**level) for level in data["levels"]], tools=data["tools"],
                       tuned=data.get("tuned"))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ManifestError(f"{path}: corrupt manifest ({error}); export again") from None
