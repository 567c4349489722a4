"""Unit tests of what a run does with each input (hamer.plan) over manifests written by hand: names, skips, retries,
refusals and the suspects run alone. Inputs are real files (their size and mtime are the records' ``stat``);
nothing is run. Expected names and messages are written out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hamer.manifest import DIED, MANIFEST, OverwriteError
from hamer.plan import assign_names, plan
from hamer.units import Options, Unit, fingerprint

OPTIONS = Options(bbox_only=True)  # no model: the fingerprint needs no data folder


def image(path: Path, content: bytes = b"img") -> Unit:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return Unit(str(path), "image")


def stat_of(path: Path) -> list[int]:
    s = os.stat(path)
    return [s.st_size, s.st_mtime_ns]


def rec(unit: Unit, status: str, name: str, files: list[str] | None = None, **fields) -> dict:
    """A manifest record of ``unit`` as a run writes it, by hand."""
    return {"input": os.path.abspath(unit.path), "name": name, "kind": unit.kind, "status": status,
            "files": [f"{name}.jsonl", f"{name}.npz"] if files is None else files,
            "stat": stat_of(Path(unit.path)), "options": fingerprint(OPTIONS), "error": None, **fields}


def outputs(out: Path, *names: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_text("results")


def known_of(*records: dict) -> dict[str, dict]:
    return {r["input"]: r for r in records}


def run_plan(units, out, known, resume=False, overwrite=False, options=OPTIONS):
    return plan(units, out, options, known, resume, overwrite)


def names(units) -> list[str]:
    return [u.name for u in units]


# ---------------------------------------------------------------------------------------------------- names

def test_new_inputs_are_named_by_their_stem_and_the_same_stem_gets_a_number(tmp_path):
    units = [image(tmp_path / "x" / "a.png"), image(tmp_path / "y" / "a.jpg"), image(tmp_path / "z" / "a.png"),
             image(tmp_path / "b.png")]
    assign_names(units, {})
    assert names(units) == ["a", "a-2", "a-3", "b"]


def test_a_folder_is_named_by_its_resolved_name(tmp_path):
    folder = tmp_path / "shots.v2"
    folder.mkdir()
    here = os.getcwd()
    os.chdir(folder)
    try:
        units = [Unit(".", "folder"), Unit(str(folder), "folder")]
        assign_names(units, {})
    finally:
        os.chdir(here)
    assert names(units) == ["shots.v2", "shots.v2-2"]  # not ".", not "shots" (a folder has no suffix)


def test_the_manifests_names_are_kept_and_reserved(tmp_path):
    a, b, c = image(tmp_path / "a.png"), image(tmp_path / "x" / "b.png"), image(tmp_path / "c.png")
    other = str(tmp_path / "y" / "b.png")  # another input of the folder, not in this run: its name stays its own
    elsewhere = str(tmp_path / "z" / "c.png")  # a record without a name reserves nothing
    problem = str(tmp_path / "bad")  # a record without a name field (a hand-edited manifest): reserves nothing
    known = {os.path.abspath(a.path): {"name": "b"}, other: {"name": "b-2"}, elsewhere: {"name": ""},
             problem: {"status": "failed"}}
    assign_names([b, a, c], known)
    assert (a.name, b.name, c.name) == ("b", "b-3", "c")


def test_a_recorded_name_is_taken_before_new_inputs_are_named(tmp_path):
    new, old = image(tmp_path / "x" / "a.png"), image(tmp_path / "y" / "a.png")
    assign_names([new, old], {os.path.abspath(old.path): {"name": "a"}})
    assert (new.name, old.name) == ("a-2", "a")


def test_a_record_naming_no_name_leaves_the_unit_to_be_named(tmp_path):
    a = image(tmp_path / "a.png")
    assign_names([a], {os.path.abspath(a.path): {"status": "started"}})
    assert a.name == "a"


# ---------------------------------------------------------------------------------------------------- new inputs

def test_a_new_input_runs_and_files_in_its_way_are_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    a = image(tmp_path / "a.png")
    assert names(run_plan([a], out, {}).todo) == ["a"]
    outputs(out, "b.npz")
    (out / "b.jsonl").symlink_to(tmp_path / "missing")  # a dangling link is in the way too
    b = image(tmp_path / "b.png")
    with pytest.raises(OverwriteError) as refused:
        run_plan([b], out, {})
    assert str(refused.value) == (f"{out / 'b.jsonl'} exists and no record of {out / MANIFEST} accounts for it: it "
                                  "is not replaced; pass --overwrite to replace it, or choose another --out")
    assert names(run_plan([image(tmp_path / "b.png")], out, {}, overwrite=True).todo) == ["b"]


def test_an_overlay_in_the_way_of_a_new_input_is_refused_only_when_overlays_are_written(tmp_path):
    out = tmp_path / "out"
    outputs(out, "a.overlay.jpg")
    assert names(run_plan([image(tmp_path / "a.png")], out, {}).todo) == ["a"]
    with pytest.raises(OverwriteError, match="a.overlay.jpg exists"):
        run_plan([image(tmp_path / "a.png")], out, {}, options=Options(bbox_only=True, overlay=True))


# ---------------------------------------------------------------------------------------------------- recorded

def test_a_done_input_with_its_files_is_skipped_even_on_resume(tmp_path):
    out = tmp_path / "out"
    a = image(tmp_path / "a.png")
    outputs(out, "a.jsonl", "a.npz")
    for resume in (False, True):
        result = run_plan([a], out, known_of(rec(a, "done", "a")), resume=resume)
        assert result.todo == [] and result.suspects == []
        assert result.skipped == [(a, "done earlier (a.jsonl, a.npz); --overwrite runs it again")]


def test_a_truncated_input_is_skipped_and_retried_on_resume(tmp_path):
    out = tmp_path / "out"
    a = image(tmp_path / "a.png")
    outputs(out, "a.jsonl", "a.npz")
    known = known_of(rec(a, "truncated", "a"))
    assert run_plan([a], out, known).skipped == [(a, "truncated earlier (a.jsonl, a.npz); --overwrite runs it "
                                                     "again")]
    assert names(run_plan([a], out, known, resume=True).todo) == ["a"]


def test_a_done_input_runs_again_when_a_file_is_missing_or_its_input_changed(tmp_path):
    out = tmp_path / "out"
    a = image(tmp_path / "a.png")
    outputs(out, "a.jsonl")  # a.npz missing
    assert names(run_plan([a], out, known_of(rec(a, "done", "a"))).todo) == ["a"]
    outputs(out, "a.npz")
    done = rec(a, "done", "a")
    Path(a.path).write_bytes(b"a longer image")  # changed since
    assert names(run_plan([a], out, known_of(done)).todo) == ["a"]


def test_a_record_without_stat_counts_as_unchanged(tmp_path):
    out = tmp_path / "out"
    a = image(tmp_path / "a.png")
    outputs(out, "a.jsonl", "a.npz")
    done = rec(a, "done", "a")
    del done["stat"]
    assert run_plan([a], out, known_of(done)).skipped == [(a, "done earlier (a.jsonl, a.npz); --overwrite runs it "
                                                              "again")]


def test_results_of_other_options_are_refused_naming_the_flags_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    a = image(tmp_path / "a.png")
    outputs(out, "a.jsonl", "a.npz")
    theirs = rec(a, "done", "a", options=fingerprint(Options(bbox_only=True, smooth=True, max_hands=1)))
    with pytest.raises(OverwriteError) as refused:
        run_plan([a], out, known_of(theirs))
    assert str(refused.value) == (f"{a.path}: its results in {out} (a.jsonl, a.npz) were made with other --smooth, "
                                  "--max-hands; pass --overwrite to replace them, or choose another --out")
    Path(a.path).write_bytes(b"changed")  # a changed input does not make the old results replaceable
    with pytest.raises(OverwriteError):
        run_plan([a], out, known_of(theirs), resume=True)
    assert names(run_plan([a], out, known_of(theirs), overwrite=True).todo) == ["a"]


def test_other_options_of_a_record_whose_files_are_gone_are_no_obstacle(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a = image(tmp_path / "a.png")
    theirs = rec(a, "done", "a", options=fingerprint(Options(bbox_only=True, smooth=True)))
    assert names(run_plan([a], out, known_of(theirs)).todo) == ["a"]
    failed = rec(a, "failed", "a", files=[], error="bad", options=fingerprint(Options(bbox_only=True, smooth=True)))
    assert names(run_plan([a], out, known_of(failed), resume=True).todo) == ["a"]


def test_a_failed_input_is_skipped_naming_its_error_until_resume_or_a_change(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a = image(tmp_path / "a.png")
    failed = rec(a, "failed", "a", files=[], error="not an image")
    result = run_plan([a], out, known_of(failed))
    assert result.skipped == [(a, "failed earlier (not an image); --resume retries it")] and result.todo == []
    result = run_plan([a], out, known_of(failed), resume=True)
    assert names(result.todo) == ["a"] and result.skipped == [] and result.suspects == []
    Path(a.path).write_bytes(b"fixed, and longer")
    assert names(run_plan([a], out, known_of(failed)).todo) == ["a"]


@pytest.mark.parametrize("status", ["interrupted", "started"])
def test_an_interrupted_or_started_input_runs_again_started_ones_alone(tmp_path, status):
    out = tmp_path / "out"
    outputs(out, "a.jsonl", "a.npz")
    a = image(tmp_path / "a.png")
    result = run_plan([a], out, known_of(rec(a, status, "a", files=[])))
    assert result.skipped == []
    assert (names(result.suspects), names(result.todo)) == ((["a"], []) if status == "started" else ([], ["a"]))


def test_a_unit_its_process_died_in_is_a_suspect_other_failures_are_not(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    a, b, c = image(tmp_path / "a.png"), image(tmp_path / "b.png"), image(tmp_path / "c.png")
    known = known_of(rec(a, "failed", "a", files=[], error=f"{DIED} (signal 11)"),
                     rec(b, "failed", "b", files=[], error=f"it said {DIED}"),  # DIED, but not the reason given
                     rec(c, "failed", "c", files=[], error=None))
    result = run_plan([a, b, c], out, known, resume=True)
    assert names(result.suspects) == ["a"] and names(result.todo) == ["b", "c"]
    result = run_plan([a, b, c], out, known)  # without --resume: not retried, suspect or not
    assert result.suspects == [] and result.todo == [] and [u.name for u, _ in result.skipped] == ["a", "b", "c"]


def test_overwrite_runs_everything_and_a_suspect_still_runs_alone(tmp_path):
    out = tmp_path / "out"
    outputs(out, "a.jsonl", "a.npz", "b.jsonl", "b.npz")
    a, b, c = image(tmp_path / "a.png"), image(tmp_path / "b.png"), image(tmp_path / "c.png")
    known = known_of(rec(a, "done", "a"), rec(b, "started", "b", files=[]),
                     rec(c, "failed", "c", files=[], error="bad"))
    result = run_plan([a, b, c], out, known, overwrite=True)
    assert names(result.todo) == ["a", "c"] and names(result.suspects) == ["b"] and result.skipped == []


def test_a_folder_unit_is_skipped_until_one_of_its_images_changes(tmp_path):
    out = tmp_path / "out"
    outputs(out, "shots.jsonl", "shots.npz")
    folder = tmp_path / "shots"
    folder.mkdir()
    images = [folder / "1.png", folder / "2.png"]
    for p in images:
        p.write_bytes(b"img")
    unit = Unit(str(folder), "folder", images=[str(p) for p in images])
    s = [os.stat(p) for p in [folder, *images]]
    done = {"input": str(folder), "name": "shots", "status": "done", "files": ["shots.jsonl", "shots.npz"],
            "stat": [6, max(x.st_mtime_ns for x in s)], "options": fingerprint(OPTIONS)}
    assert [u for u, _ in run_plan([unit], out, known_of(done)).skipped] == [unit]
    images[1].write_bytes(b"image 2")
    assert names(run_plan([unit], out, known_of(done)).todo) == ["shots"]


def test_the_units_after_a_skipped_one_are_planned_too(tmp_path):
    out = tmp_path / "out"
    outputs(out, "a.jsonl", "a.npz")
    a, b, c = image(tmp_path / "a.png"), image(tmp_path / "b.png"), image(tmp_path / "c.png")
    result = run_plan([a, b, c], out, known_of(rec(a, "done", "a"), rec(b, "failed", "b", files=[], error="x")))
    assert [u.name for u, _ in result.skipped] == ["a", "b"] and names(result.todo) == ["c"]
