from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

if TYPE_CHECKING:
    from hamer.models.hamer import HaMeRNet

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest-xdist workers share the machine's cores: torch's OpenMP threads (and so ONNX Runtime's, as many as
    # torch's) are split between them, for this worker and the `hamer` processes its tests start, rather than each
    # worker's threads contending for every core (set here: before a test module imports torch)
    workers = int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

# The Ray tests, run by one xdist worker one after the other: one Ray at a time on the machine, one LocalRay a session:
# these files, and the tests elsewhere with "ray" as a word of their name (test_segments_through_ray_workers...)
RAY_TEST_FILES = ("tests/test_ray.py", "tests/test_ray_cli.py", "tests/test_ray_cluster.py")
RAY_TEST_NAME = re.compile(r"(?:^|_)ray(?:_|$)")
# The files of the longest tests, run first (after the Ray tests) so that the xdist workers end together on short
# ones, and each file's module fixtures are made on one worker (the other is on the Ray tests meanwhile)
LONGEST_FIRST = ("tests/test_segments.py", "tests/test_storage.py", "tests/test_runs.py", "tests/test_onnx.py",
                 "tests/test_corpus.py")
SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "images"
# A right and a left box on :func:`smooth_noise_image` (240 x 320): hand-sized, apart, inside the image.
TWO_BOXES = {"Right": [60.0, 50.0, 140.0, 150.0], "Left": [200.0, 80.0, 260.0, 140.0]}


def smooth_noise_image() -> np.ndarray:
    """A 240 x 320 BGR image of blurred noise (seed 0): texture for the crops, no hands."""
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8), (0, 0), 3)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder ``name``, filled by ``build(folder)`` once a test run: under pytest-xdist by the first worker that
    asks, the others waiting on its lock, then reading what it built (the folder of the run that every worker's own
    temporary folder is in); else once a session. A build that failed leaves nothing: the next one starts again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session", autouse=True)
def short_temp_dirs() -> Iterator[None]:
    """The folders the Ray tests gave Ray for its sessions (short paths in /tmp, outside pytest's temporary folder),
    removed when the session ends: set up first, so torn down after the fixtures whose Ray used them."""
    from ray_helpers import remove_short_temp_dirs

    yield
    remove_short_temp_dirs()


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory) -> Iterator[Path]:
    """The default CPU path's ONNX cache, one per test session (never the user's ~/.cache), for this process and,
    through HAMER_ONNX_CACHE, for the ``hamer`` processes the tests start: every HAMER that loads a checkpoint
    with the default backend goes through it, so a checkpoint is exported once per session (the small model's
    export takes about 0.4 s)."""
    import hamer.configs
    from hamer.onnx_cache import CACHE_ENV

    path = tmp_path_factory.mktemp("onnx_cache")
    hamer.configs.ONNX_CACHE_DIR = path
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> tuple[Path, HaMeRNet]:
    """A complete synthetic HaMeR data folder (small model), and the random model its checkpoint holds: built once
    a session."""
    from synthetic import make_data_dir  # (imports torch)

    root = tmp_path_factory.mktemp("hamer_data") / "_DATA"
    return root, make_data_dir(root)


@pytest.fixture(scope="session")
def data_dir(synthetic_data) -> Path:
    """A complete synthetic HaMeR data folder (small model)."""
    return synthetic_data[0]


@pytest.fixture(scope="session")
def reference_model(synthetic_data) -> HaMeRNet:
    """The random model the ``data_dir`` checkpoint was written from."""
    return synthetic_data[1]


def is_ray_test(nodeid: str) -> bool:
    path, _, name = nodeid.partition("::")
    return path in RAY_TEST_FILES or bool(RAY_TEST_NAME.search(name.split("[")[0]))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Ray tests, then the files of :data:`LONGEST_FIRST`, then the rest, each in its collected order."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST, start=1)}
    items.sort(key=lambda item: 0 if is_ray_test(item.nodeid) else rank.get(item.nodeid.partition("::")[0],
                                                                             len(rank) + 1))


def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduler with the Ray tests as one unit of work, every other test its own; the largest unit first
    (xdist orders units by size), so one worker runs the Ray tests while the other runs the rest. (``--dist
    loadgroup`` groups nothing with pytest 9.2: its workers rename the tests through an attribute pytest no longer
    reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class RayTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:  # the unit of work a test belongs to
            return "ray" if is_ray_test(nodeid) else nodeid

    return RayTogether(config, log)
