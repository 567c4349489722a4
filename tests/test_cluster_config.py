"""docs/CLUSTER.md's cluster definition is valid YAML whose `hamer run` command the command line accepts, asking for
no more GPUs than the cluster has; the --gpus-per-worker flag's usage errors."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from hamer.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def yaml_blocks(path: Path) -> list:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), flags=re.S)]


def test_the_rayjob_in_docs_cluster_runs_a_command_the_cli_accepts():
    (job,) = [doc for doc in yaml_blocks(REPO / "docs" / "CLUSTER.md") if doc.get("kind") == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["hamer", "run"]
    args = build_parser().parse_args(command[1:])
    assert args.engine == "ray" and args.ray_address == "auto" and args.device == "cuda" and args.resume
    assert args.list.startswith("s3://") and args.out.startswith("s3://")
    cluster = job["spec"]["rayClusterSpec"]
    # the image's Ray is the one hamer[ray] pins
    pinned = re.search(r'"ray\[data\]==([\d.]+)\.\*"', (REPO / "pyproject.toml").read_text()).group(1)
    assert cluster["rayVersion"].startswith(pinned + ".")
    gpus = sum(int(group["replicas"]) * int(c["resources"]["limits"]["nvidia.com/gpu"])
               for group in cluster["workerGroupSpecs"] for c in group["template"]["spec"]["containers"])
    assert args.workers * args.gpus_per_worker <= gpus  # every worker can be placed
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"  # the driver's node runs no GPU worker
    for spec in [head["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]:
        for container in spec["containers"]:  # credentials from a secret, never in the file
            assert {"secretRef": {"name": "hamer-aws"}} in container["envFrom"]
            assert not any("SECRET" in e["name"] or "KEY" in e["name"] for e in container.get("env", []))


@pytest.mark.parametrize("argv, message", [
    (["--gpus-per-worker", "1"], "--workers, --ray-address and --gpus-per-worker go with --engine ray"),
    (["--engine", "ray", "--device", "cuda", "--gpus-per-worker", "0"],
     "--gpus-per-worker must be > 0 with --device cuda"),
    (["--engine", "ray", "--gpus-per-worker", "-0.5"], "argument --gpus-per-worker: must be a number >= 0"),
])
def test_gpus_per_worker_usage_errors(argv, message, tmp_path, capsys):
    try:
        status = main(["run", str(tmp_path / "x.mp4"), "--out", str(tmp_path / "out"), *argv])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_gpus_per_worker_takes_fractions():
    args = build_parser().parse_args(["run", "x.mp4", "--engine", "ray", "--gpus-per-worker", "0.25"])
    assert args.gpus_per_worker == 0.25
