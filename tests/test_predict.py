"""predict.py: images in, predicted masks and malignancy probabilities out, cropping with the PREDICTED mask.

A tiny segmenter (train_segformer.main) and a tiny `--roi crop` ViT (train_vit.main) are trained on the same tiny
synthetic export. References are independent where one exists: numpy slicing for the crop, transformers'
`pipeline("image-classification")` for the probabilities, PIL for the written masks; for the output folder (what
predict.py may write, reuse or must refuse), the file system and hashlib.
"""

import csv
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import predict  # noqa: E402
from lymphus_ml import images, inference  # noqa: E402


@pytest.fixture(scope="session")
def predict_export(small_export):
    return small_export


@pytest.fixture(scope="session")
def segmenter_dir(segmenter):
    return segmenter


@pytest.fixture(scope="session")
def classifier_dir(crop_classifier):
    """A crop classifier: predict.py must segment first."""
    return crop_classifier


@pytest.fixture(scope="session")
def image_folder(predict_export, tmp_path_factory):
    """The external centre's test images as PNG files, one saved as RGB JPEG, and a text file to be skipped."""
    import datasets

    folder = tmp_path_factory.mktemp("predict-images")
    test = datasets.load_dataset(str(predict_export), "center2", split="test")
    for example in test:
        example["image"].save(folder / f"{example['case_id']}.png")
    test[0]["image"].convert("RGB").save(folder / "colour.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def position_image(height=60, width=80):
    """Pixel values that encode their position (never 0), so any crop is identified by its pixels."""
    return (np.arange(height * width).reshape(height, width) % 251 + 1).astype(np.uint8)


# Inputs


def test_list_images_takes_the_images_of_a_folder_sorted(image_folder, tmp_path):
    files = predict.list_images(image_folder)
    assert [f.name for f in files] == sorted(p.name for p in image_folder.iterdir() if p.suffix != ".txt")
    assert predict.list_images(files[0]) == [files[0]]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image"):
        predict.list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict.list_images(tmp_path / "missing")


def test_unreadable_image_is_refused_by_name(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"Cannot read image .*broken\.png"):
        predict.read_image(tmp_path / "broken.png")


def test_colour_image_is_converted_to_grayscale_with_a_note(tmp_path, caplog):
    rgb = np.zeros((40, 48, 3), dtype=np.uint8)  # at least images.MIN_IMAGE_SIDE on a side
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with caplog.at_level(logging.WARNING, logger="predict"):
        image = predict.read_image(tmp_path / "red.png")
    assert image.mode == "L" and image.size == (48, 40)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.fromarray(rgb).convert("L")))
    assert "red.png: RGB converted to 8-bit grayscale" in caplog.text


def test_output_names_are_unique():
    assert predict.output_names(["a/x.png", "a/y.png"]) == ["x", "y"]
    assert predict.output_names(["a/x.png", "a/x.jpg"]) == ["x_png", "x_jpg"]


# ROI from the predicted mask


def test_crop_and_masked_views_use_the_predicted_mask():
    pixels = position_image()
    mask = np.zeros(pixels.shape, dtype=np.uint8)
    mask[10:30, 20:60] = 1  # 20 rows x 40 columns: margin 0.1 adds 2 rows and 4 columns each side
    view, roi = inference.roi_from_predicted_mask(Image.fromarray(pixels), mask, "crop", 0.1, "x.png")
    assert roi == "crop"
    np.testing.assert_array_equal(np.asarray(view), pixels[8:32, 16:64])
    view, roi = inference.roi_from_predicted_mask(Image.fromarray(pixels), mask, "masked", 0.1, "x.png")
    expected = pixels[8:32, 16:64] * mask[8:32, 16:64]
    np.testing.assert_array_equal(np.asarray(view), expected)


def test_empty_predicted_mask_falls_back_to_the_full_image_with_a_warning(caplog):
    image = Image.fromarray(position_image())
    for mode in ("crop", "masked"):
        with caplog.at_level(logging.WARNING, logger="predict"):
            view, roi = inference.roi_from_predicted_mask(image, np.zeros((60, 80), np.uint8), mode, 0.1, "case-17.png")
        assert view is image and roi == "full (empty predicted mask)"
        assert "case-17.png: the predicted mask is empty" in caplog.text


# Models


def test_predict_masks_returns_one_0_1_mask_per_image_at_its_size(segmenter_dir):
    from transformers import SegformerImageProcessor
    from transformers.modeling_outputs import SemanticSegmenterOutput

    model, processor = inference.load_segmenter(str(segmenter_dir), device="cpu")
    assert processor.do_reduce_labels is False
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=size, dtype=np.uint8)) for size in ((50, 70), (33, 90), (64, 64))]
    masks = inference.predict_masks(model, processor, images, batch_size=2)
    assert [m.shape for m in masks] == [(50, 70), (33, 90), (64, 64)]
    assert all(m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1} for m in masks)
    # Independent path: the saved processor on RGB, the model, the processor's own post-processing.
    inputs = processor([image.convert("RGB") for image in images], return_tensors="pt")
    import torch

    with torch.no_grad():
        logits = model(**inputs).logits
    reference = SegformerImageProcessor().post_process_semantic_segmentation(
        SemanticSegmenterOutput(logits=logits), target_sizes=[m.shape for m in masks]
    )
    for mask, expected in zip(masks, reference):
        assert (mask == expected.numpy()).mean() > 0.99


def test_classifier_settings_come_from_train_vit(classifier_dir):
    model, _ = inference.load_classifier(str(classifier_dir), device="cpu")
    settings = inference.classifier_settings(model.config)
    saved = json.loads((classifier_dir / "config.json").read_text())  # what train_vit.py writes beside the weights
    assert settings["roi_mode"] == "crop" == saved["roi_mode"]
    assert settings["roi_margin"] == saved["roi_margin"]
    assert settings["threshold"] == saved["youden_threshold"]
    assert (settings["positive_label"], settings["negative_label"], settings["positive_index"]) == ("malignant", "benign", 1)


# main() end to end


def test_main_segments_crops_and_classifies_a_folder(segmenter_dir, classifier_dir, image_folder, tmp_path):
    from transformers import pipeline

    output_dir = tmp_path / "out"
    rows = predict.main(["--input", str(image_folder), "--classifier", str(classifier_dir), "--segmenter", str(segmenter_dir),
                         "--output_dir", str(output_dir), "--device", "cpu", "--save_overlays", "--batch_size", "3"])
    written = read_csv(output_dir / "predictions.csv")
    assert list(written[0]) == ["file", "status", "probability_malignant", "label_at_threshold", "threshold", "mask_path", "node_pixels", "roi"]
    assert len(written) == len(rows) == len(list(image_folder.iterdir()))  # every file has its row (issue #16)
    assert {row["status"] for row in written if not row["file"].endswith("notes.txt")} == {"ok"}
    assert [row["status"] for row in written if row["file"].endswith("notes.txt")] == [
        "skipped: not an image file (no image format PIL reads)"]
    written = [row for row in written if row["status"] == "ok"]
    assert len(written) == len(predict.list_images(image_folder))
    threshold = json.loads((classifier_dir / "config.json").read_text())["youden_threshold"]
    classifier = pipeline("image-classification", model=str(classifier_dir), device="cpu")
    assert {row["roi"] for row in written} <= {"crop", "full (empty predicted mask)"}
    assert any(row["roi"] == "crop" for row in written), "the tiny segmenter should find some nodes"
    for row in written:
        image = Image.open(row["file"]).convert("L")
        mask = np.asarray(Image.open(output_dir / row["mask_path"]))
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) <= {0, 1}
        assert int(row["node_pixels"]) == mask.sum()
        assert (row["roi"] == "crop") == (mask.sum() > 0)
        assert (output_dir / "overlays" / Path(row["mask_path"]).name).is_file()
        probability = float(row["probability_malignant"])
        assert float(row["threshold"]) == threshold
        assert row["label_at_threshold"] == ("malignant" if probability >= threshold else "benign")
        view = images.roi_image(image, Image.fromarray(mask), "crop", 0.1) if mask.any() else image
        scores = classifier(view)
        assert probability == pytest.approx(next(s["score"] for s in scores if s["label"] == "malignant"), abs=2e-3)


def test_main_crops_with_the_predicted_mask(segmenter_dir, classifier_dir, tmp_path, monkeypatch):
    """A hand-made segmenter output: the classifier must see exactly the box it implies, not the whole image."""
    pixels = position_image()
    Image.fromarray(pixels).save(tmp_path / "case.png")
    box = np.zeros(pixels.shape, dtype=np.uint8)
    box[10:30, 20:60] = 1
    monkeypatch.setattr(inference, "predict_masks", lambda model, processor, images, batch_size=8: [box.copy() for _ in images])
    seen = []
    original = inference.predict_probabilities

    def spy(model, processor, images, positive_index=1, batch_size=8):
        seen.extend(np.asarray(image) for image in images)
        return original(model, processor, images, positive_index, batch_size)

    monkeypatch.setattr(inference, "predict_probabilities", spy)
    (row,) = predict.main(["--input", str(tmp_path / "case.png"), "--classifier", str(classifier_dir), "--segmenter", str(segmenter_dir),
                           "--output_dir", str(tmp_path / "out"), "--device", "cpu"])
    (view,) = seen
    np.testing.assert_array_equal(view, pixels[8:32, 16:64])
    assert row["roi"] == "crop" and row["node_pixels"] == 800
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / "case.png")), box)


def test_full_image_classifier_needs_no_segmenter(classifier_dir, image_folder, tmp_path):
    full = tmp_path / "full-classifier"
    shutil.copytree(classifier_dir, full, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = json.loads((full / "config.json").read_text())
    (full / "config.json").write_text(json.dumps({**config, "roi_mode": "full"}))
    rows = predict.main(["--input", str(image_folder), "--classifier", str(full), "--output_dir", str(tmp_path / "out"),
                         "--device", "cpu", "--threshold", "0.5"])
    rows = [row for row in rows if row["status"] == "ok"]  # notes.txt: "skipped: not an image file ..."
    assert len(rows) == len(predict.list_images(image_folder))
    assert all(row["mask_path"] == "" and row["roi"] == "full" and row["threshold"] == 0.5 for row in rows)
    assert not (tmp_path / "out" / "masks").exists()


def test_crop_classifier_without_segmenter_is_refused(classifier_dir, image_folder, tmp_path):
    with pytest.raises(ValueError, match="--roi crop.*--segmenter"):
        predict.main(["--input", str(image_folder), "--classifier", str(classifier_dir), "--output_dir", str(tmp_path), "--device", "cpu"])


def test_main_names_an_unreadable_image_in_the_folder(segmenter_dir, classifier_dir, tmp_path):
    Image.fromarray(position_image()).save(tmp_path / "good.png")
    (tmp_path / "zz-bad.bmp").write_bytes(b"BM garbage")
    with pytest.raises(ValueError, match="zz-bad.bmp"):
        predict.main(["--input", str(tmp_path), "--classifier", str(classifier_dir), "--segmenter", str(segmenter_dir),
                      "--output_dir", str(tmp_path / "out"), "--device", "cpu"])


# The output folder: predict.py's only where its marker proves it (lymphus_ml.predict_folder)


MARKER = ".lymphus-predict.json"


def snapshot(folder):
    """{relative path: its bytes, a link's target, or "folder"} for everything under `folder`."""
    return {
        path.relative_to(folder).as_posix(): os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "folder"
        for path in sorted(folder.rglob("*"))
    }


def copy_images(image_folder, folder, count):
    """The first `count` images of `image_folder` copied into the new folder `folder`."""
    folder.mkdir()
    for path in predict.list_images(image_folder)[:count]:
        shutil.copy(path, folder / path.name)
    return folder


def predict_into(output_dir, input_folder, classifier_dir, segmenter_dir, *extra):
    return ["--input", str(input_folder), "--classifier", str(classifier_dir), "--segmenter", str(segmenter_dir),
            "--output_dir", str(output_dir), "--device", "cpu", *extra]


def assert_complete(output_dir, rows, input_folder):
    """The folder holds exactly the run's table and masks (and overlays), each listed in a complete marker with its
    size and SHA-256 (hashlib, read back here), and the marker names nothing of the inputs."""
    marker = json.loads((output_dir / MARKER).read_text())
    files = {path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file()} - {MARKER}
    assert marker["status"] == "complete" and files == set(marker["files"])
    for name, entry in marker["files"].items():
        data = (output_dir / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert {name for name in files if name.startswith("masks/")} == {row["mask_path"] for row in rows}
    assert [row["file"] for row in read_csv(output_dir / "predictions.csv")] == [row["file"] for row in rows]
    assert str(input_folder) not in (output_dir / MARKER).read_text()


@pytest.fixture(scope="module")
def earlier_run(segmenter_dir, classifier_dir, image_folder, tmp_path_factory):
    """(folder, rows) of a complete run on 3 images with --save_overlays: tests copy the folder."""
    output_dir = tmp_path_factory.mktemp("earlier-run") / "out"
    inputs = copy_images(image_folder, tmp_path_factory.mktemp("three") / "images", 3)
    rows = predict.main(predict_into(output_dir, inputs, classifier_dir, segmenter_dir, "--save_overlays"))
    assert_complete(output_dir, rows, inputs)
    assert len(list((output_dir / "overlays").iterdir())) == 3
    return output_dir, rows


def users_own_table(folder):
    folder.mkdir()
    (folder / "predictions.csv").write_text("file,my_notes\nscan-1.png,follow up in 6 months\n")
    return "'predictions.csv' (not written by predict.py)"


def unlisted_file(folder):
    (folder / "masks" / "my-annotation.png").write_bytes(b"a user's file")
    return "'masks/my-annotation.png' (not written by predict.py)"


def changed_mask(folder):
    mask = sorted((folder / "masks").iterdir())[0]
    Image.fromarray(np.ones((8, 8), np.uint8)).save(mask)  # the user corrected the mask
    return f"'masks/{mask.name}' (changed since predict.py wrote it)"


def forged_marker(folder):
    marker = json.loads((folder / MARKER).read_text())
    marker["files"]["../outside.png"] = None
    (folder / MARKER).write_text(json.dumps({**marker, "status": "running"}))
    return f"'{MARKER}' (not a marker predict.py wrote)"


def linked_overlay(folder):
    overlay = sorted((folder / "overlays").iterdir())[0]
    overlay.unlink()
    overlay.symlink_to(folder.parent / "elsewhere.png")
    return f"'overlays/{overlay.name}' (a link)"


@pytest.mark.parametrize("tamper", [users_own_table, unlisted_file, changed_mask, forged_marker, linked_overlay])
def test_an_output_dir_holding_what_predict_py_did_not_write_is_refused_untouched(
    tamper, earlier_run, segmenter_dir, image_folder, tmp_path, run_cli
):
    """Refused before anything is written or deleted, and before the models load: the classifier given does not
    exist, so a later check would report that instead."""
    output_dir = tmp_path / "out"
    if tamper is not users_own_table:
        shutil.copytree(earlier_run[0], output_dir, symlinks=True)
    (tmp_path / "elsewhere.png").write_bytes(b"not ours")
    named = tamper(output_dir)
    before = snapshot(output_dir)
    status, _, err = run_cli(predict, *predict_into(output_dir, image_folder, tmp_path / "never-loaded", segmenter_dir))
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert status == 1 and len(errors) == 1 and "Traceback" not in err
    assert f"--output_dir {output_dir} holds {named}" in errors[0]
    assert "nothing was written or deleted" in errors[0] and "Choose another --output_dir" in errors[0]
    assert snapshot(output_dir) == before


def test_a_second_run_with_fewer_images_leaves_only_its_own_outputs(
    earlier_run, segmenter_dir, classifier_dir, image_folder, tmp_path
):
    output_dir = tmp_path / "out"
    shutil.copytree(earlier_run[0], output_dir)
    inputs = copy_images(image_folder, tmp_path / "one", 1)
    rows = predict.main(predict_into(output_dir, inputs, classifier_dir, segmenter_dir))  # no overlays this time
    assert len(earlier_run[1]) == 3 and len(rows) == 1
    assert_complete(output_dir, rows, inputs)
    assert [path.name for path in (output_dir / "masks").iterdir()] == [Path(rows[0]["mask_path"]).name]
    assert not (output_dir / "overlays").exists()


def test_an_interrupted_run_leaves_a_folder_the_next_run_replaces(
    earlier_run, segmenter_dir, classifier_dir, image_folder, tmp_path, monkeypatch, run_cli
):
    """The disk fills up after the first mask: the folder does not look complete (no predictions.csv, the marker
    says "running"), holds nothing of the earlier run, and the next run into it writes complete outputs."""
    output_dir = tmp_path / "out"
    shutil.copytree(earlier_run[0], output_dir)
    inputs = copy_images(image_folder, tmp_path / "two", 2)
    original, written = predict.prediction_row, []

    def disk_full_after_one_image(*args):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(original(*args))
        return written[-1]

    monkeypatch.setattr(predict, "prediction_row", disk_full_after_one_image)
    status, _, err = run_cli(predict, *predict_into(output_dir, inputs, classifier_dir, segmenter_dir, "--save_overlays"))
    assert status == 1 and "error: [Errno 28] No space left on device" in err
    assert json.loads((output_dir / MARKER).read_text())["status"] == "running"
    assert not (output_dir / "predictions.csv").exists()
    left = {path.relative_to(output_dir).as_posix() for path in output_dir.rglob("*") if path.is_file()} - {MARKER}
    assert left == {written[0]["mask_path"], "overlays/" + Path(written[0]["mask_path"]).name}
    monkeypatch.setattr(predict, "prediction_row", original)
    rows = predict.main(predict_into(output_dir, inputs, classifier_dir, segmenter_dir))
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert_complete(output_dir, rows, inputs)
    assert not (output_dir / "overlays").exists()
