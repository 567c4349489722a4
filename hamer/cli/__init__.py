"""The ``hamer`` command line (also ``python -m hamer``); see docs/CLI.md.

    hamer run INPUT... [--list FILE] [--out DIR] [--resume]  images, folders, videos -> JSONL + NPZ + manifest
    hamer check [--data DIR]                                 what the data folder holds and lacks
    hamer download [--url URL | --from FILE] [--data DIR]    install HaMeR's weights (resumable, verified)
    hamer convert CHECKPOINT OUT.safetensors [--half]        one safetensors file with weights and config
    hamer quantize MODEL.onnx OUT.onnx --images DIR          an 8-bit copy, its joint error measured
    hamer view FILE.rrd                                      a recording of `hamer run --rerun` in Rerun's viewer

Exit status: 0 success, 1 something failed (an unreadable input, a model that does not load), 2 bad usage,
130 interrupted (143 on SIGTERM). Only this package prints; the library logs. The commands import torch and
MediaPipe themselves, so that ``hamer --help`` answers at once.

One module per command (its ``cmd_*`` function and ``add_parser``); the argparse types they share in
:mod:`hamer.cli.args`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ..version import __version__
from . import check, convert, download, quantize, run, view


def build_parser() -> argparse.ArgumentParser:
    """The ``hamer`` parser: global flags, then one sub-command per module of this package."""
    parser = argparse.ArgumentParser(prog="hamer", description="3D hand joints with HaMeR.",
                                     epilog="`hamer COMMAND --help` (or `python -m hamer COMMAND --help`) lists the "
                                            "flags of a command.")
    parser.add_argument("--version", action="version", version=f"hamer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (model loading...)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (run, check, convert, download, quantize, view):
        command.add_parser(sub)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextmanager
def _stderr_kept_apart() -> Iterator[None]:
    """``sys.stderr`` on a copy of descriptor 2 while a command runs. MediaPipe's native chatter is captured by
    pointing descriptor 2 at a file for moments (:mod:`hamer.native_output`); a message this process prints from
    another thread meanwhile (a unit's error, a log line) must still reach the user. Nothing changes where
    ``sys.stderr`` is not descriptor 2 (a test's capture, a notebook)."""
    try:
        apart = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        apart = False
    if not apart:
        yield
        return
    sys.stderr.flush()
    stream = os.fdopen(os.dup(2), "w", encoding=sys.stderr.encoding, errors=sys.stderr.errors, buffering=1)
    previous, sys.stderr = sys.stderr, stream
    try:
        yield
    finally:
        sys.stderr = previous
        stream.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with _stderr_kept_apart():
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
