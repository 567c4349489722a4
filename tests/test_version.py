"""The version is written once, in hamer/version.py: the package, its build metadata and ``hamer --version``."""

from __future__ import annotations

from pathlib import Path

import pytest
from setuptools.config.pyprojecttoml import read_configuration

import hamer
import hamer.version
from hamer.cli import main

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_reads_the_version_from_the_package(capsys) -> None:
    project = read_configuration(PYPROJECT)["project"]
    assert "version" in project["dynamic"]  # not written a second time in pyproject.toml
    assert project["version"] == hamer.version.__version__ == hamer.__version__
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"hamer {hamer.version.__version__}\n"
