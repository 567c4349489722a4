"""Mutation testing (mutmut 3) of the modules that carry the maths and the rules, each with its fast tests.

Each group runs in its own scratch folder ``.mutation/<group>`` (git-ignored; a copy of ``hamer/``, ``tests/`` and
``pyproject.toml`` with a ``[tool.mutmut]`` section naming the module and the tests), so groups never share mutmut's
state and the working tree is never touched. Prints a table (mutants, killed, survived, timeout, no tests, score) and
writes it with the surviving mutants' names to ``.mutation/report.json``; read a survivor with
``cd .mutation/<group> && mutmut show <name>``.

Usage (slow: minutes per group on 2 cores; not part of the test suite)::

    pip install -e '.[test,dev]'
    nice -n 15 python tools/mutation.py                 # every group
    nice -n 15 python tools/mutation.py cropping camera # some groups
    nice -n 15 python tools/mutation.py --survivors cropping  # after adding tests: only the last survivors
    nice -n 15 python tools/mutation.py --resume checkpoint   # a run cut short: the mutants not yet killed
    python tools/mutation.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"

# the in-process runs of tests/test_runs.py (--bbox-only: seconds each)
RUN_TESTS = [f"tests/test_runs.py::test_{name}" for name in (
    "a_new_input_is_added_and_a_done_one_skipped",
    "outputs_without_a_record_are_protected",
    "the_latest_record_decides",
    "a_failed_input_fixed_runs_again_on_resume_and_ends_done",
    "same_names_from_two_folders_stay_distinct",
    "no_writes_through_links_out_of_the_folder",
    "a_dead_runs_temporary_files_and_folders_are_removed",
    "a_video_one_frame_short_of_its_header_is_truncated",
    "a_unit_a_run_died_in_runs_alone_in_a_child",
)] + ["tests/test_corpus.py::test_skips_what_is_done_refuses_other_options_then_resumes_or_overwrites",
      "tests/test_cli.py::test_video_interrupted_leaves_no_partial_file"]

# group -> (module file, mutant name patterns (fnmatch; None: all of the module), tests)
GROUPS: dict[str, tuple[str, list[str] | None, list[str]]] = {
    "cropping": ("hamer/cropping.py", None,
                 ["tests/test_cropping.py", "tests/test_references.py", "tests/test_properties.py",
                  "tests/test_hardening.py::test_the_reduced_crop_of_a_huge_box_is_within_tolerance_of_the_exact_one",
                  "tests/test_hardening.py::test_ordinary_crops_take_the_exact_path"]),
    "camera": ("hamer/camera.py", None, ["tests/test_references.py", "tests/test_properties.py"]),
    "mano": ("hamer/models/mano.py", None,
             ["tests/test_mano.py", "tests/test_mano_cases.py", "tests/test_references.py", "tests/test_security.py"]),
    "checkpoint": ("hamer/checkpoint.py", None,
                   ["tests/test_checkpoint.py", "tests/test_security.py", "tests/test_cli.py::test_convert_round_trip",
                    *(f"tests/test_hardening.py::test_{name}" for name in (
                        "safetensors_metadata_that_is_not_a_json_object", "a_non_tensor_weight_is_named",
                        "a_truncated_or_oversized_mean_params_file", "a_safetensors_file_keeps_its_own_config"))]),
    "detection-boxes": ("hamer/detection.py", ["hamer.detection.x_pose_hand_box__*"],
                        ["tests/test_references.py", "tests/test_detection.py"]),
    "tracking": ("hamer/tracking.py",
                 ["hamer.tracking.xǁOneEuroFilterǁ*", "hamer.tracking.xǁHandTrackerǁ*", "hamer.tracking.x_box_iou*",
                  "hamer.tracking.x__area*", "hamer.tracking.x__intersection*", "hamer.tracking.x__other*"],
                 ["tests/test_tracking.py", "tests/test_tracker_cases.py", "tests/test_properties.py"]),
    "pipeline": ("hamer/pipeline.py", None,
                 ["tests/test_pipeline_cases.py", "tests/test_references.py", "tests/test_properties.py",
                  "tests/test_process.py", "tests/test_frame_result.py", "tests/test_formats.py"]),
    "outputs": ("hamer/outputs.py", None, ["tests/test_outputs.py", "tests/test_formats.py", "tests/test_cli.py"]),
    "gptq": ("hamer/quantize/gptq.py", None, ["tests/test_gptq.py"]),
    # the corpus runner's bookkeeping: what a run does with each input (plan), the manifest, lock and leftovers
    "plan": ("hamer/plan.py", None, RUN_TESTS),
    "manifest": ("hamer/manifest.py", None,
                 ["tests/test_manifest.py", *RUN_TESTS, *(f"tests/test_runs.py::test_{name}" for name in (
                     "a_second_run_on_the_folder_is_refused_and_a_dead_runs_lock_taken_over",
                     "a_full_disk_fails_the_unit_and_an_unwritable_manifest_stops_the_run"))]),
    "manifest-unit": ("hamer/manifest.py", None, ["tests/test_manifest.py"]),
    # the lock file naming its holder (a run's on its output folder, a download's on its data folder)
    "pidlock": ("hamer/pidlock.py", None, ["tests/test_pidlock.py", "tests/test_manifest.py"]),
    # plan and units on hand-built units and manifests (seconds), without the runs of the plan group
    "plan-unit": ("hamer/plan.py", None, ["tests/test_plan.py"]),
    "units": ("hamer/units.py", None, ["tests/test_plan.py", "tests/test_units.py"]),
    "quantize-search": ("hamer/quantize/search.py",
                        ["hamer.quantize.search.x_cheapest*", "hamer.quantize.search.x_fewest*"],
                        ["tests/test_onnx.py::test_leading_fp32_blocks_search_finds_the_fewest_that_pass",
                         "tests/test_onnx.py::test_cheapest_candidate_over_fp32_layer_families"]),
}
STATUS = re.compile(r"^\s*(\S+): (\w[\w ]*)$")


def _prepare(group: str) -> Path:
    work = WORK / group
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "hamer", work / "hamer", ignore=shutil.ignore_patterns("__pycache__"))
    _copy_tests(work)
    shutil.copytree(ROOT / "benchmarks", work / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    shared = ROOT.parent / "shared"
    if shared.is_dir():  # tests find real photographs at <repo>/../shared/images; mutmut runs them from mutants/
        (work / "shared").symlink_to(shared)
    _write_config(work, group)
    return work


def _write_config(work: Path, group: str) -> None:
    module, _, tests = GROUPS[group]
    config = "\n".join([
        "", "[tool.mutmut]",
        'source_paths = ["hamer"]',
        'also_copy = ["benchmarks"]',  # a tracking test imports benchmarks/smoothing.py
        f"only_mutate = {json.dumps([module])}",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # in mutmut's process: no pytest-xdist workers (pyproject's addopts start two)
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-n", "0"]',
        'process_isolation = "forkserver"',  # torch and MediaPipe are not fork-safe after they start threads
        "use_git_change_detection = false",
        "",
    ])
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + config)


def _copy_tests(work: Path) -> None:
    """The tests, in the scratch folder only with their order changed: those that need the synthetic model (the
    session's ``data_dir``) last, so that a mutant a quick test kills is not first run through the slow ones (mutmut
    stops at the first failure). Order changes nothing else: the suite's tests do not depend on it."""
    shutil.rmtree(work / "tests", ignore_errors=True)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    with open(work / "tests" / "conftest.py", "a", encoding="utf-8") as conftest:
        conftest.write(ORDER_HOOK)


ORDER_HOOK = """

def pytest_collection_modifyitems(items):  # added by tools/mutation.py in its scratch copy only
    items.sort(key=lambda item: "data_dir" in item.fixturenames or "reference_model" in item.fixturenames)
"""


def _refresh_tests(group: str) -> Path:
    """The group's folder of an earlier run with the current tests, for re-running its survivors. mutmut's record of
    which tests reach which function is dropped, so that it is made again with the current tests: kept, a test
    added since would never be run against the mutants of the functions it reaches."""
    work = WORK / group
    _copy_tests(work)
    (work / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    _write_config(work, group)
    return work


MUTMUT = [sys.executable, "-m", "mutmut"]
KILLED = ("killed", "timeout")


def _statuses(work: Path, patterns: list[str], env: dict[str, str]) -> dict[str, str]:
    """mutmut's verdict on each mutant of the group's folder (those matching ``patterns``, if any)."""
    listing = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                             text=True, check=True).stdout
    statuses: dict[str, str] = {}
    for line in listing.splitlines():
        match = STATUS.match(line)
        if match and (not patterns or any(_fnmatch(match[1], p) for p in patterns)):
            statuses[match[1]] = match[2]
    return statuses


def run_group(group: str, children: int, earlier: dict | None = None, resume: bool = False) -> dict:
    """Run mutmut over a group. With ``earlier`` (that group's last result): only its survivors, on the current
    tests. With ``resume``: every mutant of the group's folder not yet killed (a run cut short, not checked, no
    tests, survived), on the current tests; the folder's earlier kills stand."""
    patterns = GROUPS[group][1] or []
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    standing: dict[str, str] = {}
    if resume:
        work = _refresh_tests(group)
        standing = _statuses(work, patterns, env)
        selection = [name for name, status in standing.items() if status not in KILLED]
    elif earlier is not None:
        work = _refresh_tests(group)
        selection = earlier["survived"] + earlier["no_tests"]
    else:
        work = _prepare(group)
        selection = patterns
    run = subprocess.run([*MUTMUT, "run", "--max-children", str(children), *selection], cwd=work, env=env,
                         capture_output=True, text=True)
    (work / "run.log").write_text(run.stdout + run.stderr)
    statuses = _statuses(work, patterns, env)
    counts: dict[str, int] = {}
    if resume:  # the earlier kills stand; the re-run mutants get their new verdicts
        statuses = {**standing, **{k: v for k, v in statuses.items() if k in selection}}
    elif earlier is not None:  # the earlier verdicts stand except for the re-run survivors
        statuses = {k: v for k, v in statuses.items() if k in selection}
        counts = {k: n for k, n in earlier["counts"].items() if k not in ("survived", "no tests")}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    tested = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
    killed = sum(counts.get(s, 0) for s in KILLED)
    return {
        "group": group, "module": GROUPS[group][0], "mutants": sum(counts.values()), "counts": counts,
        "score": round(100.0 * killed / tested, 1) if tested else None, "returncode": run.returncode,
        "survived": sorted(k for k, s in statuses.items() if s == "survived"),
        "no_tests": sorted(k for k, s in statuses.items() if s == "no tests"),
    }


def _fnmatch(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", nargs="*", help=f"default: all of {', '.join(GROUPS)}")
    parser.add_argument("--children", type=int, default=2, help="parallel test processes (default 2)")
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    parser.add_argument("--survivors", action="store_true",
                        help="re-run only the last run's surviving mutants of each group, with the current tests")
    parser.add_argument("--resume", action="store_true",
                        help="go on with a run cut short: every mutant of the group's folder not yet killed, with "
                             "the current tests")
    args = parser.parse_args()
    if args.list:
        for name, (module, patterns, tests) in GROUPS.items():
            print(f"{name:16} {module} {patterns or ''} <- {' '.join(tests)}")
        return
    unknown = [g for g in args.groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; see --list")
    report_path = WORK / "report.json"

    def load() -> dict:
        return json.loads(report_path.read_text()) if report_path.is_file() else {}

    if args.survivors and any(g not in load() for g in args.groups or GROUPS):
        parser.error("--survivors needs an earlier full run of each group named")
    if args.resume and (args.survivors or any(not (WORK / g / "mutants").is_dir() for g in args.groups or GROUPS)):
        parser.error("--resume needs an earlier run (cut short or not) of each group named, and no --survivors")
    print(f"{'group':16} {'mutants':>8} {'killed':>7} {'survived':>9} {'timeout':>8} {'no tests':>9} {'score':>6}")
    for group in args.groups or list(GROUPS):
        result = run_group(group, args.children, load()[group] if args.survivors else None, args.resume)
        report = load()
        report[group] = result
        WORK.mkdir(exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False))
        c = result["counts"]
        print(f"{group:16} {result['mutants']:8} {c.get('killed', 0):7} {c.get('survived', 0):9} "
              f"{c.get('timeout', 0):8} {c.get('no tests', 0):9} {result['score']!s:>6}", flush=True)
        if result["returncode"]:
            print(f"  mutmut exited {result['returncode']}: see {WORK / group / 'run.log'}")


if __name__ == "__main__":
    main()
