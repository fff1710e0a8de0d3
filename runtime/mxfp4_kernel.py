"""specqd's MXFP4 matmul (runtime/csrc) for MXFP4 levels: finding its library, loading it, and pointing an IR at it.

OpenVINO's CPU plugin decompresses MXFP4 weights once per activation row, so a verify step over 8 tokens costs
about 3x a step over 1 and an MXFP4 middle level is as slow as the BF16 target when it verifies. The kernel
decodes each block of 32 weights once for all rows (docs/mxfp4-kernel.md has the per-shape figures).

Where the library comes from, one rule: it is the file libspecqd_mxfp4.so of the installed specqd.runtime
package, compiled when the package was built (scikit-build-core runs runtime/csrc/CMakeLists.txt for
`pip wheel .`, `pip install .` and the editable `pip install -e .` of scripts/setup.sh). Nothing is compiled
at run time, so an app that ships the wheel ships no compiler. In a checkout, re-run scripts/setup.sh after
editing runtime/csrc.

An MXFP4 IR is rewritten as text before it is read: every MatMul fed by NNCF's MXFP4 decompression subgraph
becomes an MXFP4MatMul fed by u8 views of the same bytes of the .bin, so nothing is copied or saved. Without
the library, on a CPU without AVX512-BF16, or for weights whose scales the kernel cannot represent exactly, a
level keeps OpenVINO's own path; one log line per MXFP4 level says which path it runs and why.
"""

from __future__ import annotations

import ctypes
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import openvino as ov

from specqd.models.cache import say

from .cpu import cpu_has

OPENVINO_KERNEL = "openvino-cpu"
SPECQD_KERNEL = "specqd-mxfp4"
LIBRARY = "libspecqd_mxfp4.so"
TILE = 4                     # outputs per tile in the kernel's packed layout (kTile)
SCALES = (2, 252)            # e8m0 scales the kernel represents exactly (scales_supported)


def library_path() -> Path:
    """The library packaged with specqd.runtime (a resource, so an editable install finds its built copy too)."""
    return Path(str(files(__package__) / LIBRARY))


@dataclass
class Kernel:
    """The kernel as one process sees it: a loaded library, or the reason OpenVINO's path runs instead."""
    library: ctypes.CDLL | None
    unavailable: str = ""

    @classmethod
    def find(cls, on_amx: bool = False) -> Kernel:
        """The kernel where it is the faster path. On a CPU with AMX, OpenVINO's own MXFP4 path is faster (a 2-core
        Xeon, 1.5B MXFP4 copy: 88 / 120 / 200 ms at 1 / 4 / 8 tokens against the kernel's 154 / 263 / 325,
        docs/mxfp4-kernel.md), so the kernel stays out unless `on_amx` (its own tests and microbenchmarks)."""
        path = library_path()
        if not path.exists():
            return cls(None, f"not in this install ({path} is missing: reinstall specqd)")
        library = ctypes.CDLL(str(path))
        if not library.specqd_mxfp4_cpu_supported():
            return cls(None, "not supported by this CPU (it lacks AVX512-BF16)")
        if cpu_has("amx_bf16") and not on_amx:
            return cls(None, "slower than OpenVINO's AMX path on this CPU")
        return cls(library)

    def matmul(self, x: np.ndarray, nibbles: np.ndarray, scales: np.ndarray, activations: str = "bf16") -> np.ndarray:
        """x [rows, K] @ MXFP4 weights.T -> [rows, O]; nibbles [O, K/2] and scales [O, K/32] as in the IR.

        Packs on every call: for tests and the microbenchmark, not for inference (the op packs once).
        """
        x = np.ascontiguousarray(x, np.float32)
        (outputs, half), inner = nibbles.shape, x.shape[1]
        packed_nibbles, packed_scales = np.empty_like(nibbles), np.empty_like(scales)
        self.library.specqd_mxfp4_pack(_pointer(np.ascontiguousarray(nibbles)), _pointer(np.ascontiguousarray(scales)),
                                       ctypes.c_size_t(inner), ctypes.c_size_t(outputs), _pointer(packed_nibbles),
                                       _pointer(packed_scales))
        y = np.empty((x.shape[0], outputs), np.float32)
        self.library.specqd_mxfp4_matmul(_pointer(x), ctypes.c_size_t(x.shape[0]), ctypes.c_size_t(inner),
                                         _pointer(packed_nibbles), _pointer(packed_scales), ctypes.c_size_t(outputs),
                                         _pointer(y), ctypes.c_int(activations == "f32"))
        return y

    def register(self, core: ov.Core) -> None:
        if self.library is not None:
            core.add_extension(self.library._name)

    def read_model(self, core: ov.Core, xml: Path, activations: str) -> LoadedIR:
        """The IR with its MXFP4 MatMuls (and the embedding lookup over them) on this kernel when it can take them.

        `core` must have had register() called; activations is the inference precision (bf16 or f32). For an
        IR with MXFP4 weights, says which path its MatMuls take.
        """
        text = xml.read_text()
        if "f4e2m1" not in text:
            return LoadedIR(core.read_model(xml), OPENVINO_KERNEL)
        if self.library is None:
            say(f"{xml.parent.name}: MXFP4 matmuls on OpenVINO's own path: specqd's kernel is {self.unavailable}")
            return LoadedIR(core.read_model(xml), OPENVINO_KERNEL)
        weights = np.memmap(xml.with_suffix(".bin"), np.uint8, mode="c")  # copy-on-write: shareable, never written
        text, count = rewrite(text, weights, activations)
        say(f"{xml.parent.name}: {count} MXFP4 matmuls on {SPECQD_KERNEL if count else OPENVINO_KERNEL}"
            f" ({activations} activations)")
        if count == 0:
            return LoadedIR(core.read_model(xml), OPENVINO_KERNEL)
        return LoadedIR(core.read_model(text, ov.Tensor(weights, shared_memory=True)), SPECQD_KERNEL, weights)


def _pointer(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


@dataclass
class LoadedIR:
    model: ov.Model
    kernel: str
    weights: np.memmap | None = None  # the .bin that model's constants point into: keep it while the model lives


def rewrite(xml: str, weights: np.ndarray, activations: str) -> tuple[str, int]:
    """Put an IR's MXFP4 weights on the kernel: return the new IR and how many MatMuls moved.

    The decompression NNCF writes is Const f4e2m1 [O, K/32, 32] and Const f8e8m0 [O, K/32, 1], both Converted,
    Multiplied, Reshaped to [O, K] and Converted. Each MatMul(x, decompression, transpose_b) becomes
    MXFP4MatMul(x, nibbles, scales), and the embedding's Gather(decompression, indices, axis 0) becomes
    MXFP4Gather(indices, nibbles, scales): both read the two Consts' bytes as u8 [O, K/2] and [O, K/32]. The
    decompression, left without users, is dropped; OpenVINO would otherwise fold the embedding's into f32.
    """
    graph = _Graph(ET.fromstring(xml))
    count = 0
    for layer in list(graph.layers.values()):
        if layer.get("type") == "MatMul" and (found := _mxfp4_weights(graph, layer, weights)):
            graph.replace(layer, "MXFP4MatMul", {"activations": activations}, keep=0, tables=found)
            count += 1
        elif layer.get("type") == "Gather" and (found := _mxfp4_table(graph, layer, weights)):
            graph.replace(layer, "MXFP4Gather", {}, keep=1, tables=found)
    return ET.tostring(graph.net, encoding="unicode"), count


class _Graph:
    """An IR's layers and edges, with the lookups and the one edit the rewrite needs."""

    def __init__(self, net: ET.Element):
        self.net = net
        self.layers = {layer.get("id"): layer for layer in net.iter("layer")}
        self.edges = net.find("edges")
        self.source = {(edge.get("to-layer"), edge.get("to-port")): edge for edge in self.edges}
        self.next_id = max(int(i) for i in self.layers) + 1

    def producer(self, layer: ET.Element, port_index: int = 0) -> ET.Element | None:
        port = layer.find("input").findall("port")[port_index]
        edge = self.source.get((layer.get("id"), port.get("id")))
        return self.layers[edge.get("from-layer")] if edge is not None else None

    def decompression(self, node: ET.Element | None) -> tuple[ET.Element, ET.Element] | None:
        """The f4e2m1 and f8e8m0 Const layers of the MXFP4 decompression that ends at `node`, if it is one."""
        while node is not None and node.get("type") in ("Convert", "Reshape"):
            node = self.producer(node)
        if node is None or node.get("type") != "Multiply":
            return None
        consts = {}
        for index in (0, 1):
            const = self.producer(node, index)
            while const is not None and const.get("type") == "Convert":
                const = self.producer(const)
            if const is None or const.get("type") != "Const":
                return None
            consts[const.find("data").get("element_type")] = const
        nibbles, scales = consts.get("f4e2m1"), consts.get("f8e8m0")
        if nibbles is None or scales is None:
            return None
        shape = _shape(scales)
        return (nibbles, scales) if len(shape) == 3 and shape[2] == 1 else None

    def replace(self, layer: ET.Element, op: str, attributes: dict[str, str], keep: int,
                tables: tuple[ET.Element, ET.Element]) -> None:
        """Make `layer` the specqd op `op` over input `keep` and u8 views of the nibbles and scales Consts."""
        layer.set("type", op)
        layer.set("version", "specqd")
        data = layer.find("data")
        if data is None:
            data = ET.SubElement(layer, "data")
        data.attrib = attributes
        inputs = layer.find("input")
        for index, port in enumerate(inputs.findall("port")):
            if index != keep:
                inputs.remove(port)
                self.edges.remove(self.source[(layer.get("id"), port.get("id"))])
        outputs, blocks = _shape(tables[1])[:2]
        for const, shape in ((tables[0], [outputs, blocks * 16]), (tables[1], [outputs, blocks])):
            port_id = str(1 + max(int(port.get("id")) for port in layer.iter("port")))
            self.net.find("layers").append(_u8_view(const, shape, str(self.next_id)))
            _add_port(inputs, port_id, shape)
            ET.SubElement(self.edges, "edge", {"from-layer": str(self.next_id), "from-port": "0",
                                               "to-layer": layer.get("id"), "to-port": port_id})
            self.next_id += 1


def _mxfp4_weights(graph: _Graph, matmul: ET.Element, weights: np.ndarray) -> tuple[ET.Element, ET.Element] | None:
    """The MXFP4 Consts behind a MatMul's weight input, if the kernel can take them."""
    data = matmul.find("data")
    if data is None or data.get("transpose_a") != "false" or data.get("transpose_b") != "true":
        return None
    found = graph.decompression(graph.producer(matmul, 1))
    if found is None or _shape(found[1])[0] % TILE:
        return None
    scales = found[1].find("data")
    offset, size = int(scales.get("offset")), int(scales.get("size"))
    values = weights[offset:offset + size]
    if values.min() < SCALES[0] or values.max() > SCALES[1]:
        return None
    return found


def _mxfp4_table(graph: _Graph, gather: ET.Element, weights: np.ndarray) -> tuple[ET.Element, ET.Element] | None:
    """The MXFP4 Consts of the table a Gather looks rows up in (axis 0), if it is one."""
    data, axis = gather.find("data"), graph.producer(gather, 2)
    if data is None or data.get("batch_dims") != "0" or axis is None or axis.get("type") != "Const":
        return None
    axis_data = axis.find("data")
    dtype = {"i32": np.int32, "i64": np.int64}.get(axis_data.get("element_type"))
    offset, size = int(axis_data.get("offset")), int(axis_data.get("size"))
    if dtype is None or np.frombuffer(weights[offset:offset + size].tobytes(), dtype).tolist() != [0]:
        return None
    return graph.decompression(graph.producer(gather, 0))


def _shape(const: ET.Element) -> list[int]:
    return [int(d) for d in const.find("data").get("shape").split(",") if d.strip()]


def _u8_view(const: ET.Element, shape: list[int], layer_id: str) -> ET.Element:
    """A Const layer over the same bytes of the .bin as `const`, typed u8."""
    data = const.find("data")
    layer = ET.Element("layer", id=layer_id, name=f"{const.get('name')}/u8", type="Const", version="opset1")
    ET.SubElement(layer, "data", element_type="u8", shape=", ".join(map(str, shape)), offset=data.get("offset"),
                  size=data.get("size"))
    _add_port(ET.SubElement(layer, "output"), "0", shape)
    return layer


def _add_port(parent: ET.Element, port_id: str, shape: list[int]) -> None:
    port = ET.SubElement(parent, "port", id=port_id, precision="U8")
    for dim in shape:
        ET.SubElement(port, "dim").text = str(dim)
