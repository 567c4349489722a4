"""``hamer convert``: a checkpoint as one .safetensors file with its config."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import configs
from ..sizes import format_bytes
from .args import data_options


def cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoint import build_model, save_safetensors

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
        save_safetensors(model, cfg, out, half=args.half)
    except (OSError, ValueError) as exc:
        print(f"error: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    kind = "float16" if args.half else "float32"
    print(f"wrote {out} ({format_bytes(out.stat().st_size)}, {kind}, config included); use it with "
          f"`hamer run --checkpoint {out} ...` or HAMER(checkpoint=...)")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``convert`` command's arguments."""
    convert = sub.add_parser("convert", parents=[data_options()], help="a checkpoint as one .safetensors file",
                             description="Writes the weights HaMeR needs (backbone, head, MANO, mean parameters) "
                                         "and its config as one safetensors file that HAMER(checkpoint=...) loads "
                                         "without the config, MANO or mean-parameter files.")
    convert.add_argument("checkpoint", metavar="CHECKPOINT", help="a HaMeR Lightning checkpoint (hamer.ckpt)")
    convert.add_argument("output", metavar="OUT.safetensors")
    convert.add_argument("--half", action="store_true", help="store float16 (half the size)")
    convert.set_defaults(func=cmd_convert)
