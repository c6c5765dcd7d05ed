"""The Aff-Wild2 reader (common/data/affwild2.py) on tiny corpora in the official ABAW layout.

Fixtures are written by hand, file by file, in the release format (header line, line i + 1 for
frame %05d.jpg, -5 / -1 markers, _left/_right tracks sharing one wav, gaps in the face images),
so these tests pin the format itself and not just agreement with our own generator; one test at
the end also reads a generated synthetic corpus.
"""
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from common.data import affwild2 as aw
from common.data import label_files
from common.data.affwild2 import AffWild2Error

VA_HEADER = "valence,arousal"
EXPR_HEADER = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
AU_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
HEADER = {"VA": VA_HEADER, "EXPR": EXPR_HEADER, "AU": AU_HEADER}
READ = {"VA": aw.read_va_labels, "EXPR": aw.read_expr_labels, "AU": aw.read_au_labels}
AU_OFF = ",".join(["-1"] * 12)

# The hand-made corpus: (video, split, number of frames, frames without a face image).
VIDEOS = {
    "12-24-1920x1080": ("train", 10, {4, 5}),
    "video5": ("train", 6, {6}),
    "118-30-640x480_left": ("train", 8, set()),
    "118-30-640x480_right": ("train", 8, set()),
    "7-25-480x360": ("validation", 5, set()),
}
VA_ROWS = {   # video -> label rows of the VA file
    "12-24-1920x1080": ["0.125,-0.25", "0.5,0.5", "-5,-5", "1,-1", "0.3,0.7",
                        "-0.3,0.1", "0,0", "-5,0.2", "0.75,0.25", "-1,1"],
    "118-30-640x480_left": [f"{0.1 * i:.1f},{-0.1 * i:.1f}" for i in range(8)],
    "118-30-640x480_right": [f"{-0.05 * i:.2f},0.5" for i in range(8)],
    "7-25-480x360": ["0.2,0.2"] * 5,
}
EXPR_ROWS = {
    "12-24-1920x1080": ["0", "1", "2", "3", "4", "5", "-1", "6", "7", "0"],
    "video5": ["4", "4", "-1", "-1", "6", "7"],
}
AU_ROWS = {
    "12-24-1920x1080": ["1,0,0,0,0,0,1,0,0,0,1,0", AU_OFF] + ["0,1,0,0,1,0,0,0,0,1,0,1"] * 8,
    "118-30-640x480_left": ["0,0,0,0,0,0,0,0,0,0,0,0"] * 7 + ["1,1,1,1,1,1,1,1,1,1,1,1"],
}
TASK_ROWS = {"VA": VA_ROWS, "EXPR": EXPR_ROWS, "AU": AU_ROWS}
MTL_HEADER = "image,valence,arousal,expression," + AU_HEADER
MTL_ROWS = [
    "12-24-1920x1080/00001.jpg,0.125,-0.25,0,1,0,0,0,0,0,1,0,0,0,1,0",
    "12-24-1920x1080/00003.jpg,-5,-5,2," + AU_OFF,
    "12-24-1920x1080/00006.jpg,-0.3,0.1,-1,0,1,0,0,1,0,0,0,0,1,0,1",
    "118-30-640x480_left/00002.jpg,0.1,-0.1,-1," + AU_OFF,
    "118-30-640x480_right/00008.jpg,-5,-5,-1,1,1,1,1,1,1,1,1,1,1,1,1",
]


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_labels(root: Path, task: str, split: str, video: str, rows: list) -> Path:
    path = root / "annotations" / aw.TASK_DIRS[task] / aw.SPLIT_DIRS[split] / f"{video}.txt"
    return write_text(path, HEADER[task] + "\n" + "\n".join(rows) + "\n")


def write_frames(root: Path, video: str, frames) -> None:
    folder = root / "cropped_aligned" / video
    folder.mkdir(parents=True, exist_ok=True)
    for t in frames:
        Image.new("RGB", (8, 8), (t * 20 % 256, 90, 160)).save(folder / f"{t:05d}.jpg")


def make_corpus(root: Path) -> Path:
    for video, (split, n, no_face) in VIDEOS.items():
        write_frames(root, video, [t for t in range(1, n + 1) if t not in no_face])
    for task, rows_of in TASK_ROWS.items():
        for video, rows in rows_of.items():
            write_labels(root, task, VIDEOS[video][0], video, rows)
    # Every task folder has both official splits, even where a split holds no file for the task.
    for task in aw.TASKS:
        for split in ("train", "validation"):
            (root / "annotations" / aw.TASK_DIRS[task] / aw.SPLIT_DIRS[split]).mkdir(parents=True, exist_ok=True)
    write_text(root / "annotations" / "MTL_Challenge" / "train.txt", MTL_HEADER + "\n" + "\n".join(MTL_ROWS) + "\n")
    (root / "videos").mkdir()
    rate = 16000
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)
    sf.write(root / "videos" / "118-30-640x480.wav", np.stack([tone, -tone], 1), rate, subtype="PCM_16")
    sf.write(root / "videos" / "12-24-1920x1080.wav", tone, rate, subtype="PCM_16")
    return root


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "affwild2")


def by_name(videos) -> dict:
    return {v.video: v for v in videos}


# ---- per-task label files ----------------------------------------------------------------------

def test_va_values_and_masks_read_back_exactly(corpus):
    path = corpus / "annotations/VA_Estimation_Challenge/Train_Set/12-24-1920x1080.txt"
    values, mask = aw.read_va_labels(path)
    expected = np.array([[0.125, -0.25], [0.5, 0.5], [-5, -5], [1, -1], [0.3, 0.7], [-0.3, 0.1],
                         [0, 0], [-5, -5], [0.75, 0.25], [-1, 1]], np.float32)
    assert values.dtype == np.float32 and values.shape == (10, 2)
    np.testing.assert_array_equal(values, expected)
    # Row 8 is "-5,0.2": one marker invalidates the row, and the stray 0.2 is not kept.
    np.testing.assert_array_equal(mask, [1, 1, 0, 1, 1, 1, 1, 0, 1, 1])
    assert mask.dtype == bool


def test_expr_values_and_masks_read_back_exactly(corpus):
    values, mask = aw.read_expr_labels(corpus / "annotations/EXPR_Classification_Challenge/Train_Set/video5.txt")
    assert values.dtype == np.int64
    np.testing.assert_array_equal(values, [4, 4, -1, -1, 6, 7])
    np.testing.assert_array_equal(mask, [1, 1, 0, 0, 1, 1])


def test_au_values_and_per_element_masks(tmp_path):
    rows = ["1,0,0,0,0,0,1,0,0,0,1,0", AU_OFF, "1,-1,0,0,0,0,0,0,0,0,0,1"]
    path = write_text(tmp_path / "v.txt", AU_HEADER + "\n" + "\n".join(rows) + "\n")
    values, mask = aw.read_au_labels(path)
    assert values.dtype == np.float32 and values.shape == (3, 12) and mask.shape == (3, 12)
    np.testing.assert_array_equal(values[0], [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0])
    assert not mask[1].any()
    np.testing.assert_array_equal(mask[2], [True, False] + [True] * 10)
    assert values[2, 11] == 1 and values[2, 1] == -1


def test_ascii_whitespace_around_values_is_accepted(tmp_path):
    path = write_text(tmp_path / "v.txt", "valence,arousal\n 0.5 ,\t-0.5\n\f0.25,1e-1\x0b\n-Infinity,0\n")
    with pytest.raises(AffWild2Error, match=r"v\.txt:4: valence is -inf; labels must be finite"):
        aw.read_va_labels(path)
    path = write_text(tmp_path / "v.txt", "valence,arousal\n 0.5 ,\t-0.5\n\f0.25,1e-1\x0b\n")
    values, _ = aw.read_va_labels(path)
    np.testing.assert_array_equal(values, np.array([[0.5, -0.5], [0.25, 0.1]], np.float32))


def test_crlf_bom_and_trailing_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "v.txt"
    path.write_bytes("\ufeffvalence,arousal\r\n0.5,-0.5\r\n-5,-5\r\n\r\n\r\n".encode("utf-8"))
    values, mask = aw.read_va_labels(path)
    np.testing.assert_array_equal(values, np.array([[0.5, -0.5], [-5, -5]], np.float32))
    np.testing.assert_array_equal(mask, [True, False])


BAD_FILES = [
    # (test id, task, file text, 1-based line the error must name, phrase in the message)
    ("va-wrong-header", "VA", "valence,arousl\n0.1,0.2\n", 1, "header"),
    ("va-no-header", "VA", "0.1,0.2\n0.3,0.4\n", 1, "header"),
    ("expr-abaw2-header", "EXPR", "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise\n1\n", 1, "header"),
    ("va-too-few-columns", "VA", "valence,arousal\n0.1,0.2\n0.3\n0.1,0.1\n", 3, "1 field"),
    ("va-too-many-columns", "VA", "valence,arousal\n0.1,0.2\n0.1,0.1\n0.3,0.1,0.2\n", 4, "3 field"),
    ("va-non-numeric", "VA", "valence,arousal\n0.1,0.2\n0.1,abc\n", 3, "'abc' is not a number"),
    ("va-empty-field", "VA", "valence,arousal\n0.1,0.2\n,0.2\n", 3, "is not a number"),
    ("va-nan", "VA", "valence,arousal\n0.1,0.2\n0.5,0.5\nnan,0.2\n", 4, "finite"),
    ("va-inf", "VA", "valence,arousal\n0.1,inf\n", 2, "finite"),
    ("va-out-of-range", "VA", "valence,arousal\n0.1,0.2\n-5,-5\n1.5,0.2\n", 4, "valence = 1.5 is outside"),
    ("va-marker-with-bad-partner", "VA", "valence,arousal\n-5,1.5\n", 2, "arousal = 1.5"),
    ("va-blank-line-inside", "VA", "valence,arousal\n0.1,0.2\n\n0.1,0.2\n", 3, "empty line"),
    ("expr-class-9", "EXPR", EXPR_HEADER + "\n0\n1\n-1\n9\n", 5, "expression = 9"),
    ("expr-not-integer", "EXPR", EXPR_HEADER + "\n2.5\n", 2, "expression = 2.5"),
    ("expr-two-columns", "EXPR", EXPR_HEADER + "\n1\n1,2\n", 3, "2 field"),
    ("au-value-2", "AU", AU_HEADER + "\n" + "0,0,0,0,0,0,0,0,0,0,0,0\n" + "0,0,0,0,0,2,0,0,0,0,0,0\n", 3, "AU10 = 2"),
    ("au-11-columns", "AU", AU_HEADER + "\n" + "0,0,0,0,0,0,0,0,0,0,0\n", 2, "11 field"),
    ("empty-file", "VA", "", 1, "empty"),
    ("blank-file", "AU", "\n\n", 1, "empty"),
    ("header-only", "EXPR", EXPR_HEADER + "\n", 2, "no label rows"),
    # pandas reads a column made only of these words as 1/0; they are not labels.
    ("va-bool-column", "VA", "valence,arousal\n0.1,True\n0.2,false\n0.3,FALSE\n", 2,
     "arousal = 'True' is not a number (write 1 or 0, not True/False)"),
    ("expr-bool-column", "EXPR", EXPR_HEADER + "\nFalse\ntrue\n", 2, "expression = 'False' is not a number"),
    ("au-bool-column", "AU", AU_HEADER + "\n" + "0,0,0,0,0,0,0,0,0,0,0,TRUE\n" * 2, 2, "AU26 = 'TRUE'"),
    # Python's float() syntax beyond plain decimals.
    ("va-underscore", "VA", "valence,arousal\n0.1,0.2\n0_1,0.2\n", 3,
     "valence = '0_1' is not a number (labels are plain ASCII decimals"),
    ("expr-full-width-digit", "EXPR", EXPR_HEADER + "\n1\n\uff13\n", 3, "expression = '\uff13' is not a number"),
    ("va-full-width-decimal", "VA", "valence,arousal\n\uff10.\uff15,0.2\n", 2, "is not a number"),
    # A range error before a syntax error is the first problem.
    ("va-range-before-word", "VA", "valence,arousal\n0.1,0.2\n1.5,0.2\n0.1,abc\n", 3, "valence = 1.5"),
]


@pytest.mark.parametrize("task,text,line,phrase", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_label_file_names_file_and_line(tmp_path, task, text, line, phrase):
    path = write_text(tmp_path / "Train_Set" / "bad-video-7.txt", text)
    with pytest.raises(AffWild2Error) as err:
        READ[task](path)
    message = str(err.value)
    assert f"{path}:{line}:" in message
    assert phrase in message
    assert "bad-video-7.txt" in message


def test_big_file_fast_path_matches_values_and_finds_late_error(tmp_path):
    rng = np.random.default_rng(0)
    va = np.round(rng.uniform(-1, 1, (20000, 2)), 3)
    va[100:200] = -5
    rows = [f"{a:.3f},{b:.3f}" for a, b in va]
    good = write_text(tmp_path / "good.txt", VA_HEADER + "\n" + "\n".join(rows) + "\n")
    values, mask = aw.read_va_labels(good)
    np.testing.assert_array_equal(values, va.astype(np.float32))
    assert mask.sum() == 19900 and not mask[100:200].any()
    rows[12343] = "0.1,1.01"     # frame 12344 -> line 12345
    bad = write_text(tmp_path / "bad.txt", VA_HEADER + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(AffWild2Error, match=r"bad\.txt:12345: arousal = 1\.01"):
        aw.read_va_labels(bad)


def test_big_file_non_numeric_last_line_found_without_the_line_by_line_walk(tmp_path, monkeypatch):
    # One bad token on the last line of a big file used to send the whole file through
    # the Python line walk (31 s for a million rows); one regex scan finds it now.
    def no_walk(*args, **kwargs):
        raise AssertionError("the line-by-line slow path ran")
    monkeypatch.setattr(label_files, "_parse_lines_slow", no_walk)
    rows = [f"{(i % 200) / 100 - 1:.2f},0.5" for i in range(20000)]
    for token, phrase in (("abc", "'abc' is not a number"), ("0_5", "'0_5' is not a number"),
                          ("", "'' is not a number")):
        bad = write_text(tmp_path / "bad.txt", VA_HEADER + "\n" + "\n".join(rows[:-1] + [f"0.1,{token}"]) + "\n")
        with pytest.raises(AffWild2Error, match=rf"bad\.txt:20001: arousal = {phrase}"):
            aw.read_va_labels(bad)
    rows[5000] = "-2,0.5"                    # an earlier range error still comes first
    for last in ("0.1,x", "0.1,", "0.1,1e"):
        bad = write_text(tmp_path / "bad.txt", VA_HEADER + "\n" + "\n".join(rows[:-1] + [last]) + "\n")
        with pytest.raises(AffWild2Error, match=r"bad\.txt:5002: valence = -2 is outside"):
            aw.read_va_labels(bad)


def test_a_directory_as_label_file_gets_the_readers_error(corpus, tmp_path):
    folder = tmp_path / "Train_Set" / "video9.txt"
    folder.mkdir(parents=True)
    for read in READ.values():
        with pytest.raises(AffWild2Error, match=rf"{folder}: is a directory, not a label file.*data\.root"):
            read(folder)
    mtl = corpus / "annotations" / "MTL_Challenge" / "validation.txt"
    mtl.mkdir()
    with pytest.raises(AffWild2Error, match=rf"{mtl}: is a directory"):
        aw.read_mtl(corpus, "validation")
    write_frames(corpus, "video9", [1])
    inside = corpus / "annotations" / aw.TASK_DIRS["EXPR"] / aw.SPLIT_DIRS["train"] / "video9.txt"
    inside.mkdir()
    with pytest.raises(AffWild2Error, match=rf"{inside}: is a directory"):
        aw.read_split(corpus, "train")


def test_an_unreadable_label_file_gets_the_readers_error(tmp_path, monkeypatch):
    path = write_text(tmp_path / "v.txt", VA_HEADER + "\n0.1,0.2\n")
    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_text", denied)   # chmod does not stop root
    with pytest.raises(AffWild2Error, match=rf"{path}: cannot be read \(Permission denied\); give"):
        aw.read_va_labels(path)


# ---- frames and names ---------------------------------------------------------------------------

def test_frame_images_lists_only_numbered_jpegs(corpus):
    folder = corpus / "cropped_aligned" / "12-24-1920x1080"
    for junk in ("Thumbs.db", "00003.png", "face.jpg", "0001.jpg"):
        (folder / junk).write_bytes(b"x")
    images = aw.frame_images(corpus, "12-24-1920x1080")
    assert list(images) == [1, 2, 3, 6, 7, 8, 9, 10]
    assert images[6] == str(folder / "00006.jpg") and Path(images[6]).is_file()


def test_frame_images_rejects_zero_based_folder(corpus):
    write_frames(corpus, "video5", [0])
    with pytest.raises(AffWild2Error, match=r"00000\.jpg.*1-based"):
        aw.frame_images(corpus, "video5")


@pytest.mark.parametrize("video,default,fps", [
    ("12-24-1920x1080", None, 24.0), ("118-30-640x480_left", None, 30.0),
    ("5-60-1920x1080_right", None, 60.0), ("video5", None, None), ("video5", 25.0, 25.0),
    ("video59_left", None, None), ("12-0-1920x1080", 30.0, 30.0)])
def test_parse_fps(video, default, fps):
    assert aw.parse_fps(video, default) == fps


def test_audio_base_and_subject_of():
    assert aw.audio_base("118-30-640x480_left") == "118-30-640x480"
    assert aw.audio_base("118-30-640x480_right") == "118-30-640x480"
    assert aw.audio_base("video_leftover") == "video_leftover"
    # Without metadata the two people of a two-person video must stay different subjects.
    assert aw.subject_of("118-30-640x480_left", {}) != aw.subject_of("118-30-640x480_right", {})
    assert aw.subject_of("video5", {"video5": {"subject": "S007"}}) == "S007"
    assert aw.subject_of("video5", {"video5": {"subject": ""}}) == "video5"


# ---- one split ----------------------------------------------------------------------------------

def test_read_split_merges_tasks(corpus):
    videos = aw.read_split(corpus, "train")
    assert [v.video for v in videos] == sorted(v for v, (s, _, _) in VIDEOS.items() if s == "train")
    v = by_name(videos)
    full = v["12-24-1920x1080"]
    assert full.tasks == ("VA", "EXPR", "AU") and full.n_frames == 10 and len(full) == 10
    np.testing.assert_array_equal(full.expr, [0, 1, 2, 3, 4, 5, -1, 6, 7, 0])
    np.testing.assert_array_equal(full.va_mask, aw.read_va_labels(full.label_files["VA"])[1])
    assert not full.au_mask[1].any() and full.au_mask[0].all()

    expr_only = v["video5"]
    assert expr_only.tasks == ("EXPR",)
    assert expr_only.va.shape == (6, 2) and not expr_only.va_mask.any() and (expr_only.va == -5).all()
    assert expr_only.au.shape == (6, 12) and not expr_only.au_mask.any() and (expr_only.au == -1).all()
    np.testing.assert_array_equal(expr_only.expr_mask, [1, 1, 0, 0, 1, 1])

    left, right = v["118-30-640x480_left"], v["118-30-640x480_right"]
    assert left.tasks == ("VA", "AU") and right.tasks == ("VA",)
    np.testing.assert_array_equal(right.va[:, 1], np.full(8, 0.5, np.float32))
    assert not right.au_mask.any() and not left.expr_mask.any() and (left.expr == -1).all()


def test_read_split_missing_faces_are_none_and_counted(corpus, caplog):
    with caplog.at_level(logging.INFO, logger="common.data.affwild2"):
        videos = by_name(aw.read_split(corpus, "train"))
    full = videos["12-24-1920x1080"]
    assert full.image_paths[3] is None and full.image_paths[4] is None
    assert full.image_paths[5].endswith("12-24-1920x1080/00006.jpg") and Path(full.image_paths[5]).is_file()
    np.testing.assert_array_equal(full.has_image, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1])
    assert videos["video5"].image_paths[5] is None and len(videos["video5"].image_paths) == 6
    # 2 + 1 frames without a face over 10 + 6 + 8 + 8 frames.
    assert "32 frames, 3 without a face image" in caplog.text


def test_read_split_fps_subjects_audio(corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="common.data.affwild2"):
        videos = by_name(aw.read_split(corpus, "train"))
    assert videos["12-24-1920x1080"].fps == 24.0 and videos["118-30-640x480_left"].fps == 30.0
    assert videos["video5"].fps is None and "frame rate unknown for 1 videos" in caplog.text
    left, right = videos["118-30-640x480_left"], videos["118-30-640x480_right"]
    assert left.subject == "118-30-640x480_left" and right.subject == "118-30-640x480_right"
    assert left.audio_path == right.audio_path == corpus / "videos" / "118-30-640x480.wav"
    assert videos["video5"].audio_path is None
    assert all(v.split == "train" for v in videos.values())


def test_read_split_validation_and_task_subset(corpus):
    (val,) = aw.read_split(corpus, "validation")
    assert val.video == "7-25-480x360" and val.split == "validation" and val.fps == 25.0
    va_only = aw.read_split(corpus, "train", tasks=("VA",))
    assert "video5" not in {v.video for v in va_only}
    assert all(v.tasks == ("VA",) and not v.au_mask.any() for v in va_only)


def test_annotations_at_root_are_accepted(corpus):
    expected = aw.read_split(corpus, "train")
    for folder in list((corpus / "annotations").iterdir()):
        shutil.move(str(folder), str(corpus / folder.name))
    (corpus / "annotations").rmdir()
    found = aw.read_split(corpus, "train")
    assert [v.video for v in found] == [v.video for v in expected]
    np.testing.assert_array_equal(found[2].va, expected[2].va)
    assert len(aw.read_mtl(corpus, "train")["frame"]) == len(MTL_ROWS)


def test_metadata_gives_subject_and_fps(corpus):
    write_text(corpus / "metadata" / "videos.csv",
               "video,subject,split,fps,n_frames,width,height\n"
               "118-30-640x480_left,S001,train,29.97,8,112,112\n"
               "118-30-640x480_right,S002,train,,8,112,112\n")
    info = aw.read_video_info(corpus)
    assert info["118-30-640x480_left"]["n_frames"] == 8 and info["118-30-640x480_right"]["fps"] is None
    videos = by_name(aw.read_split(corpus, "train"))
    assert videos["118-30-640x480_left"].subject == "S001" and videos["118-30-640x480_left"].fps == 29.97
    assert videos["118-30-640x480_right"].fps == 30.0          # blank in metadata: from the name
    assert videos["video5"].subject == "video5"                # not in metadata


def test_read_video_info_absent_and_bad(corpus):
    assert aw.read_video_info(corpus) == {}
    path = write_text(corpus / "metadata" / "videos.csv",
                      "video,subject,split,fps,n_frames\nvideo5,S1,train,30,6\nvideo6,S1,train,30,six\n")
    with pytest.raises(AffWild2Error, match=r"videos\.csv:3: n_frames = 'six'"):
        aw.read_video_info(corpus)
    path.write_text("video,subject,split,fps,n_frames\nvideo5,S1,train,30,6\nvideo5,S1,train,30,6\n")
    with pytest.raises(AffWild2Error, match=r"videos\.csv:3: video 'video5' listed twice"):
        aw.read_video_info(corpus)


def test_rows_not_matching_metadata_n_frames(corpus):
    write_text(corpus / "metadata" / "videos.csv",
               "video,subject,split,fps,n_frames,width,height\nvideo5,S1,train,30,7,112,112\n")
    with pytest.raises(AffWild2Error) as err:
        aw.read_split(corpus, "train")
    assert "video5.txt" in str(err.value) and "6 label rows" in str(err.value) and "7 frames" in str(err.value)


def test_label_file_for_unknown_video(corpus):
    write_labels(corpus, "VA", "train", "99-30-640x480", ["0.1,0.1"] * 3)
    with pytest.raises(AffWild2Error) as err:
        aw.read_split(corpus, "train")
    assert "99-30-640x480.txt" in str(err.value) and "unknown video" in str(err.value)


def test_fewer_rows_than_face_images(corpus):
    write_labels(corpus, "VA", "validation", "7-25-480x360", ["0.2,0.2"] * 4)   # 5 images
    with pytest.raises(AffWild2Error) as err:
        aw.read_split(corpus, "validation")
    message = str(err.value)
    assert "7-25-480x360.txt" in message and "4 label rows" in message and "00005.jpg" in message


def test_tasks_disagree_on_row_count(corpus):
    write_labels(corpus, "EXPR", "train", "118-30-640x480_right", ["1"] * 9)
    with pytest.raises(AffWild2Error) as err:
        aw.read_split(corpus, "train")
    message = str(err.value)
    assert "VA_Estimation_Challenge/Train_Set/118-30-640x480_right.txt has 8" in message
    assert "EXPR_Classification_Challenge/Train_Set/118-30-640x480_right.txt has 9" in message


def test_bad_row_inside_split_names_file_and_line(corpus):
    write_labels(corpus, "AU", "train", "118-30-640x480_left", ["0,0,0,0,0,0,0,0,0,0,0,0"] * 5 + ["0,0,2"])
    with pytest.raises(AffWild2Error, match=r"118-30-640x480_left\.txt:7: 3 field"):
        aw.read_split(corpus, "train")


def test_missing_split_folder_names_path_and_params(corpus):
    (corpus / "annotations" / aw.TASK_DIRS["EXPR"] / "Test_Set").mkdir()   # test labels of one task only
    with pytest.raises(AffWild2Error) as err:
        aw.read_split(corpus, "test")
    message = str(err.value)
    assert str(Path("VA_Estimation_Challenge") / "Test_Set") in message and "params.yaml" in message
    with pytest.raises(AffWild2Error, match="does not exist.*params.yaml"):
        aw.read_split(corpus / "nowhere", "train")
    with pytest.raises(AffWild2Error, match="unknown split"):
        aw.read_split(corpus, "Train_Set")


def test_without_released_test_labels_the_test_split_is_empty(corpus, caplog):
    """The real release has no Test_Set folder and no MTL test.txt: the test split reads as empty."""
    assert not aw.test_labels_released(corpus)
    with caplog.at_level(logging.INFO, logger="common.data.affwild2"):
        assert aw.read_split(corpus, "test") == []
    assert "test labels not released" in caplog.text
    mtl = aw.read_mtl(corpus, "test")
    assert len(mtl["video"]) == 0 and mtl["au"].shape == (0, 12) and mtl["va"].shape == (0, 2)
    write_labels(corpus, "VA", "test", "7-25-480x360", ["0.2,0.2"] * 5)
    assert aw.test_labels_released(corpus)


def test_label_rows_past_the_audio_are_refused_without_metadata(corpus):
    """590 label rows for a 490-frame video: no face image shows it when the last frames have no
    face, but the audio does (rows / fps against its duration, within a second)."""
    rate = 16000
    sf.write(corpus / "videos" / "7-25-480x360.wav", np.zeros(int(rate * 5 / 25)), rate)   # 5 frames
    assert len(aw.read_split(corpus, "validation")) == 1
    path = write_labels(corpus, "VA", "validation", "7-25-480x360", ["0.2,0.2"] * 35)      # 1.4 s
    with pytest.raises(AffWild2Error) as err:
        aw.read_split(corpus, "validation")
    message = str(err.value)
    assert str(path) in message and "35 label rows" in message and "7-25-480x360.wav" in message
    # With metadata the frame count comes from there, as before.
    write_text(corpus / "metadata" / "videos.csv", "video,n_frames\n7-25-480x360,35\n")
    assert aw.read_split(corpus, "validation")[0].n_frames == 35


def test_a_video_without_face_images_is_a_warning_naming_it(corpus, caplog):
    for jpg in (corpus / "cropped_aligned" / "video5").glob("*.jpg"):
        jpg.unlink()
    with caplog.at_level(logging.WARNING, logger="common.data.affwild2"):
        videos = by_name(aw.read_split(corpus, "train"))
    assert not videos["video5"].has_image.any()
    assert "'video5' has no face image" in caplog.text and "data.faceless_videos" in caplog.text


def test_a_truncated_face_jpeg_names_its_file(corpus):
    from common.features.face_frames import load_face
    jpg = corpus / "cropped_aligned" / "7-25-480x360" / "00002.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(jpg, quality=95)
    assert load_face(str(jpg), 8).shape == (3, 8, 8)
    jpg.write_bytes(jpg.read_bytes()[:300])
    with pytest.raises(AffWild2Error, match=rf"{jpg}: cannot decode this face image"):
        load_face(str(jpg), 8)
    jpg.write_bytes(b"not a jpeg")
    with pytest.raises(AffWild2Error, match=rf"{jpg}: cannot decode"):
        load_face(str(jpg), 8)


# ---- MTL ----------------------------------------------------------------------------------------

def test_read_mtl_values_and_masks(corpus):
    mtl = aw.read_mtl(corpus, "train")
    assert list(mtl["video"]) == ["12-24-1920x1080"] * 3 + ["118-30-640x480_left", "118-30-640x480_right"]
    np.testing.assert_array_equal(mtl["frame"], [1, 3, 6, 2, 8])
    assert mtl["image_path"][2] == str(corpus / "cropped_aligned" / "12-24-1920x1080" / "00006.jpg")
    assert mtl["has_image"].all()
    np.testing.assert_array_equal(mtl["va"][0], np.array([0.125, -0.25], np.float32))
    np.testing.assert_array_equal(mtl["va_mask"], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(mtl["expr"], [0, 2, -1, -1, -1])
    np.testing.assert_array_equal(mtl["expr_mask"], [1, 1, 0, 0, 0])
    assert mtl["au"].shape == (5, 12) and mtl["au"].dtype == np.float32
    np.testing.assert_array_equal(mtl["au_mask"].all(axis=1), [1, 0, 1, 0, 1])
    # Only part of the rows carry all three labels.
    all_three = mtl["va_mask"] & mtl["expr_mask"] & mtl["au_mask"].all(axis=1)
    np.testing.assert_array_equal(all_three, [1, 0, 0, 0, 0])


def write_mtl(corpus: Path, rows: list) -> Path:
    return write_text(corpus / "annotations" / "MTL_Challenge" / "train.txt",
                      MTL_HEADER + "\n" + "\n".join(rows) + "\n")


def test_mtl_missing_image(corpus):
    # Frame 4 of 12-24-1920x1080 has no face image.
    rows = MTL_ROWS[:2] + ["12-24-1920x1080/00004.jpg,0.1,0.1,1," + AU_OFF] + MTL_ROWS[2:]
    path = write_mtl(corpus, rows)
    with pytest.raises(AffWild2Error) as err:
        aw.read_mtl(corpus, "train")
    assert f"{path}:4:" in str(err.value) and "00004.jpg does not exist" in str(err.value)
    mtl = aw.read_mtl(corpus, "train", allow_missing_images=True)
    np.testing.assert_array_equal(mtl["has_image"], [1, 1, 0, 1, 1, 1])


@pytest.mark.parametrize("row,line,phrase", [
    ("12-24-1920x1080/00002.jpg,0.1,0.1,9," + AU_OFF, 3, "expression = 9"),
    ("12-24-1920x1080/00002.jpg,1.5,0.1,1," + AU_OFF, 3, "valence = 1.5"),
    ("12-24-1920x1080/00002.jpg,0.1,0.1,1,0,0,2,0,0,0,0,0,0,0,0,0", 3, "AU4 = 2"),
    ("12-24-1920x1080/00002.jpg,0.1,0.1,1", 3, "4 field"),
    ("12-24-1920x1080/00002.jpg,0.1,x,1," + AU_OFF, 3, "'x' is not a number"),
    ("00002.jpg,0.1,0.1,1," + AU_OFF, 3, "<video>/<00001>.jpg"),
    (MTL_ROWS[0], 3, "already listed on line 2"),
    ("12-24-1920x1080/00002.jpg,0_1,0.1,1," + AU_OFF, 3, "valence = '0_1' is not a number"),
    ("12-24-1920x1080/00002.jpg,0.1,0.1,\uff11," + AU_OFF, 3, "expression = '\uff11' is not a number"),
])
def test_mtl_bad_row(corpus, row, line, phrase):
    path = write_mtl(corpus, MTL_ROWS[:1] + [row] + MTL_ROWS[1:])
    with pytest.raises(AffWild2Error) as err:
        aw.read_mtl(corpus, "train")
    assert f"{path}:{line}:" in str(err.value) and phrase in str(err.value)


def test_mtl_bool_column_is_not_read_as_numbers(corpus):
    # Every row's expression a word: pandas would read the column as 1/0.
    rows = [",".join(r.split(",")[:3] + [word] + r.split(",")[4:])
            for r, word in zip(MTL_ROWS, ["True", "False", "true", "FALSE", "false"])]
    path = write_mtl(corpus, rows)
    with pytest.raises(AffWild2Error, match=rf"{path.name}:2: expression = 'True' is not a number"):
        aw.read_mtl(corpus, "train")
    rows = MTL_ROWS[:4] + [MTL_ROWS[4] + "x"]   # last line bad, found by the scan
    path = write_mtl(corpus, rows)
    with pytest.raises(AffWild2Error, match=rf"{path.name}:6: AU26 = '1x' is not a number"):
        aw.read_mtl(corpus, "train")


def test_mtl_wrong_header_and_missing_file(corpus):
    path = write_text(corpus / "annotations" / "MTL_Challenge" / "train.txt",
                      "image,valence,arousal,expression\n" + MTL_ROWS[0] + "\n")
    with pytest.raises(AffWild2Error, match=rf"{path.name}:1: header"):
        aw.read_mtl(corpus, "train")
    with pytest.raises(AffWild2Error, match=r"validation\.txt: MTL file not found"):
        aw.read_mtl(corpus, "validation")


# ---- audio --------------------------------------------------------------------------------------

def test_audio_path_prefers_the_wav_beside_the_video(corpus, tmp_path):
    cache = tmp_path / "cache"
    for video in ("118-30-640x480_left", "118-30-640x480_right"):
        assert aw.audio_path(corpus, video, cache) == corpus / "videos" / "118-30-640x480.wav"
    assert not cache.exists()


def test_audio_path_reuses_an_already_extracted_wav(corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    sf.write(cache / "video5.wav", np.zeros(100), 16000)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))    # no ffmpeg: must not be needed
    assert aw.audio_path(corpus, "video5", cache) == cache / "video5.wav"


def test_audio_path_nothing_there(corpus, tmp_path):
    with pytest.raises(AffWild2Error) as err:
        aw.audio_path(corpus, "video5_left", tmp_path / "cache")
    message = str(err.value)
    for looked_for in ("video5.wav", "video5.mp4", "video5.avi"):
        assert looked_for in message


def test_audio_path_without_ffmpeg(corpus, tmp_path, monkeypatch):
    (corpus / "videos" / "video5.mp4").write_bytes(b"not really a video")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(AffWild2Error, match=r"video5\.mp4: ffmpeg .* not on PATH"):
        aw.audio_path(corpus, "video5", tmp_path / "cache")


def fake_ffmpeg(bin_dir: Path, log: Path, fail: bool = False) -> None:
    """A stand-in ffmpeg on PATH: copies its input (a wav named .mp4) to its output, logging calls."""
    bin_dir.mkdir()
    script = bin_dir / "ffmpeg"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"open({str(log)!r}, 'a').write(' '.join(args) + '\\n')\n"
        + ("sys.exit('broken stream')\n" if fail else "")
        + "shutil.copyfile(args[args.index('-i') + 1], args[-1])\n")
    script.chmod(0o755)


def test_audio_path_extracts_once_then_reuses(corpus, tmp_path, monkeypatch):
    data = (0.2 * np.sin(np.arange(8000) / 7.0)).astype(np.float32)
    sf.write(corpus / "videos" / "video5.mp4", data, 8000, format="WAV", subtype="PCM_16")
    log = tmp_path / "calls.txt"
    fake_ffmpeg(tmp_path / "bin", log)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cache = tmp_path / "cache"
    first = aw.audio_path(corpus, "video5", cache)
    second = aw.audio_path(corpus, "video5", cache)
    assert first == second == cache / "video5.wav"
    assert len(log.read_text().splitlines()) == 1          # extracted once
    assert "-i " + str(corpus / "videos" / "video5.mp4") in log.read_text()
    audio, rate = sf.read(first)
    assert rate == 8000 and np.allclose(audio, data, atol=1e-4)
    assert sorted(p.name for p in cache.iterdir()) == ["video5.wav"]     # no partial file left


def test_audio_path_failed_extraction_leaves_nothing(corpus, tmp_path, monkeypatch):
    (corpus / "videos" / "video5.avi").write_bytes(b"garbage")
    fake_ffmpeg(tmp_path / "bin", tmp_path / "calls.txt", fail=True)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cache = tmp_path / "cache"
    with pytest.raises(AffWild2Error, match=r"video5\.avi: ffmpeg could not extract.*broken stream"):
        aw.audio_path(corpus, "video5", cache)
    assert list(cache.iterdir()) == []


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_audio_path_real_ffmpeg_keeps_channels_and_rate(corpus, tmp_path):
    import subprocess
    source = corpus / "videos" / "video5.avi"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=32x32:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=22050", "-ac", "2", "-t", "1",
                    "-c:a", "pcm_s16le", str(source)], check=True)
    wav = aw.audio_path(corpus, "video5", tmp_path / "cache")
    info = sf.info(wav)
    assert info.samplerate == 22050 and info.channels == 2 and 0.9 < info.duration < 1.1


# ---- the generated corpus uses the same layout ---------------------------------------------------

def test_reads_a_generated_corpus(tmp_path):
    from common.data import synthetic
    from common.params import load_params
    corpus = load_params(Path(__file__).resolve().parents[1] / "params.yaml", "smoke")["corpus"].copy()
    corpus.update(subjects=6, two_person_videos=1, seconds=[2, 3], image_size=16, no_face_fraction=0.2,
                  side_sets={"affectnet": 1, "expw": 1, "afew_va": 1}, workers=1)
    root = tmp_path / "affwild2"
    synthetic.generate(synthetic.CorpusConfig.from_params(corpus), root, progress=False)
    info = aw.read_video_info(root)
    seen = []
    for split in aw.SPLITS:
        for v in aw.read_split(root, split):
            row = info[v.video]
            assert v.split == row["split"] and v.subject == row["subject"] and v.n_frames == row["n_frames"]
            assert v.tasks == tuple(row["tasks"].split("+")) and v.fps == row["fps"]
            assert int(v.has_image.sum()) == row["face_frames"]
            assert v.audio_path is not None and v.audio_path.name == row["audio"]
            seen.append(v.video)
        mtl = aw.read_mtl(root, split)
        assert mtl["has_image"].all() and set(mtl["video"]) <= set(info)
    assert sorted(seen) == sorted(info)
    assert any(name.endswith("_left") for name in seen)


# ---- test predictions in the annotation format ---------------------------------------------------

def test_test_predictions_are_written_in_the_annotation_format_and_read_back(tmp_path):
    from common.data.submission import SubmissionError, write_predictions
    va = {"12-24-1920x1080": np.array([[0.25, -0.5], [1.3, 0.0], [-0.1, 0.9]], np.float32)}
    (path,) = write_predictions(tmp_path, "VA", va)
    assert path == tmp_path / "VA_Estimation_Challenge" / "12-24-1920x1080.txt"
    assert path.read_text().splitlines()[0] == VA_HEADER and len(path.read_text().splitlines()) == 4
    values, valid = aw.read_va_labels(path)                 # the reader takes it: one row per frame
    np.testing.assert_allclose(values, [[0.25, -0.5], [1.0, 0.0], [-0.1, 0.9]], atol=1e-6)
    assert valid.all()
    (expr,) = write_predictions(tmp_path, "EXPR", {"v": np.array([0, 7, 3])})
    np.testing.assert_array_equal(aw.read_expr_labels(expr)[0], [0, 7, 3])
    (au,) = write_predictions(tmp_path, "AU", {"v": np.eye(12, dtype=int)[:3]})
    np.testing.assert_array_equal(aw.read_au_labels(au)[0], np.eye(12)[:3])
    with pytest.raises(SubmissionError, match="'bad'.*frame 2"):
        write_predictions(tmp_path, "VA", {"bad": np.array([[0, 0], [np.nan, 0]])})
    with pytest.raises(SubmissionError, match="shape"):
        write_predictions(tmp_path, "VA", {"bad": np.zeros(3)})
    assert not (tmp_path / "VA_Estimation_Challenge" / "bad.txt").exists()


def test_the_jpeg_face_cache_names_a_truncated_face(corpus):
    """The paper profile's cache stores same-size JPEGs as they are: a truncated one must be named
    when the cache is built, not fail later inside the packed cache."""
    from common.features.faces import face_jpeg
    jpg = corpus / "cropped_aligned" / "7-25-480x360" / "00003.jpg"
    Image.new("RGB", (32, 32), (10, 200, 30)).save(jpg, quality=95)
    assert face_jpeg(str(jpg), 32) == jpg.read_bytes()
    jpg.write_bytes(jpg.read_bytes()[:250])
    with pytest.raises(AffWild2Error, match=rf"{jpg}: cannot decode this face image"):
        face_jpeg(str(jpg), 32)
