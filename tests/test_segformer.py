"""train_segformer.py: labels, mask-aware augmentation, loss, logits -> masks -> metrics, main() end to end, resume,
Hub push and Hub Job.

Runs offline on a tiny synthetic export (lymphus.py) and a tiny SegFormer built from a config. References are
independent where one exists: the SegFormer image processor and its post-processing, torch's cross-entropy and
the model's own loss, numpy Dice/IoU and a brute-force HD95 over boundary points (scipy cdist).
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


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import TINY_SEGFORMER, segformer_args  # noqa: E402

import train_segformer  # noqa: E402
from lymphus_ml import data, evaluation, inference, plots, segmentation  # noqa: E402
from lymphus_ml.demo_configs import TINY_SEGFORMER_CONFIG  # noqa: E402


@pytest.fixture(scope="session")
def export_dir(small_export):
    return small_export


def tiny_args(export_dir, output_dir, *extra, epochs=3):
    return segformer_args(export_dir, output_dir, *extra, epochs=epochs)


@pytest.fixture(scope="session")
def trained(segmenter):
    return segmenter


@pytest.fixture(scope="session")
def metric():
    return evaluation.load_metric(evaluation.SEGMENTATION_METRIC_PATH)


def tiny_model(num_labels=2):
    from transformers import AutoConfig, AutoModelForSemanticSegmentation

    config_dict = json.loads(TINY_SEGFORMER)
    config = AutoConfig.for_model(config_dict.pop("model_type"), num_labels=num_labels, **config_dict)
    torch.manual_seed(0)
    return AutoModelForSemanticSegmentation.from_config(config).eval()


def asymmetric_case(height=32, width=32):
    """An L-shaped node in the left half (mask 0/1) and an image that is 200 on the node, 50 elsewhere."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[4:24, 3:9] = 1
    mask[18:24, 3:16] = 1
    return (50 + 150 * mask).astype(np.uint8), mask


def logits_from_mask(mask, stride=4, margin=10.0):
    """(1, 2, h/stride, w/stride) logits whose argmax is the mask subsampled at `stride` (mask aligned to the grid)."""
    low = torch.from_numpy(mask[::stride, ::stride].astype(np.float32))
    return torch.stack([margin * (1 - 2 * low), margin * (2 * low - 1)])[None]


def numpy_dice_iou(prediction, reference):
    intersection = np.logical_and(prediction, reference).sum()
    total = prediction.sum() + reference.sum()
    if total == 0:
        return 1.0, 1.0
    return 2 * intersection / total, intersection / (total - intersection)


def brute_force_hd95(prediction, reference):
    """HD95 from the boundary point sets (4-neighbourhood boundary), distances by scipy cdist: no distance transform."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    def boundary(mask):
        mask = mask.astype(bool)
        return np.argwhere(mask & ~ndimage.binary_erosion(mask, border_value=0))

    if not prediction.any() or not reference.any():
        return None
    distances = cdist(boundary(prediction), boundary(reference))
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


# Labels: class 0 is the background and stays so, node pixels stay class 1


def test_eval_transform_keeps_node_pixels_class_one():
    pixels, mask = asymmetric_case()
    transform = segmentation.SegmentationTransform((32, 32), [0.5] * 3, [0.5] * 3, train=False)
    pixel_values, labels = transform(Image.fromarray(pixels), Image.fromarray(mask))
    assert labels.dtype == torch.int64 and pixel_values.shape == (3, 32, 32)
    np.testing.assert_array_equal(labels.numpy(), mask)  # 1 = node, 0 = background: nothing reduced, nothing ignored


def test_labels_match_the_segformer_processor_without_reduce_labels():
    from transformers import SegformerImageProcessor

    pixels, mask = asymmetric_case(40, 56)
    processor = SegformerImageProcessor(size={"height": 40, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_reduce_labels=False)
    reference = processor(Image.fromarray(pixels).convert("RGB"), segmentation_maps=Image.fromarray(mask), return_tensors="pt")
    ours_pixels, ours_labels = segmentation.transform_for(processor)(Image.fromarray(pixels), Image.fromarray(mask))
    np.testing.assert_array_equal(ours_labels.numpy(), reference["labels"][0].numpy())
    torch.testing.assert_close(ours_pixels, reference["pixel_values"][0], atol=0.02, rtol=0)
    # The trap this script avoids: the ADE20k setting turns the node into class 0 and the background into 255 (ignored).
    reduced = SegformerImageProcessor(size={"height": 40, "width": 56}, do_reduce_labels=True)
    trap = reduced(Image.fromarray(pixels).convert("RGB"), segmentation_maps=Image.fromarray(mask), return_tensors="pt")["labels"][0]
    assert set(trap.unique().tolist()) == {0, 255}


def test_masks_other_than_0_1_are_refused_with_the_case_name():
    pixels, mask = asymmetric_case()
    transform = segmentation.SegmentationTransform((32, 32), [0.5], [0.5], train=False)
    with pytest.raises(ValueError, match=r"case center9-benign-1.*\[0, 255\].*divided by 255"):
        transform(Image.fromarray(pixels), Image.fromarray(mask * 255), where="case center9-benign-1")


# Mask-aware augmentation


def test_flip_moves_image_and_mask_together():
    pixels, mask = asymmetric_case()
    geometry = segmentation.train_geometry((32, 32), scale=(1.0, 1.0), ratio=(1.0, 1.0), degrees=0.0, flip=1.0)
    transform = segmentation.SegmentationTransform((32, 32), [0.5], [0.5], train=True, num_channels=1, geometry=geometry)
    torch.manual_seed(0)
    pixel_values, labels = transform(Image.fromarray(pixels), Image.fromarray(mask))
    np.testing.assert_array_equal(labels.numpy(), mask[:, ::-1])
    assert labels[4:24, 3:9].sum() == 0  # the node left its original (left) side
    # Brightness/contrast move values monotonically: the bright pixels are still exactly the node's.
    np.testing.assert_array_equal((pixel_values[0] > pixel_values[0].min()).numpy(), mask[:, ::-1] == 1)


def test_random_augmentation_keeps_image_and_mask_aligned():
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:50, 8:28] = 1
    mask[38:50, 8:44] = 1  # a thick L: a misalignment of a few pixels shows, bilinear edges do not
    pixels = (50 + 150 * mask).astype(np.uint8)
    transform = segmentation.SegmentationTransform((48, 48), [0.5] * 3, [0.5] * 3, train=True)
    for seed in range(5):
        torch.manual_seed(seed)
        pixel_values, labels = transform(Image.fromarray(pixels), Image.fromarray(mask))
        assert set(labels.unique().tolist()) <= {0, 1}
        bright = pixel_values[0] > (pixel_values[0].max() + pixel_values[0].min()) / 2
        node = labels == 1
        iou = (bright & node).sum() / (bright | node).sum()
        assert iou > 0.85, f"seed {seed}: image and mask moved apart (IoU {iou:.2f})"


# Loss: every pixel counts


def test_loss_is_pixel_cross_entropy_with_background_counted():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 2, 8, 8), torch.randint(0, 2, (3, 32, 32))
    loss = segmentation.SegmentationLoss()
    upsampled = torch.nn.functional.interpolate(logits, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(loss({"logits": logits}, labels), torch.nn.functional.cross_entropy(upsampled, labels))
    halves = loss({"logits": logits[:1]}, labels[:1], num_items_in_batch=labels.numel()) + loss(
        {"logits": logits[1:]}, labels[1:], num_items_in_batch=labels.numel()
    )
    torch.testing.assert_close(halves, loss({"logits": logits}, labels))
    # A model painting every pixel as node on an all-background image must pay (ignore_index=0 would make this 0).
    everything_node = torch.stack([torch.full((8, 8), -5.0), torch.full((8, 8), 5.0)])[None]
    assert loss({"logits": everything_node}, torch.zeros(1, 32, 32, dtype=torch.long)) > 9.0


def test_loss_equals_the_segformer_loss_when_no_pixel_is_ignored():
    model = tiny_model()
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
    outputs = model(pixel_values=pixel_values, labels=labels)
    torch.testing.assert_close(segmentation.SegmentationLoss()(outputs, labels), outputs.loss)


# Logits -> masks at the original size -> metrics


def test_logits_to_masks_matches_the_segformer_post_processing():
    from transformers import SegformerImageProcessor
    from transformers.modeling_outputs import SemanticSegmenterOutput

    torch.manual_seed(0)
    logits, sizes = torch.randn(2, 2, 16, 16), [(40, 70), (33, 21)]
    ours = segmentation.logits_to_masks(logits, sizes)
    reference = SegformerImageProcessor().post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits), target_sizes=sizes)
    for mask, expected, size in zip(ours, reference, sizes):
        assert mask.shape == size and mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected.numpy())


def test_perfect_prediction_scores_one_and_empty_prediction_zero(metric):
    reference = np.zeros((64, 48), dtype=np.uint8)
    # A band on the 4-pixel grid of the logits: bilinear upsampling + argmax restores it exactly (a rectangle
    # would lose its corners, where 3 of the 4 low-resolution neighbours are background).
    reference[16:40, :] = 1
    (perfect,) = segmentation.logits_to_masks(logits_from_mask(reference), [reference.shape])
    np.testing.assert_array_equal(perfect, reference)
    (empty,) = segmentation.logits_to_masks(logits_from_mask(np.zeros_like(reference)), [reference.shape])
    assert empty.sum() == 0
    results = segmentation.segmentation_metrics(metric, [perfect], [reference], n_bootstrap=50)
    assert (results["dice"], results["iou"], results["hd95"]) == (1.0, 1.0, 0.0)
    results = segmentation.segmentation_metrics(metric, [empty], [reference], n_bootstrap=50)
    # A missed node counts at the worst case, the image diagonal (Metrics Reloaded), and is counted as missed.
    assert (results["dice"], results["iou"], results["hd95"]) == (0.0, 0.0, pytest.approx(np.hypot(64, 48)))
    assert results["n_missed"] == 1


def test_partial_prediction_matches_numpy_and_brute_force_hd95(metric):
    reference = np.zeros((64, 48), dtype=np.uint8)
    reference[16:40, 8:32] = 1
    shifted = np.roll(reference, (4, 8), axis=(0, 1))
    (prediction,) = segmentation.logits_to_masks(logits_from_mask(shifted), [shifted.shape])
    results = segmentation.segmentation_metrics(metric, [prediction, reference], [reference, reference], n_bootstrap=0)
    dice, iou = numpy_dice_iou(prediction, reference)
    assert results["per_image_dice"][0] == pytest.approx(dice) and results["per_image_iou"][0] == pytest.approx(iou)
    assert results["dice"] == pytest.approx((dice + 1.0) / 2)
    assert results["per_image_hd95"][0] == pytest.approx(brute_force_hd95(prediction, reference))


def test_evaluate_split_scores_each_case_and_each_centre(export_dir, metric, monkeypatch):
    """Through evaluate_split on a two-centre split: expert masks as predictions score 1.0, empty ones 0.0."""
    import datasets

    test = datasets.load_dataset(str(export_dir), "all", split="test")
    experts = {case: np.asarray(mask) for case, mask in zip(test["case_id"], test["mask"])}
    transform = segmentation.SegmentationTransform((32, 32), [0.5], [0.5])

    def perfect(model, transform, images, batch_size=8):
        return [experts[case].copy() for case in next(cases)]

    batches = [list(test["case_id"])[i : i + 3] for i in range(0, len(test), 3)]
    cases = iter(batches)
    monkeypatch.setattr(segmentation, "segment_images", perfect)
    results, rows, _ = segmentation.evaluate_split(None, transform, test, metric, batch_size=3, n_bootstrap=50)
    assert results["dice"] == results["iou"] == 1.0 and results["hd95"] == 0.0
    assert set(results["by_centre"]) == {"center1", "center2"}
    assert [r["case_id"] for r in rows] == list(test["case_id"])
    assert [r["expert_pixels"] for r in rows] == [int(experts[c].sum()) for c in test["case_id"]]

    monkeypatch.setattr(segmentation, "segment_images", lambda model, transform, images, batch_size=8: [np.zeros((i.height, i.width), np.uint8) for i in images])
    results, rows, _ = segmentation.evaluate_split(None, transform, test, metric, batch_size=3, n_bootstrap=50)
    diagonals = [np.hypot(*np.asarray(image).shape[:2]) for image in test["image"]]
    assert results["dice"] == 0.0 and results["n_missed"] == len(rows)
    assert results["hd95"] == pytest.approx(np.mean(diagonals))  # every node missed: each at its image's diagonal
    assert all(r["dice"] == 0.0 and r["predicted_pixels"] == 0 for r in rows)
    for centre, values in results["by_centre"].items():
        assert values["n_images"] == sum(1 for c in test["centre"] if c == centre)


# Overlays


def test_contour_is_the_inner_boundary_of_the_mask():
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:8, 3:9] = 1
    ring = mask.astype(bool).copy()
    ring[3:7, 4:8] = False
    np.testing.assert_array_equal(plots.contour(mask), ring)
    assert not plots.contour(np.zeros((5, 5))).any()
    rgb = plots.overlay_contours(Image.fromarray(np.full((10, 12), 7, np.uint8)), (mask, (255, 0, 0)))
    assert (rgb[ring] == (255, 0, 0)).all() and (rgb[~ring] == 7).all()


def test_select_cases_picks_best_median_worst():
    assert segmentation.select_cases([0.5, 0.9, 0.1, 0.7, 0.3]) == {"best": 1, "median": 0, "worst": 2}
    assert segmentation.select_cases([0.4]) == {"best": 0}


# main() end to end


def test_main_writes_metrics_overlays_and_card(trained, export_dir):
    import datasets
    from huggingface_hub import ModelCard

    for name in ("README.md", "config.json", "model.safetensors", "preprocessor_config.json", "segmentation_cases.csv"):
        assert (trained / name).is_file(), name
    assert json.loads((trained / "preprocessor_config.json").read_text())["do_reduce_labels"] is False
    assert json.loads((trained / "config.json").read_text())["id2label"] == {"0": "background", "1": "lymph_node"}
    center2 = datasets.load_dataset(str(export_dir), "center2")
    expected_cases = {
        "validation": list(datasets.load_dataset(str(export_dir), "center1", split="validation")["case_id"]),
        "test": list(datasets.load_dataset(str(export_dir), "center1", split="test")["case_id"]),
        "external": [case for split in center2.values() for case in split["case_id"]],
    }
    card = ModelCard.load(trained / "README.md")
    for split, cases in expected_cases.items():
        metrics = json.loads((trained / f"metrics_{split}.json").read_text())
        for name in ("dice", "iou", "hd95"):
            assert name in metrics and f"{name}_ci_low" in metrics and f"{name}_ci_high" in metrics, (split, name)
        assert metrics["resolution"] == "original" and metrics["n_images"] == len(cases)
        assert sorted(c["case_id"] for c in metrics["cases"]) == sorted(cases)
        assert metrics["dice"] == pytest.approx(np.mean([c["dice"] for c in metrics["cases"]]))
        assert metrics["dice_ci_low"] <= metrics["dice"] <= metrics["dice_ci_high"]
        Image.open(trained / f"overlays_{split}.png").verify()
        assert f"](overlays_{split}.png)" in card.text
    assert "Not for clinical use" in card.text and "synthetic data" in card.text and "do_reduce_labels=False" in card.text
    # No model-index: the data is a local folder (dataset.type must be a Hub id), and the card says so; the licence is
    # stated.
    assert "model-index" not in card.data.to_dict() and not card.data.eval_results and not card.data.metrics
    assert "not published as Hub evaluation results" in card.text and "local folder" in card.text
    assert card.data.license == "other" and card.data.license_name
    external = json.loads((trained / "metrics_external.json").read_text())
    row = next(line for line in card.text.splitlines() if line.startswith("| external ("))
    assert "missed nodes" in card.text and row.split("|")[-2].split()[0] == str(external["n_missed"])
    # Two parts and the worst case: detection (exact CI), the detected nodes' Dice and HD95, then the worst-case means.
    detected = [c for c in external["cases"] if c["expert_pixels"] and c["dice"] > 0]
    assert external["n_detected"] == len(detected) and external["detection_rate_ci_method"] == "clopper-pearson"
    assert row.split("|")[3].strip().startswith(f"{external['n_detected']}/{external['n_with_node']} = ")
    if detected:
        assert external["dice_detected"] == pytest.approx(np.mean([c["dice"] for c in detected]))
    assert "worst-case" in card.text
    with open(trained / "segmentation_cases.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == sum(len(c) for c in expected_cases.values())


def test_reported_metrics_match_the_saved_model_and_numpy(trained, export_dir):
    """Reload the saved model, segment the external centre again, score with numpy: the JSON must agree."""
    import datasets

    model, processor = inference.load_segmenter(str(trained), device="cpu")
    external = datasets.concatenate_datasets(list(datasets.load_dataset(str(export_dir), "center2").values()))
    masks = inference.predict_masks(model, processor, list(external["image"]))
    reported = {c["case_id"]: c for c in json.loads((trained / "metrics_external.json").read_text())["cases"]}
    assert any(m.any() for m in masks), "the tiny model should find some nodes after its training"
    for case_id, reference, prediction in zip(external["case_id"], external["mask"], masks):
        reference = np.asarray(reference)
        dice, iou = numpy_dice_iou(prediction, reference)
        assert reported[case_id]["dice"] == pytest.approx(dice) and reported[case_id]["iou"] == pytest.approx(iou)
        assert reported[case_id]["predicted_pixels"] == prediction.sum()
        expected_hd95 = brute_force_hd95(prediction, reference)
        if expected_hd95 is None and reference.any() and not prediction.any():
            expected_hd95 = np.hypot(*reference.shape)  # a missed node counts at the image diagonal
        assert reported[case_id]["hd95"] == (None if expected_hd95 is None else pytest.approx(expected_hd95))


def test_resume_from_checkpoint_continues_the_same_run(trained, export_dir, tmp_path):
    from safetensors.torch import load_file

    first, last = sorted(trained.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    train_segformer.main(tiny_args(export_dir, tmp_path / "resumed", "--resume_from_checkpoint", str(first)))
    resumed = load_file(tmp_path / "resumed" / last.name / "model.safetensors")
    original = load_file(last / "model.safetensors")
    assert resumed.keys() == original.keys()
    for key in original:
        torch.testing.assert_close(resumed[key], original[key], msg=key)


# Hub


def test_push_to_hub_uploads_the_results_without_the_token(local_hub, export_dir, tmp_path, caplog, capfd):
    from huggingface_hub import HfApi

    repo_id = f"{local_hub.user}/segformer-lymphus-push"
    caplog.set_level(logging.DEBUG)
    train_segformer.main(tiny_args(export_dir, tmp_path / "push", "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", local_hub.token, "--max_steps", "1", epochs=1))
    uploaded = HfApi(token=local_hub.token).list_repo_files(repo_id)
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "segmentation_cases.csv",
                 "metrics_test.json", "metrics_external.json", "overlays_test.png", "overlays_external.png"):
        assert name in uploaded, name
    assert not any(name.startswith("checkpoint-") or name.endswith(".bin") for name in uploaded)
    card = local_hub.read_file(repo_id, "README.md").decode()
    assert "](overlays_test.png)" in card and "model-index" not in card.split("---")[1]  # a local export: no Hub id
    assert not any(name.startswith(".eval_results") for name in uploaded)
    for name in uploaded:
        assert local_hub.token.encode() not in local_hub.read_file(repo_id, name), name
    out, err = capfd.readouterr()
    assert local_hub.token not in out + err + caplog.text


def test_launch_on_hub_refuses_a_local_dataset(export_dir, local_hub):
    with pytest.raises(ValueError, match="local folder"):
        train_segformer.main(["--launch_on_hub", "a10g-small", "--hub_token", local_hub.token, "--dataset_name", str(export_dir), "--output_dir", "x", "--push_to_hub"])


def test_offline_demo_runs_without_any_download(export_dir, tmp_path, monkeypatch):
    """--offline_demo: a synthetic export in the output folder and the tiny SegFormer from its config, no download.
    The official-size export itself (data.write_synthetic_export, official counts) is the README test's
    (tests/test_readme.py, through train_vit.py); here the call is checked and the session's small export stands in."""
    import datasets

    output = tmp_path / "seg-demo"
    calls = []

    def small_synthetic_export(folder, *args, **kwargs):
        calls.append((Path(folder), args, kwargs))
        return str(export_dir)

    monkeypatch.setattr(data, "write_synthetic_export", small_synthetic_export)
    train_segformer.main(["--offline_demo", "--output_dir", str(output), "--max_steps", "1", "--n_bootstrap", "100",
                          "--report_to", "none", "--disable_tqdm", "True", "--use_cpu"])
    assert calls == [(output / "synthetic-lymphus", (), {})]  # official counts: no cases_per_group
    external = json.loads((output / "metrics_external.json").read_text())
    center2 = datasets.load_dataset(str(export_dir), "center2")
    assert external["n_images"] == sum(len(split) for split in center2.values())  # the whole other centre
    assert json.loads((output / "config.json").read_text())["hidden_sizes"] == TINY_SEGFORMER_CONFIG["hidden_sizes"]
    assert (output / "overlays_external.png").is_file()
    assert "synthetic" in (output / "README.md").read_text().lower()
