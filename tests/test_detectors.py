"""The detector interface: boxes from a JSON Lines file (format, validation, lookup), a corpus run whose hands are
exactly the file's boxes, a custom detector object in ``HAMER(detector=...)``, factories that pickle (Ray) and
honour custom MediaPipe task paths. Files, videos and images are made at run time; small synthetic model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

import hamer.boxfile
import hamer.detection
from hamer.boxfile import BoxesFromFile, BoxFileDetectors
from hamer.corpus import ModelError, Options, run_corpus
from hamer.detection import HandDetector, MediaPipeDetectors, detector_options
from hamer.detectors import Detector, FrameRef, HandDetection
from hamer.hamer_module import HAMER
from hamer.pipeline import best_per_label
from hamer.units import differences, fingerprint

from conftest import TWO_BOXES, smooth_noise_image
from videos import write_video

SHAPE = (240, 320, 3)
IMG = np.zeros(SHAPE, np.uint8)


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def boxes_of(detections: list[HandDetection]) -> list[tuple[str, list[float], float, str]]:
    return [(d.label, d.box.tolist(), d.score, d.source) for d in detections]


@pytest.fixture
def no_mediapipe(monkeypatch):
    """MediaPipe must not be made: its constructor fails the test."""
    def refuse(self, options=None):
        raise AssertionError("a MediaPipe HandDetector was made")

    monkeypatch.setattr(HandDetector, "__init__", refuse)


# ---------------------------------------------------------------------------------------------------- the file

def test_frames_are_found_by_index_or_by_call_count(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [
        {"frame": 0, "hands": [{"label": "Right", "box": [10, 20, 60, 90], "score": 0.25}]},
        "",
        {"frame": 2, "hands": [{"label": "Left", "box": [1.5, 2.5, 30, 40]},
                               {"label": "Right", "box": [100, 100, 150, 160], "score": 0.5}]},
    ])
    with BoxesFromFile(path) as boxes:
        assert isinstance(boxes, Detector)
        assert boxes_of(boxes.detect(IMG, 0, FrameRef("v.mp4", 2))) == [
            ("Left", [1.5, 2.5, 30.0, 40.0], 1.0, "file"), ("Right", [100.0, 100.0, 150.0, 160.0], 0.5, "file")]
        assert boxes.detect(IMG, 33, FrameRef("v.mp4", 1)) == []
        assert boxes.detect(IMG, 66, FrameRef("v.mp4", 3)) == []  # past the last frame
        assert boxes_of(boxes.detect(IMG, 99, FrameRef("v.mp4", 0))) == [("Right", [10, 20, 60, 90], 0.25, "file")]
        detection = boxes.detect(IMG, None, FrameRef("v.mp4", 0))[0]
        assert detection.box.dtype == np.float32 and detection.landmarks is None
    with BoxesFromFile(path) as boxes:  # no FrameRef (HAMER.predict): the n-th call is frame n
        assert [len(boxes.detect(IMG)) for _ in range(4)] == [1, 0, 2, 0]
    boxes.close()  # twice: fine
    with pytest.raises(RuntimeError, match="closed"):
        boxes.detect(IMG)


def test_images_are_found_by_file_name(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [{"image": "b.png", "hands": [{"label": "Left", "box": [5, 6, 70, 80]}]},
                                              {"image": "a.jpg", "hands": []}])
    with BoxesFromFile(path) as boxes:
        assert boxes_of(boxes.detect(IMG, None, FrameRef("/some/folder/b.png", 1))) == [
            ("Left", [5, 6, 70, 80], 1.0, "file")]
        assert boxes.detect(IMG, None, FrameRef("a.jpg", 0)) == []
        assert boxes.detect(IMG, None, FrameRef("c.jpg", 2)) == []
        with pytest.raises(ValueError, match="b.jsonl gives boxes by image file name"):
            boxes.detect(IMG)


@pytest.mark.parametrize(("lines", "line", "message"), [
    (["{not json"], 1, "not a JSON object"),
    (["[1, 2]"], 1, 'need an object of "hands"'),
    ([{"frame": 0}], 1, 'need an object of "hands"'),
    ([{"frame": 0, "image": "a.jpg", "hands": []}], 1, 'need an object of "hands"'),
    ([{"frame": 0, "hands": []}, {"frame": True, "hands": []}], 2, '"frame" must be an integer'),
    ([{"frame": -1, "hands": []}], 1, '"frame" must be an integer'),
    (['{"frame": 1' + "0" * 30 + ', "hands": []}'], 1, '"frame" must be an integer'),
    ([{"image": "dir/a.jpg", "hands": []}], 1, '"image" must be a file name'),
    ([{"frame": 0, "hands": {}}], 1, '"hands" must be a list'),
    ([{"frame": 0, "hands": [{"label": "Right"}]}], 1, "each hand must be an object"),
    ([{"frame": 0, "hands": [{"label": "Right", "box": [0, 0, 1, 1], "extra": 1}]}], 1, "each hand must be"),
    ([{"frame": 0, "hands": [{"label": "Middle", "box": [0, 0, 1, 1]}]}], 1, "label must be 'Right' or 'Left'"),
    ([{"frame": 0, "hands": [{"label": "Left", "box": [0, 0, 1]}]}], 1, "box must be 4 numbers"),
    ([{"frame": 0, "hands": [{"label": "Left", "box": [0, 0, True, 1]}]}], 1, "box must be 4 numbers"),
    (['{"frame": 0, "hands": [{"label": "Left", "box": [0, 0, NaN, 1]}]}'], 1, "box must be 4 numbers"),
    (['{"frame": 0, "hands": [{"label": "Left", "box": [0, 0, 1e999, 1]}]}'], 1, "box must be 4 numbers"),
    (['{"frame": 0, "hands": [{"label": "Left", "box": [0, 0, 1' + "0" * 400 + ', 1]}]}'], 1, "box must be 4"),
    ([{"frame": 0, "hands": [{"label": "Left", "box": [0, 0, 1, 1], "score": "high"}]}], 1, "score must be"),
    ([{"frame": 3, "hands": []}, {"frame": 3, "hands": []}], 2, "frame 3 after frame 3: frames must increase"),
    ([{"image": "a.jpg", "hands": []}, {"image": "a.jpg", "hands": []}], 2,
     "image .a.jpg. again \\(first on line 1\\)"),
    ([{"frame": 0, "hands": []}, {"image": "a.jpg", "hands": []}], 2, "a file keys either frames or images"),
])
def test_a_bad_line_is_refused_naming_the_file_and_line(tmp_path, lines, line, message):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError, match=f"bad.jsonl line {line}: {message}"):
        BoxesFromFile(path)


def test_oversized_files_and_lines_are_refused_unread(tmp_path, monkeypatch):
    long_line = json.dumps({"frame": 0, "hands": [{"label": "Left", "box": [0, 0, 1, 1]}] * 30000})
    assert len(long_line) > hamer.boxfile.MAX_LINE_BYTES
    with pytest.raises(ValueError, match=f"long.jsonl line 2: longer than {hamer.boxfile.MAX_LINE_BYTES} bytes"):
        BoxesFromFile(write_lines(tmp_path / "long.jsonl", [{"frame": 0, "hands": []}, long_line]))
    path = write_lines(tmp_path / "big.jsonl", [{"frame": i, "hands": []} for i in range(100)])
    monkeypatch.setattr(hamer.boxfile, "MAX_FILE_BYTES", path.stat().st_size - 1)
    with pytest.raises(ValueError, match=f"big.jsonl: {path.stat().st_size} bytes, more than"):
        BoxesFromFile(path)
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        BoxesFromFile(tmp_path / "absent.jsonl")


def test_a_box_off_the_image_fails_the_frame_naming_the_line(tmp_path):
    path = write_lines(tmp_path / "off.jsonl", [{"frame": 0, "hands": []},
                                                {"frame": 1, "hands": [{"label": "Right", "box": [400, 10, 450, 60]}]},
                                                {"frame": 2, "hands": [{"label": "Left", "box": [50, 10, 40, 60]}]}])
    with BoxesFromFile(path) as boxes:
        with pytest.raises(ValueError, match=r"off.jsonl line 2: Right box \[400, 10, 450, 60\] lies entirely outside "
                                             r"the 320x240 image"):
            boxes.detect(IMG, None, FrameRef("v.mp4", 1))
        with pytest.raises(ValueError, match="off.jsonl line 3: Left box .* is inverted"):
            boxes.detect(IMG, None, FrameRef("v.mp4", 2))


# ---------------------------------------------------------------------------------------------------- corpus runs

def test_a_corpus_run_puts_the_hands_exactly_in_the_files_boxes(data_dir, tmp_path, no_mediapipe):
    frames = [np.roll(smooth_noise_image(), 7 * i, axis=1) for i in range(5)]
    video = write_video(tmp_path / "clip.mp4", frames)
    right, left = TWO_BOXES["Right"], TWO_BOXES["Left"]
    script = {0: [("Right", right)], 1: [("Right", right), ("Left", left)], 3: [("Left", [201.5, 81.0, 259.0, 139.5])],
              4: [("Right", [62.0, 52.0, 141.0, 151.0]), ("Left", left)]}
    path = write_lines(tmp_path / "boxes.jsonl", [
        {"frame": i, "hands": [{"label": label, "box": box, "score": 0.9} for label, box in hands]}
        for i, hands in script.items()])
    records = run_corpus([str(video)], tmp_path / "out", Options(data=str(data_dir), detector=BoxFileDetectors(
        str(path))))
    assert [r["status"] for r in records] == ["done"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1, 2, 3, 4]
    for line in lines:
        want = sorted(script.get(line["frame"], []), key=lambda h: h[0] != "Right")
        assert [(h["label"], h["detected_label"], h["box"]) for h in line["hands"]] == [
            (label, label, [float(v) for v in box]) for label, box in want]
        assert all(h["detector"] == "file" and h["score"] == 0.9 and len(h["keypoints_3d"]) == 21
                   for h in line["hands"])


def test_a_folder_run_finds_each_images_boxes_by_name(data_dir, tmp_path, no_mediapipe):
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), smooth_noise_image())
    path = write_lines(tmp_path / "boxes.jsonl", [
        {"image": "c.png", "hands": [{"label": "Left", "box": TWO_BOXES["Left"]}]},
        {"image": "a.png", "hands": [{"label": "Right", "box": TWO_BOXES["Right"], "score": 0.3},
                                     {"label": "Right", "box": [0, 0, 50, 50], "score": 0.2}]}])
    records = run_corpus([str(folder)], tmp_path / "out", Options(data=str(data_dir), bbox_only=True,
                                                                  detector=BoxFileDetectors(str(path))))
    assert [r["status"] for r in records] == ["done"]
    lines = [json.loads(line) for line in (tmp_path / "out" / "shots.jsonl").read_text().splitlines()]
    assert [(Path(line["source"]).name, [(h["label"], h["box"], h["score"]) for h in line["hands"]])
            for line in lines] == [("a.png", [("Right", TWO_BOXES["Right"], 0.3)]), ("b.png", []),
                                   ("c.png", [("Left", TWO_BOXES["Left"], 1.0)])]


def test_a_bad_boxes_file_fails_the_run_before_anything_is_written(data_dir, tmp_path, no_mediapipe):
    video = write_video(tmp_path / "clip.mp4", [smooth_noise_image()] * 2)
    path = write_lines(tmp_path / "boxes.jsonl", [{"frame": 0, "hands": []}, {"frame": 1, "hands": [{}]}])
    with pytest.raises(ModelError, match="detector: .*boxes.jsonl line 2: each hand must be an object"):
        run_corpus([str(video)], tmp_path / "out", Options(data=str(data_dir), detector=BoxFileDetectors(str(path))))
    assert not (tmp_path / "out").exists()


def test_the_mediapipe_factory_honours_custom_task_paths(data_dir, tmp_path):
    video = write_video(tmp_path / "clip.mp4", [smooth_noise_image()] * 2)
    factory = MediaPipeDetectors(detector_options({"hand": tmp_path / "mine.task"}, num_hands=3))
    with pytest.raises(ModelError, match="detector: MediaPipe task bundle not found: .*mine.task"):
        run_corpus([str(video)], tmp_path / "out", Options(data=str(data_dir), detector=factory))


def test_factories_pickle_and_enter_the_fingerprint(tmp_path):
    path = write_lines(tmp_path / "boxes.jsonl", [{"frame": 0, "hands": [{"label": "Left", "box": [1, 2, 3, 4]}]}])
    options = pickle.loads(pickle.dumps(Options(detector=BoxFileDetectors(str(path)))))  # as Ray ships them
    with options.detector("VIDEO") as boxes:
        assert boxes_of(boxes.detect(IMG)) == [("Left", [1, 2, 3, 4], 1.0, "file")]
    factory = MediaPipeDetectors(detector_options({"hand": tmp_path / "h.task"}, num_hands=3))
    assert pickle.loads(pickle.dumps(factory)) == factory
    assert factory.options.num_hands == 3 and factory.options.pose_task_path is None
    default = fingerprint(Options())
    assert default["detector"] is None
    assert differences({k: v for k, v in default.items() if k != "detector"}, default) == []  # older manifests
    changed = fingerprint(Options(detector=BoxFileDetectors(str(path))))
    assert str(path) in changed["detector"]
    assert differences(default, changed) == ["--boxes (Options.detector)"]
    assert fingerprint(Options(detector=detector_options))["detector"] == "detector_options"


# ---------------------------------------------------------------------------------------------------- HAMER

class FixedDetector:
    """A user's detector: the same hands in every image, a record of its calls and of its closing."""

    def __init__(self, detections: list[HandDetection]) -> None:
        self.detections, self.calls, self.closed = detections, [], False

    def detect(self, img_bgr, timestamp_ms=None, frame=None) -> list[HandDetection]:
        self.calls.append((img_bgr.shape, timestamp_ms, frame))
        return list(self.detections)

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FixedDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def test_hamer_runs_a_custom_detector_and_leaves_it_open(data_dir, no_mediapipe):
    img = smooth_noise_image()
    right = np.array(TWO_BOXES["Right"], np.float32)
    off_image = np.array([400, 10, 450, 60], np.float32)
    mine = FixedDetector([HandDetection("Right", 0.6, right, None, "yolo"),
                          HandDetection("Left", 0.99, off_image, None, "yolo")])
    with HAMER(data_dir=data_dir, detector=mine) as model:
        assert model.detector is mine
        result = model.predict(img)
        assert mine.calls == [(SHAPE, None, None)]
        assert [(h.label, h.detector, h.score, h.box.tolist(), h.landmarks) for h in result.hands] == [
            ("Right", "yolo", 0.6, right.tolist(), None)]  # the box off the image is skipped
        assert len(result.detections) == 2
        with_boxes = model.predict(img, {"Right": right})  # the same crop as the user's box: the same hand
        np.testing.assert_array_equal(result["Right"].keypoints_3d, with_boxes["Right"].keypoints_3d)
        np.testing.assert_array_equal(result["Right"].cam_t, with_boxes["Right"].cam_t)
        model.set_mode("VIDEO")
        model.predict(img, timestamp_ms=40)
        assert mine.calls[-1] == (SHAPE, 40, None) and model.detector is mine
    assert not mine.closed  # the caller's to close


def test_hamer_refuses_a_detector_that_is_not_one(data_dir):
    with pytest.raises(TypeError, match="detector must have detect"):
        HAMER(data_dir=data_dir, detector=lambda img: [])
    with pytest.raises(ValueError, match="give them or a detector, not both"):
        HAMER(data_dir=data_dir, detector=FixedDetector([]), task_paths={"hand": hamer.detection.HAND_TASK_PATH})


def test_best_per_label_skips_a_box_that_misses_the_image():
    inside = HandDetection("Left", 0.5, np.array([10, 10, 50, 50], np.float32), None, "mine")
    dets = [HandDetection("Left", 0.9, np.array([-90, 10, -50, 50], np.float32), None, "mine"), inside,
            HandDetection("Right", 0.9, np.array([10, 10, np.nan, 50], np.float32), None, "mine")]
    assert [h.box.tolist() for h in best_per_label(dets, SHAPE)] == [[10, 10, 50, 50]]


def test_the_command_line_takes_boxes_from_a_file(data_dir, tmp_path, capsys, no_mediapipe):
    from hamer.cli import main

    video = write_video(tmp_path / "clip.mp4", [smooth_noise_image()] * 3)
    good = write_lines(tmp_path / "good.jsonl", [{"frame": 1, "hands": [{"label": "Left", "box": TWO_BOXES["Left"]}]}])
    assert main(["run", str(video), "--out", str(tmp_path / "out"), "--data", str(data_dir), "--bbox-only", "--quiet",
                 "--boxes", str(good)]) == 0
    lines = [json.loads(line) for line in (tmp_path / "out" / "clip.jsonl").read_text().splitlines()]
    assert [[(h["label"], h["box"], h["detector"]) for h in line["hands"]] for line in lines] == [
        [], [("Left", TWO_BOXES["Left"], "file")], []]
    bad = write_lines(tmp_path / "bad.jsonl", [{"frame": 0, "hands": [{"label": "left", "box": [0, 0, 9, 9]}]}])
    assert main(["run", str(video), "--out", str(tmp_path / "again"), "--data", str(data_dir), "--quiet",
                 "--boxes", str(bad)]) == 1
    assert "bad.jsonl line 1: label must be 'Right' or 'Left', got 'left'" in capsys.readouterr().err


def test_a_file_changed_after_opening_is_noticed(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [{"frame": 0, "hands": []}, {"frame": 5, "hands": []}])
    with BoxesFromFile(path) as boxes:
        write_lines(path, [{"frame": 0, "hands": []}, {"frame": 6, "hands": []}])
        with pytest.raises(ValueError, match="b.jsonl line 2: the file changed since it was opened"):
            boxes.detect(IMG, None, FrameRef("v.mp4", 5))
        write_lines(path, [{"frame": 0, "hands": []}, {"frame": 5, "hands": [{"label": "Left"}]}])
        with pytest.raises(ValueError, match="b.jsonl line 2: each hand must be an object"):
            boxes.detect(IMG, None, FrameRef("v.mp4", 5))
