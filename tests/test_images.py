"""Image files checked before they are decoded (hamer.images.read_image): bombs, lying headers, huge files, damaged
files; each refused with a message naming it, and a folder with one among good photographs still processed. The
hostile files are built here, at run time, without ever holding their decoded pixels."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hamer import images
from hamer.cli import main
from hamer.images import ImageError, header_size, max_image_bytes, read_image

from conftest import SHARED_IMAGES, smooth_noise_image

needs_images = pytest.mark.skipif(not SHARED_IMAGES.is_dir(), reason=f"test photographs not found at {SHARED_IMAGES}")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of zeros, compressed a row at a time (32000 x 32000: 124 kB, 3 GB as BGR)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    compress = zlib.compressobj(9)
    body = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


def lying_png(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose data holds 100 bytes (69 bytes in all)."""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + png_chunk(b"IEND", b""))


def resized_header(data: bytes, suffix: str, width: int, height: int) -> bytes:
    """An encoded 64 x 48 image whose header is rewritten to say ``width`` x ``height`` (its data unchanged)."""
    data = bytearray(data)
    if suffix == ".png":
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif suffix == ".jpg":
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    elif suffix == ".bmp":
        data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def encoded(suffix: str, img: np.ndarray | None = None) -> bytes:
    ok, buf = cv2.imencode(suffix, smooth_noise_image() if img is None else img)
    assert ok
    return buf.tobytes()


def pil_encoded(format: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 3)).save(buf, format)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------- refused

def test_a_decompression_bomb_is_refused_undecoded(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(32000, 32000))
    assert path.stat().st_size < 200_000
    with pytest.raises(ImageError, match=rf"^{path}: 32000 x 32000 = 1024000000 pixels, over the limit of 200000000"):
        read_image(path)


def test_hostile_files_are_refused_quickly_in_little_memory(tmp_path):
    """In a subprocess, so that its peak resident memory is its own (VmHWM: getrusage's ru_maxrss keeps the
    parent's from before exec): a bomb decoded would take 3 GB, a 4 GB file read whole 4 GB; a lying header,
    decoded, raises cv2.error (OpenCV's own guard) or allocates 10 GB."""
    (tmp_path / "bomb.png").write_bytes(png_bomb(32000, 32000))
    (tmp_path / "liar.png").write_bytes(lying_png(60000, 60000))
    with open(tmp_path / "huge.jpg", "wb") as f:  # sparse: 4 GB on paper, a few bytes on disk
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        f.truncate(4 * 10**9)
    assert len((tmp_path / "liar.png").read_bytes()) == 69
    script = (
        "import sys\n"
        "from hamer.images import ImageError, read_image\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        read_image(path)\n"
        "    except ImageError as exc:\n"
        "        print(exc)\n"
        "print(next(int(line.split()[1]) // 1024 for line in open('/proc/self/status') if line.startswith('VmHWM')))\n")
    paths = [str(tmp_path / name) for name in ("bomb.png", "liar.png", "huge.jpg")]
    run = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    *messages, peak_mib = run.stdout.splitlines()
    assert messages[0].startswith(f"{paths[0]}: 32000 x 32000 = 1024000000 pixels, over the limit")
    assert messages[1].startswith(f"{paths[1]}: 60000 x 60000 = 3600000000 pixels, over the limit")
    assert messages[2] == (f"{paths[2]}: 4.00 GB, more than an image of at most 200000000 pixels takes (1.62 GB): "
                           "not read")
    assert int(peak_mib) < 1000  # generous: the imports take about 200 MB; any one decode or read, gigabytes


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_a_header_that_claims_too_many_pixels_is_refused(tmp_path, suffix):
    path = tmp_path / f"liar{suffix}"
    path.write_bytes(resized_header(encoded(suffix), suffix, 50000, 40000))
    with pytest.raises(ImageError, match=rf"^{path}: 50000 x 40000 = 2000000000 pixels, over the limit"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm"])
def test_header_size_reads_each_format(suffix):
    img = smooth_noise_image()[:37, :53]
    assert header_size(encoded(suffix, img)) == (53, 37)


def test_a_webp_header_over_pillows_own_limit_is_refused(tmp_path):
    """Pillow's WebP reader allocates the canvas when it opens a file, so it checks Pillow's limit first."""
    data = bytearray(pil_encoded("WEBP"))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"  # lossy: 14-bit sizes at 26 and 28
    data[26:30] = struct.pack("<HH", 16383, 16383)
    path = tmp_path / "liar.webp"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=rf"^{path}: Image size \(268402689 pixels\) exceeds limit"):
        read_image(path)


def test_pillows_own_pixel_limit_does_not_decide():
    """A 15000 x 12000 header (180 million pixels) is over twice Pillow's MAX_IMAGE_PIXELS (an error in
    PIL.Image.open) but under ours: its size is read, with no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert header_size(resized_header(encoded(".png"), ".png", 15000, 12000)) == (15000, 12000)


def test_the_pixel_limit_is_inclusive_and_settable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    path.write_bytes(encoded(".png", smooth_noise_image()[:30, :40]))
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageError, match=r"40 x 30 = 1200 pixels, over the limit of 1199:"):
        read_image(path, max_pixels=1199)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1199)  # the module's default, read when called
    with pytest.raises(ImageError, match="over the limit of 1199:"):
        read_image(path)


def test_the_byte_limit_refuses_unread(tmp_path):
    """8 bytes a pixel + 16 MB: a PNG padded to the limit is read (libpng stops at IEND), one byte more is not."""
    most = 8 * 1200 + 16_000_000
    assert max_image_bytes(1200) == most
    data = encoded(".png", smooth_noise_image()[:30, :40])
    path = tmp_path / "padded.png"
    path.write_bytes(data + b"\x00" * (most - len(data)))
    assert read_image(path, max_pixels=1200).shape == (30, 40, 3)
    with open(path, "ab") as f:
        f.write(b"\x00")
    with pytest.raises(ImageError, match=rf"^{path}: 16.0 MB, more than an image of at most 1200 pixels takes "
                                         r"\(16.0 MB\): not read$"):
        read_image(path, max_pixels=1200)


@pytest.mark.parametrize("name, make, why", [
    ("cut.jpg", lambda: encoded(".jpg")[:2000], "OpenCV cannot decode it"),
    ("cut.png", lambda: encoded(".png")[:2000], "OpenCV cannot decode it"),
    ("empty.jpg", lambda: b"", "empty file"),
    ("text.jpg", lambda: b"not an image at all\n" * 10, "not an image whose size can be read from its header"),
    ("radiance.hdr", lambda: cv2.imencode(".hdr", np.ones((8, 8, 3), np.float32))[1].tobytes(),
     "a format such as OpenEXR or Radiance HDR"),
    ("pcx.jpg", lambda: pil_encoded("PCX"), "OpenCV cannot decode it"),  # Pillow reads its header, OpenCV not
])
def test_damaged_and_unknown_files_are_refused_naming_them(tmp_path, name, make, why):
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageError, match=rf"^{path}: .*{why}"):
        read_image(path)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "WEBP", "QOI", "ICO", "BMP", "TIFF"])
def test_a_file_cut_anywhere_is_an_image_error(tmp_path, format):
    """Whatever a format reader raises on the first N bytes of a file is an ImageError naming it, never another
    exception (which would fail the whole folder)."""
    data = pil_encoded(format)
    path = tmp_path / f"cut.{format.lower()}"
    for size in range(len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(ImageError, match=rf"^{path}: "):
            read_image(path)


def test_a_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "missing.jpg")


@needs_images
def test_a_photograph_reads_as_opencv_reads_it():
    for name in ("test4.jpg", "test2.png"):
        np.testing.assert_array_equal(read_image(SHARED_IMAGES / name), cv2.imread(str(SHARED_IMAGES / name)))


# ---------------------------------------------------------------------------------------------------- a run

def hamer_run(*args: str) -> subprocess.CompletedProcess:
    """``hamer run`` in a subprocess: a native crash there (MediaPipe on a decoded bomb) cannot take pytest down."""
    return subprocess.run([sys.executable, "-m", "hamer", "run", *args], capture_output=True, text=True,
                          timeout=300)


@needs_images
def test_a_folder_with_hostile_files_among_photographs_keeps_its_photographs(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("test4.jpg", "test5.jpeg"):
        (folder / name).write_bytes((SHARED_IMAGES / name).read_bytes())
    (folder / "bomb.png").write_bytes(png_bomb(32000, 32000))
    (folder / "liar.png").write_bytes(lying_png(60000, 60000))
    (folder / "cut.jpg").write_bytes((SHARED_IMAGES / "test4.jpg").read_bytes()[:3000])
    alone = tmp_path / "alone.png"
    alone.write_bytes(png_bomb(32000, 32000))
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:  # sparse, 4 GB
        f.write(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
        f.truncate(4 * 10**9)
    out = tmp_path / "out"
    run = hamer_run(str(folder), str(alone), str(huge), "--bbox-only", "--quiet", "--out", str(out))
    assert run.returncode == 1, run.stderr  # something failed; no crash (-11), no traceback
    assert "Traceback" not in run.stderr
    lines = [json.loads(line) for line in (out / "photos.jsonl").read_text().splitlines()]
    assert [Path(line["source"]).name for line in lines] == ["test4.jpg", "test5.jpeg"]
    assert all(line["hands"] for line in lines)
    records = {Path(r["input"]).name: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    photos, bomb = records["photos"], records["alone.png"]
    assert photos["status"] == "truncated" and photos["frames"] == 2 and photos["expected_frames"] == 5
    assert photos["files"] == ["photos.jsonl", "photos.npz"]
    skipped = photos["error"].split("skipped: ", 1)[1].split("; ")
    assert [s.split(": ", 1)[0] for s in skipped] == [str(folder / n) for n in ("bomb.png", "cut.jpg", "liar.png")]
    assert "32000 x 32000 = 1024000000 pixels" in skipped[0] and "OpenCV cannot decode it" in skipped[1]
    assert "60000 x 60000" in skipped[2]
    assert bomb["status"] == "failed" and f"{alone}: 32000 x 32000" in bomb["error"] and bomb["files"] == []
    assert records["huge.jpg"]["status"] == "failed" and records["huge.jpg"]["kind"] == "image"
    assert f"{huge}: 4.00 GB, more than an image of at most 200000000 pixels" in records["huge.jpg"]["error"]


def test_the_max_image_pixels_flag(tmp_path, capsys):
    """In this process: nothing hostile here (a 320 x 240 PNG), unlike the runs above."""
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a_small.png").write_bytes(encoded(".png", smooth_noise_image()[:20, :30]))  # 600 pixels
    (folder / "b_large.png").write_bytes(encoded(".png"))  # 320 x 240
    out = tmp_path / "out"
    assert main(["run", str(folder), "--bbox-only", "--quiet", "--out", str(out), "--max-image-pixels", "600"]) == 1
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])  # after the unit's "started" line
    assert record["status"] == "truncated"
    assert record["error"] == (f"cannot read 1 image(s), skipped: {folder / 'b_large.png'}: 320 x 240 = 76800 pixels, "
                               "over the limit of 600: not decoded")
    lines = (out / "frames.jsonl").read_text().splitlines()
    assert [Path(json.loads(line)["source"]).name for line in lines] == ["a_small.png"]
    assert main(["run", str(folder), "--bbox-only", "--quiet", "--out", str(tmp_path / "all"),
                 "--max-image-pixels", "76800"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:  # argparse's usage error
        main(["run", str(folder), "--out", str(tmp_path / "bad"), "--max-image-pixels", "0"])
    assert bad.value.code == 2
    assert "--max-image-pixels: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
