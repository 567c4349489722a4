"""``hamer check``: what the data folder holds and lacks, and whether the model loads."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from .. import configs
from ..sizes import format_bytes
from .args import model_options


@dataclass
class CheckpointContents:
    """What a checkpoint carries besides the network weights."""

    kind: str
    config: bool
    mano: bool
    mean_params: bool


def inspect_checkpoint(path: Path) -> CheckpointContents:
    """Read a checkpoint (ValueError if it cannot be) and say what it carries."""
    from ..checkpoint import MEAN_PARAM_BUFFERS, load_checkpoint
    from ..models.mano import mano_data_from_state_dict

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
    from ..checkpoint import build_model
    from ..detection import HAND_TASK_PATH, POSE_TASK_PATH

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
    from ..download import MANIFEST_FILE, verify_installed

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``check`` command's arguments."""
    check = sub.add_parser("check", parents=[model_options()], help="what the data folder holds, what it lacks",
                           description="Lists the files HaMeR needs, where each goes, and tries to load the model "
                                       "(exit status 1 when it does not load).")
    check.set_defaults(func=cmd_check)
