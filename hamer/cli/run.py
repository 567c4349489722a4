"""``hamer run``: images, folders and videos -> JSONL + NPZ (+ other formats, overlays) and a manifest.

Videos of more than ``--segment-frames`` frames (default 9000; 0: never) run as segments, each a unit of its own,
joined into the video's files when the last one ends (:mod:`hamer.segments`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..corpus import ENGINES
from ..images import BYTES_PER_PIXEL, MAX_IMAGE_PIXELS, METADATA_BYTES
from ..input_cache import DEFAULT_CACHE_BYTES
from ..sizes import format_bytes
from ..storage import check_url, is_url, local_path, redact
from .args import (
    count,
    formats,
    fov,
    intrinsics,
    model_options,
    non_negative,
    non_negative_count,
    positive,
    size_bytes,
)

if TYPE_CHECKING:
    from tqdm import tqdm


class _Bar:
    """The run's progress bar (frames, frames/s, ETA; units in the postfix) and its messages."""

    def __init__(self, bar: tqdm, quiet: bool) -> None:
        self.bar, self.quiet = bar, quiet
        self.units = self.finished = 0
        self.failed = False

    def start(self, units: int, frames: int | None) -> None:
        self.units = units
        self.bar.reset(total=frames)
        self.bar.set_postfix_str(f"units 0/{units}")

    def frames(self, count: int) -> None:
        self.bar.update(count)

    def unit(self, record: dict) -> None:
        self.finished += 1
        self.bar.set_postfix_str(f"units {self.finished}/{self.units}")
        if record["status"] != "done":
            self.failed = True
            skipped = "; skipped" if record["status"] == "failed" else ""
            self.bar.write(f"error: {record['input']}: {record['error']}{skipped}", file=sys.stderr)
        elif not self.quiet:
            self.bar.write(f"{record['input']}: {record['frames']} frame(s), {record['hands']} hand(s) -> "
                           f"{', '.join(record['files'])}", file=sys.stdout)


# The flag of each hamer.model_options.ModelOptions field.
MODEL_FLAGS = {"device": "--device", "precision": "--precision", "backend": "--backend", "onnx": "--onnx",
               "rescale_factor": "--rescale-factor", "camera": "--intrinsics/--fov-deg"}


def run_usage_problem(args: argparse.Namespace) -> str | None:
    """Why the options of ``hamer run`` cannot work, naming the flag; None when they can."""
    from ..model_options import ModelOptions, OptionError

    model = ModelOptions(device=args.device, backend=args.backend, precision=args.precision, data=args.data,
                         checkpoint=args.checkpoint, onnx=args.onnx, rescale_factor=args.rescale_factor)
    try:
        # Ray's workers, not this machine, run the network; --bbox-only runs none (and so never imports torch)
        model.check(device_here=args.engine != "ray" and not args.bbox_only)
    except OptionError as exc:
        return f"argument {MODEL_FLAGS[exc.option]}: {exc}"
    if model.backend == "onnx" and not Path(args.onnx).is_file():
        return f"argument --onnx: {args.onnx} is {'a folder' if Path(args.onnx).is_dir() else 'not found'}"
    if args.bbox_only and set(args.formats) - {"jsonl", "npz", "rerun"}:
        return "argument --formats: pose, openpose and obj need the joints: not with --bbox-only"
    problem = overlay_problem(args)
    if problem:
        return problem
    if args.pose_base is not None:
        if "pose" not in args.formats:
            return "argument --pose-base: only with --formats pose"
        if not Path(args.pose_base).exists():
            return f"argument --pose-base: {args.pose_base} not found"
        if Path(args.pose_base).is_file() and len(args.inputs) != 1:
            return "argument --pose-base: a FILE goes with one input; give a folder of <name>.pose for several"
    if "pose" in args.formats:
        try:
            import pose_format  # noqa: F401
        except ImportError:
            return "argument --formats: pose needs the pose-format package (pip install pose-format)"
    return storage_problem(args) or out_dir_problem(Path(local_path(args.out)))


def storage_problem(args: argparse.Namespace) -> str | None:
    """Why the URLs among --out, --list and the inputs cannot be used (fsspec or its file system missing, naming
    the extra), naming the flag; None when they can (or there are none)."""
    for flag, value in (("--out", args.out), ("--list", args.list), *(("INPUT", i) for i in args.inputs)):
        if value is not None and is_url(value):
            problem = check_url(value)
            if problem:
                return f"argument {flag}: {problem}"
    return None


def overlay_problem(args: argparse.Namespace) -> str | None:
    """Why --overlay, --side-view and --rerun cannot work together, naming the flag; None when they can."""
    if args.side_view and (args.overlay != "mesh" or args.bbox_only):
        return "argument --side-view: needs the mesh overlay (--overlay or --overlay mesh), not with --bbox-only"
    if "rerun" in args.formats:
        try:
            from ..viewer import import_rerun

            import_rerun()
        except ImportError as exc:
            return f"argument --rerun: {exc}"
    return None


def out_dir_problem(out: Path) -> str | None:
    """Why the folder ``out`` cannot be created or written, naming --out; None when it can (or it is a URL)."""
    if is_url(str(out)):
        return None
    try:
        if out.exists() and not out.is_dir():
            return f"argument --out: {out} is a file, not a folder"
        existing = next(p for p in (out, *out.absolute().parents) if p.exists())
        if not existing.is_dir():
            return f"argument --out: {existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"argument --out: cannot write in {existing} (permission denied)"
    except OSError as exc:
        return f"argument --out: {out}: {exc.strerror or exc}"
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..boxfile import BoxFileDetectors
    from ..corpus import ModelError, Options, read_list, run_corpus
    from ..manifest import RunError

    if args.rerun and "rerun" not in args.formats:
        args.formats = (*args.formats, "rerun")
    problem = run_usage_problem(args)
    if problem:
        print(f"hamer run: error: {problem}", file=sys.stderr)
        return 2
    inputs = list(args.inputs)
    if args.list is not None:
        try:
            inputs += read_list(args.list)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"error: --list {redact(args.list)}: {redact(str(exc))}", file=sys.stderr)
            return 2
    if not inputs:
        print("error: no input: give INPUT paths or --list FILE", file=sys.stderr)
        return 2
    if args.engine != "ray" and (args.workers is not None or args.ray_address is not None
                                 or args.gpus_per_worker is not None):
        print("error: --workers, --ray-address and --gpus-per-worker go with --engine ray", file=sys.stderr)
        return 2
    if args.gpus_per_worker == 0 and args.device.startswith("cuda"):
        print(f"error: --gpus-per-worker must be > 0 with --device {args.device}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            print('error: --engine ray needs Ray: pip install "hamer[ray]"', file=sys.stderr)
            return 2
    options = Options(
        data=args.data, checkpoint=args.checkpoint, device=args.device, backend=args.backend, onnx=args.onnx,
        precision=args.precision, rescale_factor=args.rescale_factor, max_hands=args.max_hands,
        bbox_only=args.bbox_only, overlay=args.overlay is not None, overlay_style=args.overlay or "mesh",
        side_view=args.side_view, label_hold=args.label_hold, smooth=args.smooth,
        min_cutoff=args.min_cutoff, beta=args.beta, engine=args.engine, batch_size=args.batch_size,
        detect_workers=args.detect_workers, workers=args.workers or 1, ray_address=args.ray_address,
        formats=args.formats, vertices=args.vertices, pose_base=args.pose_base, camera=args.intrinsics or args.fov_deg,
        max_image_pixels=args.max_image_pixels, detector=None if args.boxes is None else BoxFileDetectors(args.boxes),
        gpus_per_worker=args.gpus_per_worker, segment_frames=args.segment_frames,
        segment_warmup=args.segment_warmup, cache_size=args.cache_size)
    skipped: list[str] = []
    with logging_redirect_tqdm(), tqdm(unit="frame", disable=args.quiet, dynamic_ncols=True) as bar:
        progress = _Bar(bar, args.quiet)
        try:
            records = run_corpus(inputs, args.out, options, resume=args.resume, overwrite=args.overwrite,
                                 progress=progress,
                                 skipped=lambda unit, why: skipped.append(f"{unit.shown}: {why}"))
        except RunError as exc:
            bar.write(f"error: {exc}", file=sys.stderr)
            return 1
        except ModelError as exc:
            hint = "\n       (`hamer check` tells what the data folder lacks)" if exc.data_problem else ""
            bar.write(f"error: cannot set up the model: {exc}{hint}", file=sys.stderr)
            return 1
    if skipped and not args.quiet:
        more = [f"... and {len(skipped) - 3} more (hamer -v names each)"] if len(skipped) > 3 else []
        print("\n".join(skipped[:3] + more))
    if (args.resume or skipped) and not args.quiet:
        print(f"{len(records)} unit(s) run now, {len(skipped)} skipped (results of an earlier run in "
              f"{redact(args.out)})")
    return 1 if progress.failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``run`` command's arguments."""
    run = sub.add_parser("run", parents=[model_options()], help="hands in images, folders of images and videos",
                         description="One JSON Lines file and one .npz per INPUT (images, folders of images, "
                                     "videos) in --out; with --overlay the hands drawn on the images or video.")
    run.add_argument("inputs", nargs="*", metavar="INPUT",
                     help="an image, a video, or a folder (its images as one unit, and each of its videos)")
    run.add_argument("--list", metavar="FILE", help="also the inputs listed in FILE, one a line (- for stdin); FILE, "
                                                    "INPUTs and --out may be URLs (s3://, gs://, az://, file://)")
    run.add_argument("--out", default="hamer_out", metavar="DIR",
                     help="output folder or URL, e.g. s3://bucket/prefix (default: hamer_out)")
    run.add_argument("--cache-size", type=size_bytes, default=DEFAULT_CACHE_BYTES, metavar="SIZE",
                     help="local cache of the videos read from URLs, least recently used removed first (default: "
                          f"{format_bytes(DEFAULT_CACHE_BYTES)})")
    run.add_argument("--overlay", nargs="?", const="mesh", choices=("mesh", "skeleton", "boxes"), metavar="STYLE",
                     help="also write each image (.overlay.jpg) or video (.overlay.mp4 H.264, else .overlay.webm "
                          "VP9) with the hands drawn in: mesh (default: MANO meshes, boxes, labels), skeleton, "
                          "boxes; boxes with --bbox-only")
    run.add_argument("--side-view", action="store_true",
                     help="with the mesh overlay: a panel beside each image with the meshes turned 90 degrees")
    run.add_argument("--rerun", action="store_true",
                     help='also a Rerun recording <name>.rrd of each input (as --formats ...,rerun; needs '
                          'pip install "hamer[viewer]"); open it with `hamer view`')
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary (errors still show)")
    run.add_argument("--bbox-only", action="store_true", help="MediaPipe boxes and labels only; no HaMeR")
    run.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps (default: cpu)")
    run.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                     help="auto (default: on CPU in fp32 ONNX Runtime on a cached export of the checkpoint, else "
                          "torch), torch, or onnx: ONNX Runtime on --onnx (no data folder needed)")
    run.add_argument("--onnx", metavar="PATH", help="the .onnx file for --backend onnx (from HAMER(export_onnx=...))")
    run.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                     help="torch backend: fp32 (default), bf16 autocast, fp16 autocast (CUDA)")
    run.add_argument("--rescale-factor", type=positive, default=2.0,
                     help="crop side / hand box side, as HaMeR's demo (default: 2.0)")
    run.add_argument("--max-hands", type=count, default=2,
                     help="hands MediaPipe looks for (default: 2); at most one Right and one Left are reconstructed")
    run.add_argument("--boxes", metavar="FILE", help="the hands' boxes from a JSON Lines file, per video frame or "
                                                     "image name, instead of MediaPipe (format: docs/CLI.md)")
    run.add_argument("--max-image-pixels", type=count, metavar="N",
                     help="an image file of more pixels (width x height, from its header) is skipped undecoded, one "
                          f"over {BYTES_PER_PIXEL} bytes a pixel + {format_bytes(METADATA_BYTES)} unread (default: "
                          f"{MAX_IMAGE_PIXELS})")
    out = run.add_argument_group("outputs and camera")
    out.add_argument("--formats", type=formats, default=("jsonl", "npz"), metavar="LIST",
                     help="comma list of jsonl, npz, pose, openpose, obj, rerun (default: jsonl,npz)")
    out.add_argument("--vertices", action="store_true", help="also the 778 MANO vertices of each hand in the NPZ")
    out.add_argument("--pose-base", metavar="FILE_OR_DIR",
                     help="with --formats pose: a MediaPipe-Holistic .pose of the (one) input, or a folder holding "
                          "<name>.pose for each input, written back with its hands replaced by HaMeR's")
    camera = out.add_mutually_exclusive_group()
    camera.add_argument("--intrinsics", type=intrinsics, metavar="FX,FY,CX,CY",
                        help="your camera in pixels: the hands' cam_t is computed for it (2D joints do not change)")
    camera.add_argument("--fov-deg", type=fov, metavar="DEGREES",
                        help="your camera's horizontal field of view (square pixels, centred principal point)")
    corpus = run.add_argument_group("corpora")
    again = corpus.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="also retry the inputs that failed or were truncated (without flags: new inputs run, "
                            "those done with the same options are skipped)")
    again.add_argument("--overwrite", action="store_true",
                       help="run every input again, replacing each earlier result when its new one is complete")
    corpus.add_argument("--engine", choices=ENGINES, default="local",
                        help="local (default): pipelined threads on this machine; ray: a Ray cluster")
    corpus.add_argument("--batch-size", type=count, default=8, metavar="N",
                        help="hand crops per network batch, from consecutive frames (default: 8)")
    corpus.add_argument("--detect-workers", type=count, default=2, metavar="N",
                        help="videos decoded and detected at once ahead of the network, in the local engine "
                             "and in each Ray worker (default: 2)")
    corpus.add_argument("--workers", type=count, metavar="N",
                        help="--engine ray: workers, each with its own network (default: 1)")
    corpus.add_argument("--ray-address", metavar="ADDR",
                        help="--engine ray: the cluster (e.g. auto, HEAD_IP:6379); default: start a local one")
    corpus.add_argument("--gpus-per-worker", type=non_negative, metavar="X",
                        help="--engine ray: GPUs each worker claims, fractions allowed (default: 1 with --device "
                             "cuda, else 0)")
    video = run.add_argument_group("videos")
    video.add_argument("--label-hold", type=count, default=5, metavar="FRAMES",
                       help="frames MediaPipe must report the other label before a hand's label changes (default: 5)")
    video.add_argument("--smooth", action="store_true", help="One Euro filter of each hand's joints")
    video.add_argument("--min-cutoff", type=positive, default=1.0, metavar="HZ",
                       help="One Euro cutoff at rest: lower = less jitter (default: 1.0)")
    video.add_argument("--beta", type=non_negative, default=10.0, metavar="S_PER_M",
                       help="One Euro speed coefficient: higher = less lag when moving (default: 10)")
    video.add_argument("--segment-frames", type=non_negative_count, metavar="N",
                       help="a video of more than N frames runs as segments of N frames, each a unit of its own, "
                            "joined into its files at the end (default: 9000, 5 min at 30 fps; 0: never)")
    video.add_argument("--segment-warmup", type=non_negative_count, metavar="FRAMES",
                       help="frames before each segment tracked (and smoothed) and dropped, so that segments join "
                            "seamlessly (default: 90)")
    run.set_defaults(func=cmd_run)
