"""Loading never runs pickled code: every known route, for every file the project unpickles.

Each payload is a hand-written pickle (protocol-0 opcodes) that, read by plain ``pickle.loads``, creates a marker
file: :func:`test_payloads_are_live` proves that, so a refusal below is a real one. The loaders must refuse each
one with a clear error and the marker must never appear. Files: the Lightning checkpoint (torch zip, ``data.pkl``),
``MANO_RIGHT.pkl`` and ``mano_mean_params.npz`` (an object array is a pickle).
"""

from __future__ import annotations

import copyreg
import io
import pickle
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hamer.checkpoint import build_model, load_checkpoint
from hamer.configs import data_paths
from hamer.models import mano as mano_module
from hamer.models.mano import load_mano_pickle


def _g(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _s(text: str) -> bytes:
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def _call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"


def _touch(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _shell(marker: Path) -> str:
    return f"touch '{marker}'"


def _via_globals(marker: Path) -> bytes:
    """getattr(copyreg._reconstructor, '__globals__')['__builtins__']['eval'](...): eval from an allowed function."""
    getattr_ = _g("builtins", "getattr")
    glob = _call(getattr_, _g("copyreg", "_reconstructor"), _s("__globals__"))
    builtins = _call(_call(getattr_, glob, _s("get")), _s("__builtins__"))
    eval_ = _call(_call(getattr_, builtins, _s("get")), _s("eval"))
    return _call(eval_, _s(_touch(marker)))


# name -> marker -> pickle expression (no STOP) that creates the marker when unpickled without restriction
ROUTES = {
    "builtins.eval": lambda m: _call(_g("builtins", "eval"), _s(_touch(m))),
    "__builtin__.eval": lambda m: _call(_g("__builtin__", "eval"), _s(_touch(m))),
    "builtins.exec": lambda m: _call(_g("builtins", "exec"), _s(_touch(m))),
    "builtins.getattr + copyreg globals": _via_globals,
    "builtins.__import__": lambda m: _call(
        _call(_g("builtins", "getattr"), _call(_g("builtins", "__import__"), _s("os")), _s("system")),
        _s(_shell(m))),
    "os.system": lambda m: _call(_g("os", "system"), _s(_shell(m))),
    "posix.system": lambda m: _call(_g("posix", "system"), _s(_shell(m))),
    "subprocess.Popen": lambda m: _call(_g("subprocess", "Popen"), b"(" + _s("touch") + _s(str(m)) + b"l"),
    "functools.partial": lambda m: _call(_call(_g("functools", "partial"), _g("os", "system"), _s(_shell(m)))),
    "copyreg._reconstructor(os.system)": lambda m: _call(
        _g("copyreg", "_reconstructor"), _g("builtins", "object"), _g("os", "system"), _s(_shell(m))),
    "torch._tensor._rebuild_from_type_v2": lambda m: _call(
        _g("torch._tensor", "_rebuild_from_type_v2"), _g("builtins", "eval"), _g("torch", "Tensor"),
        b"(" + _s(_touch(m)) + b"t", b"}"),
    "torch._utils._rebuild_tensor_v2 + eval": lambda m: _call(
        _g("torch._utils", "_rebuild_tensor_v2"), _call(_g("builtins", "eval"), _s(_touch(m))),
        b"I0\n", b"(I1\nt", b"(I1\nt", b"I00\n", _g("collections", "OrderedDict") + b"(tR"),
}


def _in_dict(expr: bytes) -> bytes:
    """A whole pickle: ``{"state_dict": {}, "v_template": <expr>}``."""
    return b"}" + _s("state_dict") + b"}s" + _s("v_template") + expr + b"s."


def _settle(route: str) -> float:
    """Seconds a refused payload could still take to show: only a spawned process runs asynchronously."""
    return 0.3 if "Popen" in route else 0.0


def _wait_for(marker: Path, seconds: float = 2.0) -> bool:
    end = time.monotonic() + seconds
    while not marker.exists() and time.monotonic() < end:
        time.sleep(0.02)
    return marker.exists()


@pytest.mark.parametrize("route", ["builtins.eval", "builtins.getattr + copyreg globals", "posix.system",
                                   "subprocess.Popen", "functools.partial", "builtins.__import__",
                                   "torch._tensor._rebuild_from_type_v2"])
def test_payloads_are_live(route, tmp_path):
    marker = tmp_path / "ran"
    try:
        pickle.loads(_in_dict(ROUTES[route](marker)))
    except Exception:  # noqa: BLE001 - some payloads fail after running (e.g. a tensor rebuilt from None)
        pass
    assert _wait_for(marker), route


def _torch_checkpoint(path: Path, payload: bytes) -> None:
    """A real torch zip checkpoint whose data.pkl is replaced by ``payload``."""
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = payload if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_checkpoint_refuses(route, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "hamer.ckpt"
    _torch_checkpoint(path, _in_dict(ROUTES[route](marker)))
    with pytest.raises(ValueError, match=str(path)):
        load_checkpoint(path)
    assert not _wait_for(marker, _settle(route))


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_mano_pickle_refuses(route, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(b"\x80\x02" + _in_dict(ROUTES[route](marker)))
    with pytest.raises(ValueError, match="not allowed"):
        load_mano_pickle(path)
    assert not _wait_for(marker, _settle(route))


@pytest.mark.parametrize("route", ["builtins.eval", "posix.system", "builtins.getattr + copyreg globals"])
def test_mean_params_npz_refuses_object_arrays(route, data_dir, tmp_path):
    marker = tmp_path / "ran"
    root = tmp_path / "_DATA"
    shutil.copytree(data_dir, root)
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "|O", "fortran_order": False, "shape": (3,)})
    payload = b"\x80\x02" + ROUTES[route](marker) + b"."
    means = dict(np.load(data_paths(root).mean_params))
    with zipfile.ZipFile(data_paths(root).mean_params, "w") as z:
        z.writestr("pose.npy", npy.getvalue() + payload)
        for key in ("shape", "cam"):
            buf = io.BytesIO()
            np.save(buf, means[key])
            z.writestr(f"{key}.npy", buf.getvalue())
    with pytest.raises(ValueError, match="allow_pickle"):
        build_model(data_paths(root))
    assert not _wait_for(marker, _settle(route))


def test_mano_allow_list_is_exactly_this():
    """Pinned literally: anything added here (e.g. builtins.getattr) must be argued for in review."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    assert mano_module._ALLOWED_GLOBALS == {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "scalar"): scalar,
        ("numpy._core.multiarray", "scalar"): scalar,
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("__builtin__", "set"): set,
        ("builtins", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): __import__("codecs").encode,
    }


@pytest.mark.parametrize(("module", "name"), [("chumpy", "Ch"), ("chumpy.ch", "Ch"), ("chumpy.reordering", "Select"),
                                              ("scipy.sparse.csc", "csc_matrix"), ("scipy.sparse._csr", "csr_matrix")])
def test_mano_stand_ins_are_inert_classes(module, name):
    """chumpy and scipy.sparse names resolve to the module's own inert classes, never to an import."""
    cls = mano_module._MANOUnpickler(io.BytesIO(b"")).find_class(module, name)
    assert cls.__module__ == mano_module.__name__ and issubclass(cls, mano_module._Pickled)


@pytest.mark.parametrize(("module", "name"), [("scipy.sparse", "load_npz"), ("chumpyx", "Ch"),
                                              ("numpy", "load"), ("numpy.lib.npyio", "load"), ("torch", "load")])
def test_mano_look_alikes_are_refused(module, name):
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        mano_module._MANOUnpickler(io.BytesIO(b"")).find_class(module, name)
