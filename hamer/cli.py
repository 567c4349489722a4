"""The ``hamer`` command line (also ``python -m hamer``); see docs/CLI.md.

    hamer run INPUT... [--list FILE] [--out DIR] [--resume]  images, folders, videos -> JSONL + NPZ + manifest
    hamer check [--data DIR]                                 what the data folder holds and lacks
    hamer download [--url URL | --from FILE] [--data DIR]    install HaMeR's weights (resumable, verified)
    hamer convert CHECKPOINT OUT.safetensors [--half]        one safetensors file with weights and config
    hamer quantize MODEL.onnx OUT.onnx --images DIR          an 8-bit copy, its joint error measured
    hamer view FILE.rrd                                      a recording of `hamer run --rerun` in Rerun's viewer

Exit status: 0 success, 1 something failed (an unreadable input, a model that does not load), 2 bad usage,
130 interrupted (143 on SIGTERM). Only this module prints; the library logs. The commands import torch and
MediaPipe themselves, so that ``hamer --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import configs
from .corpus import ENGINES
from .download import DEFAULT_URL
from .images import BYTES_PER_PIXEL, MAX_IMAGE_PIXELS, METADATA_BYTES
from .sizes import format_bytes
from .version import __version__

if TYPE_CHECKING:
    from tqdm import tqdm

    from .results import Camera, FieldOfView

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------------- run

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


def run_usage_problem(args: argparse.Namespace) -> str | None:
    """Why the options of ``hamer run`` cannot work, naming the flag; None when they can."""
    from .runtime import check_precision, resolve_device

    if args.engine != "ray":  # Ray's workers, not this machine, run the network (and check the device)
        try:
            device = resolve_device(args.device)
        except ValueError as exc:
            return f"argument --device: {exc}"
        try:
            check_precision(args.precision, device)
        except ValueError as exc:
            return f"argument --precision: {exc}"
    if args.backend == "onnx":
        if args.onnx is None:
            return "argument --onnx: --backend onnx needs --onnx FILE.onnx"
        if not Path(args.onnx).is_file():
            return f"argument --onnx: {args.onnx} is {'a folder' if Path(args.onnx).is_dir() else 'not found'}"
        if args.precision != "fp32":
            return "argument --precision: --backend onnx takes no --precision (the .onnx file sets it)"
    elif args.onnx is not None:
        return "argument --onnx: only with --backend onnx"
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
    return out_dir_problem(Path(args.out))


def overlay_problem(args: argparse.Namespace) -> str | None:
    """Why --overlay, --side-view and --rerun cannot work together, naming the flag; None when they can."""
    if args.side_view and (args.overlay != "mesh" or args.bbox_only):
        return "argument --side-view: needs the mesh overlay (--overlay or --overlay mesh), not with --bbox-only"
    if "rerun" in args.formats:
        try:
            from .viewer import import_rerun

            import_rerun()
        except ImportError as exc:
            return f"argument --rerun: {exc}"
    return None


def out_dir_problem(out: Path) -> str | None:
    """Why the folder ``out`` cannot be created or written, naming --out; None when it can."""
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

    from .corpus import ModelError, Options, read_list, run_corpus
    from .manifest import RunError

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
            print(f"error: --list {args.list}: {exc}", file=sys.stderr)
            return 2
    if not inputs:
        print("error: no input: give INPUT paths or --list FILE", file=sys.stderr)
        return 2
    if args.engine != "ray" and (args.workers is not None or args.ray_address is not None):
        print("error: --workers and --ray-address go with --engine ray", file=sys.stderr)
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
        max_image_pixels=args.max_image_pixels)
    skipped: list[str] = []
    with logging_redirect_tqdm(), tqdm(unit="frame", disable=args.quiet, dynamic_ncols=True) as bar:
        progress = _Bar(bar, args.quiet)
        try:
            records = run_corpus(inputs, args.out, options, resume=args.resume, overwrite=args.overwrite,
                                 progress=progress, skipped=lambda unit, why: skipped.append(f"{unit.path}: {why}"))
        except RunError as exc:
            bar.write(f"error: {exc}", file=sys.stderr)
            return 1
        except ModelError as exc:
            hint = "\n       (`hamer check` tells what the data folder lacks)" if exc.data_problem else ""
            bar.write(f"error: cannot set up the model: {exc}{hint}", file=sys.stderr)
            return 1
    if skipped and not args.quiet:
        more = f" (and {len(skipped) - 3} more input(s) like it)" if len(skipped) > 3 else ""
        print("\n".join(skipped[:3]) + more)
    if (args.resume or skipped) and not args.quiet:
        print(f"{len(records)} unit(s) run now, {len(skipped)} skipped (results of an earlier run in {args.out})")
    return 1 if progress.failed else 0


# ---------------------------------------------------------------------------------------------------- check

@dataclass
class CheckpointContents:
    """What a checkpoint carries besides the network weights."""

    kind: str
    config: bool
    mano: bool
    mean_params: bool


def inspect_checkpoint(path: Path) -> CheckpointContents:
    """Read a checkpoint (ValueError if it cannot be) and say what it carries."""
    from .checkpoint import MEAN_PARAM_BUFFERS, load_checkpoint
    from .models.mano import mano_data_from_state_dict

    ckpt = load_checkpoint(path)
    try:
        mano_data_from_state_dict(ckpt.state_dict)
        has_mano = True
    except (KeyError, ValueError):
        has_mano = False
    return CheckpointContents(
        kind="safetensors file" if path.suffix == ".safetensors" else "Lightning checkpoint",
        config=ckpt.config is not None,
        mano=has_mano,
        mean_params=all(name in ckpt.state_dict for name in MEAN_PARAM_BUFFERS.values()),
    )


def cmd_check(args: argparse.Namespace) -> int:
    from .checkpoint import build_model
    from .detection import HAND_TASK_PATH, POSE_TASK_PATH

    paths = configs.data_paths(args.data, args.checkpoint)
    print(f"HaMeR data folder: {paths.root}" + ("" if paths.root.is_dir() else "  (does not exist)"))
    contents: CheckpointContents | None = None
    missing: set[str] = set()
    if not paths.checkpoint.is_file():
        print(f"  checkpoint   MISSING  {paths.checkpoint}: {configs.download_hint(paths.root)}")
        missing.add("demo")
    else:
        try:
            contents = inspect_checkpoint(paths.checkpoint)
        except ValueError as exc:
            print(f"  checkpoint   BROKEN   {exc}\n               replace it with a good copy")
            missing.add("demo")
    if contents is not None:
        yes = {True: "yes", False: "no"}
        size = format_bytes(paths.checkpoint.stat().st_size)
        print(f"  checkpoint   found    {paths.checkpoint} ({size}, {contents.kind})\n"
              f"               carries  its config: {yes[contents.config]}, MANO (mano.*): {yes[contents.mano]}, "
              f"mean params (mano_head.init_*): {yes[contents.mean_params]}")
        if contents.config and contents.mano and contents.mean_params:
            print("               -> the checkpoint alone is enough: the three files below are optional")
    files = [("config", paths.config, "config", "demo"), ("MANO model", paths.mano, "mano", "mano"),
             ("mean params", paths.mean_params, "mean_params", "demo")]
    for title, path, carried, source in files:
        if path.is_file():
            print(f"  {title:<12} found    {path}")
        elif contents is not None and getattr(contents, carried):
            print(f"  {title:<12} absent   {path} (not needed: the checkpoint carries it)")
        else:
            print(f"  {title:<12} MISSING  put {path.name} at {path}")
            missing.add(source)
    tasks = all(p.is_file() for p in (HAND_TASK_PATH, POSE_TASK_PATH))
    print(f"  MediaPipe    {'found  ' if tasks else 'MISSING'}  hand and pose landmarker bundles in "
          f"{HAND_TASK_PATH.parent}" + ("" if tasks else " (reinstall the hamer package)"))
    if "demo" in missing:
        print("Where to get them: hamer.ckpt, model_config.yaml and mano_mean_params.npz come with HaMeR's demo data: "
              f"`hamer download{'' if paths.root == configs.data_dir() else f' --data {paths.root}'}` installs them.")
    if "mano" in missing:
        print("MANO_RIGHT.pkl: register at https://mano.is.tue.mpg.de, download 'Models & Code', take "
              "mano_v1_2/models/MANO_RIGHT.pkl.")
    damaged = _check_manifest(paths.root)
    start = time.perf_counter()
    try:
        model, cfg = build_model(paths)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"model: does NOT load: {exc}")
        return 1
    bb = cfg.MODEL.BACKBONE
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: loads ({millions:.1f} M parameters, ViT {bb.DEPTH} blocks x {bb.EMBED_DIM}) in "
          f"{time.perf_counter() - start:.1f} s; " + ("`hamer run` is ready" if tasks else "MediaPipe is missing"))
    return 0 if tasks and not damaged else 1


def _check_manifest(root: Path) -> bool:
    """Print how the installed files compare with what ``hamer download`` recorded; True if one is damaged."""
    from .download import MANIFEST_FILE, verify_installed

    try:
        status = verify_installed(root)
    except ValueError as exc:
        print(f"  installed    BROKEN   {exc}")
        return True
    if status is None:
        return False
    bad = {rel: what for rel, what in status.items() if what != "ok"}
    for rel, what in bad.items():
        print(f"  installed    DAMAGED  {root / rel}: {what}; run `hamer download --force` to reinstall")
    if not bad:
        print(f"  installed    verified {len(status)} file(s): sizes and sha256 as in {root / MANIFEST_FILE}")
    return bool(bad)


# ---------------------------------------------------------------------------------------------------- convert

def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import build_model, save_safetensors
    from .files import atomic_path

    out = Path(args.output)
    if out.suffix != ".safetensors":
        print(f"error: {out}: the output must end in .safetensors", file=sys.stderr)
        return 2
    paths = configs.data_paths(args.data, args.checkpoint)
    try:
        model, cfg = build_model(paths)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        print(f"error: cannot load {paths.checkpoint}: {exc}", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out) as tmp:
            save_safetensors(model, cfg, tmp, half=args.half)
    except (OSError, ValueError) as exc:
        print(f"error: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    kind = "float16" if args.half else "float32"
    print(f"wrote {out} ({format_bytes(out.stat().st_size)}, {kind}, config included); use it with "
          f"`hamer run --checkpoint {out} ...` or HAMER(checkpoint=...)")
    return 0


# ---------------------------------------------------------------------------------------------------- download

def cmd_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .download import MANO_LICENSE_NOTICE, DownloadError, download, remove_leftovers, to_safetensors

    if args.half and not args.safetensors:
        print("error: --half goes with --safetensors", file=sys.stderr)
        return 2
    root = configs.data_dir(args.data)
    existing = configs.data_paths(root).checkpoint
    if existing.is_file() and not args.force:
        for folder in remove_leftovers(root):
            print(f"removed {folder}, left by a download that was killed")
        print(f"{existing} is already there (--force downloads and installs again); checking it:")
        return cmd_check(argparse.Namespace(data=str(root), checkpoint=None))
    print(MANO_LICENSE_NOTICE)
    if not args.accept_mano_license:
        if not sys.stdin.isatty():
            print("error: accept MANO's licence first: pass --accept-mano-license", file=sys.stderr)
            return 2
        try:
            answer = input("Do you accept MANO's licence? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("error: not accepted: nothing was downloaded", file=sys.stderr)
            return 2
    bars: dict[str, tqdm] = {}

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase not in bars:
            for other in bars.values():
                other.close()
            desc = {"download": "downloading", "extract": "verifying, unpacking"}[phase]
            bars[phase] = stack.enter_context(tqdm(total=total, initial=done, desc=desc, unit="B", unit_scale=True,
                                                   unit_divisor=1000, disable=args.quiet, dynamic_ncols=True))
        bar = bars[phase]
        bar.total = total
        bar.update(done - bar.n)

    try:
        with ExitStack() as stack, logging_redirect_tqdm():  # the bars are closed before an error is printed
            manifest = download(root, url=args.url, archive=args.archive, progress=progress)
    except (DownloadError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing new was installed; `hamer download` again resumes the download", file=sys.stderr)
        return 130
    print(f"installed into {root} (left out: {manifest.skipped} other file(s) of the archive, such as ViTPose's):")
    for rel, record in manifest.files.items():
        print(f"  {rel}  {record.bytes:,} bytes  sha256 {record.sha256}")
    if args.safetensors:
        try:
            to_safetensors(root, half=args.half)
        except (DownloadError, OSError, ValueError, RuntimeError) as exc:
            print(f"error: cannot convert to safetensors: {exc}", file=sys.stderr)
            return 1
        print(f"converted to {root / configs.SAFETENSORS_FILE} ({'float16' if args.half else 'float32'}); "
              "hamer.ckpt removed")
    return cmd_check(argparse.Namespace(data=str(root), checkpoint=None))


# ---------------------------------------------------------------------------------------------------- quantize

def cmd_quantize(args: argparse.Namespace) -> int:
    import torch

    from .quantize import QuantizationError, calibration_sets, image_files, quantize_onnx
    from .runtime import OnnxRuntime

    out = Path(args.output)
    if out.suffix != ".onnx":
        print(f"error: {out}: the output must end in .onnx", file=sys.stderr)
        return 2
    try:
        cfg = OnnxRuntime(args.model, torch.device("cpu")).cfg
        crops, held_out = calibration_sets(image_files(args.images), cfg)
        report = quantize_onnx(args.model, out, crops, held_out, max_error_mm=args.max_error_mm,
                               max_mean_error_mm=args.max_mean_error_mm, fp32_blocks=args.fp32_blocks,
                               fp32_layers=args.fp32_layers, rounding=args.rounding)
    except QuantizationError as exc:
        print(f"error: {exc}; raise --max-error-mm / --max-mean-error-mm to accept more", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (8-bit, {report.rounding} rounding, the first {report.fp32_blocks} of {report.blocks} ViT "
          f"blocks and block layers {', '.join(report.fp32_layers) or 'none'} fp32 ({100 * report.fp32_share:.0f}% "
          f"of the ViT's multiply-adds), {report.quantized_matmuls} MatMuls 8-bit): joints vs fp32 on "
          f"{report.measured_crops} held-out hand crop(s) from {args.images} (calibrated on {report.fit_crops} "
          f"other crops): max "
          f"{report.max_mm:.3f} mm, mean {report.mean_mm:.3f} mm (for scale, a 1-pixel shift of those crops moves "
          f"the fp32 joints by max {report.shift_max_mm:.3f}, mean {report.shift_mean_mm:.3f} mm); "
          f"use it with `hamer run --backend onnx --onnx {out}`")
    return 0


def _add_quantize_parser(sub: argparse._SubParsersAction) -> None:
    """The ``quantize`` command's arguments."""
    quantize = sub.add_parser("quantize", help="an 8-bit copy of an exported .onnx model, its error measured",
                              description="Static per-channel 8-bit quantization (ONNX Runtime) calibrated on the "
                                          "hands MediaPipe finds in every other image of --images (each with 7 "
                                          "jittered boxes), int8 weights rounded by GPTQ, biases corrected for "
                                          "weight rounding. The first ViT blocks and the block layers with the "
                                          "largest error per multiply-add stay fp32, as few as the bounds allow: "
                                          "candidates are measured (joint error against the fp32 model on "
                                          "the hands of the other images); nothing is written when none is within "
                                          "--max-error-mm and --max-mean-error-mm.")
    quantize.add_argument("model", metavar="MODEL.onnx", help="an fp32 model from HAMER(export_onnx=...)")
    quantize.add_argument("output", metavar="OUT.onnx")
    quantize.add_argument("--images", metavar="DIR", required=True,
                          help="a folder of photographs with hands, like yours, at least 2 (half calibrate, half "
                               "measure the error)")
    quantize.add_argument("--max-error-mm", type=_positive, default=1.0, metavar="X",
                          help="largest 3D joint error against fp32 allowed, mm (default: 1.0)")
    quantize.add_argument("--max-mean-error-mm", type=_positive, default=0.3, metavar="X",
                          help="largest mean 3D joint error against fp32 allowed, mm (default: 0.3)")
    quantize.add_argument("--fp32-blocks", type=_non_negative_count, metavar="N",
                          help="keep exactly the first N ViT blocks fp32 (default: search)")
    quantize.add_argument("--fp32-layers", nargs="*", metavar="LAYER",
                          help="keep exactly these layers of every ViT block fp32, e.g. attn.proj (none given: no "
                               "layer; default: search)")
    quantize.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                          help="int8 weight rounding: GPTQ on the calibration activations (default) or "
                               "round-to-nearest")
    quantize.set_defaults(func=cmd_quantize)


# ---------------------------------------------------------------------------------------------------- parser

def _positive(value: str) -> float:
    number = float(value)
    if not (np.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not (np.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value}")
    return number


def cmd_view(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    path = Path(args.recording)
    if not path.is_file():
        print(f"hamer view: error: {path} is {'a folder' if path.is_dir() else 'not found'}", file=sys.stderr)
        return 2
    try:
        from .viewer import import_rerun

        import_rerun()
    except ImportError as exc:
        print(f"hamer view: error: {exc}", file=sys.stderr)
        return 2
    viewer = shutil.which("rerun")
    if viewer is None:
        print('hamer view: error: the `rerun` command is not on PATH (pip install "hamer[viewer]")', file=sys.stderr)
        return 2
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print(f"hamer view: error: no display (DISPLAY is not set): copy {path} to a machine with one and run "
              f"`rerun {path.name}` there", file=sys.stderr)
        return 1
    return subprocess.call([viewer, str(path)])


def _formats(value: str) -> tuple[str, ...]:
    from .formats import parse_formats

    try:
        return parse_formats(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _intrinsics(value: str) -> Camera:
    from .results import Camera

    try:
        fx, fy, cx, cy = (float(v) for v in value.split(","))
        return Camera(fx, fy, cx, cy)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"need four numbers fx,fy,cx,cy in pixels with fx, fy > 0 ({exc})") from None


def _fov(value: str) -> FieldOfView:
    from .results import FieldOfView

    try:
        return FieldOfView(float(value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def _non_negative_count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hamer", description="3D hand joints with HaMeR.",
                                     epilog="`hamer COMMAND --help` (or `python -m hamer COMMAND --help`) lists the "
                                            "flags of a command.")
    parser.add_argument("--version", action="version", version=f"hamer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (model loading...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data", metavar="DIR",
                      help="the HaMeR data folder (default: $HAMER_HOME, else $XDG_CACHE_HOME/hamer or ~/.cache/hamer)")
    model = argparse.ArgumentParser(add_help=False, parents=[data])
    model.add_argument("--checkpoint", metavar="PATH",
                       help="a checkpoint (.ckpt or .safetensors) other than DIR/" + configs.CHECKPOINT_FILE)

    run = sub.add_parser("run", parents=[model], help="hands in images, folders of images and videos",
                         description="One JSON Lines file and one .npz per INPUT (images, folders of images, "
                                     "videos) in --out; with --overlay the hands drawn on the images or video.")
    run.add_argument("inputs", nargs="*", metavar="INPUT",
                     help="an image, a video, or a folder (its images as one unit, and each of its videos)")
    run.add_argument("--list", metavar="FILE", help="also the inputs listed in FILE, one a line (- for stdin)")
    run.add_argument("--out", default="hamer_out", metavar="DIR", help="output folder (default: hamer_out)")
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
    run.add_argument("--rescale-factor", type=_positive, default=2.0,
                     help="crop side / hand box side, as HaMeR's demo (default: 2.0)")
    run.add_argument("--max-hands", type=_count, default=2,
                     help="hands MediaPipe looks for (default: 2); at most one Right and one Left are reconstructed")
    run.add_argument("--max-image-pixels", type=_count, metavar="N",
                     help="an image file of more pixels (width x height, from its header) is skipped undecoded, one "
                          f"over {BYTES_PER_PIXEL} bytes a pixel + {format_bytes(METADATA_BYTES)} unread (default: "
                          f"{MAX_IMAGE_PIXELS})")
    out = run.add_argument_group("outputs and camera")
    out.add_argument("--formats", type=_formats, default=("jsonl", "npz"), metavar="LIST",
                     help="comma list of jsonl, npz, pose, openpose, obj, rerun (default: jsonl,npz)")
    out.add_argument("--vertices", action="store_true", help="also the 778 MANO vertices of each hand in the NPZ")
    out.add_argument("--pose-base", metavar="FILE_OR_DIR",
                     help="with --formats pose: a MediaPipe-Holistic .pose of the (one) input, or a folder holding "
                          "<name>.pose for each input, written back with its hands replaced by HaMeR's")
    camera = out.add_mutually_exclusive_group()
    camera.add_argument("--intrinsics", type=_intrinsics, metavar="FX,FY,CX,CY",
                        help="your camera in pixels: the hands' cam_t is computed for it (2D joints do not change)")
    camera.add_argument("--fov-deg", type=_fov, metavar="DEGREES",
                        help="your camera's horizontal field of view (square pixels, centred principal point)")
    corpus = run.add_argument_group("corpora")
    again = corpus.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="skip the inputs OUT/manifest.jsonl has as done (files present); run the rest")
    again.add_argument("--overwrite", action="store_true", help="run every input again, replacing earlier results")
    corpus.add_argument("--engine", choices=ENGINES, default="local",
                        help="local (default): pipelined threads on this machine; ray: a Ray cluster")
    corpus.add_argument("--batch-size", type=_count, default=8, metavar="N",
                        help="hand crops per network batch, from consecutive frames (default: 8)")
    corpus.add_argument("--detect-workers", type=_count, default=2, metavar="N",
                        help="videos decoded and detected at once ahead of the network, in the local engine "
                             "and in each Ray worker (default: 2)")
    corpus.add_argument("--workers", type=_count, metavar="N",
                        help="--engine ray: workers, each with its own network (default: 1)")
    corpus.add_argument("--ray-address", metavar="ADDR",
                        help="--engine ray: the cluster (e.g. auto, ray://head:10001); default: start a local one")
    video = run.add_argument_group("videos")
    video.add_argument("--label-hold", type=_count, default=5, metavar="FRAMES",
                       help="frames MediaPipe must report the other label before a hand's label changes (default: 5)")
    video.add_argument("--smooth", action="store_true", help="One Euro filter of each hand's joints")
    video.add_argument("--min-cutoff", type=_positive, default=1.0, metavar="HZ",
                       help="One Euro cutoff at rest: lower = less jitter (default: 1.0)")
    video.add_argument("--beta", type=_non_negative, default=10.0, metavar="S_PER_M",
                       help="One Euro speed coefficient: higher = less lag when moving (default: 10)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", parents=[model], help="what the data folder holds, what it lacks",
                           description="Lists the files HaMeR needs, where each goes, and tries to load the model "
                                       "(exit status 1 when it does not load).")
    check.set_defaults(func=cmd_check)

    convert = sub.add_parser("convert", parents=[data], help="a checkpoint as one .safetensors file",
                             description="Writes the weights HaMeR needs (backbone, head, MANO, mean parameters) "
                                         "and its config as one safetensors file that HAMER(checkpoint=...) loads "
                                         "without the config, MANO or mean-parameter files.")
    convert.add_argument("checkpoint", metavar="CHECKPOINT", help="a HaMeR Lightning checkpoint (hamer.ckpt)")
    convert.add_argument("output", metavar="OUT.safetensors")
    convert.add_argument("--half", action="store_true", help="store float16 (half the size)")
    convert.set_defaults(func=cmd_convert)

    download = sub.add_parser("download", parents=[data], help="install HaMeR's weights into the data folder",
                              description="Downloads HaMeR's demo data (about 5.6 GB; an interrupted download "
                                          "resumes on the next call), verifies it, installs what inference needs "
                                          "(2.7 GB) into --data once it loads as HaMeR, then checks it. The "
                                          "checkpoint carries MANO's arrays: MANO's licence (non-commercial "
                                          "research) applies and must be accepted first.")
    source = download.add_mutually_exclusive_group()
    source.add_argument("--url", help=f"a mirror (default: {DEFAULT_URL}); http:// only when given")
    source.add_argument("--from", dest="archive", metavar="FILE", help="a hamer_demo_data.tar.gz already on disk")
    download.add_argument("--force", action="store_true",
                          help="download and install even if a checkpoint is there (it stays if the new one does not "
                               "load)")
    download.add_argument("--accept-mano-license", action="store_true",
                          help="accept MANO's licence (https://mano.is.tue.mpg.de/license.html), which applies to the "
                               "checkpoint; without it, asked on a terminal, required otherwise")
    download.add_argument("--safetensors", action="store_true",
                          help="then convert the checkpoint to hamer.safetensors (as `hamer convert`), keeping one")
    download.add_argument("--half", action="store_true", help="with --safetensors: float16 (half the size)")
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(func=cmd_download)
    _add_quantize_parser(sub)

    view = sub.add_parser("view", help="open a recording of `hamer run --rerun` in Rerun's viewer",
                          description="Starts Rerun's viewer (the `rerun` command of rerun-sdk) on FILE.rrd; it "
                                      "needs a display.")
    view.add_argument("recording", metavar="FILE.rrd")
    view.set_defaults(func=cmd_view)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    logging.getLogger("hamer").setLevel(logging.INFO if args.verbose else logging.WARNING)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: unfinished outputs were not written", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
