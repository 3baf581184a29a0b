"""train_vit.py: ROI on pixels, transforms, loss, main() end to end, resume, determinism, Hub push and Hub Job.

Runs offline on a tiny synthetic export (lymphus.py) and a tiny ViT built from a config. References are
independent where one exists: numpy slicing for ROI, the saved ViTImageProcessor for preprocessing,
scikit-learn for class weights and threshold metrics, `pipeline` for the saved model.
"""

import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import vit_args  # noqa: E402

import train_vit  # noqa: E402
from lymphus_ml import data, hub, images, inference, training  # noqa: E402


MODEL_FILES = ("model.safetensors", "config.json", "preprocessor_config.json", "README.md")



@pytest.fixture(scope="session")
def export_dir(small_export):
    return small_export


def tiny_args(export_dir, output_dir, *extra):
    return vit_args(export_dir, output_dir, *extra)


@pytest.fixture(scope="session")
def trained(crop_classifier):
    return crop_classifier


def read_predictions(output_dir):
    with open(output_dir / "predictions.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ROI, grayscale and augmentation on pixels


def node_case(height=40, width=60, box=(10, 20, 20, 40)):
    """Pixel values that encode their position, and a 0/1 mask: an ellipse filling `box` (top, left, bottom, right)."""
    pixels = (np.arange(height * width).reshape(height, width) % 251 + 1).astype(np.uint8)  # never 0
    top, left, bottom, right = box
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx, ry, rx = (top + bottom - 1) / 2, (left + right - 1) / 2, (bottom - top) / 2, (right - left) / 2
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    assert mask[top:bottom, left:right].any(axis=0).all() and mask[top:bottom, left:right].any(axis=1).all()
    return pixels, mask


def test_roi_full_is_the_image():
    pixels, mask = node_case()
    image = Image.fromarray(pixels)
    assert images.roi_image(image, Image.fromarray(mask), "full") is image


def test_roi_crop_is_the_bounding_box_plus_margin():
    pixels, mask = node_case(box=(10, 20, 20, 40))  # node 10 rows x 20 columns
    cropped = images.roi_image(Image.fromarray(pixels), Image.fromarray(mask), "crop", margin=0.1)
    # margin 0.1: 1 row above/below, 2 columns left/right
    np.testing.assert_array_equal(np.asarray(cropped), pixels[9:21, 18:42])
    assert cropped.mode == "L"


def test_roi_crop_is_clipped_at_the_border():
    pixels, mask = node_case(box=(0, 50, 10, 60))
    cropped = images.roi_image(Image.fromarray(pixels), Image.fromarray(mask), "crop", margin=0.5)
    np.testing.assert_array_equal(np.asarray(cropped), pixels[0:15, 45:60])


def test_roi_masked_zeroes_outside_the_node_only():
    pixels, mask = node_case(box=(10, 20, 20, 40))
    masked = np.asarray(images.roi_image(Image.fromarray(pixels), Image.fromarray(mask), "masked", margin=0.1))
    window, inside = pixels[9:21, 18:42], mask[9:21, 18:42] == 1
    assert masked.shape == window.shape
    np.testing.assert_array_equal(masked[inside], window[inside])
    assert (masked[~inside] == 0).all() and (~inside).sum() > 0


def test_roi_with_empty_mask_keeps_the_image():
    pixels, _ = node_case()
    empty = Image.fromarray(np.zeros_like(pixels))
    np.testing.assert_array_equal(np.asarray(images.roi_image(Image.fromarray(pixels), empty, "crop")), pixels)


def test_unknown_roi_mode_names_the_choices():
    pixels, mask = node_case()
    with pytest.raises(ValueError, match="full"):
        images.roi_image(Image.fromarray(pixels), Image.fromarray(mask), "bbox")


def test_eval_transform_matches_the_saved_image_processor():
    """Training-time preprocessing (grayscale in) == what pipeline() does with the saved processor (RGB in)."""
    from transformers import ViTImageProcessor

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(50, 70), dtype=np.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=mean, image_std=std)
    transform = images.ClassificationTransform((32, 32), processor.image_mean, processor.image_std, train=False)
    ours = transform(Image.fromarray(pixels))
    reference = processor(Image.fromarray(pixels).convert("RGB"), return_tensors="pt")["pixel_values"][0]
    assert ours.shape == reference.shape == (3, 32, 32)
    torch.testing.assert_close(ours, reference, atol=0.02, rtol=0)


def test_train_geometry_moves_image_and_mask_together():
    """As in training: the image as PIL (bilinear), the mask as tv_tensors.Mask (nearest), one draw of parameters."""
    pixels, mask = node_case(height=64, width=64, box=(16, 12, 48, 40))
    image = Image.fromarray(mask * 200)  # the node drawn in the image exactly where the mask is
    transform = images.ClassificationTransform((48, 48), [0.5], [0.5], roi="masked", train=True, num_channels=1)
    for seed in range(5):
        torch.manual_seed(seed)
        moved_image, moved_mask = transform.geometry(image, tv_tensors.Mask(torch.from_numpy(mask)[None]))
        assert isinstance(moved_image, Image.Image) and moved_image.size == (48, 48)
        node_in_image, node_in_mask = torch.from_numpy(np.asarray(moved_image) > 100), moved_mask[0] > 0
        iou = (node_in_image & node_in_mask).sum() / (node_in_image | node_in_mask).sum()
        assert iou > 0.9, f"seed {seed}: image and mask moved apart (IoU {iou:.2f})"


def test_train_transform_masked_keeps_the_background_at_zero():
    pixels, mask = node_case(height=64, width=64, box=(16, 12, 48, 40))
    transform = images.ClassificationTransform((32, 32), [0.5], [0.5], "masked", margin=0.3, train=True, num_channels=3)
    torch.manual_seed(0)
    out = transform(Image.fromarray(pixels), Image.fromarray(mask))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out[0], out[1])  # grayscale repeated, not colour-jittered per channel
    assert (out == -1.0).float().mean() > 0.1  # (0 - 0.5) / 0.5: zeroed background survives the jitter


# Loss


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0] * 7 + [1] * 3
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels))
    np.testing.assert_allclose(training.balanced_class_weights(labels, 2), expected)


def test_weighted_loss_is_the_weighted_mean_and_accumulates():
    logits, labels = torch.randn(6, 2), torch.tensor([0, 1, 1, 0, 0, 0])
    loss = training.WeightedCrossEntropyLoss([0.75, 1.5])
    reference = torch.nn.CrossEntropyLoss(weight=torch.tensor([0.75, 1.5]), reduction="sum")(logits, labels) / 6
    torch.testing.assert_close(loss({"logits": logits}, labels), reference)
    halves = sum(loss({"logits": logits[i : i + 3]}, labels[i : i + 3], num_items_in_batch=6) for i in (0, 3))
    torch.testing.assert_close(halves, reference)


# main() end to end


def test_main_writes_the_whole_output_folder(trained, export_dir):
    for name in MODEL_FILES + ("predictions.csv", "threshold.json"):
        assert (trained / name).is_file(), name
    for split in ("validation", "test", "external"):
        for stem in ("metrics", "roc", "confusion_matrix"):
            path = trained / (f"{stem}_{split}.json" if stem == "metrics" else f"{stem}_{split}.png")
            assert path.is_file(), path
        Image.open(trained / f"roc_{split}.png").verify()
        metrics = json.loads((trained / f"metrics_{split}.json").read_text())
        for threshold in ("at_0.5", "at_youden"):
            for name in ("roc_auc", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv", "f1"):
                assert name in metrics[threshold] and f"{name}_ci_low" in metrics[threshold], (split, threshold, name)
            assert {"tn", "fp", "fn", "tp"} <= set(metrics[threshold])
        assert metrics["at_0.5"]["threshold"] == 0.5
        assert metrics["at_youden"]["threshold"] == metrics["youden_threshold"]

    import datasets

    center1 = datasets.load_dataset(str(export_dir), "center1")
    center2 = datasets.load_dataset(str(export_dir), "center2")
    rows = read_predictions(trained)
    expected = {
        "validation": set(center1["validation"]["case_id"]),
        "test": set(center1["test"]["case_id"]),
        "external": {case for split in center2.values() for case in split["case_id"]},
    }
    assert {split: {r["case_id"] for r in rows if r["split"] == split} for split in expected} == expected
    assert len(rows) == sum(len(cases) for cases in expected.values())


def test_threshold_comes_from_validation_and_is_applied_unchanged(trained):
    """Youden on validation (recomputed with scikit-learn), then test/external metrics at that same threshold."""
    from sklearn.metrics import confusion_matrix, roc_curve

    rows = read_predictions(trained)
    by_split = {
        split: (
            np.array([int(r["label"]) for r in rows if r["split"] == split]),
            np.array([float(r["probability"]) for r in rows if r["split"] == split]),
        )
        for split in ("validation", "test", "external")
    }
    labels, probabilities = by_split["validation"]
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    best_j = (tpr - fpr).max()
    threshold = json.loads((trained / "threshold.json").read_text())["youden_threshold"]
    predicted = probabilities >= threshold
    assert predicted[labels == 1].mean() - predicted[labels == 0].mean() == pytest.approx(best_j)
    assert json.loads((trained / "config.json").read_text())["youden_threshold"] == threshold
    for split, (labels, probabilities) in by_split.items():
        metrics = json.loads((trained / f"metrics_{split}.json").read_text())["at_youden"]
        assert metrics["threshold"] == threshold
        tn, fp, fn, tp = confusion_matrix(labels, probabilities >= threshold, labels=[0, 1]).ravel()
        assert (metrics["tn"], metrics["fp"], metrics["fn"], metrics["tp"]) == (tn, fp, fn, tp)
        predictions = [int(r["prediction_at_youden"]) for r in rows if r["split"] == split]
        assert predictions == list((probabilities >= threshold).astype(int))


def test_saved_model_is_the_best_validation_checkpoint(trained):
    from transformers import AutoModelForImageClassification

    state = json.loads((trained / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert state["best_metric"] == max(e["eval_roc_auc"] for e in state["log_history"] if "eval_roc_auc" in e)
    final = AutoModelForImageClassification.from_pretrained(trained).state_dict()
    reference = AutoModelForImageClassification.from_pretrained(trained / best.name).state_dict()
    assert final.keys() == reference.keys()
    for key in final:
        torch.testing.assert_close(final[key], reference[key], msg=key)


def test_pipeline_loads_the_output_folder_and_reproduces_the_probabilities(trained, export_dir):
    import datasets
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(trained), device="cpu")
    probabilities = {r["case_id"]: float(r["probability"]) for r in read_predictions(trained) if r["split"] == "test"}
    for example in datasets.load_dataset(str(export_dir), "center1", split="test"):
        scores = classifier(images.roi_image(example["image"], example["mask"], "crop"))
        malignant = next(s["score"] for s in scores if s["label"] == "malignant")
        assert malignant == pytest.approx(probabilities[example["case_id"]], abs=2e-3)


def test_model_card_is_honest_and_complete(trained):
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained / "README.md")
    text = card.text
    assert "Not for clinical use" in text and "synthetic data" in text
    assert "ROI mode `crop`" in text and "roi_image" in text and "predict.py" in text
    for split in ("validation", "test", "external"):
        assert f"](roc_{split}.png)" in text and f"](confusion_matrix_{split}.png)" in text
    assert "| train | center1 / train | 14 |" in text
    # A local export: no model-index (dataset.type must be a Hub id; test_sharing checks a Hub dataset's run).
    assert "model-index" not in card.data.to_dict() and "not published as Hub evaluation results" in text


def test_same_seed_gives_the_same_metrics(trained, export_dir, tmp_path):
    train_vit.main(tiny_args(export_dir, tmp_path / "again"))
    for split in ("validation", "test", "external"):
        again = json.loads((tmp_path / "again" / f"metrics_{split}.json").read_text())
        assert again == json.loads((trained / f"metrics_{split}.json").read_text())
    assert read_predictions(tmp_path / "again") == read_predictions(trained)


def test_resume_from_checkpoint_continues_the_same_run(trained, export_dir, tmp_path):
    """Resume from epoch 1 of the session run: epoch 2 must reproduce the session run's epoch-2 weights."""
    from safetensors.torch import load_file

    first, last = sorted(trained.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    train_vit.main(
        tiny_args(export_dir, tmp_path / "resumed", "--resume_from_checkpoint", str(first))
    )
    resumed = load_file(tmp_path / "resumed" / last.name / "model.safetensors")
    original = load_file(last / "model.safetensors")
    assert resumed.keys() == original.keys()
    for key in original:
        torch.testing.assert_close(resumed[key], original[key], msg=key)


def test_external_set_sharing_cases_with_training_is_refused(export_dir, tmp_path):
    args = tiny_args(export_dir, tmp_path / "leak")
    args[args.index("center1")] = "all"
    with pytest.raises(ValueError, match="shares .* case_id"):
        train_vit.main(args)


# Hub


def test_push_to_hub_uploads_everything_without_the_token(local_hub, export_dir, tmp_path, caplog, capfd):
    from transformers import pipeline

    repo_id = f"{local_hub.user}/vit-lymphus-push"
    caplog.set_level(logging.DEBUG)
    args = tiny_args(
        export_dir, tmp_path / "push", "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", local_hub.token
    )
    args[args.index("--num_train_epochs") + 1] = "1"
    train_vit.main(args + ["--max_steps", "1"])

    files = {}
    for name in MODEL_FILES + ("predictions.csv", "threshold.json"):
        files[name] = local_hub.read_file(repo_id, name)
    for split in ("validation", "test", "external"):
        for name in (f"roc_{split}.png", f"confusion_matrix_{split}.png", f"metrics_{split}.json"):
            files[name] = local_hub.read_file(repo_id, name)
    card = files["README.md"].decode()
    assert "model-index" not in card.split("---")[1]  # the metadata: a local export has no Hub dataset id to cite
    assert "Not for clinical use" in card and "](roc_test.png)" in card
    assert f"--classifier {repo_id}" in card  # the inference example names the pushed repo
    assert files["model.safetensors"][:8] != b"version "  # stored content, not an LFS pointer

    from huggingface_hub import HfApi

    uploaded = HfApi(token=local_hub.token).list_repo_files(repo_id)
    assert not any(name.startswith(".eval_results") for name in uploaded)
    for name in uploaded:
        assert local_hub.token.encode() not in local_hub.read_file(repo_id, name), name
    out, err = capfd.readouterr()
    assert local_hub.token not in out + err + caplog.text

    classifier = pipeline("image-classification", model=repo_id, device="cpu")
    assert {s["label"] for s in classifier(Image.new("L", (40, 30), 90))} == {"benign", "malignant"}


def test_job_script_args_drop_local_only_options_and_the_token():
    argv = ["--launch_on_hub", "a10g-small", "--hub_token=hf_x", "--dataset_name", "u/d", "--job_timeout", "2h", "--bf16"]
    assert hub.job_script_args(argv) == ["--dataset_name", "u/d", "--bf16"]


def test_launch_on_hub_refuses_a_local_dataset(export_dir, local_hub):
    with pytest.raises(ValueError, match="local folder"):
        train_vit.main(
            ["--launch_on_hub", "a10g-small", "--hub_token", local_hub.token, "--dataset_name", str(export_dir)]
            + ["--output_dir", "x", "--push_to_hub"]
        )


# Benchmark


def test_benchmark_runs_and_reports_both_rates(export_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train_vit", REPO / "benchmarks" / "bench_train_vit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--dataset_name", str(export_dir), "--dataset_config", "center1", "--device", "cpu", "--batch_size", "4"]
    argv += ["--steps", "2", "--warmup", "1", "--num_workers", "0", "--json", str(tmp_path / "bench.json")]
    monkeypatch.setattr(sys, "argv", ["bench_train_vit.py", *argv])
    results = bench.main()
    assert results == json.loads((tmp_path / "bench.json").read_text())
    assert results["full_step_images_per_s"] > 0 and results["model_only_images_per_s"] > 0
    ratio = results["full_step_images_per_s"] / results["model_only_images_per_s"]
    assert results["ratio"] == pytest.approx(ratio, rel=0.05)  # the printed rates are rounded
    assert "ratio:" in capsys.readouterr().out


def test_load_lymphus_sees_a_re_export_to_the_same_folder(tmp_path):
    import lymphus

    export = tmp_path / "export"
    lymphus.write_synthetic_archives(tmp_path / "a", cases_per_group=3, scale=0.1, seed=1)
    lymphus.export_dataset(tmp_path / "a", export, "basic_checks")
    first = data.load_lymphus(str(export), "center1")["train"]["maximum_diameter"]
    lymphus.write_synthetic_archives(tmp_path / "b", cases_per_group=3, scale=0.1, seed=2)
    lymphus.export_dataset(tmp_path / "b", export, "basic_checks", overwrite=True)
    second = data.load_lymphus(str(export), "center1")["train"]["maximum_diameter"]
    assert list(first) != list(second)


def test_roi_source_predicted_evaluates_with_the_segmenters_masks(export_dir, tmp_path, monkeypatch):
    """A segmenter that returns the expert masks must reproduce the expert-ROI probabilities exactly; one that
    returns other masks must change them. Both go through train_vit's own path (with_predicted_masks)."""
    expert_masks = []
    for config in ("center1", "center2"):
        dataset = data.load_lymphus(str(export_dir), config)
        splits = ["test"] if config == "center1" else ["train", "validation", "test"]  # external: all of center2
        expert_masks += [np.asarray(mask) for split in splits for mask in dataset[split]["mask"]]
    calls = []

    def expert_segmenter(model, processor, images, batch_size=8):
        masks = expert_masks[len(calls): len(calls) + len(images)]
        calls.extend(images)
        assert [m.shape for m in masks] == [image.size[::-1] for image in images]
        return [m.copy() for m in masks]

    monkeypatch.setattr(inference, "load_segmenter", lambda name, device=None: (None, None))
    monkeypatch.setattr(inference, "predict_masks", expert_segmenter)
    output = tmp_path / "predicted-roi"
    train_vit.main(tiny_args(export_dir, output, "--roi_source", "predicted", "--segmenter_name_or_path", "fake",
                             "--max_steps", "1"))  # the comparison is within this run: one step is enough
    rows = read_predictions(output)
    probability = {(row["split"], row["case_id"]): float(row["probability"]) for row in rows}
    for split in ("test", "external"):
        cases = [case for s, case in probability if s == split]
        assert cases and all(probability[split, c] == pytest.approx(probability[f"{split}_predicted_roi", c], abs=1e-6) for c in cases)
        record = json.loads((output / f"metrics_{split}_predicted_roi.json").read_text())
        assert record["roi_source"] == "predicted"
    assert "external_predicted_roi" in (output / "README.md").read_text()

    # Whole-image "masks": the crops differ, and so do the probabilities.
    monkeypatch.setattr(inference, "predict_masks", lambda model, processor, images, batch_size=8: [np.ones(i.size[::-1], np.uint8) for i in images])
    dataset = data.load_lymphus(str(export_dir), "center1")["test"]
    replaced = inference.with_predicted_masks(dataset, None, None, train_vit.DataTrainingArguments(dataset_name="x", roi="crop"))
    assert all(np.asarray(mask).all() for mask in replaced["mask"])
    assert list(replaced["case_id"]) == list(dataset["case_id"])


def test_roi_source_predicted_needs_a_segmenter_and_a_crop():
    with pytest.raises(ValueError, match="--roi_source predicted needs --roi crop or masked"):
        train_vit.DataTrainingArguments(dataset_name="x", roi="crop", roi_source="predicted")
    with pytest.raises(ValueError, match="got full"):
        train_vit.DataTrainingArguments(dataset_name="x", roi="full", roi_source="predicted", segmenter_name_or_path="s")
