"""Pixels to model inputs: the ROI of a case, 8-bit grayscale, and the training / evaluation transforms.

Pure functions and small callables on PIL images and tensors, shared by training (train_vit.py,
train_segformer.py), evaluation and inference (predict.py, app.py), so that every path feeds a model the same
pixels.
"""

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


ROI_MODES = ("full", "crop", "masked")


def roi_bounding_box(mask, margin: float = 0.1) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the mask's non-zero pixels, grown by `margin` x box size on each side, clipped.

    An empty mask gives the whole image.
    """
    if not isinstance(mask, Image.Image):
        mask = Image.fromarray(np.asarray(mask, dtype=np.uint8))
    width, height = mask.size
    box = mask.getbbox()  # C loop over the non-zero pixels: ~50x faster than np.nonzero on a full frame
    if box is None:
        return 0, 0, width, height
    left, top, right, bottom = box
    pad_x, pad_y = int(round(margin * (right - left))), int(round(margin * (bottom - top)))
    return max(0, left - pad_x), max(0, top - pad_y), min(width, right + pad_x), min(height, bottom + pad_y)


def roi_image(image, mask, mode: str = "full", margin: float = 0.1):
    """The model's view of a case. `image` and `mask` are PIL images of the same size (mask 0/1).

    full: the image; crop: the mask's bounding box plus `margin`; masked: that crop with pixels outside the node
    set to 0. An empty mask leaves the whole image (crop) or an all-zero image (masked).
    """
    if mode not in ROI_MODES:
        raise ValueError(f"roi mode {mode!r} is not one of {ROI_MODES}.")
    if mode == "full":
        return image
    if image.size != mask.size:
        raise ValueError(f"Image size {image.size} and mask size {mask.size} differ.")
    box = roi_bounding_box(mask, margin)
    cropped = image.crop(box)
    if mode == "crop":
        return cropped
    inside = np.asarray(mask.crop(box)) > 0
    pixels = np.asarray(cropped).copy()
    pixels[~inside] = 0
    return Image.fromarray(pixels)


def model_input_size(image_processor) -> tuple[int, int]:
    """(height, width) the model is fed: the processor's crop size if it center-crops, else its resize size."""
    size = image_processor.crop_size if getattr(image_processor, "do_center_crop", False) else image_processor.size
    get = size.get if hasattr(size, "get") else lambda key: getattr(size, key, None)
    if get("height") and get("width"):
        return int(get("height")), int(get("width"))
    if get("shortest_edge"):
        return int(get("shortest_edge")), int(get("shortest_edge"))
    raise ValueError(f"Cannot read an input size from the image processor's size {size}; pass --image_processor_name.")


def per_channel(values, num_channels):
    """`values` (a number or one per channel) as a list of `num_channels` numbers; a mismatched list is averaged."""
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(values) == num_channels:
        return values
    return [float(np.mean(values))] * num_channels


def processor_mean_std(image_processor, num_channels=3) -> tuple[list, list]:
    """(mean, std) of an image processor, 0.5 per channel where it has none (as `ViTImageProcessor` defaults)."""
    mean = getattr(image_processor, "image_mean", None) or [0.5] * num_channels
    std = getattr(image_processor, "image_std", None) or [0.5] * num_channels
    return mean, std


class ClassificationTransform:
    """PIL grayscale image (+ mask) -> normalized float tensor (C, H, W) for the model.

    ROI first (`roi_image`). Training: geometry (random resized crop, horizontal flip, +-10 degree rotation) applied
    jointly to image and mask with transforms v2, brightness/contrast on the image only, then in masked mode the
    pixels outside the moved mask zeroed again. Evaluation: a plain resize, as the saved image processor does at
    inference. Last, grayscale -> `num_channels` by repetition and the processor's mean/std. The stored data
    stays grayscale. Training runs on PIL images (C kernels on uint8: ~4x faster than on tensors), so the data
    pipeline keeps up with the model; the mask, when needed, is a `tv_tensors.Mask` (nearest-neighbour).
    """

    def __init__(self, size, image_mean, image_std, roi="full", margin=0.1, train=False, num_channels=3):
        if roi not in ROI_MODES:
            raise ValueError(f"roi mode {roi!r} is not one of {ROI_MODES}.")
        self.size, self.roi, self.margin, self.train, self.num_channels = tuple(size), roi, margin, train, num_channels
        self.geometry = v2.Compose(
            [
                v2.RandomResizedCrop(self.size, scale=(0.7, 1.0), ratio=(0.8, 1.25), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=10),
            ]
        )
        self.intensity = v2.ColorJitter(brightness=0.2, contrast=0.2)
        # (x / 255 - mean) / std == x * scale + offset, per channel, broadcast from the single grayscale channel.
        mean = torch.tensor(per_channel(image_mean, num_channels), dtype=torch.float32)[:, None, None]
        std = torch.tensor(per_channel(image_std, num_channels), dtype=torch.float32)[:, None, None]
        self.scale, self.offset = 1.0 / (255.0 * std), -mean / std

    def __call__(self, image, mask=None) -> torch.Tensor:
        if image.mode != "L":
            image = image.convert("L")
        if self.roi != "full" and mask is None:
            raise ValueError(f"--roi {self.roi} needs the mask column; this example has none.")
        roi_mask = mask.crop(roi_bounding_box(mask, self.margin)) if self.roi == "masked" else None
        image = roi_image(image, mask, self.roi, self.margin)
        if not self.train:
            pixels = F.resize(F.pil_to_tensor(image), list(self.size), antialias=True)
        elif self.roi == "masked":
            moved, node = self.geometry(image, tv_tensors.Mask(F.pil_to_tensor(roi_mask)))
            # Bilinear resampling and jitter spill grey into the background: zero it again after the geometry.
            pixels = F.pil_to_tensor(self.intensity(moved)) * (node > 0)
        else:
            pixels = F.pil_to_tensor(self.intensity(self.geometry(image)))
        return pixels.as_subclass(torch.Tensor).float() * self.scale + self.offset


class BatchTransform:
    """`Dataset.set_transform` callable: a batch of rows -> {"pixel_values", "labels"}."""

    def __init__(self, transform, image_column="image", mask_column="mask", label_column="label"):
        self.transform, self.image_column, self.mask_column, self.label_column = (
            transform,
            image_column,
            mask_column,
            label_column,
        )

    def __call__(self, batch):
        masks = batch.get(self.mask_column) or [None] * len(batch[self.image_column])
        return {
            "pixel_values": [self.transform(image, mask) for image, mask in zip(batch[self.image_column], masks)],
            "labels": batch[self.label_column],
        }


def collate_fn(examples):
    """Stack `pixel_values` and `labels` (class indices or label maps) of a list of examples into a batch."""
    labels = [example["labels"] for example in examples]
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels, dtype=torch.long),
    }


def to_8bit_grayscale(image: Image.Image) -> tuple[Image.Image, str]:
    """(mode L image, note): any PIL image as the 8-bit grayscale the models were trained on, and what was done.

    8-bit grayscale is used as it is. Colour and palette images are converted to luminance (ITU-R 601, PIL's L).
    Images of more than 8 bits (I;16, I, F) whose values all lie in 0..255 keep their values; otherwise their own
    value range [min, max] is mapped linearly onto 0..255, so a 16-bit image is neither clipped to black/white
    (what PIL's convert("L") does) nor crushed. The note is "" when nothing was changed.
    """
    if image.mode == "L":
        return image, ""
    if image.mode in ("1", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV"):
        return image.convert("L"), f"{image.mode} converted to 8-bit grayscale (luminance)"
    pixels = np.asarray(image)
    if pixels.ndim != 2:
        raise ValueError(f"Image mode {image.mode} with shape {pixels.shape} is not a single-channel or colour image.")
    pixels = pixels.astype(np.float64)
    if not np.isfinite(pixels).all():
        raise ValueError(f"Image mode {image.mode} holds non-finite values (NaN or infinity).")
    low, high = float(pixels.min()), float(pixels.max())
    if low >= 0 and high <= 255 and np.array_equal(pixels, np.round(pixels)):
        return Image.fromarray(pixels.astype(np.uint8)), f"{image.mode} with values in 0..255 used as 8-bit"
    scaled = np.zeros_like(pixels) if high == low else (pixels - low) * (255.0 / (high - low))
    note = f"{image.mode} mapped from its value range [{low:g}, {high:g}] to 0..255"
    return Image.fromarray(np.round(scaled).astype(np.uint8)), note


def read_grayscale_image(path) -> tuple[Image.Image, str]:
    """(8-bit grayscale image, note) of an image file (any mode or bit depth, see `to_8bit_grayscale`).

    A file PIL cannot read raises ValueError naming it.
    """
    try:
        with Image.open(path) as opened:
            image = opened.copy()
            image.load()
    except Exception as error:
        raise ValueError(f"Cannot read image {path}: {error}") from None
    return to_8bit_grayscale(image)
