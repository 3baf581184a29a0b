"""Synthetic archives in the official format (`python lymphus.py synth`): made-up pixels and features, no patient data.

write_synthetic_archives writes Center-1.zip and Center-2.zip with the official member names, counts, image sizes,
mask extents and spreadsheet layout, taken from the official inventory (reference/official_cases.csv), for tests and
offline demos; the same arguments give the same bytes. Each zip's comment says it is synthetic (is_synthetic_archive):
an existing archive without it is never replaced.
"""

import io
import re
import secrets
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from lymphus_ml.archives import read_official_cases
from lymphus_ml.release import ARCHIVES, CENTRES, SPREADSHEET_COLUMNS


SYNTHETIC_COMMENT = b"LymphUs synthetic archive (lymphus.py synth): no patient data"


def write_synthetic_archives(output_dir, cases_per_group=None, scale=1.0, seed=0):
    """Write Center-1.zip and Center-2.zip in the official format, with made-up pixels and features.

    Sizes, mask extents, counts and spreadsheet row order come from the official inventory
    (reference/official_cases.csv); `cases_per_group` keeps the first n cases of each group and
    `scale` shrinks every size, for fast tests. Malignant nodes are rounder, brighter, heterogeneous
    and without a hilum, so a small model can learn the difference. Same arguments, same bytes.
    """
    if cases_per_group is not None and cases_per_group < 3:
        raise ValueError(
            f"cases_per_group={cases_per_group}: use at least 3, so that every split gets a case of each label"
        )
    output_dir = Path(output_dir)
    for centre in CENTRES:  # before writing anything: never replace a user's (perhaps official) archive
        path = output_dir / ARCHIVES[centre]["file"]
        if path.is_symlink() or (path.exists() and not is_synthetic_archive(path)):
            raise FileExistsError(
                f"{path} exists and is not a synthetic archive: it is not replaced; choose another --output_dir."
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    inventory = read_official_cases()
    paths = []
    for centre in CENTRES:
        rows = [row for row in inventory if f"center{row['centre']}" == centre]
        if cases_per_group is not None:
            rows = [row for row in rows if int(row["index_within_group"]) <= cases_per_group]
        rows.sort(key=lambda row: int(row["spreadsheet_row"]))
        members = {}
        for row in rows:
            image, mask = synthetic_case(row, scale, rng)
            stem = f"{ARCHIVES[centre]['folder']}/{row['group']}/{row['index_within_group']} {row['group']}"
            members[f"{stem} Image.bmp"] = encode(Image.fromarray(image), "BMP")
            members[f"{stem} Mask.tif"] = encode(Image.fromarray(mask.astype(bool)), "TIFF", compression="packbits")
            members[f"{stem} Lesion.bmp"] = encode(Image.fromarray(image * mask), "BMP")
        members[ARCHIVES[centre]["spreadsheet"]] = synthetic_spreadsheet(rows, centre, rng)
        path = output_dir / ARCHIVES[centre]["file"]
        partial = path.with_name(f".{path.name}.incomplete-{secrets.token_hex(4)}")
        try:
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.comment = SYNTHETIC_COMMENT
                for name in sorted(members):
                    info = zipfile.ZipInfo(name, date_time=(2026, 3, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, members[name])
            partial.replace(path)  # whole or not at all
        finally:
            partial.unlink(missing_ok=True)
        paths.append(path)
    return paths


def is_synthetic_archive(path):
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.comment == SYNTHETIC_COMMENT
    except (OSError, zipfile.BadZipFile):
        return False


def encode(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def synthetic_case(row, scale, rng):
    """A speckled background with one node filling the official mask's bounding box."""
    width, height = max(8, round(int(row["width"]) * scale)), max(8, round(int(row["height"]) * scale))
    y0, y1 = (min(height - 1, round(int(row[k]) * scale)) for k in ("mask_y_min", "mask_y_max"))
    x0, x1 = (min(width - 1, round(int(row[k]) * scale)) for k in ("mask_x_min", "mask_x_max"))
    # About one case in six looks like the other class, so that metrics are informative, not saturated.
    malignant = (row["group"] == "Malignant") != (rng.random() < 0.15)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx, ry, rx = (y0 + y1) / 2, (x0 + x1) / 2, max((y1 - y0) / 2, 1), max((x1 - x0) / 2, 1)
    inside = ((yy - cy) / (ry + 0.5)) ** 2 + ((xx - cx) / (rx + 0.5)) ** 2 <= 1
    inside[round(cy), round(cx)] = True
    image = 90 + 25 * rng.standard_normal((height, width))
    if malignant:  # brighter, heterogeneous node with bright specks (microcalcification-like)
        node = 150 + 35 * rng.standard_normal((height, width))
        node[rng.random((height, width)) < 0.03] = 250
    else:  # dark node with a bright central hilum stripe
        node = 45 + 12 * rng.standard_normal((height, width))
        node[np.abs(yy - cy) < max(1, ry / 4)] = 170
    image = np.where(inside, node, image)
    return np.clip(image, 0, 255).astype(np.uint8), inside.astype(np.uint8)


def synthetic_spreadsheet(rows, centre, rng):
    """The features workbook: official headers, groups in the official order, blank rows between."""
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.properties.creator = "lymphus synth"
    workbook.properties.created = workbook.properties.modified = __import__("datetime").datetime(2026, 3, 1)
    sheet = workbook.active
    sheet.append(list(SPREADSHEET_COLUMNS))
    previous_group = None
    for row in rows:
        if previous_group is not None and row["group"] != previous_group:
            sheet.append([None] * len(SPREADSHEET_COLUMNS))  # the official blank row between groups
        previous_group = row["group"]
        looks_malignant = (row["group"] == "Malignant") != (rng.random() < 0.2)
        sheet.append([int(row["index_within_group"]), row["group"], *synthetic_features(looks_malignant, rng)])
    if centre == "center2":  # centre 2's sheet ends with eight blank (formatted) rows
        for _ in range(8):
            sheet.append([None] * len(SPREADSHEET_COLUMNS))
    last_row = sheet.max_row
    sheet.cell(row=last_row, column=1).number_format = "0"  # keeps trailing blank rows in the file
    buffer = io.BytesIO()
    workbook.save(buffer)
    return reproducible_xlsx(buffer.getvalue())


def reproducible_xlsx(xlsx_bytes, when=(2026, 3, 1, 0, 0, 0)):
    """openpyxl stamps the save time into docProps/core.xml and every zip entry: fix both, for same-bytes output."""
    stamp = "%04d-%02d-%02dT%02d:%02d:%02dZ" % when
    output = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(xlsx_bytes)) as source,
        zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>" + stamp.encode(), data)
            target.writestr(zipfile.ZipInfo(info.filename, date_time=when), data, compress_type=zipfile.ZIP_DEFLATED)
    return output.getvalue()


def synthetic_features(malignant, rng):
    """Plausible, made-up radiologist features that lean the way the literature says they do."""
    long_axis = round(float(rng.uniform(8, 30)), 1)
    short_axis = round(long_axis * float(rng.uniform(0.55, 0.95) if malignant else rng.uniform(0.3, 0.6)), 1)
    echo = rng.choice(3, p=[0.3, 0.5, 0.2] if malignant else [0.8, 0.05, 0.15])
    homogeneous = int(rng.random() < (0.3 if malignant else 0.8))

    def yes(p):
        return int(rng.random() < p)

    return [
        long_axis,
        short_axis,
        round(long_axis / short_axis, 2),
        int(echo == 0),
        int(echo == 1),
        int(echo == 2),
        homogeneous,
        None if homogeneous else int(rng.integers(1, 4)),  # blank for homogeneous nodes
        yes(0.8 if malignant else 0.2),
        yes(0.4 if malignant else 0.6),
        yes(0.5 if malignant else 0.05),
        yes(0.2 if malignant else 0.02),
        int(rng.integers(0, 3)),
        int(rng.integers(0, 2)),
        yes(0.3 if malignant else 0.1),
        yes(0.25 if malignant else 0.03),
    ]

