"""ONNX export of the whole network (backbone, MANO head and MANO layer); 8-bit copies: ``hamer.quantize``.

The graph maps ``crops`` (N, 3, 256, 256) float32 normalized crops, N dynamic, to the outputs of
:class:`~hamer.models.hamer.HaMeRNet` (names and shapes in ``OUTPUT_NAMES``; left hands still mirrored), so the
file alone gives joints. The model config travels as JSON in the file's ``metadata_props`` (``hamer_config``), so
:class:`~hamer.onnx_runtime.OnnxRuntime` needs no checkpoint. The weights go to one external data file
``<name>.onnx.data`` beside the model: needed over protobuf's 2 GB (ViT-H is 2.7 GB), and ONNX Runtime then maps
them instead of holding the parsed protobuf too (0.5 GB less at load for the 0.7 GB int8 model). The default CPU
path's cache exports with ``write_onnx(consume=True)``, which never holds a second copy of the weights.

The TorchScript exporter is used: the dynamo exporter cannot trace smplx's skinning loop (it indexes with a tensor
of joint parents), while tracing folds that loop into a static graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from .configs import CONFIG_METADATA_KEY, FACES_METADATA_KEY, PathLike
from .files import give_default_permissions
from .models.hamer import OUTPUT_NAMES, HaMeRNet
from .onnx_runtime import ONNX_INPUT, OnnxRuntime
from .torch_runtime import TorchRuntime

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

OPSET = 17
# Largest |onnxruntime - torch| allowed at export, relative to each output's scale max(1, max |torch output|).
# Measured in fp32 on the full-size (ViT-H) random model: at most 1.2e-5 (hand_pose rotations; joints 1.8e-7 m,
# cam_t 1.5e-6 relative). 1e-3 leaves ~100x margin for other CPUs' kernels and trained weights' larger
# activations; a broken graph (wrong op, batch size baked in) is off by 1e-2 or more.
EXPORT_TOLERANCE = 1e-3
_MARKER_LIMIT = 2**24  # float32 holds the integers below it exactly


class _TupleOutputs(nn.Module):
    """The network with its outputs as a tuple in ``OUTPUT_NAMES`` order (what the ONNX exporter needs)."""

    def __init__(self, net: HaMeRNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net(crops)
        return tuple(out[name] for name in OUTPUT_NAMES)


def export_onnx(model: HaMeRNet, cfg: CfgNode, path: PathLike, crops: np.ndarray) -> float:
    """Export ``model`` to ``path``, then check it with ONNX Runtime on ``crops`` against torch (fp32).

    Args:
        model: the network (fp32, any device); exported as is, left unchanged.
        cfg: its config, stored in the file's metadata.
        path: the ``.onnx`` file to write (graph); the weights go to ``<path>.data``.
        crops: (N, 3, 256, 256) float32 normalized crops to trace and check with.
    Returns:
        The largest difference relative to its output's scale (see ``EXPORT_TOLERANCE``).
    Raises:
        RuntimeError: an output differs by more than ``EXPORT_TOLERANCE``; the file is left for inspection.
    """
    path = Path(path).expanduser()
    write_onnx(model, cfg, path, crops)
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).to(next(model.parameters()).device)
    return _check_export(model, path, x)


def write_onnx(model: HaMeRNet, cfg: CfgNode, path: PathLike, crops: np.ndarray, *, consume: bool = False,
               on_saving: Callable[[], None] | None = None) -> None:
    """Write ``model`` as ONNX: the graph to ``path``, every tensor of 1 kB or more to ``<path>.data``; unchecked.

    The exporter writes the weights of a model over 2 GB one file per tensor in a temporary folder; they are then
    copied into the one data file a tensor at a time, so no full copy of the weights is held in memory there.
    ``consume``: for a model discarded afterwards (the ONNX cache's), exported without holding its weights: each
    ``nn.Linear`` weight is moved to a scratch file and replaced by a marker of (almost) no memory, which the
    exporter traces, folds (``MatMul(x, Transpose(W))``) and writes like the weight; each marker is then
    recognized in the written tensors and replaced by the weight, transposed where the exporter transposed the
    marker. Same graph, same values as without ``consume`` (ViT-H: the peak is 2.7 GB lower), and the exporter's
    shape inference is not given the markers (:func:`_shape_inference_without_markers`). ``on_saving``: called
    when the trace is done and the writing starts.
    """
    import onnx

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32)).to(device)
    # trace with at least 2 crops so that nothing specializes on a batch of one
    trace_x = x if len(x) > 1 else x.expand(2, -1, -1, -1)
    dynamic = {name: {0: "batch"} for name in (ONNX_INPUT, *OUTPUT_NAMES)}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp, open(Path(tmp) / "weights.bin", "w+b") as scratch:
        markers = _replace_linear_weights_by_markers(model, scratch) if consume else {}
        traced = Path(tmp) / "traced.onnx"  # over 2 GB the exporter writes one file per tensor beside it
        with torch.no_grad(), warnings.catch_warnings():
            # smplx's Python-side shape logic and unfoldable slices: benign here, and the export is checked later
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "Constant folding", UserWarning)
            with _shape_inference_without_markers() if markers else contextlib.nullcontext():
                torch.onnx.export(_TupleOutputs(model).eval(), (trace_x,), str(traced), input_names=[ONNX_INPUT],
                                  output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=OPSET,
                                  dynamo=False)
        log.info("traced the network to ONNX in %.1f s", time.perf_counter() - start)
        if on_saving is not None:
            on_saving()
        proto = onnx.load(str(traced), load_external_data=False)
        faces = model.mano.faces_tensor.cpu().tolist()
        onnx.helper.set_model_props(proto, {CONFIG_METADATA_KEY: json.dumps(cfg),
                                            FACES_METADATA_KEY: json.dumps(faces)})
        data = _data_file(path)
        with open(data, "wb") as out:
            for tensor in proto.graph.initializer:
                _move_to_data_file(tensor, Path(tmp), out, markers, scratch)
        give_default_permissions(data)
        onnx.save_model(proto, str(path))
    log.info("exported ONNX model %s in %.1f s", path, time.perf_counter() - start)


_Marker = tuple[int, int, int]  # a weight's (offset in the scratch file, rows, columns)


def _replace_linear_weights_by_markers(model: nn.Module, scratch: BinaryIO) -> dict[float, _Marker]:
    """Write each float32 ``nn.Linear`` weight (out, in) to ``scratch`` and replace it by its marker, one at a
    time: row ``r`` of the marker is ``first + [0, 1, ..., in - 1]`` (``first`` unique to the weight; one row of
    memory, expanded). Returns {first: weight's place in ``scratch``}."""
    markers: dict[float, _Marker] = {}
    first = 1
    with torch.no_grad():
        for module in model.modules():
            if not (isinstance(module, nn.Linear) and module.weight.dtype == torch.float32):
                continue
            rows, columns = module.weight.shape
            if first + columns >= _MARKER_LIMIT:
                raise RuntimeError("too many linear-layer columns to mark exactly in float32")
            markers[float(first)] = (scratch.tell(), rows, columns)
            scratch.write(module.weight.detach().cpu().contiguous().numpy().tobytes())
            row = torch.arange(first, first + columns, dtype=torch.float32, device=module.weight.device)
            module.weight = nn.Parameter(row.expand(rows, columns), requires_grad=False)
            first += columns
    scratch.flush()
    return markers


@contextlib.contextmanager
def _shape_inference_without_markers() -> Iterator[None]:
    """Within the block, the exporter's ONNX shape inference of the whole graph is not given the markers (see
    :func:`_replace_linear_weights_by_markers`) among the weights' values: it reads their shapes and types from the
    graph instead. Given them, it copied each weight for every node reading it (ViT-H: some 25 GB of copies in its
    two passes, about 10 s on 2 loaded cores; the C heap kept up to 1.8 GB of them resident, the first run's peak).
    A marker's values cannot change an inferred shape, and the graph written is the same (tested)."""
    exporter = torch._C
    infer = getattr(exporter, "_jit_pass_onnx_graph_shape_type_inference", None)
    if infer is None:  # another torch: the same graph, with the copies
        yield
        return

    def without_markers(graph, params, opset):  # noqa: ANN001, ANN202 (torch's binding)
        kept = {name: value for name, value in params.items()
                if not (isinstance(value, torch.Tensor) and value.dim() == 2 and 0 in value.stride())}
        return infer(graph, kept, opset)

    exporter._jit_pass_onnx_graph_shape_type_inference = without_markers
    try:
        yield
    finally:
        exporter._jit_pass_onnx_graph_shape_type_inference = infer


def _marked_weight(values: np.ndarray, markers: dict[float, _Marker], scratch: BinaryIO) -> np.ndarray | None:
    """The weight whose marker (or transposed marker) ``values`` is, read from ``scratch``; None for another."""
    if values.ndim != 2 or values.dtype != np.float32 or values.size == 0:
        return None
    found = markers.get(float(values[0, 0]))
    if found is None:
        return None
    offset, rows, columns = found
    row = np.arange(values[0, 0], values[0, 0] + columns, dtype=np.float32)
    if values.shape == (rows, columns) and np.array_equal(values, np.broadcast_to(row, (rows, columns))):
        transposed = False
    elif values.shape == (columns, rows) and np.array_equal(values, np.broadcast_to(row[:, None], (columns, rows))):
        transposed = True
    else:
        return None
    scratch.seek(offset)
    weight = np.frombuffer(scratch.read(rows * columns * 4), dtype=np.float32).reshape(rows, columns)
    return np.ascontiguousarray(weight.T) if transposed else weight


def _move_to_data_file(tensor: onnx.TensorProto, folder: Path, out: BinaryIO, markers: dict[float, _Marker],
                       scratch: BinaryIO) -> None:
    """Append ``tensor``'s bytes (inline, or in its own file under ``folder``) to ``out`` and point it there, a
    marker replaced by its weight (see :func:`write_onnx`); inline tensors under 1 kB stay inline (as
    ``onnx.save_model(size_threshold=1024)`` keeps them)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    external = uses_external_data(tensor)
    if external:
        info = ExternalDataInfo(tensor)
        with open(folder / info.location, "rb") as src:
            src.seek(info.offset or 0)
            raw = src.read() if info.length is None else src.read(info.length)
    elif tensor.HasField("raw_data"):
        raw = tensor.raw_data
    else:
        return
    if markers and tensor.data_type == onnx.TensorProto.FLOAT:
        weight = _marked_weight(np.frombuffer(raw, dtype=np.float32).reshape(tuple(tensor.dims)), markers, scratch)
        if weight is not None:
            raw = weight.tobytes()
    if not external and len(raw) < 1024:
        tensor.raw_data = raw
        return
    tensor.ClearField("raw_data")
    offset = out.tell()
    out.write(raw)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", Path(out.name).name), ("offset", str(offset)), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def _data_file(path: Path) -> Path:
    """The external data file of ``path``: ``<name>.onnx.data`` beside it (also onnxruntime's naming)."""
    return path.with_name(path.name + ".data")


def _check_export(model: HaMeRNet, path: Path, x: torch.Tensor) -> float:
    """Largest scaled ONNX Runtime (CPU) - torch difference over all outputs; RuntimeError above tolerance."""
    with torch.inference_mode():
        reference = {k: v.float().cpu().numpy() for k, v in model(x).items()}
    onnx_out = OnnxRuntime(path)(x.cpu().numpy())
    errors = {k: float(np.abs(onnx_out[k] - ref).max()) / max(1.0, float(np.abs(ref).max()))
              for k, ref in reference.items()}
    worst = max(errors, key=errors.get)
    log.info("ONNX Runtime vs torch on %d crop(s): largest scaled difference %.2e (%s); joints %.2e m",
             len(x), errors[worst], worst, np.abs(onnx_out["pred_keypoints_3d"] - reference["pred_keypoints_3d"]).max())
    if errors[worst] > EXPORT_TOLERANCE:
        raise RuntimeError(f"exported ONNX model {path} differs from torch: {worst} off by {errors[worst]:.2e} "
                           f"(tolerance {EXPORT_TOLERANCE:.0e}); all: {errors}")
    return errors[worst]


class ExportOnFirstCall:
    """A torch runtime that exports its network to ``path`` on its first call (with that call's crops), then runs."""

    def __init__(self, runtime: TorchRuntime, cfg: CfgNode, path: PathLike) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.path: Path | None = Path(path)
        self.faces = runtime.faces

    def __call__(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """As :meth:`TorchRuntime.__call__`; the first call exports (and checks) first."""
        if self.path is not None:
            export_onnx(self.runtime.model, self.cfg, self.path, inputs)
            self.path = None
        return self.runtime(inputs)
