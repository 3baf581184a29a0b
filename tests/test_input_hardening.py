"""Image input, issue #16: every file of predict.py's --input gets its row (odd names, links, GIFs, files without an
extension), mask names never collide, the CSV is complete or absent, bad options are one message; the app and
predict.py refuse the same images through `lymphus_ml.images.open_image` (too small, too large, several frames) and
the app leaves no upload or result on disk.

The models are tiny and untrained (saved as the training scripts save them): the input handling is tested, not the
models. References: PIL for image sizes and frames, the file system for what was written.
"""

import csv
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402
import predict  # noqa: E402
from lymphus_ml import app_prediction, images  # noqa: E402
from lymphus_ml.cli import run  # noqa: E402
from lymphus_ml.demo_configs import TINY_SEGFORMER_CONFIG, TINY_VIT_CONFIG  # noqa: E402
from lymphus_ml.segmentation import ID2LABEL, LABEL2ID  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """{"classifier": folder, "segmenter": folder}: an untrained tiny full-image ViT (threshold 0.5) and SegFormer."""
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        AutoModelForSemanticSegmentation,
        SegformerImageProcessor,
        ViTImageProcessor,
    )

    folder = tmp_path_factory.mktemp("hardening-models")
    settings = {key: value for key, value in TINY_VIT_CONFIG.items() if key != "model_type"}
    config = AutoConfig.for_model("vit", num_labels=2, id2label={0: "benign", 1: "malignant"},
                                  label2id={"benign": 0, "malignant": 1}, **settings)
    config.roi_mode, config.roi_margin, config.youden_threshold, config.positive_label = "full", 0.1, 0.5, "malignant"
    torch.manual_seed(0)
    AutoModelForImageClassification.from_config(config).save_pretrained(folder / "classifier")
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder / "classifier")
    settings = {key: value for key, value in TINY_SEGFORMER_CONFIG.items() if key != "model_type"}
    config = AutoConfig.for_model("segformer", num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, **settings)
    AutoModelForSemanticSegmentation.from_config(config).save_pretrained(folder / "segmenter")
    SegformerImageProcessor(size={"height": 64, "width": 64}, do_reduce_labels=False).save_pretrained(folder / "segmenter")
    return {"classifier": folder / "classifier", "segmenter": folder / "segmenter"}


def noise(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8))


def read_csv(path):
    with open(path, newline="", encoding="utf-8", errors="strict") as handle:
        return list(csv.DictReader(handle))


def predict_arguments(folder, output_dir, models, *extra):
    return ["--input", str(folder), "--classifier", str(models["classifier"]), "--output_dir", str(output_dir),
            "--device", "cpu", *extra]


def run_command(main, arguments, capsys):
    """A script's command line in this process: (exit status, the `error:` lines of stderr, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: main(arguments), arguments)
    stderr = capsys.readouterr().err
    return exit_info.value.code, [line for line in stderr.splitlines() if line.startswith("error: ")], stderr


def bomb_png(width, height) -> bytes:
    """A PNG whose header says `width` x `height` 8-bit gray (what Image.open reads), with one tiny IDAT chunk."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def save_frames(path, count, size=(48, 40), format=None):
    frames = [noise(*size, seed=index).convert("P" if format == "GIF" else "L") for index in range(count)]
    frames[0].save(path, format=format, save_all=count > 1, append_images=frames[1:])
    return path


# images.open_image: the one check predict.py and the app share


def test_images_below_the_minimum_size_are_refused_by_name(tmp_path):
    for width, height in ((1, 1), (images.MIN_IMAGE_SIDE - 1, 200), (200, 5)):
        noise(width, height).save(tmp_path / "small.png")
        with pytest.raises(ValueError, match=rf"small.png is {width} x {height} pixels: too small .* \(at least 32 pixels"):
            images.read_grayscale_image(tmp_path / "small.png", "small.png")
    noise(images.MIN_IMAGE_SIDE, images.MIN_IMAGE_SIDE).save(tmp_path / "square.png")
    image, _ = images.read_grayscale_image(tmp_path / "square.png")
    assert image.size == (32, 32)


def test_a_decompression_bomb_is_called_too_large_with_its_size(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(bomb_png(30_000, 30_000))  # 9e8 pixels: over twice PIL's own limit
    assert Image.MAX_IMAGE_PIXELS < 30_000 * 30_000 / 2
    with pytest.raises(ValueError, match=r"bomb.png is too large: 900,000,000 pixels"):
        images.open_image(tmp_path / "bomb.png", "bomb.png")
    # Between PIL's limit and twice it, PIL opens the file with a warning only: refused with its width and height.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    noise(40, 40).save(tmp_path / "big.png")
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ValueError, match=r"big.png is too large: 40 x 40 = 1,600 pixels, more than the 1,000"):
        images.open_image(tmp_path / "big.png", "big.png")


@pytest.mark.parametrize("suffix, format", [(".gif", "GIF"), (".tif", "TIFF"), (".png", "PNG")])
def test_a_file_of_several_frames_is_refused_and_a_single_frame_read(tmp_path, suffix, format):
    path = save_frames(tmp_path / f"stack{suffix}", 3, format=format)
    with Image.open(path) as opened:
        assert opened.n_frames == 3  # the reference: PIL sees three frames
    with pytest.raises(ValueError, match=rf"stack{suffix} holds 3 frames \({format}: an animation or an image stack\)"):
        images.read_grayscale_image(path, path.name)
    single = save_frames(tmp_path / f"single{suffix}", 1, format=format)
    image, _ = images.read_grayscale_image(single)
    with Image.open(single) as reference:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference.convert("L")))


# predict.py


def test_output_names_never_collide():
    names = predict.output_names(["d/a.png", "d/a.jpg", "d/a_png.bmp"])
    assert len({name.lower() for name in names}) == 3
    assert names[2] == "a_png"  # a stem of its own keeps it
    names = predict.output_names(["d/A.png", "d/a.png", "d/a_png.tif", "d/a_png-2.png", "d/x.png"])
    assert len({name.lower() for name in names}) == 5 and names[-1] == "x"
    long = ["d/" + "x" * 251 + ".png", "d/" + "x" * 251 + ".jpg", "d/" + "\u00e9" * 125 + ".png"]  # 255-byte names
    names = predict.output_names(long)
    assert len(set(names)) == 3 and all(len(f"{name}.png".encode()) <= 255 for name in names)


def test_clashing_stems_write_one_mask_each(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sizes = {"a.png": (40, 36), "a.jpg": (50, 44), "a_png.bmp": (60, 52)}  # a mask written over another shows
    for index, (name, size) in enumerate(sizes.items()):
        noise(*size, seed=index).save(folder / name)
    rows = predict.main(predict_arguments(folder, tmp_path / "out", tiny_models, "--segmenter", str(tiny_models["segmenter"])))
    assert {Path(row["file"]).name for row in rows} == set(sizes) and {row["status"] for row in rows} == {"ok"}
    assert len({row["mask_path"] for row in rows}) == 3
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == sorted(Path(r["mask_path"]).name for r in rows)
    for row in rows:
        with Image.open(tmp_path / "out" / row["mask_path"]) as mask:
            assert mask.size == sizes[Path(row["file"]).name]


def test_a_file_name_that_is_not_utf8_gets_its_row(tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    names = [f"case-{index:02d}.png" for index in range(6)]
    for index, name in enumerate(names):
        noise(40, 40, seed=index).save(folder / name)
    with open(os.fsencode(folder) + b"/case-03b\xff.png", "wb") as handle:  # sorted among the others
        noise(40, 40, seed=9).save(handle, format="PNG")
    rows = predict.main(predict_arguments(folder, tmp_path / "out", tiny_models, "--batch_size", "2"))
    written = read_csv(tmp_path / "out" / "predictions.csv")  # strict UTF-8
    assert len(written) == len(rows) == 7 and {row["status"] for row in written} == {"ok"}
    assert [row["file"] for row in written] == sorted([str(folder / name) for name in names] + [str(folder) + "/case-03b\\xff.png"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".lymphus-predict.json", "predictions.csv"]  # no partial file left


def test_a_failed_csv_write_leaves_the_previous_table_whole(tmp_path):
    path = tmp_path / "predictions.csv"
    predict.write_predictions_csv(path, [{"file": "old.png", "status": "ok"}])
    before = path.read_bytes()
    rows = [{"file": f"new-{index}.png", "status": "ok"} for index in range(10)] + [{"file": "x", "not_a_column": 1}]
    with pytest.raises(ValueError):
        predict.write_predictions_csv(path, rows)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_every_file_of_the_folder_gets_a_row_saying_why(tiny_models, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    noise(40, 40).save(folder / "good.png")
    noise(40, 40, seed=1).save(folder / "noextension", format="PNG")  # PIL identifies it: read
    save_frames(folder / "still.gif", 1, format="GIF")
    save_frames(folder / "cine.gif", 4, format="GIF")
    noise(1, 1).save(folder / "dot.png")
    (folder / "broken.png").symlink_to(tmp_path / "gone.png")
    (folder / "notes.txt").write_text("not pixels")
    (folder / "sub").mkdir()
    noise(40, 40).save(folder / "sub" / "nested.png")  # not recursive
    output_dir = tmp_path / "out"
    status, errors, stderr = run_command(predict.main, predict_arguments(folder, output_dir, tiny_models), capsys)
    assert status == 1 and len(errors) == 1 and "Traceback" not in stderr
    assert "3 of 7 file(s) could not be predicted" in errors[0]
    rows = {Path(row["file"]).name: row["status"] for row in read_csv(output_dir / "predictions.csv")}
    assert set(rows) == {entry.name for entry in folder.iterdir() if entry.name != "sub"}
    assert {name for name, why in rows.items() if why == "ok"} == {"good.png", "noextension", "still.gif"}
    assert rows["broken.png"] == f"failed: broken link (to {tmp_path / 'gone.png'})"
    assert rows["cine.gif"].startswith("failed: ") and "holds 4 frames" in rows["cine.gif"]
    assert rows["dot.png"].startswith("failed: ") and "1 x 1 pixels: too small" in rows["dot.png"]
    assert rows["notes.txt"] == "skipped: not an image file (no image format PIL reads)"


def test_skipped_files_alone_exit_0_and_a_folder_without_images_is_one_message(tiny_models, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    noise(40, 40).save(folder / "good.png")
    (folder / "notes.txt").write_text("not pixels")
    rows = predict.main(predict_arguments(folder, tmp_path / "out", tiny_models))
    assert [(Path(row["file"]).name, row["status"]) for row in rows] == [
        ("good.png", "ok"), ("notes.txt", "skipped: not an image file (no image format PIL reads)")]
    (folder / "good.png").unlink()
    status, errors, _ = run_command(predict.main, predict_arguments(folder, tmp_path / "out2", tiny_models), capsys)
    assert status == 1 and len(errors) == 1 and "holds no image" in errors[0] and "notes.txt (skipped" in errors[0]
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    status, errors, _ = run_command(predict.main, predict_arguments(tmp_path / "link.png", tmp_path / "o", tiny_models), capsys)
    assert status == 1 and "link.png is a broken link" in errors[0]


@pytest.mark.parametrize(
    "option, value",
    [("--threshold", "nan"), ("--threshold", "inf"), ("--threshold", "-0.1"), ("--threshold", "1.5"),
     ("--batch_size", "0"), ("--batch_size", "-3")],
)
def test_bad_threshold_or_batch_size_is_one_message(option, value, tmp_path, capsys):
    arguments = ["--input", str(tmp_path), "--classifier", str(tmp_path / "never-loaded"), option, value]
    status, errors, stderr = run_command(predict.main, arguments, capsys)
    assert status == 1 and len(errors) == 1 and "Traceback" not in stderr
    assert errors[0].startswith(f"error: {option} {value}")
    for threshold in (0.0, 1.0):
        assert predict.PredictArguments(input="x", classifier="y", threshold=threshold, batch_size=1).threshold == threshold


# The app


@pytest.fixture(scope="module")
def app_models(tiny_models):
    return app_prediction.load_models(tiny_models["classifier"], device="cpu")


def test_the_app_refuses_what_predict_py_refuses_with_one_message(app_models, tmp_path):
    import gradio as gr

    noise(1, 1).save(tmp_path / "dot.png")
    with pytest.raises(gr.Error, match=r"dot.png is 1 x 1 pixels: too small"):
        app.classify_upload(str(tmp_path / "dot.png"), app_models)
    with pytest.raises(ValueError, match=r"1 x 1 pixels: too small"):
        app_prediction.predict_image(noise(1, 1), app_models)
    save_frames(tmp_path / "cine.tif", 2, format="TIFF")
    with pytest.raises(gr.Error, match=r"cine.tif holds 2 frames \(TIFF"):
        app.classify_upload(str(tmp_path / "cine.tif"), app_models)
    (tmp_path / "bomb.png").write_bytes(bomb_png(30_000, 30_000))
    with pytest.raises(gr.Error, match=r"bomb.png is too large: 900,000,000 pixels") as error:
        app.classify_upload(str(tmp_path / "bomb.png"), app_models)
    assert "not an image file" not in str(error.value)
    with pytest.raises(gr.Error, match=r"gone.png is no longer on the server .*upload it again"):
        app.classify_upload(str(tmp_path / "gone.png"), app_models)
    noise(40, 40).save(tmp_path / "fine.png")
    probability, label, *_ = app.classify_upload(str(tmp_path / "fine.png"), app_models)
    assert 0 <= probability <= 1 and label in ("benign", "malignant")


def test_the_app_deletes_uploads_and_results(app_models, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    cache = tmp_path / "gradio-cache"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    assert app.build_demo(app_models).delete_cache == app.DELETE_CACHE
    page = app.build_demo(app_models, delete_cache=(1, 5))  # every second, older than 5 s
    page.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        noise(48, 40).save(tmp_path / "upload.png")
        client = Client(page.local_url, verbose=False, download_files=str(tmp_path / "client"))
        _, label, _, outline, heatmap, result = client.predict(handle_file(str(tmp_path / "upload.png")),
                                                               api_name="/predict")
        assert result["label"] == label  # the API's JSON output, last
        assert label in ("benign", "malignant") and Path(outline).is_file() and Path(heatmap).is_file()
        kept = [path for path in cache.rglob("*") if path.is_file() and path.stat().st_size > 0]
        assert any(path.name == "upload.png" for path in kept) and len(kept) >= 3  # the upload and two pictures
        # gr.File(type="filepath") leaves one EMPTY placeholder file per call in the cache (gradio 6.31's own,
        # holding no byte of the upload): every file that holds data must go.
        def holding_data():
            return [path for path in cache.rglob("*") if path.is_file() and path.stat().st_size > 0]

        deadline = time.monotonic() + 30
        while holding_data() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert holding_data() == []
    finally:
        page.close()
