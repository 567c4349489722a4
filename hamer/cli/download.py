"""``hamer download``: install HaMeR's weights into the data folder (resumable, verified), then check them."""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING

from .. import configs
from ..download import DEFAULT_URL
from .args import data_options
from .check import cmd_check

if TYPE_CHECKING:
    from tqdm import tqdm


def cmd_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..download import MANO_LICENSE_NOTICE, DownloadError, download, remove_leftovers, to_safetensors

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``download`` command's arguments."""
    download = sub.add_parser("download", parents=[data_options()], help="install HaMeR's weights into the data folder",
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
