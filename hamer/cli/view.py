"""``hamer view``: a recording of ``hamer run --rerun`` in Rerun's viewer."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def cmd_view(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    path = Path(args.recording)
    if not path.is_file():
        print(f"hamer view: error: {path} is {'a folder' if path.is_dir() else 'not found'}", file=sys.stderr)
        return 2
    try:
        from ..viewer import import_rerun

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


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``view`` command's arguments."""
    view = sub.add_parser("view", help="open a recording of `hamer run --rerun` in Rerun's viewer",
                          description="Starts Rerun's viewer (the `rerun` command of rerun-sdk) on FILE.rrd; it "
                                      "needs a display.")
    view.add_argument("recording", metavar="FILE.rrd")
    view.set_defaults(func=cmd_view)
