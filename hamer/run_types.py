"""What a corpus run and its engines share below both: the errors that stop a unit or a run, and the progress
protocol a run reports to (the command line's progress bar implements it)."""

from __future__ import annotations

from typing import Any, Protocol


class InputError(Exception):
    """An input that cannot be read."""


class ModelError(Exception):
    """HaMeR or MediaPipe cannot be set up: nothing can run. ``data_problem``: the data folder is at fault."""

    def __init__(self, message: str, data_problem: bool = False) -> None:
        super().__init__(message)
        self.data_problem = data_problem


class Progress(Protocol):
    """What a run reports as it goes (the command line's progress bar)."""

    def start(self, units: int, frames: int | None) -> None:
        """The run will do ``units`` units of ``frames`` frames in all (None: unknown)."""

    def frames(self, count: int) -> None:
        """``count`` more frames were written."""

    def unit(self, record: dict[str, Any]) -> None:
        """A unit finished; ``record`` is its manifest line."""
