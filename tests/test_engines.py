"""The run layer and what lies under it: imports point one way (no cycle), engines chosen from the ENGINES
registry and driven through the Engine protocol, the model's options checked once (ModelOptions) for HAMER, the
corpus options and the engines. Small synthetic model; a photograph from ../shared/images."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from hamer.corpus import Options, run_corpus
from hamer.engines import ENGINES
from hamer.engines.local import LocalEngine
from hamer.hamer_module import HAMER
from hamer.model_options import ModelOptions, OptionError
from hamer.run_types import ModelError
from hamer.units import fingerprint

from conftest import SHARED_IMAGES as IMAGES

PACKAGE = Path(__file__).resolve().parents[1] / "hamer"


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at the top or inside functions), from the source."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = ".".join(base[:len(base) - node.level + 1] + [node.module or ""]) if node.level else \
                    node.module or ""
                targets = [f"{module.rstrip('.')}.{a.name}" for a in node.names]
                targets = [t if t in modules else module.rstrip(".") for t in targets]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in map(known, targets) if t is not None and t != name}
    return graph


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_package_has_no_import_cycle_and_engines_sit_below_the_run_layer():
    graph = import_graph()
    assert "hamer.engines.local" in graph["hamer.engines"] or "hamer.engines.base" in graph["hamer.engines"]
    cycles = sorted(name for name in graph if name in reaches(graph, name))
    assert cycles == []
    for engine in ("hamer.engines.local", "hamer.engines.ray", "hamer.engines.isolated"):
        assert "hamer.corpus" not in reaches(graph, engine), engine
    assert {"hamer.engines", "hamer.plan"} <= graph["hamer.corpus"]


# ---------------------------------------------------------------------------------------------------- engines

class RecordingEngine(LocalEngine):
    """The local engine, noting the protocol's calls as the run layer makes them."""

    calls: list = []

    def check(self) -> None:
        self.calls.append("check")
        super().check()

    def run(self, units, out, finished, progress=None, started=None) -> None:
        self.calls.append(("run", [Path(u.path).name for u in units], started is not None))
        super().run(units, out, finished, progress, started)

    def close(self) -> None:
        self.calls.append("close")
        super().close()


@pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")
def test_an_engine_in_the_registry_is_driven_through_the_protocol(data_dir, tmp_path, monkeypatch):
    assert tuple(ENGINES) == ("local", "ray")  # the choices of hamer run --engine
    image = tmp_path / "in" / "hands.jpg"
    image.parent.mkdir()
    shutil.copy(IMAGES / "test4.jpg", image)
    monkeypatch.setitem(ENGINES, "recording", RecordingEngine)
    monkeypatch.setattr(RecordingEngine, "calls", [])
    records = run_corpus([str(image)], tmp_path / "mine", Options(data=str(data_dir), engine="recording"))
    assert RecordingEngine.calls == ["check", ("run", ["hands.jpg"], True), "close"]
    assert [(r["status"], r["hands"]) for r in records] == [("done", 2)]
    run_corpus([str(image)], tmp_path / "local", Options(data=str(data_dir)))
    for name in ("hands.jsonl", "hands.npz"):  # the same engine, chosen by name: the same bytes
        assert (tmp_path / "mine" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    RecordingEngine.calls.clear()
    with pytest.raises(ModelError, match="precision 'fp16' needs a CUDA device"):  # before anything is written
        run_corpus([str(image)], tmp_path / "bad", Options(data=str(data_dir), engine="recording", precision="fp16"))
    assert RecordingEngine.calls == ["check", "close"]
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="batch_size"):  # made from the options: refused before the folder is
        run_corpus([str(image)], tmp_path / "bad", Options(data=str(data_dir), engine="recording", batch_size=0))
    assert RecordingEngine.calls == ["check", "close"]
    assert not (tmp_path / "bad").exists()


def test_an_unknown_engine_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"engine must be one of \('local', 'ray'\), got 'spark'"):
        run_corpus([str(tmp_path)], tmp_path / "out", Options(engine="spark"))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------- model options

@pytest.mark.parametrize(("options", "option", "message"), [
    (dict(device="banana"), "device", "invalid device 'banana'"),
    (dict(precision="fp16"), "precision", "needs a CUDA device"),
    (dict(precision="int3"), "precision", "precision must be one of"),
    (dict(backend="tensorrt"), "backend", "backend must be one of"),
    (dict(backend="onnx"), "onnx", "needs an .onnx file"),
    (dict(backend="onnx", onnx="m.onnx", precision="bf16"), "precision", "takes no precision"),
    (dict(backend="torch", onnx="m.onnx"), "onnx", "goes with backend 'onnx' only"),
    (dict(rescale_factor=0), "rescale_factor", "rescale_factor must be"),
    (dict(rescale_factor=float("nan")), "rescale_factor", "rescale_factor must be"),
    (dict(camera=5000.0), "camera", "camera must be"),
])
def test_model_options_are_checked_once_naming_the_option(options, option, message):
    with pytest.raises(OptionError, match=message) as caught:
        ModelOptions(**options).check()
    assert caught.value.option == option
    hamer_args = {"onnx_path" if k == "onnx" else k: v for k, v in options.items()}
    with pytest.raises(ValueError, match=message):  # HAMER checks through the same object
        HAMER(**hamer_args)


def test_the_device_is_left_to_the_machine_that_runs_the_network():
    remote = ModelOptions(device="cuda:7", precision="fp16")  # a Ray worker's GPU, not this machine's
    assert remote.check(device_here=False) is None
    with pytest.raises(OptionError) as caught:
        remote.check()
    assert caught.value.option == "device"
    assert str(ModelOptions().check()) == "cpu"


def test_corpus_options_carry_the_model_options_and_fingerprint_them_as_before(tmp_path):
    camera = lambda w, h: None  # noqa: E731
    options = Options(data=str(tmp_path), device="cpu", backend="onnx", onnx="m.onnx", rescale_factor=2.5,
                      camera=camera)
    assert options.model == ModelOptions(device="cpu", backend="onnx", precision="fp32", data=str(tmp_path),
                                         onnx="m.onnx", rescale_factor=2.5, camera=camera)
    checkpoint = tmp_path.resolve() / "hamer_ckpts" / "checkpoints" / "hamer.ckpt"
    assert fingerprint(options)["model"] == f"{checkpoint} ({Path('m.onnx').resolve()})"
    assert options.model.model_file == Path("m.onnx")
    assert Options(data=str(tmp_path)).model.model_file == checkpoint
    assert fingerprint(Options(data=str(tmp_path), bbox_only=True))["model"] is None
    hamer = HAMER(data_dir=tmp_path, rescale_factor=3)
    assert hamer.model == ModelOptions(data=tmp_path.resolve(), rescale_factor=3.0)
    assert hamer.rescale_factor == 3.0 and isinstance(hamer.rescale_factor, float)
