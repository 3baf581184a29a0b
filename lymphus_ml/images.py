"""Pixels to model inputs: the ROI of a case, 8-bit grayscale, and the training / evaluation transforms.

Pure functions and small callables on PIL images and tensors, shared by training (train_vit.py,
train_segformer.py), evaluation and inference (predict.py, app.py), so that every path feeds a model the same
pixels. Training keeps each split in memory once prepared (`PreparedCases`: decoded, ROI cut and resized once per
run) and augments whole batches from there (`BatchAugmentation`).
"""

import math
import re

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


ROI_MODES = ("full", "crop", "masked")
# The training augmentation (ClassificationTransform, BatchAugmentation): random resized crop (area fraction, aspect
# ratio), rotation (degrees either way), brightness and contrast (factor 1 +- this).
CROP_SCALE, CROP_RATIO, ROTATION_DEGREES, JITTER = (0.7, 1.0), (0.8, 1.25), 10.0, 0.2
# Inputs smaller than this on a side are refused (predict.py, the app): no ultrasound image is, and a model would
# still give one a confident label.
MIN_IMAGE_SIDE = 32


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


def normalization(image_mean, image_std, num_channels=3) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, offset), each (num_channels, 1, 1): (x / 255 - mean) / std == x * scale + offset, per channel."""
    mean = torch.tensor(per_channel(image_mean, num_channels), dtype=torch.float32)[:, None, None]
    std = torch.tensor(per_channel(image_std, num_channels), dtype=torch.float32)[:, None, None]
    return 1.0 / (255.0 * std), -mean / std


def normalized(pixels, scale, offset) -> torch.Tensor:
    """Grayscale pixels in 0..255, (1, H, W) or (N, 1, H, W), as normalized float, broadcast to scale's channels."""
    return (pixels.as_subclass(torch.Tensor).float() * scale).add_(offset)


def prepared_pixels(image, mask, roi, margin, size) -> torch.Tensor:
    """uint8 (1, H, W): the case's ROI (8-bit grayscale) resized to `size` = (H, W), antialiased.

    At the model's input size this is exactly what evaluation feeds the model, before normalization.
    """
    if image.mode != "L":
        image = image.convert("L")
    if roi != "full" and mask is None:
        raise ValueError(f"--roi {roi} needs the mask column; this example has none.")
    return F.resize(F.pil_to_tensor(roi_image(image, mask, roi, margin)), list(size), antialias=True)


def prepared_mask(mask, margin, size) -> torch.Tensor:
    """uint8 (1, H, W): the 0/1 mask cut to the ROI box and resized to `size` (nearest neighbour)."""
    node = (F.pil_to_tensor(mask.crop(roi_bounding_box(mask, margin))) > 0).to(torch.uint8)
    return F.resize(node, list(size), interpolation=v2.InterpolationMode.NEAREST)


class ClassificationTransform:
    """PIL grayscale image (+ mask) -> normalized float tensor (C, H, W) for the model.

    ROI first (`roi_image`). Training: geometry (random resized crop, horizontal flip, +-10 degree rotation) applied
    jointly to image and mask with transforms v2, brightness/contrast on the image only, then in masked mode the
    pixels outside the moved mask zeroed again. Evaluation: a plain resize, as the saved image processor does at
    inference. Last, grayscale -> `num_channels` by repetition and the processor's mean/std. The stored data
    stays grayscale. Training runs on PIL images (C kernels on uint8: ~4x faster than on tensors); the mask, when
    needed, is a `tv_tensors.Mask` (nearest-neighbour). One image per call: train_vit.py trains from `PreparedCases`
    instead, the same augmentation drawn per image but applied to whole batches (`BatchAugmentation`).
    """

    def __init__(self, size, image_mean, image_std, roi="full", margin=0.1, train=False, num_channels=3):
        if roi not in ROI_MODES:
            raise ValueError(f"roi mode {roi!r} is not one of {ROI_MODES}.")
        self.size, self.roi, self.margin, self.train, self.num_channels = tuple(size), roi, margin, train, num_channels
        self.geometry = v2.Compose(
            [
                v2.RandomResizedCrop(self.size, scale=CROP_SCALE, ratio=CROP_RATIO, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=ROTATION_DEGREES),
            ]
        )
        self.intensity = v2.ColorJitter(brightness=JITTER, contrast=JITTER)
        # (x / 255 - mean) / std == x * scale + offset, per channel, broadcast from the single grayscale channel.
        self.scale, self.offset = normalization(image_mean, image_std, num_channels)

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


def model_num_channels(config) -> int:
    """Input channels of a model (its config's `num_channels`; 3 when the config does not say)."""
    return getattr(config, "num_channels", 3)


def evaluation_transform(model, image_processor, roi="full", margin=0.1) -> ClassificationTransform:
    """The classifier's evaluation transform (`ClassificationTransform(train=False)`) from its model and image
    processor: their input size, mean/std and channels, with `roi` applied first (`full`: a view already cut)."""
    num_channels = model_num_channels(model.config)
    mean, std = processor_mean_std(image_processor, num_channels)
    size = model_input_size(image_processor)
    return ClassificationTransform(size, mean, std, roi=roi, margin=margin, train=False, num_channels=num_channels)


def working_size(size, scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int]:
    """(H, W) at which training keeps a case's ROI: large enough that the smallest random resized crop still has
    `size` pixels on each side, so augmentation never enlarges pixels.

    A crop of area a (fraction of the image) and aspect ratio r spans sqrt(a * r) of the width and sqrt(a / r) of
    the height; its shortest side is sqrt(scale[0] * min(ratio[0], 1 / ratio[1])) of the image's (0.748 for
    the defaults: 64 -> 86 px, 224 -> 300 px).
    """
    smallest = math.sqrt(scale[0] * min(ratio[0], 1.0 / ratio[1]))
    return tuple(math.ceil(side / smallest - 1e-9) for side in size)


def random_crop_fractions(uniforms, scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) of random resized crops as fractions of the image's sides, drawn as v2.RandomResizedCrop
    draws them: area uniform in `scale`, log aspect ratio uniform in log `ratio`, the first of the attempts that fits,
    else the whole image (whose ratio, 1, lies in the defaults' range).

    `uniforms`: (n, 2 x attempts) numbers uniform in [0, 1), the areas' then the ratios'.
    """
    attempts = uniforms.shape[1] // 2
    area = scale[0] + (scale[1] - scale[0]) * uniforms[:, :attempts]
    aspect = np.exp(np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * uniforms[:, attempts:])
    width, height = np.sqrt(area * aspect), np.sqrt(area / aspect)
    fits = (width <= 1) & (height <= 1)
    first = fits.argmax(axis=1)
    rows = np.arange(len(uniforms))
    none_fits = ~fits.any(axis=1)
    return np.where(none_fits, 1.0, width[rows, first]), np.where(none_fits, 1.0, height[rows, first])


class BatchAugmentation:
    """The training augmentation of `ClassificationTransform` on a whole batch, each image with its own draw.

    v2.RandomResizedCrop(size, scale, ratio), RandomHorizontalFlip, RandomAffine(degrees) (the corners it uncovers
    are 0) and ColorJitter(brightness, contrast) in random order, with v2's distributions, from prepared images
    (N, 1, h, w) in 0..255, e.g. uint8 at `working_size`. v2 draws one set of parameters per call, and per image
    it costs ~1 ms of a CPU core at 64 px, twice the tiny ViT's whole training step (~0.5 ms); here crop, flip and
    rotation are composed into one sampling grid per image and the whole batch is resampled in one `grid_sample`
    (bilinear; the mask, if given, nearest): ~0.05 ms per image. Masks zero the pixels outside the moved
    node after the jitter, as `ClassificationTransform` does in masked mode. Returns float (N, 1, H, W) in [0, 255].
    The random numbers come from one draw of torch's global generator per batch, which the Trainer seeds (DataLoader
    workers: per worker)."""

    attempts = 10  # RandomResizedCrop's

    def __init__(self, size, scale=CROP_SCALE, ratio=CROP_RATIO, degrees=ROTATION_DEGREES, brightness=JITTER,
                 contrast=JITTER):
        self.size, self.scale, self.ratio, self.degrees = tuple(size), scale, ratio, degrees
        self.brightness, self.contrast = brightness, contrast
        height, width = self.size
        # Output pixel centres in grid_sample's normalized coordinates (align_corners=False).
        self.xs = ((torch.arange(width) * 2 + 1) / width - 1).view(1, 1, 1, width)
        self.ys = ((torch.arange(height) * 2 + 1) / height - 1).view(1, 1, height, 1)

    def __call__(self, pixels, masks=None) -> torch.Tensor:
        parameters = self.random_parameters(pixels.shape[0])
        planes = self.sampling_planes(parameters)
        grid = planes[:, :2].permute(0, 2, 3, 1)
        inside = planes[:, 2:].abs_().amax(dim=1, keepdim=True).le_(1)  # 1.0, or 0.0 in a corner the rotation uncovers
        moved = nnf.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved = self.jitter(moved.mul_(inside), parameters)
        if masks is not None:
            node = nnf.grid_sample(masks.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
            moved = moved.mul_(node.gt_(0))
        return moved

    def random_parameters(self, n) -> dict[str, np.ndarray]:
        """Per image: crop width and height (fractions of the sides) and centre (normalized), flip (-1 or 1),
        angle (radians), brightness and contrast factors, and whether brightness comes first."""
        uniforms = torch.rand(n, 7 + 2 * self.attempts, dtype=torch.float64).numpy()
        width, height = random_crop_fractions(uniforms[:, 7:], self.scale, self.ratio)
        signed = 2 * uniforms[:, :7] - 1  # uniform in [-1, 1)
        return {
            "width": width,
            "height": height,
            "centre_x": (1 - width) * signed[:, 0],
            "centre_y": (1 - height) * signed[:, 1],
            "flip": np.where(uniforms[:, 2] < 0.5, -1.0, 1.0),
            "angle": np.deg2rad(self.degrees * signed[:, 3]),
            "brightness": 1 + self.brightness * signed[:, 4],
            "contrast": 1 + self.contrast * signed[:, 5],
            "brightness_first": uniforms[:, 6] < 0.5,
        }

    def sampling_planes(self, p) -> torch.Tensor:
        """(n, 4, H, W): for each output pixel (x, y), the grid_sample coordinates (grid x, grid y) of its source in
        the prepared image and (u, v), where it falls in the crop (a corner outside [-1, 1]).

        (u, v) = rotation @ (x, y) about the output's centre (in pixels, hence the aspect); grid = diag(flip x width,
        height) @ (u, v) + centre. Each plane is a * x + b * y + c, with (a, b, c) per image.
        """
        cos, sin, aspect = np.cos(p["angle"]), np.sin(p["angle"]), self.size[0] / self.size[1]
        zero, crop_x = np.zeros_like(cos), p["flip"] * p["width"]
        coefficients = [
            [crop_x * cos, -crop_x * sin * aspect, p["centre_x"]],
            [p["height"] * sin / aspect, p["height"] * cos, p["centre_y"]],
            [cos, -sin * aspect, zero],
            [sin / aspect, cos, zero],
        ]
        a, b, c = torch.from_numpy(np.array(coefficients, dtype=np.float32).transpose(2, 0, 1))[..., None, None].unbind(2)
        return self.xs * a + (self.ys * b + c)

    def jitter(self, pixels, p) -> torch.Tensor:
        """In place: brightness (x * b) and contrast (c * x + (1 - c) * mean), each clamped to [0, 255], in the drawn
        order (v2.ColorJitter's on a float image)."""
        brightness, contrast, first = p["brightness"], p["contrast"], p["brightness_first"]
        steps = [  # (gain, pull towards the mean) of the first and the second step
            [np.where(first, brightness, contrast), np.where(first, 0.0, 1 - contrast)],
            [np.where(first, contrast, brightness), np.where(first, 1 - contrast, 0.0)],
        ]
        for gain, pull in torch.from_numpy(np.array(steps, dtype=np.float32))[..., None, None, None]:
            towards_mean = pull * pixels.mean(dim=(1, 2, 3), keepdim=True)  # before pixels change in place
            pixels.mul_(gain).add_(towards_mean).clamp_(0, 255)
        return pixels


class PreparedCases(torch.utils.data.Dataset):
    """A split as the model sees it, decoded, ROI cut and resized once and held in memory.

    Each row's ROI is kept as uint8 (1, H, W): at the model input size for evaluation (or training without
    augmentation), which makes the batches exactly `ClassificationTransform(train=False)`'s; at `working_size`
    for augmented training, where each batch is augmented by `BatchAugmentation` (masked mode keeps the ROI's mask
    too). Items are {"pixel_values": normalized float (C, H, W), "labels": int}; the DataLoader asks for a whole
    batch at once (`__getitems__`), for `collate_fn`.
    """

    def __init__(self, split_dataset, size, image_mean, image_std, roi="full", margin=0.1, train=False,
                 num_channels=3, image_column="image", mask_column="mask", label_column="label"):
        if roi not in ROI_MODES:
            raise ValueError(f"roi mode {roi!r} is not one of {ROI_MODES}.")
        self.scale, self.offset = normalization(image_mean, image_std, num_channels)
        if self.scale.unique().numel() == 1 and self.offset.unique().numel() == 1:
            self.scale, self.offset = self.scale[:1], self.offset[:1]  # normalize one channel, repeat it as a view
        self.num_channels = num_channels
        self.augmentation = BatchAugmentation(size) if train else None
        kept_size = working_size(size) if train else tuple(size)
        columns = [image_column, label_column] + ([mask_column] if roi != "full" else [])
        pixels, masks, labels = [], [], []
        for row in split_dataset.select_columns(columns):
            mask = row.get(mask_column)
            pixels.append(prepared_pixels(row[image_column], mask, roi, margin, kept_size))
            if train and roi == "masked":
                masks.append(prepared_mask(mask, margin, kept_size))
            labels.append(row[label_column])
        self.pixels = torch.stack(pixels) if pixels else torch.empty(0, 1, *kept_size, dtype=torch.uint8)
        self.masks = torch.stack(masks) if masks else None
        self.labels = torch.tensor(labels, dtype=torch.long)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        pixels = self.pixels.index_select(0, index)  # ~15x faster than self.pixels[index]
        if self.augmentation is not None:
            pixels = self.augmentation(pixels, None if self.masks is None else self.masks.index_select(0, index))
        values = normalized(pixels, self.scale, self.offset).expand(-1, self.num_channels, -1, -1)
        labels = self.labels.index_select(0, index).tolist()
        return [{"pixel_values": value, "labels": label} for value, label in zip(values, labels)]


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


def check_image_size(size, name="the image", min_side=MIN_IMAGE_SIDE) -> None:
    """ValueError naming `name` when `size` = (width, height) is below `min_side` on a side or above PIL's
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`): no prediction is made for such an image."""
    width, height = size
    if min(width, height) < min_side:
        raise ValueError(
            f"{name} is {width} x {height} pixels: too small for a lymph node ultrasound image (at least {min_side} "
            "pixels on each side); no prediction is made."
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{name} is too large: {width} x {height} = {width * height:,} pixels, more than the {limit:,} pixels "
            "read safely (PIL.Image.MAX_IMAGE_PIXELS, a guard against decompression bombs)."
        )


def open_image(path, name=None) -> Image.Image:
    """The one still image in the file at `path`, loaded, or ValueError naming `name` (default: the path) and why.

    Refused: a file PIL cannot read ("Cannot read image ..."), one larger than PIL's decompression-bomb limit (its
    size named, read before any pixel is decoded), one smaller than MIN_IMAGE_SIDE on a side, and a file of several
    frames (an animated GIF, PNG or WebP, a TIFF stack): using its first frame alone would be a silent guess.
    """
    name = path if name is None else name
    try:
        opened = Image.open(path)
    except Image.DecompressionBombError as error:
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found.group(1)):,} pixels" if found else str(error)
        raise ValueError(
            f"{name} is too large: {size}, more than twice the {Image.MAX_IMAGE_PIXELS:,} pixels read safely "
            "(PIL.Image.MAX_IMAGE_PIXELS, a guard against decompression bombs)."
        ) from None
    except Exception as error:
        raise ValueError(f"Cannot read image {name}: {error}") from None
    with opened:
        check_image_size(opened.size, name)
        try:
            frames = getattr(opened, "n_frames", 1)
        except Exception as error:
            raise ValueError(f"Cannot read image {name}: {error}") from None
        if frames > 1:
            raise ValueError(
                f"{name} holds {frames} frames ({opened.format}: an animation or an image stack); the models classify "
                "one still image. Save the frame to classify as an image of its own."
            )
        try:
            image = opened.copy()
            image.load()
        except Exception as error:
            raise ValueError(f"Cannot read image {name}: {error}") from None
    return image


def read_grayscale_image(path, name=None) -> tuple[Image.Image, str]:
    """(8-bit grayscale image, note) of an image file (any mode or bit depth, see `to_8bit_grayscale`), checked by
    `open_image`: predict.py and the app read every input through here.

    A file that is not one readable still image of a sensible size raises ValueError naming `name` (default: the
    path).
    """
    return to_8bit_grayscale(open_image(path, name))
