"""One case's members decoded and checked: the image (8-bit grayscale, kept as the release's BMP bytes), the mask
(binary, the image's size, not empty, stored as a 0/1 PNG) and Lesion.bmp (checked to be image x mask, not stored).

Every image's header is read first and its size checked (lymphus_ml.release.MAX_IMAGE_PIXELS) before any pixel is
decoded; whatever cannot be decoded raises LymphUsFormatError naming the member.
"""

import io
import zlib

import numpy as np
from PIL import Image

from lymphus_ml.release import MAX_IMAGE_PIXELS, LymphUsFormatError


def load_case(case):
    """Decode and check one case; return (example, whether Lesion.bmp is still image x mask)."""
    source, members = case["source"], case["members"]
    image_bytes = source.read(members["Image.bmp"])
    image = decode_image(image_bytes, source.describe(members["Image.bmp"]))
    if image.mode != "L":
        raise LymphUsFormatError(
            f"{source.describe(members['Image.bmp'])}: mode {image.mode}, expected 8-bit grayscale (L)"
        )
    mask = decode_mask(source.read(members["Mask.tif"]), image.size, source.describe(members["Mask.tif"]))
    lesion_matches = "Lesion.bmp" not in members or lesion_is_image_times_mask(
        source, members["Lesion.bmp"], image_bytes, image, mask
    )
    mask_png = io.BytesIO()
    Image.fromarray(mask).save(mask_png, format="PNG", compress_level=1)  # lossless at any level; 1 is fastest
    example = {
        # The source BMP bytes, untouched: lossless and exactly as released.
        "image": {"bytes": image_bytes, "path": None},
        "mask": {"bytes": mask_png.getvalue(), "path": None},
        "label": case["label"],
        "centre": case["centre"],
        "case_id": case["case_id"],
        "patient_id": case["patient_id"],
        "fold": case.get("fold"),
        **case["features"],
    }
    return example, lesion_matches


def lesion_is_image_times_mask(source, member, image_bytes, image, mask):
    """Is Lesion.bmp still image x mask, as in the release?

    Fast path: the release's Lesion.bmp is Image.bmp's bytes with the pixels outside the node zeroed, so those
    expected bytes are built from the image and compared with the archive's CRC-32 (or the file's bytes), without
    inflating the lesion. Anything else (another header, bottom-up or not) falls back to decoding and comparing
    pixels, which is the definition.
    """
    pixels = np.asarray(image)
    offset = int.from_bytes(image_bytes[10:14], "little")
    stride = (image.width + 3) // 4 * 4
    end = offset + stride * image.height
    if image_bytes[:2] == b"BM" and len(image_bytes) >= end and int.from_bytes(image_bytes[28:30], "little") == 8:
        rows = np.frombuffer(image_bytes, np.uint8, count=stride * image.height, offset=offset).reshape(
            image.height, stride
        )
        keep = np.zeros_like(rows)
        keep[:, : image.width] = mask[::-1] if int.from_bytes(image_bytes[22:26], "little", signed=True) > 0 else mask
        expected = image_bytes[:offset] + (rows * keep).tobytes() + image_bytes[end:]
        crc = source.crc32(member)
        if (zlib.crc32(expected) == crc) if crc is not None else (expected == source.read(member)):
            return True
    lesion = open_image(source.read(member), source.describe(member))
    if lesion.size != image.size:
        return False
    lesion = np.asarray(load_image(lesion, source.describe(member)).convert("L"))
    return np.array_equal(lesion, pixels * mask)


def open_image(data, where):
    """The image with only its header read: its size is checked (MAX_IMAGE_PIXELS) before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as error:
        raise LymphUsFormatError(f"{where}: cannot be decoded as an image ({error})") from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise LymphUsFormatError(
            f"{where}: {image.width} x {image.height} pixels, more than the {MAX_IMAGE_PIXELS:,} allowed; not decoded."
        )
    return image


def load_image(image, where):
    try:
        image.load()
    except Exception as error:
        raise LymphUsFormatError(f"{where}: cannot be decoded as an image ({error})") from None
    return image


def decode_image(data, where):
    return load_image(open_image(data, where), where)


def decode_mask(data, image_size, where):
    """The mask as a uint8 array of 0 (background) and 1 (node); binary, the image's size, not empty."""
    mask = open_image(data, where)
    if mask.size != image_size:
        raise LymphUsFormatError(f"{where}: mask size {mask.size} differs from the image's {image_size}")
    load_image(mask, where)
    if mask.mode == "1":
        pixels = np.asarray(mask, dtype=bool)
    elif mask.mode in ("L", "P", "I;16", "I"):
        values = np.unique(np.asarray(mask))
        if not set(values.tolist()) <= {0, 1} and not set(values.tolist()) <= {0, 255}:
            raise LymphUsFormatError(f"{where}: mask is not binary, it holds values {values[:10].tolist()}")
        pixels = np.asarray(mask) > 0
    else:
        raise LymphUsFormatError(f"{where}: mask mode {mask.mode} is not a binary mask")
    if not pixels.any():
        raise LymphUsFormatError(f"{where}: mask is empty (no node pixel)")
    return pixels.astype(np.uint8)

