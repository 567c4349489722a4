"""The engines that run a corpus's units (:class:`~hamer.engines.base.Engine`), by name: :data:`ENGINES`.

Each entry makes its engine, importing its module only then (the local engine imports torch; the Ray engine's
checks run on a driver that may have no GPU).
"""

from __future__ import annotations

from collections.abc import Callable

from ..units import Options
from .base import Engine, StageStats


def _local(options: Options, stats: StageStats | None = None) -> Engine:
    from .local import LocalEngine

    return LocalEngine(options, stats)


def _ray(options: Options, stats: StageStats | None = None) -> Engine:
    from .ray import RayEngine

    return RayEngine(options, stats)


# name (``Options.engine``, ``hamer run --engine``) -> the engine made from a run's options and stats (an engine
# class itself fits)
ENGINES: dict[str, Callable[[Options, StageStats | None], Engine]] = {"local": _local, "ray": _ray}


def make_engine(options: Options, stats: StageStats | None = None) -> Engine:
    """The engine ``options.engine`` names, made (nothing loaded yet); ValueError for an unknown name."""
    if options.engine not in ENGINES:
        raise ValueError(f"engine must be one of {tuple(ENGINES)}, got {options.engine!r}")
    return ENGINES[options.engine](options, stats)
