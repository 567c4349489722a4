"""What the quantizer reads in an exported graph: its weight MatMuls, ViT blocks and block layers, the nodes a
candidate keeps fp32, the 8-bit weights of a quantized copy; and initializers' values, read and overwritten in
place (inline or in the external data file)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..configs import CONFIG_METADATA_KEY

# Node-name patterns (regular expressions on the exported graph's names) kept in fp32: the MANO layer and the MANO
# head. Measured on the full-size random model (docs/QUANTIZATION.md): the head is <1% of the FLOPs but quantizing
# it adds ~2 mm (8.4 -> 6.2 mm max with it in fp32).
FP32_NODES = (r"^/net/mano/", r"^/net/mano_head/")
# The ViT's blocks in the exported graph, numbered from the input. An error made early is carried through every
# later block: measured per layer, the first blocks carry most of it (docs/QUANTIZATION.md), so blocks are kept
# fp32 from the first on.
BLOCK_NODES = re.compile(r"^/net/backbone/blocks\.(\d+)/")


def load_graph(src: Path):
    """The graph (``onnx.ModelProto``) of ``src`` without its weights; ValueError when it is not from
    ``hamer.export``."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False)
    if CONFIG_METADATA_KEY not in {p.key for p in graph.metadata_props}:
        raise ValueError(f"{src} has no '{CONFIG_METADATA_KEY}' metadata: not exported by hamer.export")
    return graph


def weight_matmuls(graph) -> list:
    """The MatMul nodes whose second input is a weight (an initializer)."""
    constants = {i.name for i in graph.graph.initializer}
    return [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in constants]


def fp32_node_names(graph, patterns: Iterable[str], blocks: int, layers: Iterable[str] = ()) -> list[str]:
    """Names of the nodes matching ``patterns``, inside the first ``blocks`` ViT blocks, or inside one of the block
    layers ``layers`` (module paths within a block, e.g. "attn.proj") of any block."""
    compiled = [re.compile(p) for p in patterns]
    prefixes = tuple(layer.replace(".", "/") + "/" for layer in layers)

    def kept(name: str) -> bool:
        block = BLOCK_NODES.match(name)
        if block is not None and (int(block.group(1)) < blocks or name[block.end():].startswith(prefixes)):
            return True
        return any(p.search(name) for p in compiled)

    return [n.name for n in graph.graph.node if kept(n.name)]


def quantized_matmuls(graph, fp32: Iterable[str]) -> list[str]:
    """Names of the weight MatMuls not among the node names ``fp32``: the ones a candidate makes 8-bit."""
    kept = set(fp32)
    return [n.name for n in weight_matmuls(graph) if n.name not in kept]


class ViTLayout:
    """The ViT blocks of an exported ``graph``: ``depth`` blocks; ``matmuls``, their weight MatMuls by node name
    with their block layer (module path within the block, e.g. "attn.proj") and multiply-adds per token (K x N of
    the weight); ``layers``, the block layers in graph order; ``macs``, each layer's multiply-adds over all
    blocks; ``total``, all of them."""

    def __init__(self, graph) -> None:
        self.graph = graph
        found = {int(m.group(1)) for n in graph.graph.node if (m := BLOCK_NODES.match(n.name))}
        self.depth = max(found) + 1 if found else 0
        dims = {t.name: t.dims for t in graph.graph.initializer}
        self.matmuls: dict[str, tuple[str, int]] = {}
        for node in weight_matmuls(graph):
            if block := BLOCK_NODES.match(node.name):
                k, n = dims[node.input[1]]
                self.matmuls[node.name] = (node.name[block.end():].rsplit("/", 1)[0].replace("/", "."), int(k) * int(n))
        self.layers = list(dict.fromkeys(layer for layer, _ in self.matmuls.values()))
        self.macs = {layer: sum(m for kind, m in self.matmuls.values() if kind == layer) for layer in self.layers}
        self.total = sum(m for _, m in self.matmuls.values())

    def share(self, blocks: int, layers: tuple[str, ...]) -> float:
        """The fraction of the ViT's weight multiply-adds left fp32 with the first ``blocks`` blocks and the block
        layers ``layers`` of every block fp32."""
        kept = set(fp32_node_names(self.graph, (), blocks, layers))
        return sum(m for name, (_, m) in self.matmuls.items() if name in kept) / max(self.total, 1)


def read_tensor(tensor, folder: Path) -> np.ndarray:
    """The array of an initializer (``onnx.TensorProto``), read from its external data file under ``folder`` when
    it has one."""
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    if uses_external_data(tensor):
        tensor = type(tensor).FromString(tensor.SerializeToString())
        load_external_data_for_tensor(tensor, str(folder))
    return numpy_helper.to_array(tensor)


def write_tensor(tensor, folder: Path, value: np.ndarray) -> None:
    """Overwrite the data of an initializer with ``value`` (same dtype and size): in its external data file under
    ``folder`` when it has one, else in ``tensor`` itself (the graph must then be saved). ValueError when the
    sizes differ."""
    from onnx import numpy_helper
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    if not uses_external_data(tensor):
        tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
        return
    info = ExternalDataInfo(tensor)
    data = np.ascontiguousarray(value).tobytes()
    if info.length is not None and info.length != len(data):
        raise ValueError(f"{tensor.name}: {len(data)} bytes to write over {info.length}")
    with open(folder / info.location, "r+b") as file:
        file.seek(info.offset or 0)
        file.write(data)


class QuantizedWeight(NamedTuple):
    """An 8-bit weight MatMul of a quantized model: its name, its input activation, the fp32 weight's name in the
    source model, and the names of its DequantizeLinear's (q, scale, zero point) initializers."""

    matmul: str
    activation: str
    weight: str
    grid: tuple[str, str, str]


def quantized_weights(src: Path, path: Path) -> tuple[object, dict, list[QuantizedWeight]]:
    """The graph of the quantized model at ``path`` (without weights), its initializers by name, and its 8-bit
    weight MatMuls (made from ``src``)."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False)
    inputs = {n.name: (n.input[0], n.input[1]) for n in weight_matmuls(graph)}
    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        dequantize = producer.get(node.input[1]) if node.op_type == "MatMul" else None
        if dequantize is not None and dequantize.op_type == "DequantizeLinear" and node.name in inputs:
            found.append(QuantizedWeight(node.name, *inputs[node.name], tuple(dequantize.input)))
    return model, initializers, found
