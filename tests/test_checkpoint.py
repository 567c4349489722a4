"""Loading the Lightning checkpoint safely and strictly; MANO and mean parameters from files or the checkpoint."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import types
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
import torch

from hamer.checkpoint import build_model, load_checkpoint, read_mean_params
from hamer.configs import data_paths
from hamer.hamer_module import HAMER

BOXES = {"Right": [30.0, 40.0, 110.0, 130.0], "Left": [150.0, 60.0, 210.0, 120.0]}
IMAGE = np.random.default_rng(1).integers(0, 256, size=(200, 260, 3), dtype=np.uint8)


def _keypoints(root) -> dict[str, np.ndarray]:
    """Joints of the torch path: loads the checkpoint itself (the ONNX path may load a cached export instead)."""
    keypoints, _ = HAMER(data_dir=root, backend="torch").process(IMAGE, BOXES)
    return keypoints


def _copy(data_dir, tmp_path):
    root = tmp_path / "_DATA"
    shutil.copytree(data_dir, root)
    return root


def _edited_copy(data_dir, tmp_path, edit: Callable[[dict], None]):
    """A copy of the data folder whose checkpoint dict ``edit`` changed (the tests' own, trusted file)."""
    root = _copy(data_dir, tmp_path)
    path = root / "hamer_ckpts/checkpoints/hamer.ckpt"
    raw = torch.load(path, weights_only=False)
    edit(raw)
    torch.save(raw, path)
    return root


def test_lightning_checkpoint_loads_without_lightning_or_unsafe_pickle(data_dir, tmp_path, monkeypatch):
    """The checkpoint names a pytorch_lightning class (as real ones do); loading must not need the package."""
    lightning = types.ModuleType("pytorch_lightning.trainer.states")
    lightning.TrainerStatus = type("TrainerStatus", (), {"__module__": lightning.__name__})
    with monkeypatch.context() as m:
        for name in ("pytorch_lightning", "pytorch_lightning.trainer"):
            m.setitem(sys.modules, name, types.ModuleType(name))
        m.setitem(sys.modules, lightning.__name__, lightning)
        root = _edited_copy(data_dir, tmp_path, lambda raw: raw.update(
            status=lightning.TrainerStatus()))
    assert b"pytorch_lightning.trainer.states" in zipfile.ZipFile(
        root / "hamer_ckpts/checkpoints/hamer.ckpt").read("hamer/data.pkl")
    for name in ("pytorch_lightning", "pytorch_lightning.trainer", lightning.__name__, "lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them now raises ImportError
    ckpt = load_checkpoint(root / "hamer_ckpts/checkpoints/hamer.ckpt")
    assert ckpt.config["MODEL"]["IMAGE_SIZE"] == 256 and ckpt.config["MANO"]["NUM_HAND_JOINTS"] == 15
    assert "backbone.pos_embed" in ckpt.state_dict and "discriminator.D_conv1.weight" in ckpt.state_dict


def test_checkpoint_alone_suffices_and_gives_the_same_joints(data_dir, tmp_path, caplog):
    root = tmp_path / "_DATA"
    (root / "hamer_ckpts/checkpoints").mkdir(parents=True)
    shutil.copy(data_dir / "hamer_ckpts/checkpoints/hamer.ckpt", root / "hamer_ckpts/checkpoints/hamer.ckpt")
    with caplog.at_level("INFO", logger="hamer.checkpoint"):
        alone = _keypoints(root)
    assert "MANO_RIGHT.pkl not found; MANO built from the checkpoint's buffers" in caplog.messages
    full = _keypoints(data_dir)
    for label in BOXES:
        np.testing.assert_allclose(alone[label], full[label], rtol=0, atol=1e-6)


def test_checkpoint_buffers_override_pickle_and_npz_as_in_the_original(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    np.savez(root / "data/mano_mean_params.npz", pose=np.zeros(96), shape=np.ones(10), cam=np.ones(3))
    model, _ = build_model(data_paths(root))
    ckpt = load_checkpoint(root / "hamer_ckpts/checkpoints/hamer.ckpt").state_dict
    torch.testing.assert_close(model.mano_head.init_betas, ckpt["mano_head.init_betas"])


def test_mean_params_from_npz_when_the_checkpoint_lacks_them(data_dir, tmp_path):
    def edit(raw: dict) -> None:
        for name in ("init_hand_pose", "init_betas", "init_cam"):
            del raw["state_dict"][f"mano_head.{name}"]

    root = _edited_copy(data_dir, tmp_path, edit)
    with np.load(root / "data/mano_mean_params.npz") as npz:
        betas = npz["shape"]
    model, _ = build_model(data_paths(root))
    np.testing.assert_allclose(model.mano_head.init_betas.numpy()[0], betas, rtol=1e-6)
    os.remove(root / "data/mano_mean_params.npz")
    npz = re.escape(str(root / "data/mano_mean_params.npz"))
    with pytest.raises(FileNotFoundError, match=rf"^MANO mean parameters not found: no {npz} and the checkpoint lacks "
                                                r"\['mano_head.init_hand_pose', 'mano_head.init_betas', "
                                                r"'mano_head.init_cam'\]$"):
        build_model(data_paths(root))


def test_no_mano_anywhere_names_what_is_missing(data_dir, tmp_path):
    def edit(raw: dict) -> None:
        raw["state_dict"] = {k: v for k, v in raw["state_dict"].items() if not k.startswith("mano.")}

    root = _edited_copy(data_dir, tmp_path, edit)
    assert _keypoints(root)["Right"].shape == (21, 3)  # MANO_RIGHT.pkl is there
    os.remove(root / "data/mano/MANO_RIGHT.pkl")
    pkl = re.escape(str(root / "data/mano/MANO_RIGHT.pkl"))
    with pytest.raises(FileNotFoundError,
                       match=rf"^MANO model not found: no {pkl} and checkpoint lacks MANO buffers \[.*v_template"):
        build_model(data_paths(root))


def test_config_from_checkpoint_when_yaml_missing(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    os.remove(root / "hamer_ckpts/model_config.yaml")
    keypoints = _keypoints(root)
    np.testing.assert_allclose(keypoints["Left"], _keypoints(data_dir)["Left"], rtol=0, atol=1e-6)


def test_missing_truncated_and_foreign_files(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="hamer.ckpt"):
        build_model(data_paths(tmp_path / "empty"))
    root = _copy(data_dir, tmp_path)
    path = root / "hamer_ckpts/checkpoints/hamer.ckpt"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated"):
        build_model(data_paths(root))
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a PyTorch zip checkpoint"):
        build_model(data_paths(root))


def test_weights_that_do_not_fit_are_named(data_dir, tmp_path):
    def edit(raw: dict) -> None:
        del raw["state_dict"]["backbone.blocks.1.mlp.fc2.weight"]
        raw["state_dict"]["mano_head.decpose.weight"] = torch.zeros(90, 64)
        raw["state_dict"]["backbone.blocks.7.norm1.weight"] = torch.zeros(64)

    root = _edited_copy(data_dir, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        build_model(data_paths(root))
    message = str(err.value)
    assert "missing backbone.blocks.1.mlp.fc2.weight" in message
    assert "unexpected backbone.blocks.7.norm1.weight" in message
    assert "wrong shape mano_head.decpose.weight (90, 64)" in message


def test_full_size_config_with_small_weights_is_an_error(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    import yaml

    from synthetic import training_config

    (root / "hamer_ckpts/model_config.yaml").write_text(yaml.safe_dump(training_config(small=False)))
    with pytest.raises(ValueError, match="does not fit the model config"):
        build_model(data_paths(root))


class TrainerState:
    """A class of training metadata that inference does not import (a Lightning callback state, say)."""

    def __init__(self, step: int) -> None:
        self.step = step


def test_unknown_metadata_classes_become_inert_stand_ins(data_dir, tmp_path, caplog):
    def edit(raw: dict) -> None:
        raw["callbacks"] = {"state": TrainerState(7)}

    root = _edited_copy(data_dir, tmp_path, edit)
    with caplog.at_level(logging.INFO, logger="hamer.checkpoint"):
        load_checkpoint(root / "hamer_ckpts/checkpoints/hamer.ckpt")
    stand_ins = [r.getMessage() for r in caplog.records if "inert stand-ins" in r.getMessage()]
    assert stand_ins == [f"checkpoint metadata classes read as inert stand-ins: ['{__name__}.TrainerState']"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hamer.checkpoint"):  # CfgNode is read as a dict, not a stand-in
        load_checkpoint(data_dir / "hamer_ckpts/checkpoints/hamer.ckpt")
    assert not [r for r in caplog.records if "inert stand-ins" in r.getMessage()]
    assert _keypoints(root)["Right"].shape == (21, 3)


def test_code_in_a_checkpoint_never_runs(data_dir, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def edit(raw: dict) -> None:
        raw["callbacks"] = {"Evil": Evil()}

    root = _edited_copy(data_dir, tmp_path, edit)
    with pytest.raises(ValueError, match="never unpickled"):
        build_model(data_paths(root))
    assert not marker.exists()


def test_unsupported_architecture_is_refused(data_dir, tmp_path):
    root = _copy(data_dir, tmp_path)
    cfg = (root / "hamer_ckpts/model_config.yaml").read_text().replace("TYPE: vit", "TYPE: resnet")
    (root / "hamer_ckpts/model_config.yaml").write_text(cfg)
    with pytest.raises(ValueError, match="BACKBONE.TYPE"):
        build_model(data_paths(root))


def test_lightning_hyper_parameter_dicts_are_read_as_dicts(data_dir, tmp_path, monkeypatch):
    """Lightning's AttributeDict (a dict subclass) is filled by SETITEMS, which torch's weights-only unpickler
    allows only on dict, OrderedDict and Counter: it is read as an OrderedDict, its config kept."""
    import sys
    import types

    names = ("lightning_fabric", "lightning_fabric.utilities", "lightning_fabric.utilities.data")
    modules = {name: types.ModuleType(name) for name in names}
    attribute_dict = type("AttributeDict", (dict,), {"__module__": names[-1]})
    modules[names[-1]].AttributeDict = attribute_dict
    modules["lightning_fabric"].utilities = modules["lightning_fabric.utilities"]
    modules["lightning_fabric.utilities"].data = modules[names[-1]]
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def edit(raw: dict) -> None:
        raw["hyper_parameters"] = attribute_dict(raw["hyper_parameters"])

    root = _edited_copy(data_dir, tmp_path, edit)
    for name in names:
        monkeypatch.delitem(sys.modules, name)
    checkpoint = load_checkpoint(root / "hamer_ckpts/checkpoints/hamer.ckpt")
    assert checkpoint.config is not None and checkpoint.config["MODEL"]["IMAGE_SIZE"] == 256


def test_many_misfits_are_listed_eight_at_a_time(data_dir, tmp_path):
    names = sorted(k for k in load_checkpoint(data_dir / "hamer_ckpts/checkpoints/hamer.ckpt").state_dict
                   if k.startswith("backbone.blocks.0."))
    assert len(names) >= 10

    def edit(raw: dict, drop: list[str]) -> None:
        for name in drop:
            del raw["state_dict"][name]
        raw["state_dict"]["backbone.extra"] = torch.zeros(1)

    root = _edited_copy(data_dir, tmp_path / "ten", lambda raw: edit(raw, names[:10]))
    with pytest.raises(ValueError) as err:
        build_model(data_paths(root))
    assert str(err.value) == (f"checkpoint {root / 'hamer_ckpts/checkpoints/hamer.ckpt'} does not fit the model "
                              "config: missing " + ", ".join(names[:8]) + " and 2 more; unexpected backbone.extra")
    root = _edited_copy(data_dir, tmp_path / "eight", lambda raw: edit(raw, names[:8]))
    with pytest.raises(ValueError) as err:
        build_model(data_paths(root))
    assert str(err.value).endswith(": missing " + ", ".join(names[:8]) + "; unexpected backbone.extra")


def test_mean_params_file_rules(tmp_path):
    path = tmp_path / "mano_mean_params.npz"
    np.savez(path, pose=np.ones((1, 96)), shape=np.full((1, 10), 0.5), cam=np.float64([0.9, 0, 0]))
    arrays = read_mean_params(path)  # (1, N) float64 arrays: flattened, float32
    assert {k: (a.shape, a.dtype) for k, a in arrays.items()} == {
        "pose": ((96,), np.float32), "shape": ((10,), np.float32), "cam": ((3,), np.float32)}
    assert arrays["shape"][0] == 0.5 and arrays["cam"][0] == np.float32(0.9)
    np.savez(path, pose=np.zeros(96), shape=np.zeros(10))
    with pytest.raises(ValueError, match=r": lacks \['cam'\] \(truncated or not mano_mean_params\.npz\?\)$"):
        read_mean_params(path)
    np.savez(path, pose=np.zeros(95), shape=np.zeros(10), cam=np.zeros(3))
    with pytest.raises(ValueError, match=r": sizes \{'pose': 95\}, expected \{'pose': 96, 'shape': 10, 'cam': 3\}$"):
        read_mean_params(path)
    # the size guard: a member of exactly 1 MiB is read (and then refused by its size); one byte more is not read
    np.savez(path, pose=np.zeros(2**20 - 128, np.uint8), shape=np.zeros(10), cam=np.zeros(3))  # 128-byte header
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("pose.npy").file_size == 2**20
    with pytest.raises(ValueError, match=r"sizes \{'pose': 1048448\}"):
        read_mean_params(path)
    np.savez(path, pose=np.zeros(2**20 - 127, np.uint8), shape=np.zeros(10), cam=np.zeros(3))
    with pytest.raises(ValueError, match=r"^mean parameters .*: an array is larger than 1 MiB \(truncated or not"):
        read_mean_params(path)


def test_unreadable_checkpoints_are_named_with_their_problem(tmp_path):
    path = tmp_path / "x.ckpt"
    p = re.escape(str(path))
    with pytest.raises(FileNotFoundError, match=rf"^HaMeR checkpoint not found: {p}$"):
        load_checkpoint(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=rf"^checkpoint {p} is not a PyTorch zip checkpoint \(truncated or not a "
                                         r"checkpoint\?\)$"):
        load_checkpoint(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x/readme.txt", "a zip, not a torch file")
    with pytest.raises(ValueError, match=rf"^cannot read checkpoint {p} \(truncated or corrupt\?\): \S"):
        load_checkpoint(path)
    for raw, problem in (({"weights": {}}, r"has no 'state_dict' \(not a HaMeR Lightning checkpoint\)"),
                         ({"state_dict": [1, 2]}, r": 'state_dict' holds no mapping of weights"),
                         ({"state_dict": {"a": torch.zeros(1), "c": 1, "b": "x"}},
                          r": 'state_dict' holds non-tensor entries b, c")):
        torch.save(raw, path)
        with pytest.raises(ValueError, match=rf"^checkpoint {p} ?{problem}$"):
            load_checkpoint(path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"state_dict": {}, "x": Evil()}, path)
    with pytest.raises(ValueError, match=rf"^checkpoint {p} holds content that is never unpickled here: \S"):
        load_checkpoint(path)
    safetensors = tmp_path / "x.safetensors"
    safetensors.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match=rf"^cannot read safetensors checkpoint {re.escape(str(safetensors))} "
                                         r"\(truncated or corrupt\?\): \S"):
        load_checkpoint(safetensors)


def test_the_training_config_is_read_from_hyper_parameters(tmp_path):
    path = tmp_path / "x.ckpt"
    weights = {"a": torch.ones(2)}
    for hyper, config in (({"cfg": {"MODEL": {"IMAGE_SIZE": 256}}}, {"MODEL": {"IMAGE_SIZE": 256}}),
                          (None, None), ({"cfg": "not a dict"}, None), ({"other": 1}, None)):
        torch.save({"state_dict": weights, "hyper_parameters": hyper}, path)
        ckpt = load_checkpoint(path)
        assert ckpt.config == config and list(ckpt.state_dict) == ["a"]
    torch.save({"state_dict": weights}, path)
    assert load_checkpoint(path).config is None


def test_missing_config_and_checkpoint_outside_the_data_folder(data_dir, tmp_path, caplog):
    root = _copy(data_dir, tmp_path)
    os.remove(root / "hamer_ckpts/model_config.yaml")
    with caplog.at_level("INFO", logger="hamer.checkpoint_config"):
        build_model(data_paths(root))
    assert f"{root / 'hamer_ckpts/model_config.yaml'} not found; using the config stored in the checkpoint" \
        in caplog.messages
    root = _edited_copy(data_dir, tmp_path / "bare", lambda raw: raw.pop("hyper_parameters"))
    os.remove(root / "hamer_ckpts/model_config.yaml")
    config = re.escape(str(root / "hamer_ckpts/model_config.yaml"))
    with pytest.raises(FileNotFoundError, match=rf"^model config not found: {config} \(and the checkpoint carries "
                                                r"none\)$"):
        build_model(data_paths(root))
    ckpt = re.escape(str(tmp_path / "empty/hamer_ckpts/checkpoints/hamer.ckpt"))
    empty = re.escape(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=rf"^HaMeR checkpoint not found: {ckpt}; run `hamer download --data "
                                                rf"{empty}` "):
        build_model(data_paths(tmp_path / "empty"))
    elsewhere = tmp_path / "elsewhere.ckpt"  # given by the user, outside the data folder: no download hint
    with pytest.raises(FileNotFoundError, match=rf"^HaMeR checkpoint not found: {re.escape(str(elsewhere))}$"):
        build_model(data_paths(tmp_path / "empty", elsewhere))


def test_safetensors_precision_and_overflow(data_dir, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from hamer.checkpoint import save_safetensors

    model, cfg = build_model(data_paths(data_dir))
    name = "mano_head.init_cam"
    save_safetensors(model, cfg, tmp_path / "default.safetensors")
    save_safetensors(model, cfg, tmp_path / "half.safetensors", half=True)
    for file, dtype in (("default", torch.float32), ("half", torch.float16)):  # float32 unless asked
        with safe_open(str(tmp_path / f"{file}.safetensors"), framework="pt") as f:
            assert f.get_tensor(name).dtype == dtype
    with torch.no_grad():
        model.mano_head.init_cam.fill_(1e6)  # beyond float16's 65504
    with pytest.raises(ValueError, match=rf"^{name} has values beyond float16's range; convert without half "
                                         r"precision$"):
        save_safetensors(model, cfg, tmp_path / "overflow.safetensors", half=True)
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))  # no metadata: no config of its own
    assert load_checkpoint(bare).config is None


def test_checkpoint_mano_buffers_override_the_pickle_as_in_the_original(data_dir, tmp_path):
    """The original loads the checkpoint non-strictly after building MANO from the pickle: the checkpoint's
    ``mano.*`` buffers win. A pickle of other MANO arrays (seed 5) beside it changes nothing."""
    from synthetic import mano_arrays, write_mano_pickle

    root = _copy(data_dir, tmp_path)
    other = mano_arrays(seed=5)
    write_mano_pickle(root / "data/mano/MANO_RIGHT.pkl", other)
    model, _ = build_model(data_paths(root))
    ckpt = load_checkpoint(root / "hamer_ckpts/checkpoints/hamer.ckpt").state_dict
    torch.testing.assert_close(model.mano.v_template, ckpt["mano.v_template"], rtol=0, atol=0)
    assert not np.allclose(model.mano.v_template.numpy(), other["v_template"])


def test_stored_config_errors_name_the_file(tmp_path):
    from safetensors.torch import save_file

    from hamer.configs import CONFIG_METADATA_KEY

    folder = tmp_path / "hamer_ckpts" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "hamer.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={CONFIG_METADATA_KEY: '{"MODEL": [1, 2]}'})
    with pytest.raises(ValueError, match=rf"the config stored in {re.escape(str(path))}"):
        build_model(data_paths(tmp_path, path))
    ckpt = folder / "hamer.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hyper_parameters": {"cfg": {"MODEL": [1, 2]}}}, ckpt)
    with pytest.raises(ValueError, match=rf"the config stored in {re.escape(str(ckpt))}"):
        build_model(data_paths(tmp_path, ckpt))
