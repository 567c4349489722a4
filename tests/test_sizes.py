"""Sizes printed in one unit system, decimal SI (hamer.sizes.format_bytes): `hamer check`, `convert`, `download`."""

from __future__ import annotations

import re

import pytest

from hamer.cli import main
from hamer.sizes import format_bytes


@pytest.mark.parametrize("size, text", [
    (0, "0 bytes"), (1, "1 byte"), (999, "999 bytes"), (1000, "1.00 kB"), (1536, "1.54 kB"), (999_499, "999 kB"),
    (1_000_000, "1.00 MB"), (16_000_000, "16.0 MB"), (123_456_789, "123 MB"), (2_683_273_819, "2.68 GB"),
    (5_600_000_000, "5.60 GB"), (26_843_545_600, "26.8 GB"), (3 * 10**12, "3.00 TB"), (4321 * 10**12, "4321 TB"),
])
def test_format_bytes_is_decimal_with_three_figures(size, text):
    assert format_bytes(size) == text


def shown_bytes(text: str, before: str) -> float:
    """The size printed right after ``before``, as "VALUE kB|MB|GB" with 3 significant figures, in bytes."""
    shown = re.search(rf"{re.escape(before)}([\d.]+) (kB|MB|GB)\b", text)
    assert shown is not None, text
    value = float(shown[1])
    assert 1 <= value < 1000 and len(shown[1].replace(".", "")) == 3
    return value * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[shown[2]]


def test_check_prints_the_checkpoint_size_in_decimal_units(data_dir, capsys):
    """The README's "2.7 GB" and ``hamer check`` agree: 2,683,273,819 bytes are 2.68 GB, not 2.50 (GiB)."""
    ckpt = data_dir / "hamer_ckpts" / "checkpoints" / "hamer.ckpt"
    assert main(["check", "--data", str(data_dir)]) == 0
    size = ckpt.stat().st_size
    assert abs(shown_bytes(capsys.readouterr().out, f"{ckpt} (") - size) <= 0.005 * size


def test_convert_prints_the_size_in_decimal_units(data_dir, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    assert main(["convert", str(data_dir / "hamer_ckpts" / "checkpoints" / "hamer.ckpt"), str(out),
                 "--data", str(data_dir)]) == 0
    size = out.stat().st_size
    assert abs(shown_bytes(capsys.readouterr().out, f"wrote {out} (") - size) <= 0.005 * size


def test_download_progress_counts_decimal_units(data_dir, tmp_path, capsys):
    from test_download import make_archive

    tarball = tmp_path / "hamer_demo_data.tar.gz"
    tarball.write_bytes(make_archive(data_dir))
    assert main(["download", "--from", str(tarball), "--data", str(tmp_path / "data"), "--accept-mano-license"]) == 0
    bar = capsys.readouterr().err.split("\r")[-1]  # the bar's last state: "... 100%|###| 2.03M/2.03M [...]"
    done = re.search(r"100%\|.*\| ([\d.]+)([kMG])/([\d.]+)([kMG]) ", bar)
    assert done is not None, bar
    size = tarball.stat().st_size
    assert done.group(1, 2) == done.group(3, 4)
    assert abs(float(done[1]) * {"k": 1e3, "M": 1e6, "G": 1e9}[done[2]] - size) <= 0.005 * size
