"""`hamer run --engine ray --ray-address ADDR` on a multi-node Ray cluster started by the test on this machine
(each node its own raylet and workers, as on separate machines): each record names the node that ran it, a
GPU request reaches Ray's scheduler, and a node lost mid-run costs only its unfinished unit, run again on a
surviving node, with every input done exactly once.

The nodes share one module-scoped cluster: a head and a node declaring one (fake) GPU, 1 CPU each; the node-loss
test, last, adds a third node and removes one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
from ray_helpers import (
    REPO,
    TEST_MARK,
    hamer_cmd,
    hamer_env,
    kill_marked,
    new_mark,
    run_cli,
    run_clis,
    short_temp_dir,
)

from hamer.corpus import MANIFEST, TEMP_FILE

from conftest import SHARED_IMAGES as IMAGES
from videos import manifest, pan_zoom, temp_files, write_video

pytest.importorskip("ray")
# (one xdist worker runs every Ray test: tests/conftest.py, pytest_xdist_make_scheduler)
pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"test photographs not found at {IMAGES}")

# (no node_ip_address="127.0.0.1": a driver's ray.init resolves 127.0.0.1 to this machine's address, where such a
# cluster's GCS does not listen; every node here is a process of this machine on its own address)
NODE = {"num_cpus": 1}


@pytest.fixture(scope="module")
def cluster(onnx_cache):
    """A head and a node with ``num_gpus=1`` declared (no GPU is used), 1 CPU each; shut down by the test."""
    from ray.cluster_utils import Cluster

    mark = new_mark()
    temp = short_temp_dir() / "ray"
    temp.mkdir()
    env = {TEST_MARK: mark, "RAY_TMPDIR": str(temp.parent), "HAMER_ONNX_CACHE": str(onnx_cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    state = SimpleNamespace(cluster=None, mark=mark, env=env)
    try:
        with pytest.MonkeyPatch.context() as mp:  # the nodes' processes (their workers too) inherit it
            for name, value in env.items():
                mp.setenv(name, value)
            state.cluster = Cluster(initialize_head=True, shutdown_at_exit=False,
                                    head_node_args={**NODE, "temp_dir": str(temp), "include_dashboard": False})
            state.gpu_node = state.cluster.add_node(**NODE, num_gpus=1)
        state.cluster.wait_for_nodes()
        state.head = state.cluster.head_node
        yield state
    finally:
        if state.cluster is not None:
            state.cluster.shutdown()
        kill_marked(mark)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster_clips")
    return [write_video(folder / f"c{i}.mp4", pan_zoom(photo, 4 + i)) for i, photo in
            enumerate(("test4.jpg", "test5.jpeg", "test4.jpg", "test5.jpeg"))]


def driver_env(cluster, onnx_cache) -> dict[str, str]:
    return hamer_env(onnx_cache, cluster.mark)


def test_a_two_node_run_names_the_node_of_each_unit(cluster, data_dir, onnx_cache, clips, tmp_path):
    # A long video first: the worker ready first is still on it when the other is ready (on a loaded machine one
    # worker can start seconds after the other, and would find the short videos all done)
    videos = [write_video(tmp_path / "long.mp4", pan_zoom("test4.jpg", 60)), *clips]
    out = tmp_path / "out"
    result = run_cli([*map(str, videos), "--data", str(data_dir), "--out", str(out), "--quiet", "--engine", "ray",
                      "--ray-address", cluster.cluster.address, "--workers", "2", "--detect-workers", "1"],
                     driver_env(cluster, onnx_cache))
    assert result.returncode == 0, result.stderr
    records = manifest(out)
    assert sorted((r["input"], r["status"]) for r in records) == sorted((str(c), "done") for c in videos)
    nodes = {n.node_id: n for n in (cluster.head, cluster.gpu_node)}
    # one worker of 1 CPU per node of 1 CPU: both nodes ran units
    assert {r["node"]["ray_node_id"] for r in records} == set(nodes)
    for r in records:
        assert r["node"]["ip"] == nodes[r["node"]["ray_node_id"]].node_ip_address
        assert r["node"]["host"] == socket.gethostname()
        assert r["node"]["gpus"] == []  # none asked for


def test_gpus_per_worker_reaches_the_scheduler(cluster, data_dir, onnx_cache, clips, tmp_path):
    result, more = run_clis(  # (both at once)
        [str(clips[0]), "--data", str(data_dir), "--out", str(tmp_path / "half"), "--quiet", "--engine", "ray",
         "--ray-address", cluster.cluster.address, "--gpus-per-worker", "0.5"],
        [str(clips[0]), "--data", str(data_dir), "--out", str(tmp_path / "two"), "--engine", "ray", "--ray-address",
         cluster.cluster.address, "--device", "cuda", "--gpus-per-worker", "2"], env=driver_env(cluster, onnx_cache))
    assert result.returncode == 0, result.stderr
    (rec,) = manifest(tmp_path / "half")
    # placed on the only node declaring a GPU, and given GPU 0 (Ray sets the worker's CUDA_VISIBLE_DEVICES to it)
    assert rec["status"] == "done" and rec["node"]["ray_node_id"] == cluster.gpu_node.node_id
    assert rec["node"]["gpus"] == ["0"]
    assert more.returncode == 1
    assert "error: cannot set up the model: 2 GPU(s) per worker (--device cuda, --gpus-per-worker), but the Ray " \
           "cluster has 1 GPU(s)" in more.stderr
    assert not (tmp_path / "two" / MANIFEST).exists()


def raylet_pids(nodes) -> dict[int, object]:
    import ray._private.ray_constants as ray_constants

    return {n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: n for n in nodes}


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def test_a_node_lost_mid_run_costs_only_its_unfinished_unit(cluster, data_dir, onnx_cache, tmp_path):
    videos = [write_video(tmp_path / f"v{i}.mp4", pan_zoom(photo, 12)) for i, photo in
              enumerate(("test4.jpg", "test5.jpeg") * 3)]
    with pytest.MonkeyPatch.context() as mp:
        for name, value in cluster.env.items():
            mp.setenv(name, value)
        spare = cluster.cluster.add_node(**NODE)
    cluster.cluster.wait_for_nodes()
    workers = [cluster.gpu_node, spare]  # the nodes that may be lost (not the head)
    out = tmp_path / "out"
    proc = subprocess.Popen(hamer_cmd(*map(str, videos), "--data", str(data_dir), "--out", str(out), "--quiet",
                                      "--engine", "ray", "--ray-address", cluster.cluster.address, "--workers", "2",
                                      "--detect-workers", "1"), cwd=REPO, env=driver_env(cluster, onnx_cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lost = before = None
        deadline = time.monotonic() + 300
        while lost is None and proc.poll() is None and time.monotonic() < deadline:
            # a node (not the head) that has finished a unit and is writing its next one
            done_on = {r["node"]["ray_node_id"] for r in manifest(out)} if (out / MANIFEST).exists() else set()
            for path in temp_files(out) if out.is_dir() else []:
                pid = int(TEMP_FILE.match(path.name).group(1))
                node = raylet_pids(workers).get(parent_pid(pid))
                if node is not None and node.node_id in done_on:
                    os.kill(pid, signal.SIGKILL)  # its worker killed (no unit ends there from now on)...
                    before = manifest(out)
                    cluster.cluster.remove_node(node, allow_graceful=False)  # ... then its raylet gone
                    lost = node
                    break
            time.sleep(0.01)
        assert lost is not None, "no worker node was caught between two units"
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    records = manifest(out)
    assert sorted((r["input"], r["status"]) for r in records) == sorted((str(v), "done") for v in videos)  # once
    for r in records:
        lines = (out / f"{r['name']}.jsonl").read_text().splitlines()
        assert len(lines) == r["frames"] == 12 and all(json.loads(line) for line in lines)
        with np.load(out / f"{r['name']}.npz") as npz:
            assert len(npz["present"]) == 12
    assert temp_files(out) == []
    # kept: the units the lost node finished; the unit it was running ran again on a surviving node
    assert records[:len(before)] == before
    assert any(r["node"]["ray_node_id"] == lost.node_id for r in before)
    assert len(records) > len(before) and all(r["node"]["ray_node_id"] != lost.node_id
                                              for r in records[len(before):])
