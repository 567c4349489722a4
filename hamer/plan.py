"""What a run does with each unit, given the output folder's manifest: run it, skip it, or refuse the whole run.

Without flags, a new input is run; an input done (or truncated) earlier with the same output options, whose files
are all there and whose input has not changed, is skipped; one that failed is skipped unless its input changed
(``--resume`` retries it); outputs of other options are not replaced (OverwriteError naming the flag); files in
the way that no record of the folder accounts for (someone's files) are not replaced either. ``resume`` also
retries failed and truncated units. ``overwrite`` runs every unit again. A unit whose latest record is
``interrupted`` (the user stopped the run while it ran) runs again. A unit whose latest record is ``started``
(a run died while running it) is a *suspect*: it runs first, alone, in a child process (:mod:`hamer.engines.isolated`),
so that an input that kills the process fails once instead of killing every run. The segments of long videos
(:mod:`hamer.segments`) are planned from the videos planned here: a video's files that its segments' join was
writing when a run died (``joining``: inputs with segment records) are its own, not someone's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import DIED, MANIFEST, OverwriteError
from .storage import is_url, join, key, redact, url_name
from .units import Options, Unit, differences, fingerprint, input_stat


@dataclass
class Plan:
    """``suspects``: the units to run first, each alone in a child process; ``todo``: the others to run;
    ``skipped``: (unit, why) of the units not run."""

    todo: list[Unit] = field(default_factory=list)
    suspects: list[Unit] = field(default_factory=list)
    skipped: list[tuple[Unit, str]] = field(default_factory=list)


def assign_names(units: Sequence[Unit], known: dict[str, dict[str, Any]]) -> None:
    """Give each unit a unique output name: the one the manifest (``known``, by absolute input path) has for its
    input, else its file (folder) name, with ``-2``, ``-3``... when taken."""
    paths = {key(u.path) for u in units}
    used = {rec["name"] for path, rec in known.items() if path not in paths and rec.get("name")}
    for unit in units:
        rec = known.get(key(unit.path))
        if rec is not None and rec.get("name"):
            unit.name = rec["name"]
            used.add(unit.name)
    for unit in units:
        if not unit.name:
            if is_url(unit.path):
                stem = url_name(unit.path) if unit.kind == "folder" else Path(url_name(unit.path)).stem
            else:
                stem = Path(unit.path).resolve().name if unit.kind == "folder" else Path(unit.path).stem
            name, n = stem, 1
            while name in used:
                n += 1
                name = f"{stem}-{n}"
            unit.name = name
            used.add(name)


def plan(units: Sequence[Unit], out: Path | str, options: Options, known: dict[str, dict[str, Any]], resume: bool,
         overwrite: bool, exists: Callable[[str], bool] | None = None, joining: frozenset[str] = frozenset()
         ) -> Plan:
    """The plan of a run (see the module) over the manifest's latest records ``known``; names the units.
    OverwriteError, before anything is written, when it would replace results it was not asked to. ``exists``:
    whether a name is in ``out`` (default: a local folder's ``os.path.lexists``; an output URL's listing)."""
    if exists is None:
        def exists(name: str) -> bool:
            return os.path.lexists(Path(out) / name)
    shown = redact(str(out))
    assign_names(units, known)
    now = fingerprint(options)
    result = Plan()
    for unit in units:
        rec = known.get(key(unit.path))
        status = None if rec is None else rec["status"]
        isolate = status == "started" or (status == "failed" and str(rec.get("error")).startswith(DIED))
        if rec is None and not overwrite and key(unit.path) not in joining:
            theirs = [f for f in unit.files(options.formats, options.overlay) if exists(f)]
            if theirs:
                raise OverwriteError(f"{join(shown, theirs[0])} exists and no record of {join(shown, MANIFEST)} "
                                     "accounts for it: "
                                     "it is not replaced; pass --overwrite to replace it, or choose another --out")
        if rec is not None and not overwrite:  # (started, interrupted: neither present nor failed: run)
            stat = input_stat(unit)
            changed = rec.get("stat", stat) != stat  # a record without one (an older manifest): unchanged
            present = status in ("done", "truncated") and all(exists(f) for f in rec["files"])
            flags = differences(rec.get("options"), now) if present else []
            if flags:
                raise OverwriteError(f"{unit.shown}: its results in {shown} ({', '.join(rec['files'])}) were "
                                     f"made with other {', '.join(flags)}; pass --overwrite to replace them, or choose "
                                     "another --out")
            if present and not changed and (status == "done" or not resume):
                result.skipped.append((unit, f"{status} earlier ({', '.join(rec['files'])}); --overwrite runs it "
                                             "again"))
                continue
            if status == "failed" and not changed and not resume:
                result.skipped.append((unit, f"failed earlier ({rec.get('error')}); --resume retries it"))
                continue
        (result.suspects if isolate else result.todo).append(unit)
    return result
