"""The training data pipeline: cases prepared once in memory (PreparedCases), batches augmented per image
(BatchAugmentation), and the per-epoch validation metric.

References are independent where one exists: `ClassificationTransform(train=False)` for the evaluation pixels
(bit for bit), torchvision's own functions (resize, rotate, brightness, contrast) and `RandomResizedCrop`'s draws
for the augmentation, scikit-learn for ROC-AUC.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as nnf
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lymphus_ml import evaluation, images  # noqa: E402


@pytest.fixture(scope="module")
def split(small_export):
    """A small split of the session's synthetic export, images ~40-120 px."""
    from datasets import load_dataset

    return load_dataset(str(small_export), "center1", split="train")


def node_image(size=64, box=(16, 12, 48, 40)):
    """(image, mask) as uint8 (1, size, size): the node (an ellipse filling `box`, top/left/bottom/right) drawn at
    200 exactly where the mask is 1."""
    top, left, bottom, right = box
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx, ry, rx = (top + bottom - 1) / 2, (left + right - 1) / 2, (bottom - top) / 2, (right - left) / 2
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    return torch.from_numpy(mask * 200)[None], torch.from_numpy(mask)[None]


def fixed_parameters(n=1, **values):
    """BatchAugmentation parameters that leave the image as it is, but for `values`."""
    parameters = {
        "width": 1.0, "height": 1.0, "centre_x": 0.0, "centre_y": 0.0, "flip": 1.0, "angle": 0.0,
        "brightness": 1.0, "contrast": 1.0, "brightness_first": True,
    }
    parameters.update(values)
    return {key: np.full(n, value) for key, value in parameters.items()}


# Prepared once: evaluation pixels are exactly the evaluation transform's


@pytest.mark.parametrize("roi", images.ROI_MODES)
@pytest.mark.parametrize("mean, std", [([0.5] * 3, [0.5] * 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
def test_prepared_evaluation_batches_are_the_eval_transform_bit_for_bit(split, roi, mean, std):
    prepared = images.PreparedCases(split, (32, 40), mean, std, roi=roi, margin=0.2, train=False)
    transform = images.ClassificationTransform((32, 40), mean, std, roi=roi, margin=0.2, train=False)
    loader = torch.utils.data.DataLoader(prepared, batch_size=5, collate_fn=images.collate_fn)
    batches = list(loader)
    pixel_values = torch.cat([batch["pixel_values"] for batch in batches])
    expected = torch.stack([transform(row["image"], row["mask"]) for row in split])
    assert pixel_values.shape == expected.shape == (len(split), 3, 32, 40)
    assert torch.equal(pixel_values, expected)
    assert torch.cat([batch["labels"] for batch in batches]).tolist() == split["label"]
    assert torch.equal(prepared[3]["pixel_values"], expected[3]) and prepared[3]["labels"] == split["label"][3]


def test_prepared_training_keeps_the_roi_at_the_working_size(split):
    prepared = images.PreparedCases(split, (32, 32), [0.5], [0.5], roi="masked", train=True, num_channels=1)
    assert prepared.pixels.dtype == torch.uint8 and prepared.pixels.shape == (len(split), 1, 43, 43)
    assert prepared.masks.shape == prepared.pixels.shape and set(prepared.masks.unique().tolist()) == {0, 1}
    row = split[0]
    roi = images.roi_image(row["image"], row["mask"], "masked", 0.1)
    assert torch.equal(prepared.pixels[0], F.resize(F.pil_to_tensor(roi), [43, 43], antialias=True))
    node = F.pil_to_tensor(row["mask"].crop(images.roi_bounding_box(row["mask"], 0.1)))
    assert torch.equal(prepared.masks[0], F.resize(node, [43, 43], interpolation=v2.InterpolationMode.NEAREST))


def test_working_size_leaves_the_smallest_crop_at_least_the_input_size():
    assert images.working_size((64, 64)) == (86, 86) and images.working_size((224, 160)) == (300, 214)
    shortest = math.sqrt(0.7 * 0.8)  # smallest area at the most elongated ratio
    assert 86 * shortest >= 64 > 85 * shortest
    assert images.working_size((64, 64), scale=(1.0, 1.0), ratio=(1.0, 1.0)) == (64, 64)


def test_prepared_cases_need_the_mask_for_a_roi(split):
    with pytest.raises(ValueError, match="needs the mask column"):
        images.prepared_pixels(split[0]["image"], None, "crop", 0.1, (32, 32))
    with pytest.raises(ValueError, match="full"):
        images.PreparedCases(split, (32, 32), [0.5], [0.5], roi="bbox")


# Augmented per image, with torchvision's distributions and pixels


def test_crop_fractions_follow_random_resized_crop():
    generator = torch.Generator().manual_seed(0)
    width, height = images.random_crop_fractions(torch.rand(20000, 20, generator=generator, dtype=torch.float64).numpy())
    assert (width <= 1).all() and (height <= 1).all()
    assert ((width * height >= 0.7 - 1e-9) | ((width == 1) & (height == 1))).all()
    assert ((width / height >= 0.8 - 1e-9) & (width / height <= 1.25 + 1e-9)).all()
    torch.manual_seed(0)
    crop = v2.RandomResizedCrop(500, scale=(0.7, 1.0), ratio=(0.8, 1.25))
    drawn = [crop.make_params([torch.zeros(1, 500, 500)]) for _ in range(4000)]
    reference = np.array([p["width"] * p["height"] / 500**2 for p in drawn])
    assert abs((width * height).mean() - reference.mean()) < 0.005
    assert abs(np.quantile(width * height, 0.1) - np.quantile(reference, 0.1)) < 0.01
    # Nothing fits (ratio 2 of a whole-image area): the whole image, as torchvision falls back to
    assert images.random_crop_fractions(np.full((3, 20), 0.5), scale=(1.0, 1.0), ratio=(2.0, 2.0)) == (
        pytest.approx([1.0] * 3), pytest.approx([1.0] * 3))


def test_whole_crop_without_rotation_or_jitter_is_a_resize_or_its_mirror():
    augmentation = images.BatchAugmentation((24, 24), scale=(1, 1), ratio=(1, 1), degrees=0, brightness=0, contrast=0)
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (16, 1, 40, 40), dtype=torch.uint8)
    out = augmentation(pixels)
    resized = F.resize(pixels.float(), [24, 24], antialias=False)
    mirrored = [torch.allclose(out[i], resized[i].flip(-1), atol=1e-3) for i in range(16)]
    straight = [torch.allclose(out[i], resized[i], atol=1e-3) for i in range(16)]
    assert all(a != b for a, b in zip(mirrored, straight))  # each exactly one of them
    assert 0 < sum(mirrored) < 16  # a draw per image, not one per batch


@pytest.mark.parametrize("degrees", [10.0, -7.5])
def test_rotation_and_its_black_corners_are_torchvision_rotate(degrees):
    augmentation = images.BatchAugmentation((48, 48))
    image = torch.zeros(1, 1, 48, 48)
    image[..., 10:20, 5:40] = 200
    planes = augmentation.sampling_planes(fixed_parameters(angle=math.radians(degrees)))
    inside = planes[:, 2:].abs().amax(dim=1) <= 1
    ours = nnf.grid_sample(image, planes[:, :2].permute(0, 2, 3, 1), align_corners=False)[0] * inside
    reference = F.rotate(image[0], degrees, interpolation=v2.InterpolationMode.BILINEAR)
    torch.testing.assert_close(ours, reference, atol=1e-3, rtol=0)
    assert torch.equal(inside, F.rotate(torch.ones(1, 48, 48), degrees) > 0) and (~inside).any()


def test_crop_takes_the_drawn_window_of_the_image():
    augmentation = images.BatchAugmentation((20, 20))
    image = torch.arange(80.0).repeat(80, 1)[None, None]  # value = column
    # The right half (centre +0.5, half the width), whole height: columns 40..79 resampled onto 20
    planes = augmentation.sampling_planes(fixed_parameters(width=0.5, centre_x=0.5))
    out = nnf.grid_sample(image, planes[:, :2].permute(0, 2, 3, 1), align_corners=False)[0, 0]
    torch.testing.assert_close(out[0], torch.arange(20.0) * 2 + 40.5, atol=1e-4, rtol=0)


@pytest.mark.parametrize("brightness_first", [True, False])
def test_jitter_is_torchvisions_brightness_and_contrast_in_the_drawn_order(brightness_first):
    augmentation = images.BatchAugmentation((16, 16))
    torch.manual_seed(1)
    pixels = torch.rand(2, 1, 16, 16) * 255
    parameters = fixed_parameters(2, brightness_first=brightness_first)
    parameters["brightness"], parameters["contrast"] = np.array([1.2, 0.85]), np.array([0.8, 1.15])
    ours = augmentation.jitter(pixels.clone(), parameters)
    for i, (b, c) in enumerate(zip(parameters["brightness"], parameters["contrast"])):
        unit = pixels[i] / 255
        if brightness_first:
            reference = F.adjust_contrast(F.adjust_brightness(unit, b), c)
        else:
            reference = F.adjust_brightness(F.adjust_contrast(unit, c), b)
        torch.testing.assert_close(ours[i] / 255, reference, atol=1e-5, rtol=0)


def test_image_and_mask_move_together_and_the_background_stays_zero():
    image, mask = node_image()
    augmentation = images.BatchAugmentation((48, 48))
    torch.manual_seed(0)
    moved = augmentation(image.expand(8, 1, 64, 64), mask.expand(8, 1, 64, 64))
    assert moved.shape == (8, 1, 48, 48)
    torch.manual_seed(0)
    unmasked = augmentation(image.expand(8, 1, 64, 64))
    node = moved > 0
    assert ((unmasked > 100) & node).sum() / ((unmasked > 100) | node).sum() > 0.9  # same geometry for both
    assert (node.float().mean(dim=(1, 2, 3)) > 0.1).all() and (moved[~node] == 0).all()


def test_seeded_draws_repeat_and_differ_per_seed():
    augmentation = images.BatchAugmentation((32, 32))
    pixels = torch.randint(0, 256, (4, 1, 43, 43), dtype=torch.uint8)
    torch.manual_seed(3)
    first = augmentation(pixels)
    torch.manual_seed(3)
    assert torch.equal(augmentation(pixels), first)
    torch.manual_seed(4)
    assert not torch.equal(augmentation(pixels), first)


def test_augmented_batches_reach_the_trainer_as_normalized_tensors(split):
    prepared = images.PreparedCases(split, (32, 32), [0.5] * 3, [0.5] * 3, roi="crop", train=True)
    torch.manual_seed(0)
    batch = next(iter(torch.utils.data.DataLoader(prepared, batch_size=6, collate_fn=images.collate_fn)))
    values = batch["pixel_values"]
    assert values.shape == (6, 3, 32, 32) and values.dtype == torch.float32 and values.is_contiguous()
    assert torch.equal(values[:, 0], values[:, 2])  # grayscale repeated
    assert values.min() >= -1 and values.max() <= 1 and values.std() > 0.1
    assert batch["labels"].tolist() == split["label"][:6]
    torch.manual_seed(0)
    assert torch.equal(next(iter(torch.utils.data.DataLoader(prepared, batch_size=6, collate_fn=images.collate_fn)))
                       ["pixel_values"], values)


# Per-epoch validation: ROC-AUC only


def test_per_epoch_metric_is_only_the_roc_auc_of_the_positive_class():
    from sklearn.metrics import roc_auc_score
    from transformers import EvalPrediction

    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(40, 2)), rng.integers(0, 2, size=40)
    logits[labels == 0, 0] += 1.0
    compute = evaluation.RocAucComputeMetrics(positive_index=0)
    results = compute(EvalPrediction(predictions=logits, label_ids=labels))
    probabilities = torch.softmax(torch.tensor(logits), dim=-1)[:, 0].numpy()
    assert results.keys() == {"roc_auc"}
    assert results["roc_auc"] == pytest.approx(roc_auc_score(labels == 0, probabilities))
    assert results["roc_auc"] > 0.6
