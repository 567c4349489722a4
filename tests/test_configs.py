"""Model configs are bounded: YAML aliases (the "billion laughs"), deep nesting and oversized files are refused
before anything is expanded, with an error naming the file, wherever a model config is read."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

import hamer.configs as hcfg
from hamer.checkpoint import build_model
from hamer.cli import main


def alias_bomb(levels: int = 6, mapping: bool = True) -> str:
    """Each level holds the previous one 9 times: 9**levels leaves once the aliases are expanded (6 levels: 531441,
    in 1 kB)."""
    lines = ["l0: &l0 {x: 1, y: 2}" if mapping else "l0: &l0 [1, 2]"]
    for i in range(1, levels + 1):
        refs = [f"k{j}: *l{i - 1}" if mapping else f"*l{i - 1}" for j in range(9)]
        lines.append(f"l{i}: &l{i} " + ("{" + ", ".join(refs) + "}" if mapping else "[" + ", ".join(refs) + "]"))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("mapping", [True, False], ids=["mapping-bomb", "list-bomb"])
def test_alias_bombs_are_refused(tmp_path, mapping):
    path = tmp_path / "model_config.yaml"
    text = alias_bomb(mapping=mapping)
    assert len(text) < 2000
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"model config {path} is not plain YAML: alias \*l0 refused"):
        hcfg.load_config(path)
    with pytest.raises(ValueError, match="alias"):
        hcfg.read_yaml(path)


def test_an_anchor_without_alias_and_a_config_up_to_the_cap_load(tmp_path):
    path = tmp_path / "model_config.yaml"
    head = "MODEL: &m\n  IMAGE_SIZE: 256\n"
    path.write_text(head + "#" * (hcfg.MAX_CONFIG_BYTES - len(head) - 1) + "\n")
    assert path.stat().st_size == hcfg.MAX_CONFIG_BYTES
    assert hcfg.load_config(path).MODEL.IMAGE_SIZE == 256
    path.write_text(head + "#" * (hcfg.MAX_CONFIG_BYTES - len(head)) + "\n")
    with pytest.raises(ValueError, match=rf"{path} is 1,000,001 bytes: larger than the 1,000,000 .* refused unread"):
        hcfg.load_config(path)


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "model_config.yaml"
    path.write_text("MODEL: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ValueError, match=rf"{path} is not plain YAML: nested deeper than {hcfg.MAX_YAML_DEPTH}"):
        hcfg.load_config(path)
    path.write_text("MODEL: " + "[" * 40 + "]" * 40 + "\n")  # deep but within the bound: read, then found wrong
    with pytest.raises(ValueError, match="MODEL must be a mapping"):
        hcfg.load_config(path)


def test_json_configs_are_bounded_too():
    text = json.dumps({"MODEL": {"IMAGE_SIZE": 256}, "pad": "x" * hcfg.MAX_CONFIG_BYTES})
    with pytest.raises(ValueError, match="the stored config: the config is 1,000,0.. characters"):
        hcfg.config_from_json(text, "the stored config")
    with pytest.raises(ValueError, match="nested too deeply"):
        hcfg.config_from_json("[" * 100_000 + "]" * 100_000, "the stored config")
    assert hcfg.config_from_json(json.dumps({"MODEL": {"IMAGE_SIZE": 224}}), "x").MODEL.IMAGE_SIZE == 224


def test_a_bomb_in_the_data_folder_fails_loading_naming_the_file(data_dir, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    config = root / hcfg.CONFIG_FILE
    real = yaml.safe_load(config.read_text())
    config.write_text(alias_bomb() + yaml.safe_dump(real))
    with pytest.raises(ValueError, match=rf"model config {config} is not plain YAML: alias \*l0 refused"):
        build_model(hcfg.data_paths(root))
    assert main(["check", "--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert "does NOT load" in out and f"model config {config} is not plain YAML: alias *l0 refused" in out
    config.write_text(yaml.safe_dump(real))  # the same config without the bomb loads
    model, cfg = build_model(hcfg.data_paths(root))
    assert cfg.MODEL.IMAGE_SIZE == real["MODEL"]["IMAGE_SIZE"]
