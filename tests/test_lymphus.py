"""The dataset builder, export and push, on synthetic archives in the official format."""

import errno
import hashlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import datasets
import numpy as np
import openpyxl
import pytest
from datasets.exceptions import NonMatchingChecksumError
from PIL import Image

import lymphus
from lymphus_ml import export_folder


LYMPHUS_PY = Path(lymphus.__file__)

OFFICIAL_COUNTS = {"center1": {"benign": 99, "malignant": 81}, "center2": {"benign": 76, "malignant": 82}}


@pytest.fixture()
def small_archives(tmp_path):
    directory = tmp_path / "archives"
    lymphus.write_synthetic_archives(directory, cases_per_group=3, scale=0.1)
    return directory


def build(data_dir, config="center1", verification_mode="basic_checks", cache_dir=None):
    builder = lymphus.LymphUs(config_name=config, data_dir=str(data_dir), cache_dir=str(cache_dir or Path(data_dir) / "cache"))
    builder.download_and_prepare(verification_mode=verification_mode)
    return builder.as_dataset()


def rewrite_archive(path, replace=None, add=None, remove=()):
    """Copy an archive in place with some members replaced, added or removed."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name in remove:
        del members[name]
    members.update(replace or {})
    members.update(add or {})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def edit_spreadsheet(path, centre, edit):
    """Apply `edit(sheet)` to the features workbook inside a centre's archive."""
    member = lymphus._ARCHIVES[centre]["spreadsheet"]
    with zipfile.ZipFile(path) as archive:
        workbook = openpyxl.load_workbook(io.BytesIO(archive.read(member)))
    edit(workbook.active)
    buffer = io.BytesIO()
    workbook.save(buffer)
    rewrite_archive(path, replace={member: buffer.getvalue()})


def find_row(sheet, group, number):
    for row in range(2, sheet.max_row + 1):
        if sheet.cell(row, 1).value == number and sheet.cell(row, 2).value == group:
            return row
    raise AssertionError(f"no row {group} {number}")


def png(array, mode=None):
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="TIFF" if mode == "1" else "PNG")
    return buffer.getvalue()


# The official format


def test_synthetic_archives_follow_the_official_inventory(official_archives):
    inventory = lymphus.read_official_cases()
    for centre, expected_members in (("center1", 541), ("center2", 475)):
        with zipfile.ZipFile(official_archives / lymphus._ARCHIVES[centre]["file"]) as archive:
            infos = archive.infolist()
            assert len(infos) == expected_members and not any(info.is_dir() for info in infos)
            row = next(r for r in inventory if f"center{r['centre']}" == centre and r["mask_touches_image_border"] == "false")
            stem = f"{lymphus._ARCHIVES[centre]['folder']}/{row['group']}/{row['index_within_group']} {row['group']}"
            image_bytes = archive.read(f"{stem} Image.bmp")
            image = Image.open(io.BytesIO(image_bytes))
            mask = np.asarray(Image.open(io.BytesIO(archive.read(f"{stem} Mask.tif"))))
            lesion = np.asarray(Image.open(io.BytesIO(archive.read(f"{stem} Lesion.bmp"))))
        width, height = int(row["width"]), int(row["height"])
        assert image.mode == "L" and image.size == (width, height)
        assert len(image_bytes) == int(row["image_bytes"]) == 1078 + ((width + 3) // 4 * 4) * height
        ys, xs = np.nonzero(mask)
        assert (ys.min(), ys.max(), xs.min(), xs.max()) == tuple(int(row[k]) for k in ("mask_y_min", "mask_y_max", "mask_x_min", "mask_x_max"))
        assert np.array_equal(lesion, np.asarray(image) * mask)


def test_synthetic_spreadsheet_has_official_headers_and_blank_rows(official_archives):
    blank_rows = {"center1": [83], "center2": [78, *range(161, 169)]}
    for centre in lymphus.CENTRES:
        with zipfile.ZipFile(official_archives / lymphus._ARCHIVES[centre]["file"]) as archive:
            sheet = openpyxl.load_workbook(io.BytesIO(archive.read(lymphus._ARCHIVES[centre]["spreadsheet"]))).active
        rows = list(sheet.iter_rows(values_only=True))
        assert list(rows[0]) == list(lymphus.SPREADSHEET_COLUMNS)
        assert [n for n, row in enumerate(rows, start=1) if all(v is None for v in row)] == blank_rows[centre]


def test_synthetic_archives_are_reproducible(tmp_path):
    first = lymphus.write_synthetic_archives(tmp_path / "a", cases_per_group=3, scale=0.1, seed=3)
    time.sleep(1.1)  # across a second boundary: no save time may leak into the bytes
    second = lymphus.write_synthetic_archives(tmp_path / "b", cases_per_group=3, scale=0.1, seed=3)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


# Counts, splits, columns


def test_counts_per_subset_centre_and_label(official_export):
    for centre, expected in OFFICIAL_COUNTS.items():
        dataset = datasets.concatenate_datasets(list(datasets.load_dataset(str(official_export), centre).values()))
        names = dataset.features["label"].names
        assert {name: list(dataset["label"]).count(i) for i, name in enumerate(names)} == expected
        assert set(list(dataset["centre"])) == {centre}
    everything = datasets.load_dataset(str(official_export), "all")
    assert sum(len(split) for split in everything.values()) == 338
    external = datasets.load_dataset(str(official_export), "center1_to_center2")
    assert len(external["test"]) == 158 and set(list(external["test"]["centre"])) == {"center2"}
    assert set(list(external["train"]["centre"])) == set(list(external["validation"]["centre"])) == {"center1"}


def test_splits_are_patient_disjoint_and_stratified(official_export):
    for centre, expected in OFFICIAL_COUNTS.items():
        dataset = datasets.load_dataset(str(official_export), centre)
        patients = {split: set(list(dataset[split]["patient_id"])) for split in lymphus.SPLITS}
        assert not patients["train"] & patients["validation"]
        assert not patients["train"] & patients["test"]
        assert not patients["validation"] & patients["test"]
        assert len(set(list(dataset["train"]["case_id"])) | set(list(dataset["validation"]["case_id"])) | set(list(dataset["test"]["case_id"]))) == sum(expected.values())
        for split, fraction in lymphus.SPLIT_FRACTIONS.items():
            labels = np.array(list(dataset[split]["label"]))
            for label, name in enumerate(lymphus.LABEL_NAMES):
                assert abs((labels == label).sum() - fraction * expected[name]) <= 1, (centre, split, name)


def test_splits_are_identical_across_builds_and_sources(official_export, official_archives, tmp_path):
    second = lymphus.export_dataset(official_archives, tmp_path / "again", "basic_checks")
    for config in ("center1", "center2", "all"):
        first, again = datasets.load_dataset(str(official_export), config), datasets.load_dataset(str(second), config)
        for split in lymphus.SPLITS:
            assert list(first[split]["case_id"]) == list(again[split]["case_id"])
    # The unzipped folders a user has give the same membership as the archive.
    extracted = tmp_path / "extracted"
    with zipfile.ZipFile(official_archives / "Center-1.zip") as archive:
        archive.extractall(extracted)
    from_folder = build(extracted, "center1", cache_dir=tmp_path / "cache")
    first = datasets.load_dataset(str(official_export), "center1")
    for split in lymphus.SPLITS:
        assert sorted(list(from_folder[split]["case_id"])) == sorted(list(first[split]["case_id"]))


def test_assign_splits_ignores_input_order():
    patients = [(f"p{i}", "benign" if i % 3 else "malignant") for i in range(50)]
    reordered = list(reversed(patients))
    assert lymphus.assign_splits(patients) == lymphus.assign_splits(reordered)


def fold_class_counts(folds, patients):
    return sorted(tuple(sum(1 for p, l in patients if folds[p] == k and l == name) for name in lymphus.LABEL_NAMES) for k in set(folds.values()))


@pytest.mark.parametrize("counts", [(99, 81), (76, 82), (10, 10), (7, 23)])
def test_folds_are_patient_grouped_and_stratified_as_stratified_group_kfold(counts):
    from sklearn.model_selection import StratifiedGroupKFold

    patients = [(f"c-{name}-{i}", name) for name, n in zip(lymphus.LABEL_NAMES, counts) for i in range(1, n + 1)]
    splits = lymphus.assign_splits(patients)
    folds = lymphus.assign_folds(patients, splits)
    assert lymphus.assign_splits(patients) == splits  # split membership is not changed by the folds
    assert set(folds) == {p for p, _ in patients if splits[p] != "test"}
    assert set(folds.values()) == set(range(lymphus.N_FOLDS))
    development = [(p, l) for p, l in patients if splits[p] != "test"]
    # Each patient's cases in one fold, and the same per-fold class counts as scikit-learn's StratifiedGroupKFold
    # (deterministic without shuffle) on the same patients, up to the fold numbering.
    y = np.array([lymphus.LABEL_NAMES.index(l) for _, l in development])
    reference = StratifiedGroupKFold(lymphus.N_FOLDS).split(np.zeros(len(y)), y, groups=[p for p, _ in development])
    reference_counts = sorted(tuple(int((y[held_out] == c).sum()) for c in range(2)) for _, held_out in reference)
    assert fold_class_counts(folds, development) == reference_counts
    for label in lymphus.LABEL_NAMES:
        per_fold = [sum(1 for p, l in development if folds[p] == k and l == label) for k in range(lymphus.N_FOLDS)]
        assert max(per_fold) - min(per_fold) <= 1


def test_folds_ignore_input_order_and_group_a_patients_cases():
    patients = [(f"p{i // 2}", "benign" if (i // 2) % 3 else "malignant") for i in range(100)]  # two cases per patient
    splits = lymphus.assign_splits(patients)
    reordered = list(reversed(patients))
    assert lymphus.assign_folds(patients, splits) == lymphus.assign_folds(reordered, lymphus.assign_splits(reordered))


def test_export_folds_are_the_same_in_all_and_centre_configs(small_export):
    everything = datasets.load_dataset(str(small_export), "all")
    fold_of = {}
    for centre in lymphus.CENTRES:
        dataset = datasets.load_dataset(str(small_export), centre)
        assert dataset["train"].features["fold"] == datasets.Value("int8")
        assert set(dataset["test"]["fold"]) == {None}
        development = datasets.concatenate_datasets([dataset["train"], dataset["validation"]])
        patients = list(zip(development["patient_id"], dataset["train"].features["label"].int2str(list(development["label"]))))
        test_patients = [(p, "x") for p in dataset["test"]["patient_id"]]
        splits = {p: "train" for p, _ in patients} | {p: "test" for p, _ in test_patients}
        assert dict(zip(development["patient_id"], development["fold"])) == lymphus.assign_folds(patients, splits)
        fold_of.update(zip(development["case_id"], development["fold"]))
        # Both classes in every held-out fold of these 10-per-label archives (what --cv_folds needs).
        for k in range(lymphus.N_FOLDS):
            assert set(development.filter(lambda f: f == k, input_columns="fold")["label"]) == {0, 1}
    for split in ("train", "validation"):
        assert dict(zip(everything[split]["case_id"], everything[split]["fold"])) == {c: fold_of[c] for c in everything[split]["case_id"]}
    assert set(everything["test"]["fold"]) == {None}
    card = (Path(small_export) / "README.md").read_text()
    assert "### Cross-validation folds" in card and 'input_columns="fold"' in card


def test_all_is_the_union_of_the_centres(official_export):
    everything = datasets.load_dataset(str(official_export), "all")
    for split in lymphus.SPLITS:
        per_centre = [list(datasets.load_dataset(str(official_export), centre, split=split)["case_id"]) for centre in lymphus.CENTRES]
        assert sorted(list(everything[split]["case_id"])) == sorted(per_centre[0] + per_centre[1])


def test_builder_all_equals_the_export(small_archives, tmp_path):
    export = lymphus.export_dataset(small_archives, tmp_path / "export", "basic_checks")
    for config in ("all", "center2_to_center1"):
        built = build(small_archives, config, cache_dir=tmp_path / "cache")
        loaded = datasets.load_dataset(str(export), config)
        for split in lymphus.SPLITS:
            assert sorted(list(built[split]["case_id"])) == sorted(list(loaded[split]["case_id"]))


def test_images_masks_and_typed_columns(official_export, official_archives):
    dataset = datasets.load_dataset(str(official_export), "center2", split="validation")
    features = dataset.features
    assert features["label"].names == ["benign", "malignant"]
    for name in lymphus.MEASUREMENT_FEATURES:
        assert features[name].dtype == "float64"
    for name in lymphus.CODED_FEATURES:
        assert features[name].dtype == "int32"
    # Blank cells (prominent echogenicity of homogeneous nodes) are nulls, never 0.
    assert None in datasets.load_dataset(str(official_export), "all", split="train")["prominent_echogenicity"]
    with zipfile.ZipFile(official_archives / "Center-2.zip") as archive:
        for example in dataset.select(range(5)):
            image, mask = example["image"], example["mask"]
            assert image.mode == "L" and mask.mode == "L" and image.size == mask.size
            assert set(np.unique(np.asarray(mask)).tolist()) == {0, 1}
            centre, group, number = example["case_id"].split("-")
            stem = f"Center 2/{group.capitalize()}/{number} {group.capitalize()}"
            source_image = Image.open(io.BytesIO(archive.read(f"{stem} Image.bmp")))
            source_mask = np.asarray(Image.open(io.BytesIO(archive.read(f"{stem} Mask.tif"))))
            assert np.array_equal(np.asarray(image), np.asarray(source_image))  # lossless
            assert np.array_equal(np.asarray(mask), source_mask.astype(np.uint8))
            assert example["label"] == lymphus.LABEL_NAMES.index(group)


def test_card_documents_configs_features_and_provenance(official_export):
    card = (official_export / "README.md").read_text()
    for config in lymphus.LymphUs.BUILDER_CONFIGS:
        assert f"config_name: {config.name}" in card
    for column in lymphus._FEATURES:
        assert f"| `{column}` |" in card
    for archive in lymphus._ARCHIVES.values():
        assert archive["sha256"] in card
    assert "SYNTHETIC DATA" in card and "Not for clinical use" in card and "@article{abbasianardakani2023metastatic" in card
    assert "| `all` | Both centres; each split is the union of the per-centre splits. For pooled training. | 237 (122 / 115) | 34 (18 / 16) | 67 (35 / 32) |" in card


# Checksums


def test_unofficial_archive_is_refused_naming_both_hashes(small_archives, tmp_path):
    with pytest.raises(NonMatchingChecksumError) as error:
        lymphus.export_dataset(small_archives, tmp_path / "out")
    # Both centres are refused, each in its own worker: the message names whichever failed first.
    (centre,) = [centre for centre in lymphus.CENTRES if lymphus._ARCHIVES[centre]["file"] in str(error.value)]
    actual = hashlib.sha256((small_archives / lymphus._ARCHIVES[centre]["file"]).read_bytes()).hexdigest()
    assert actual in str(error.value)
    assert lymphus._ARCHIVES[centre]["sha256"] in str(error.value) and "basic_checks" in str(error.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # no staging folder, no lock file


def test_unofficial_extracted_member_is_refused(small_archives, tmp_path):
    with zipfile.ZipFile(small_archives / "Center-1.zip") as archive:
        archive.extractall(tmp_path / "extracted")
    with pytest.raises(NonMatchingChecksumError, match="member 'Center 1/.*': SHA-256 [0-9a-f]{64} is not the official member's [0-9a-f]{64}"):
        build(tmp_path / "extracted", verification_mode="all_checks", cache_dir=tmp_path / "cache")


def test_missing_source_names_both_places(tmp_path):
    with pytest.raises(FileNotFoundError, match="Center-1.zip.*Center 1"):
        build(tmp_path, cache_dir=tmp_path / "cache")


# Content checks: each a clear error naming the case, and no complete-looking output


def assert_export_fails(archives, tmp_path, match, exception=lymphus.LymphUsFormatError):
    with pytest.raises(exception, match=match):
        lymphus.export_dataset(archives, tmp_path / "out", "basic_checks")
    assert not (tmp_path / "out" / "README.md").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_row_without_image(small_archives, tmp_path):
    rewrite_archive(small_archives / "Center-1.zip", remove=["Center 1/Benign/2 Benign Image.bmp"])
    assert_export_fails(small_archives, tmp_path, r"row \d+ \(Group Benign, Image name 2\): no member 'Center 1/Benign/2 Benign Image.bmp'")


def test_image_without_row(small_archives, tmp_path):
    edit_spreadsheet(small_archives / "Center-2.zip", "center2", lambda sheet: sheet.delete_rows(find_row(sheet, "Malignant", 3)))
    assert_export_fails(small_archives, tmp_path, "Center 2/Malignant/3 Malignant.*no row of the spreadsheet has Group Malignant and Image name 3")


def test_sheet_group_disagrees_with_folder(small_archives, tmp_path):
    def relabel(sheet):
        sheet.cell(find_row(sheet, "Malignant", 3), 2).value = "Benign"
        sheet.delete_rows(find_row(sheet, "Benign", 3))

    edit_spreadsheet(small_archives / "Center-1.zip", "center1", relabel)
    rewrite_archive(small_archives / "Center-1.zip", remove=[f"Center 1/Benign/3 Benign {kind}" for kind in ("Image.bmp", "Mask.tif", "Lesion.bmp")])
    assert_export_fails(small_archives, tmp_path, "Group Benign, Image name 3.*Malignant folder has case 3")


def test_file_of_one_group_in_the_other_folder(small_archives, tmp_path):
    archive = small_archives / "Center-1.zip"
    with zipfile.ZipFile(archive) as z:
        data = z.read("Center 1/Benign/1 Benign Image.bmp")
    rewrite_archive(archive, add={"Center 1/Malignant/1 Benign Image.bmp": data})
    assert_export_fails(small_archives, tmp_path, "'Center 1/Malignant/1 Benign Image.bmp': a Benign file in the Malignant folder")


def test_mask_of_another_size(small_archives, tmp_path):
    rewrite_archive(small_archives / "Center-1.zip", replace={"Center 1/Benign/1 Benign Mask.tif": png(np.ones((5, 7), bool), "1")})
    assert_export_fails(small_archives, tmp_path, r"'Center 1/Benign/1 Benign Mask.tif': mask size \(7, 5\) differs from the image's")


def test_mask_not_binary_or_empty(small_archives, tmp_path):
    archive = small_archives / "Center-1.zip"
    with zipfile.ZipFile(archive) as z:
        size = Image.open(io.BytesIO(z.read("Center 1/Benign/1 Benign Image.bmp"))).size
    grey = np.zeros(size[::-1], np.uint8)
    grey[1:3, 1:3] = 128
    grey[0, 0] = 255
    rewrite_archive(archive, replace={"Center 1/Benign/1 Benign Mask.tif": png(grey)})
    assert_export_fails(small_archives, tmp_path, r"1 Benign Mask.tif': mask is not binary, it holds values \[0, 128, 255\]")
    rewrite_archive(archive, replace={"Center 1/Benign/1 Benign Mask.tif": png(np.zeros(size[::-1], bool), "1")})
    assert_export_fails(small_archives, tmp_path, r"1 Benign Mask.tif': mask is empty")


def test_image_that_does_not_decode(small_archives, tmp_path):
    rewrite_archive(small_archives / "Center-2.zip", replace={"Center 2/Malignant/2 Malignant Image.bmp": b"BM not really"})
    assert_export_fails(small_archives, tmp_path, "'Center 2/Malignant/2 Malignant Image.bmp': cannot be decoded as an image")


def test_unexpected_member_is_an_error_and_os_debris_is_ignored(small_archives, tmp_path):
    rewrite_archive(small_archives / "Center-1.zip", add={"__MACOSX/Center 1/._x": b"x", "Center 1/.DS_Store": b"x", "Center 1/Benign/Thumbs.db": b"x"})
    assert len(build(small_archives, cache_dir=tmp_path / "cache")["train"]) > 0
    rewrite_archive(small_archives / "Center-1.zip", add={"Center 1/Benign/notes.txt": b"x"})
    assert_export_fails(small_archives, tmp_path, "member 'Center 1/Benign/notes.txt': unexpected member")


def test_wrong_headers(small_archives, tmp_path):
    edit_spreadsheet(small_archives / "Center-1.zip", "center1", lambda sheet: setattr(sheet.cell(1, 3), "value", "Max diameter"))
    assert_export_fails(small_archives, tmp_path, r"Database 1.xlsx': row 1 headers differ.*missing \['Maximum diameter'\], unexpected \['Max diameter'\]")


def test_cell_values_blank_words_and_bad_values(small_archives, tmp_path):
    def edit(sheet):
        row = find_row(sheet, "Benign", 1)
        sheet.cell(row, 3).value = None                 # Maximum diameter blank -> null
        sheet.cell(row, 6).value = "Yes"                # Hypoechoic -> 1
        sheet.cell(row, 7).value = " no "               # Hyperechoic -> 0
        sheet.cell(row, 13).value = "2"                 # Microcalcifications numeric text -> 2

    edit_spreadsheet(small_archives / "Center-1.zip", "center1", edit)
    dataset = datasets.concatenate_datasets(list(build(small_archives, cache_dir=tmp_path / "cache").values()))
    case = dataset[list(dataset["case_id"]).index("center1-benign-1")]
    assert case["maximum_diameter"] is None
    assert (case["hypoechoic"], case["hyperechoic"], case["microcalcifications"]) == (1, 0, 2)

    edit_spreadsheet(small_archives / "Center-1.zip", "center1", lambda sheet: setattr(sheet.cell(find_row(sheet, "Benign", 2), 14), "value", "maybe"))
    assert_export_fails(small_archives, tmp_path, r"Database 1.xlsx' row (\d+) column 'Necrosis': value 'maybe' is not a number or a yes/no word")
    edit_spreadsheet(small_archives / "Center-1.zip", "center1", lambda sheet: setattr(sheet.cell(find_row(sheet, "Benign", 2), 14), "value", 1.5))
    assert_export_fails(small_archives, tmp_path, r"column 'Necrosis': value 1.5 is not a whole number")


def test_duplicate_rows(small_archives, tmp_path):
    def duplicate(sheet):
        row = find_row(sheet, "Benign", 1)
        sheet.append([sheet.cell(row, c).value for c in range(1, 19)])

    edit_spreadsheet(small_archives / "Center-1.zip", "center1", duplicate)
    assert_export_fails(small_archives, tmp_path, r"rows \d+ and \d+: both are Group Benign, Image name 1")


def test_lesion_that_is_not_image_times_mask_warns_naming_the_case(small_archives, tmp_path, caplog):
    archive = small_archives / "Center-1.zip"
    with zipfile.ZipFile(archive) as z:
        image = Image.open(io.BytesIO(z.read("Center 1/Malignant/2 Malignant Image.bmp")))
    buffer = io.BytesIO()
    image.save(buffer, format="BMP")  # the whole image, not image x mask
    rewrite_archive(archive, replace={"Center 1/Malignant/2 Malignant Lesion.bmp": buffer.getvalue()})
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        build(small_archives, cache_dir=tmp_path / "cache")
    assert "center1-malignant-2" in caplog.text and "Lesion.bmp is no longer image x mask" in caplog.text


def test_export_refuses_a_non_empty_output_dir(small_archives, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        lymphus.export_dataset(small_archives, tmp_path / "out", "basic_checks")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_command_line_synth_and_export(tmp_path):
    lymphus.main(["synth", "--output_dir", str(tmp_path / "a"), "--cases_per_group", "3", "--scale", "0.1"])
    lymphus.main(["export", "--data_dir", str(tmp_path / "a"), "--output_dir", str(tmp_path / "out"), "--verification_mode", "basic_checks"])
    assert len(datasets.load_dataset(str(tmp_path / "out"), "center2")["train"]) == 2
    # No build leftovers; the marker that makes it ours; the mask classes for segmentation tools.
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        lymphus.EXPORT_MARKER, "README.md", "data", "eval.yaml", "id2label.json"]
    assert json.loads((tmp_path / "out" / "id2label.json").read_text()) == {"0": "background", "1": "lymph_node"}


# Hub


def rows(dataset):
    dataset = dataset.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
    return sorted((dict(row, image=row["image"]["bytes"], mask=row["mask"]["bytes"]) for row in dataset), key=lambda row: row["case_id"])


def test_push_then_load_dataset_from_the_hub(small_archives, tmp_path, local_hub, monkeypatch, capsys):
    export = lymphus.export_dataset(small_archives, tmp_path / "export", "basic_checks")
    repo_id = f"{local_hub.user}/lymphus-{tmp_path.name}"
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    lymphus.main(["push", str(export), "--repo_id", repo_id, "--private"])
    output = capsys.readouterr().out
    assert local_hub.token not in output and "PRIVATE repo" in output
    for config in ("center1", "all", "center1_to_center2"):
        remote = datasets.load_dataset(repo_id, config)
        local = datasets.load_dataset(str(export), config)
        assert set(remote) == set(lymphus.SPLITS)
        for split in lymphus.SPLITS:
            assert rows(remote[split]) == rows(local[split])
    from huggingface_hub import HfApi

    assert HfApi(token=local_hub.token).repo_info(repo_id, repo_type="dataset").private


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path, local_hub):
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    (tmp_path / ".env").write_text("HF_TOKEN=hf_secret")
    with pytest.raises(ValueError, match=f"has no {re.escape(lymphus.EXPORT_MARKER)} .*: `push` uploads only an unchanged folder written by `python lymphus.py export`"):
        lymphus.push_export(tmp_path, f"{local_hub.user}/not-an-export", token=local_hub.token)
    assert not [r for r in local_hub.find_requests("POST", "/api/repos/create") if (r["json"] or {}).get("name") == "not-an-export"]


def test_push_uploads_exactly_the_marker_files_and_says_whether_the_repo_is_public(small_archives, tmp_path, local_hub, monkeypatch, capsys):
    export = lymphus.export_dataset(small_archives, tmp_path / "export", "basic_checks")
    repo_id = f"{local_hub.user}/lymphus-public-{tmp_path.name}"
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    lymphus.main(["push", str(export), "--repo_id", repo_id])
    assert "PUBLIC repo" in capsys.readouterr().out
    from huggingface_hub import HfApi

    api = HfApi(token=local_hub.token)
    uploaded = set(api.list_repo_files(repo_id, repo_type="dataset"))
    listed = set(json.loads((export / lymphus.EXPORT_MARKER).read_text())["files"])
    on_disk = {path.relative_to(export).as_posix() for path in export.rglob("*") if path.is_file()}
    assert uploaded - {".gitattributes"} == listed == on_disk - {lymphus.EXPORT_MARKER} and {"id2label.json", "eval.yaml"} <= listed
    assert not api.repo_info(repo_id, repo_type="dataset").private
    # Asking for a private repo that exists and is public uploads nothing.
    commits = len(local_hub.commits(repo_id, "dataset"))
    with pytest.raises(ValueError, match=f"{repo_id} already exists and is public, but --private was given: nothing was uploaded"):
        lymphus.main(["push", str(export), "--repo_id", repo_id, "--private"])
    assert len(local_hub.commits(repo_id, "dataset")) == commits


def add_file(relative, text="mine"):
    def change(export):
        (export / relative).parent.mkdir(parents=True, exist_ok=True)
        (export / relative).write_text(text)
    return change


PUSH_REFUSALS = {
    "patients_private.csv": (add_file("patients_private.csv", "patient,name\n1,A. Person\n"), "'patients_private.csv' (not written by the export)"),
    "dotfile": (add_file(".env", "HF_TOKEN=hf_secret"), "'.env' (not written by the export)"),
    "dotfile-in-data": (add_file("data/.credentials"), "'data/.credentials' (not written by the export)"),
    "dot-folder": (add_file(".cache/token"), "'.cache/' (not written by the export)"),
    "changed": (add_file("README.md", "my own card"), "'README.md' (changed since the export)"),
    "same-size-change": (lambda export: (export / "id2label.json").write_bytes((export / "id2label.json").read_bytes().upper()), "'id2label.json' (changed since the export)"),
    "missing": (lambda export: (export / "id2label.json").unlink(), f"'id2label.json' (listed in {lymphus.EXPORT_MARKER} but missing)"),
    "link": (lambda export: (export / "notes").symlink_to("/etc/hostname"), "'notes' (a link)"),
}


def test_push_refuses_an_export_holding_anything_its_marker_does_not_vouch_for(small_archives, tmp_path, local_hub, monkeypatch):
    import shutil

    original = lymphus.export_dataset(small_archives, tmp_path / "export", "basic_checks")
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    requests = len(local_hub.requests)
    for case, (change, culprit) in PUSH_REFUSALS.items():
        export = shutil.copytree(original, tmp_path / case, symlinks=True)
        change(export)
        with pytest.raises(ValueError, match=re.escape(culprit) + ".*exactly the files its .lymphus-export.json lists. Nothing was uploaded"):
            lymphus.main(["push", str(export), "--repo_id", f"{local_hub.user}/refused-{case}"])
    assert local_hub.requests[requests:] == []  # refused before any call to the Hub: no repo, no commit


TAMPERED_MARKERS = {
    "not-json": (b'{"format": "lymphus-export", "files": {', "is not valid JSON"),
    "not-utf8": (b"\xff\xfe{}", "is not valid JSON"),
    "a-list": (b"[]", "is not an export marker"),
    "files-a-list": (b'{"format": "lymphus-export", "files": ["README.md"]}', "is not an export marker"),
    "bytes-a-string": (None, "not {\"bytes\": <size>, \"sha256\": <64 hex digits>}"),
    "outside": ('../secret.txt', "lists '../secret.txt', which is not a file name inside the export"),
    "absolute": ("ABSOLUTE", "which is not a file name inside the export"),  # tamper() writes the path
    "dotfile": ('.env', "lists '.env', which is not a file name inside the export"),
}


def tamper(export, case):
    content, _ = TAMPERED_MARKERS[case]
    marker_path = export / lymphus.EXPORT_MARKER
    marker = json.loads(marker_path.read_text())
    if case == "bytes-a-string":
        marker["files"]["README.md"]["bytes"] = str(marker["files"]["README.md"]["bytes"])
        content = json.dumps(marker).encode()
    elif isinstance(content, str):  # a listed name outside the export, with the right size and hash of what is there
        if content == "ABSOLUTE":
            content = str(export.parent.resolve() / "secret.txt")
        target = Path(content) if content.startswith("/") else export / content
        if not target.exists():
            target.write_text("not the export's")
        marker["files"][content] = {"bytes": target.stat().st_size, "sha256": hashlib.sha256(target.read_bytes()).hexdigest()}
        content = json.dumps(marker).encode()
    marker_path.write_bytes(content)


def run_command(argv, capsys):
    """lymphus.py's command line, in process, through the entry point `__main__` uses: (exit status, stderr)."""
    from lymphus_ml.cli import run

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: lymphus.main(argv), argv)
    return exit_info.value.code, capsys.readouterr().err


def assert_one_line(status, stderr, *culprits):
    assert status != 0 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "--debug" in lines[1], stderr
    for culprit in culprits:
        assert culprit in lines[0], stderr


def test_synth_into_a_file_names_it_and_leaves_it(tmp_path, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    status, stderr = run_command(["synth", "--output_dir", str(mine)], capsys)
    assert_one_line(status, stderr, f"{mine} is a file, where a folder is needed")
    assert mine.read_text() == "mine"


def test_a_tampered_marker_is_one_message_for_overwrite_and_push(small_archives, tmp_path, local_hub, monkeypatch, capsys):
    import shutil

    original = lymphus.export_dataset(small_archives, tmp_path / "export", "basic_checks")
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    requests = len(local_hub.requests)
    for case, (_, culprit) in TAMPERED_MARKERS.items():
        export = shutil.copytree(original, tmp_path / case)
        tamper(export, case)
        before = sorted((p.relative_to(export), p.read_bytes()) for p in export.rglob("*") if p.is_file())
        status, stderr = run_command(["export", "--data_dir", str(small_archives), "--output_dir", str(export), "--verification_mode", "basic_checks", "--overwrite"], capsys)
        assert_one_line(status, stderr, culprit, "nothing was replaced")
        assert sorted((p.relative_to(export), p.read_bytes()) for p in export.rglob("*") if p.is_file()) == before
        status, stderr = run_command(["push", str(export), "--repo_id", f"{local_hub.user}/tampered-{case}"], capsys)
        assert_one_line(status, stderr, culprit, "Nothing was uploaded")
    assert local_hub.requests[requests:] == []
    assert (tmp_path / "secret.txt").read_text() == "not the export's"


def fail_with_a_full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/disk/file")


@pytest.mark.parametrize("where", ["parquet-in-a-worker", "marker-in-the-export"])
def test_a_full_disk_is_one_message_and_leaves_nothing_that_looks_complete(small_archives, tmp_path, monkeypatch, capsys, where):
    if where == "parquet-in-a-worker":  # the workers are forked: they inherit the patch
        monkeypatch.setattr(datasets.arrow_writer.ArrowWriter, "_write_table", fail_with_a_full_disk)
    else:
        monkeypatch.setattr(lymphus, "write_export_marker", fail_with_a_full_disk)
    status, stderr = run_command(["export", "--data_dir", str(small_archives), "--output_dir", str(tmp_path / "out"), "--verification_mode", "basic_checks"], capsys)
    assert_one_line(status, stderr, "No space left on device writing '/full/disk/file'", f"nothing was exported to '{tmp_path / 'out'}'")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["archives"]  # no export, staging folder or lock


def hold_the_progress_bar_lock_or_fail(centre, *args):
    """An export worker: centre1 draws a progress bar for ever (holding tqdm's lock); centre 2 fails."""
    import time

    from tqdm import tqdm

    if centre == "center1":
        tqdm.get_lock().acquire()
        time.sleep(120)
    time.sleep(0.5)
    raise lymphus.LymphUsFormatError("center2 member: cannot be decoded")


def test_a_worker_killed_while_drawing_a_progress_bar_leaves_the_export_able_to_draw_one(small_archives, tmp_path, monkeypatch):
    from tqdm import tqdm
    from tqdm.std import TqdmDefaultWriteLock

    tqdm.get_lock()  # tqdm's lock exists before the workers fork, as it does after any progress bar
    monkeypatch.setattr(lymphus, "build_centre_parquet", hold_the_progress_bar_lock_or_fail)  # forked: inherited
    with pytest.raises(lymphus.LymphUsFormatError, match="cannot be decoded"):
        export(small_archives, tmp_path / "out")  # centre 2 fails: the export kills centre 1 holding its lock
    if TqdmDefaultWriteLock.mp_lock is not None:
        assert TqdmDefaultWriteLock.mp_lock.acquire(True, 10), "tqdm's lock is held by a dead worker"
        TqdmDefaultWriteLock.mp_lock.release()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["archives"]


def test_plain_parser_reads_the_options_as_hf_argument_parser(tmp_path, capsys):
    from transformers import HfArgumentParser

    from lymphus_ml.cli import PlainArgumentParser

    command_lines = {
        "synth": [["--output_dir", "x"], ["--output-dir", "x", "--cases_per_group", "3", "--scale", "0.5", "--seed", "2"],
                  ["--output_dir", "x", "--scale", "big"], [], ["--output_dir", "x", "--cases_per_gr", "3"]],
        "export": [["--output_dir", "o", "--overwrite"], ["--output_dir", "o", "--overwrite", "false", "--verification_mode", "basic_checks"],
                   ["--output_dir", "o", "--data_dir", "d", "--overwrite", "YES"], ["--output_dir", "o", "--verification_mode", "none"],
                   ["--output_dir", "o", "--overwrite", "maybe"], ["--output_dir", "o", "--overwr"], ["--output_dir=o", "--data-dir=d"]],
        "push": [["--export_dir", "e", "--repo_id", "r", "--private", "y"], ["--export_dir", "e", "--repo_id", "r", "--private", "--hub_token", "hf_x"],
                 ["--export_dir", "e"]],
    }

    def outcome(parser, argv):
        try:
            return parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        except SystemExit as error:
            return "exit", error.code, capsys.readouterr().err

    for command, argvs in command_lines.items():
        plain = PlainArgumentParser([lymphus.COMMANDS[command]])
        reference = HfArgumentParser([lymphus.COMMANDS[command]], allow_abbrev=False)
        assert plain.format_help() == reference.format_help()
        for argv in argvs:
            assert outcome(plain, argv) == outcome(reference, argv), argv
    assert outcome(plain, ["--export_dir", "e"])[0] == "exit"  # the comparison sees failures too
    # The options as a JSON file, as transformers' examples take them.
    options = tmp_path / "export.json"
    options.write_text(json.dumps({"output_dir": "o", "data_dir": "d", "overwrite": True}))
    reference = HfArgumentParser([lymphus.ExportArguments], allow_abbrev=False).parse_json_file(str(options))
    assert PlainArgumentParser([lymphus.ExportArguments]).parse_json_file(str(options)) == reference
    options.write_text(json.dumps({"output_dir": "o", "overwrite": True, "hub_token": "hf_x"}))
    with pytest.raises(ValueError, match=r"unknown keys \['hub_token'\]"):
        PlainArgumentParser([lymphus.ExportArguments]).parse_json_file(str(options))


def test_the_commands_load_neither_transformers_nor_torch(tmp_path, local_hub):
    """A dataset tool starts without the ML stack (about a second): synth, export and push, in one fresh process."""
    repo_id = f"{local_hub.user}/no-ml-stack"
    code = f"""
import sys
import lymphus
lymphus.main(["synth", "--output_dir", {str(tmp_path / "a")!r}, "--cases_per_group", "3", "--scale", "0.1"])
lymphus.main(["export", "--data_dir", {str(tmp_path / "a")!r}, "--output_dir", {str(tmp_path / "out")!r}, "--verification_mode", "basic_checks"])
lymphus.main(["push", {str(tmp_path / "out")!r}, "--repo_id", {repo_id!r}])
print(sorted(name for name in sys.modules if name.split(".")[0] in ("transformers", "torch")))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=LYMPHUS_PY.parent, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_TOKEN": local_hub.token})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
    assert local_hub.commits(repo_id, "dataset")  # the push did happen


# The download path (no data_dir): the official URLs, served here from a local HTTP server


@pytest.fixture()
def archive_server(small_archives, monkeypatch):
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(small_archives))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    # locate_source (lymphus_ml.archives) downloads from these.
    monkeypatch.setattr("lymphus_ml.archives.URLS", {centre: f"{base}/{info['file']}" for centre, info in lymphus._ARCHIVES.items()})
    yield small_archives
    server.shutdown()


def test_download_path_checks_the_official_checksum(archive_server, tmp_path):
    builder = lymphus.LymphUs(config_name="center2", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(NonMatchingChecksumError, match="SHA-256 [0-9a-f]{64} is not the official Center-2.zip's " + lymphus._ARCHIVES["center2"]["sha256"]):
        builder.download_and_prepare()
    builder = lymphus.LymphUs(config_name="center2", cache_dir=str(tmp_path / "cache2"))
    builder.download_and_prepare(verification_mode="basic_checks")
    assert sum(len(split) for split in builder.as_dataset().values()) == 6


def test_lesion_in_another_bmp_flavour_with_the_same_pixels_does_not_warn(small_archives, tmp_path, caplog):
    archive = small_archives / "Center-1.zip"
    with zipfile.ZipFile(archive) as z:
        image = np.asarray(Image.open(io.BytesIO(z.read("Center 1/Benign/2 Benign Image.bmp"))))
        mask = np.asarray(Image.open(io.BytesIO(z.read("Center 1/Benign/2 Benign Mask.tif")))).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image * mask).convert("RGB").save(buffer, format="BMP")  # 24-bit: other bytes, same pixels
    rewrite_archive(archive, replace={"Center 1/Benign/2 Benign Lesion.bmp": buffer.getvalue()})
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        build(small_archives, cache_dir=tmp_path / "cache")
    assert "Lesion.bmp" not in caplog.text


def test_lesion_check_on_an_extracted_folder(small_archives, tmp_path, caplog):
    with zipfile.ZipFile(small_archives / "Center-1.zip") as archive:
        archive.extractall(tmp_path / "extracted")
    lesion = tmp_path / "extracted" / "Center 1" / "Malignant" / "3 Malignant Lesion.bmp"
    Image.open(tmp_path / "extracted" / "Center 1" / "Malignant" / "3 Malignant Image.bmp").save(lesion, format="BMP")
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        build(tmp_path / "extracted", cache_dir=tmp_path / "cache")
    assert "center1-malignant-3" in caplog.text and "center1-malignant-2" not in caplog.text


# Silent substitution: every member named exactly as released and present once, every cell as shown, sizes bounded


def test_a_member_named_twice_is_refused(small_archives, tmp_path):
    archive = small_archives / "Center-1.zip"
    with zipfile.ZipFile(archive) as z:
        other_image = z.read("Center 1/Benign/2 Benign Image.bmp")
        sheet = z.read(lymphus._ARCHIVES["center1"]["spreadsheet"])
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "a") as z:
        z.writestr("Center 1/Benign/1 Benign Image.bmp", other_image)  # zipfile.read() would return this one
    assert_export_fails(small_archives, tmp_path, "member 'Center 1/Benign/1 Benign Image.bmp': appears twice in the archive")
    lymphus.write_synthetic_archives(small_archives, cases_per_group=3, scale=0.1)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "a") as z:
        z.writestr(lymphus._ARCHIVES["center1"]["spreadsheet"], sheet)
    assert_export_fails(small_archives, tmp_path, "member 'Center 1/Lymphnode US features Database 1.xlsx': appears twice")


@pytest.mark.parametrize("name", [
    "Center 1/Benign/\u0661 Benign Image.bmp", "Center 1/Benign/\uff11 Benign Image.bmp", "Center 1/Benign/01 Benign Image.bmp",
    "Center 1/Benign/1 Benign Image.bmp\n",
], ids=["arabic-indic", "fullwidth", "leading-zero", "trailing-newline"])
def test_a_look_alike_case_number_is_refused(small_archives, tmp_path, name):
    archive = small_archives / "Center-1.zip"
    with zipfile.ZipFile(archive) as z:
        other_image = z.read("Center 1/Benign/2 Benign Image.bmp")
    rewrite_archive(archive, add={name: other_image})
    assert_export_fails(small_archives, tmp_path, f"member '{re.escape(name)}': unexpected member")


def test_a_look_alike_number_in_the_spreadsheet_is_refused(small_archives, tmp_path):
    edit_spreadsheet(small_archives / "Center-1.zip", "center1", lambda sheet: setattr(sheet.cell(find_row(sheet, "Benign", 2), 14), "value", "\u0661"))
    assert_export_fails(small_archives, tmp_path, "row \\d+ column 'Necrosis': value '\u0661' is not a number")


def test_a_formula_saved_without_its_value_is_refused_naming_the_cell(small_archives, tmp_path):
    # openpyxl (like most scripts) saves formulas without a computed value: no program has shown it to anyone.
    edit_spreadsheet(small_archives / "Center-1.zip", "center1", lambda sheet: setattr(sheet.cell(find_row(sheet, "Benign", 2), 5), "value", "=C5/D5"))
    assert_export_fails(small_archives, tmp_path, r"Database 1.xlsx' row \d+ column 'Aspect ratio': the formula =C5/D5 has no computed value saved")


def test_a_formula_with_its_saved_value_reads_as_that_value(small_archives, tmp_path):
    # The XML a spreadsheet program writes: the formula and the value it computed and shows.
    member = lymphus._ARCHIVES["center1"]["spreadsheet"]
    with zipfile.ZipFile(small_archives / "Center-1.zip") as archive:
        workbook = openpyxl.load_workbook(io.BytesIO(archive.read(member)))
    row = find_row(workbook.active, "Benign", 2)
    workbook.active.cell(row, 5).value = "=7/2"
    buffer = io.BytesIO()
    workbook.save(buffer)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(patched := io.BytesIO(), "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data, count = re.subn(rb"<f>7/2</f><v>\s*</v>|<f>7/2</f><v/>|<f>7/2</f>", b"<f>7/2</f><v>3.5</v>", data)
                assert count == 1
            target.writestr(info, data)
    rewrite_archive(small_archives / "Center-1.zip", replace={member: patched.getvalue()})
    dataset = datasets.concatenate_datasets(list(build(small_archives, cache_dir=tmp_path / "cache").values()))
    assert dataset[list(dataset["case_id"]).index("center1-benign-2")]["aspect_ratio"] == 3.5


def test_cells_are_read_as_shown(small_archives, tmp_path):
    def edit(sheet):
        row = find_row(sheet, "Benign", 1)
        sheet.cell(row, 3).value, sheet.cell(row, 3).number_format = 12.345, "0.0"        # shown as 12.3
        sheet.cell(row, 4).value, sheet.cell(row, 4).number_format = 2.675, '0.00" mm"'  # shown as 2.68 mm
        sheet.cell(row, 14).value, sheet.cell(row, 14).number_format = 1.0000001, "0"     # shown as 1

    edit_spreadsheet(small_archives / "Center-1.zip", "center1", edit)
    dataset = datasets.concatenate_datasets(list(build(small_archives, cache_dir=tmp_path / "cache").values()))
    case = dataset[list(dataset["case_id"]).index("center1-benign-1")]
    assert (case["maximum_diameter"], case["minimum_diameter"], case["necrosis"]) == (12.3, 2.68, 1)


@pytest.mark.parametrize("edit, match", [
    (lambda sheet, row: (setattr(sheet.cell(row, 3), "value", 0.5), setattr(sheet.cell(row, 3), "number_format", "0%")),
     r"row \d+ column 'Maximum diameter': the number 0.5 is shown through the format '0%'"),
    (lambda sheet, row: (setattr(sheet.cell(row, 3), "value", 7.5), setattr(sheet.cell(row, 3), "number_format", ";;;")),
     r"row \d+ column 'Maximum diameter': the number 7.5 is shown through the format ';;;'"),
    (lambda sheet, row: (setattr(sheet.cell(row, 6), "value", 1), sheet.merge_cells(start_row=row, start_column=6, end_row=row + 1, end_column=6)),
     r"Database 1.xlsx' cells F\d+:F\d+: merged, so 1 shows in each of them but is stored in F\d+ only"),
    (lambda sheet, row: setattr(sheet.cell(row, 20), "value", "see notes"),
     r"row \d+ cell T\d+: value 'see notes' is outside the 18 official columns"),
], ids=["percent", "hidden", "merged", "outside-the-columns"])
def test_a_cell_that_does_not_read_as_shown_is_refused(small_archives, tmp_path, edit, match):
    edit_spreadsheet(small_archives / "Center-1.zip", "center1", lambda sheet: edit(sheet, find_row(sheet, "Benign", 1)))
    assert_export_fails(small_archives, tmp_path, match)


def test_a_member_larger_than_the_inventory_allows_is_refused_before_inflating(small_archives, tmp_path, monkeypatch):
    archive = small_archives / "Center-1.zip"
    member = "Center 1/Benign/1 Benign Image.bmp"
    with zipfile.ZipFile(archive) as z:
        members = {name: z.read(name) for name in z.namelist() if name != member}
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        with z.open(member, "w") as bomb:  # 8 MiB of zeros: a few kB compressed
            for _ in range(8):
                bomb.write(bytes(2**20))
    assert archive.stat().st_size < 200_000
    inflated = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: (inflated.append(getattr(name, "filename", name)), real_open(self, name, *a, **k))[1])
    limit = lymphus.MEMBER_SIZE_FACTOR * int(next(r for r in lymphus.read_official_cases() if r["centre"] == "1" and r["group"] == "Benign" and r["index_within_group"] == "1")["image_bytes"])
    with pytest.raises(lymphus.LymphUsFormatError, match=f"member '{member}': inflates to 8,388,608 bytes, more than the {limit:,} the official member's size allows"):
        build(small_archives, cache_dir=tmp_path / "cache")
    assert member not in inflated


def test_a_spreadsheet_that_inflates_past_the_cap_is_refused(small_archives, tmp_path):
    member = lymphus._ARCHIVES["center1"]["spreadsheet"]
    with zipfile.ZipFile(small_archives / "Center-1.zip") as archive:
        xlsx = archive.read(member)
    bloated = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(xlsx)) as source, zipfile.ZipFile(bloated, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
        with target.open("xl/media/padding.bin", "w") as padding:
            for _ in range(17):
                padding.write(bytes(2**20))
    rewrite_archive(small_archives / "Center-1.zip", replace={member: bloated.getvalue()})
    assert_export_fails(small_archives, tmp_path, f"Database 1.xlsx': the workbook inflates to [0-9,]+ bytes, more than the cap of {lymphus.MEMBER_SIZE_CAP:,}")


def test_a_link_out_of_the_unzipped_folder_is_refused(small_archives, tmp_path):
    with zipfile.ZipFile(small_archives / "Center-1.zip") as archive:
        archive.extractall(tmp_path / "extracted")
    image = tmp_path / "extracted" / "Center 1" / "Benign" / "1 Benign Image.bmp"
    outside = tmp_path / "elsewhere.bmp"
    outside.write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(outside)
    with pytest.raises(lymphus.LymphUsFormatError, match=f"member 'Center 1/Benign/1 Benign Image.bmp': a link to '{re.escape(str(outside))}', outside"):
        build(tmp_path / "extracted", cache_dir=tmp_path / "cache")


def test_zip_and_folder_both_present_says_which_is_used(small_archives, tmp_path, caplog):
    with zipfile.ZipFile(small_archives / "Center-1.zip") as archive:
        archive.extractall(small_archives)
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        build(small_archives, cache_dir=tmp_path / "cache")
    assert f"holds both '{small_archives / 'Center-1.zip'}' and the folder '{small_archives / 'Center 1'}': using the zip" in caplog.text


def test_synth_never_replaces_an_archive_that_is_not_synthetic(tmp_path):
    (tmp_path / "Center-2.zip").write_bytes(b"the official download")
    with pytest.raises(FileExistsError, match="Center-2.zip exists and is not a synthetic archive"):
        lymphus.write_synthetic_archives(tmp_path, cases_per_group=3, scale=0.1)
    assert (tmp_path / "Center-2.zip").read_bytes() == b"the official download"
    assert not (tmp_path / "Center-1.zip").exists()  # refused before writing anything
    lymphus.write_synthetic_archives(tmp_path / "again", cases_per_group=3, scale=0.1)
    lymphus.write_synthetic_archives(tmp_path / "again", cases_per_group=3, scale=0.1)  # its own archives: replaced


# The export folder: ours alone, one export at a time, the old or the new export complete at every instant


def export(archives, output_dir, **kwargs):
    return lymphus.export_dataset(archives, output_dir, "basic_checks", **kwargs)


def is_complete_export(path):
    return lymphus.export_discrepancies(path) == [] and len(datasets.load_dataset(str(path), "all")["train"]) > 0


def test_overwrite_never_touches_the_data_folder_or_a_folder_holding_it(small_archives, tmp_path):
    before = sorted((p.name, p.read_bytes()) for p in small_archives.iterdir())
    for output_dir, word in ((small_archives, "is"), (tmp_path, "holds")):
        with pytest.raises(lymphus.OutputFolderError, match=f"--output_dir '{re.escape(str(output_dir))}' {word} the data folder"):
            export(small_archives, output_dir, overwrite=True)
    assert sorted((p.name, p.read_bytes()) for p in small_archives.iterdir()) == before


@pytest.mark.parametrize("change, culprit", [
    (lambda out: (out / "notes.txt").write_text("mine"), "'notes.txt' (not written by the export)"),
    (lambda out: (out / "README.md").write_text("my edited card"), "'README.md' (changed since the export)"),
    (lambda out: (out / lymphus.EXPORT_MARKER).unlink(), "no .lymphus-export.json"),
], ids=["added", "changed", "no-marker"])
def test_overwrite_replaces_only_an_unchanged_export(small_archives, tmp_path, change, culprit):
    out = export(small_archives, tmp_path / "out")
    change(out)
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    with pytest.raises(lymphus.OutputFolderError, match=re.escape(culprit) + ".*nothing was replaced"):
        export(small_archives, out, overwrite=True)
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


def test_overwrite_replaces_an_earlier_export(tmp_path):
    lymphus.write_synthetic_archives(tmp_path / "a", cases_per_group=3, scale=0.1, seed=1)
    lymphus.write_synthetic_archives(tmp_path / "b", cases_per_group=4, scale=0.1, seed=2)
    out = export(tmp_path / "a", tmp_path / "out")
    export(tmp_path / "b", out, overwrite=True)
    assert is_complete_export(out)
    assert sum(len(split) for split in datasets.load_dataset(str(out), "all").values()) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # no staging, previous export or lock left


def test_a_file_created_in_the_output_folder_during_the_export_is_kept(small_archives, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()  # empty: an export may go there
    real_render_card = lymphus.render_card

    def render_card_while_someone_writes(built):
        (out / "mine.txt").write_text("written while the export ran")
        return real_render_card(built)

    monkeypatch.setattr(lymphus, "render_card", render_card_while_someone_writes)
    with pytest.raises(lymphus.OutputFolderError, match="out was created or filled by something else during the export"):
        export(small_archives, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "written while the export ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archives", "out"]


def test_one_export_per_output_folder_at_a_time(small_archives, tmp_path):
    out = tmp_path / "out"
    with lymphus.export_lock(out):
        with pytest.raises(lymphus.OutputFolderError, match=f"another export into '{re.escape(str(out))}' is running \\(process {os.getpid()}"):
            export(small_archives, out)
        assert not out.exists()
    export(small_archives, out)
    assert is_complete_export(out) and not (tmp_path / ".out.lock").exists()


def test_a_kill_right_after_the_swap_leaves_the_new_export_in_place(tmp_path, monkeypatch, caplog):
    lymphus.write_synthetic_archives(tmp_path / "a", cases_per_group=3, scale=0.1, seed=1)
    lymphus.write_synthetic_archives(tmp_path / "b", cases_per_group=4, scale=0.1, seed=2)
    out = export(tmp_path / "a", tmp_path / "out")

    def killed(previous, output_dir):
        assert is_complete_export(output_dir) and is_complete_export(previous)  # both complete, the new one in place
        raise KeyboardInterrupt

    monkeypatch.setattr(export_folder, "discard_previous_export", killed)  # put_in_place calls it
    with pytest.raises(KeyboardInterrupt):
        export(tmp_path / "b", out, overwrite=True)
    assert is_complete_export(out) and sum(len(s) for s in datasets.load_dataset(str(out), "all").values()) == 16
    (leftover,) = tmp_path.glob(".out.incomplete-*")
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        export(tmp_path / "a", out, overwrite=True)  # the next export deletes the leftover, naming it
    assert f"Deleted '{leftover}', left by an interrupted export" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]


def test_an_old_export_that_cannot_be_deleted_leaves_the_new_one_in_place(small_archives, tmp_path, monkeypatch, caplog):
    out = export(small_archives, tmp_path / "out")

    real_remove_ours = export_folder.remove_ours

    def read_only(path):  # the previous export (it has the marker) cannot be deleted, as with a read-only folder
        if (Path(path) / lymphus.EXPORT_MARKER).exists():
            raise PermissionError(13, "Permission denied", str(Path(path) / "data"))
        real_remove_ours(path)

    monkeypatch.setattr(export_folder, "remove_ours", read_only)  # discard_previous_export calls it
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        export(small_archives, out, overwrite=True)
    assert is_complete_export(out)
    (leftover,) = tmp_path.glob(".out.incomplete-*")
    assert f"The new export is in '{out}', but the previous one, moved to '{leftover}', could not be deleted" in caplog.text
    monkeypatch.undo()
    export(small_archives, out, overwrite=True)
    assert not list(tmp_path.glob(".out.*"))


def test_without_an_atomic_exchange_a_swap_cut_short_is_put_back(small_archives, tmp_path, monkeypatch, caplog):
    out = export(small_archives, tmp_path / "out")
    monkeypatch.setattr(export_folder, "exchange_paths", lambda first, second: False)  # systems without renameat2
    export(small_archives, out, overwrite=True)
    assert is_complete_export(out) and sorted(p.name for p in tmp_path.iterdir()) == ["archives", "out"]
    # Killed between the two renames: the old export is complete beside the path; the next export puts it back.
    previous = tmp_path / ".out.previous-0123abcd"
    out.rename(previous)
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        lymphus.clean_leftovers(out)
    assert is_complete_export(out) and not previous.exists()
    assert f"Put back the previous export from '{previous}'" in caplog.text


def test_a_leftover_without_our_marker_is_named_and_kept(small_archives, tmp_path, caplog):
    stranger = tmp_path / ".out.incomplete-mine"
    stranger.mkdir()
    (stranger / "thesis.tex").write_text("mine")
    with caplog.at_level(logging.WARNING, logger="lymphus"):
        export(small_archives, tmp_path / "out")
    assert (stranger / "thesis.tex").read_text() == "mine"
    assert f"'{stranger}' is named like a leftover of an interrupted export but holds no marker of ours: left alone" in caplog.text


def test_export_permissions_follow_the_umask(small_archives, tmp_path):
    previous = os.umask(0o027)
    try:
        out = export(small_archives, tmp_path / "out")
    finally:
        os.umask(previous)
    assert {oct(p.stat().st_mode & 0o777) for p in [out, *out.rglob("*")] if p.is_dir()} == {oct(0o750)}
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == {oct(0o640)}


def processes(parent):
    """The live children of `parent` (zombies are dead: they hold no memory)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, ValueError):
            continue
        if int(ppid) == parent and state != "Z":
            children.append(int(stat.parent.name))
    return children


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_export_leaves_no_process_and_the_next_run_cleans_up(tmp_path, signal_number):
    lymphus.write_synthetic_archives(tmp_path / "archives", cases_per_group=10, scale=0.25)
    out = tmp_path / "out"
    command = [sys.executable, str(LYMPHUS_PY), "export", "--data_dir", str(tmp_path / "archives"), "--output_dir", str(out), "--verification_mode", "basic_checks"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (workers := processes(process.pid)) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers, "the export ended before its workers were seen"
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers), f"workers {workers} outlived the export"
    assert not out.exists(), (process.returncode, stderr[-3000:])
    if signal_number == signal.SIGTERM:  # stopped cleanly: nothing left, no traceback
        assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, (process.returncode, stderr[-3000:])
        assert not list(tmp_path.glob(".out.*"))
    else:
        assert list(tmp_path.glob(".out.incomplete-*")), (process.returncode, stderr[-3000:])
    export(tmp_path / "archives", out)
    assert is_complete_export(out) and sorted(p.name for p in tmp_path.iterdir()) == ["archives", "out"]


# Errors on the command line: one message naming the culprit, a non-zero exit, no traceback


def assert_one_message(result, *culprits):
    status, _, stderr = result
    assert status != 0 and "Traceback" not in stderr, stderr
    (message,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    for culprit in culprits:
        assert culprit in message, stderr


def test_command_line_errors_are_one_message(small_archives, tmp_path, local_hub, run_cli, monkeypatch):
    """Through lymphus.py's entry point (cli.run(main)) in this process; `python lymphus.py` itself is started by
    the killed-export tests above (its __main__: cli.run and the SIGTERM handler)."""
    base = ["export", "--data_dir", str(small_archives), "--output_dir", str(tmp_path / "out")]
    # Checksum mismatch, missing files, a mistyped option.
    assert_one_message(run_cli(lymphus, *base), "Center-", "is not the official", "basic_checks")
    (tmp_path / "empty").mkdir()
    assert_one_message(run_cli(lymphus, "export", "--data_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out"), "--verification_mode", "basic_checks"), "neither", ".zip' nor the extracted folder")
    assert_one_message(run_cli(lymphus, *base, "--verification_mod", "basic_checks"), "--verification_mod", "spelt in full")
    assert_one_message(run_cli(lymphus, "exprot"), "unknown command 'exprot'")
    # A format error found by a worker process: the worker's traceback is not shown either.
    rewrite_archive(small_archives / "Center-2.zip", replace={"Center 2/Malignant/2 Malignant Image.bmp": b"BM not really"})
    failed = run_cli(lymphus, *base, "--verification_mode", "basic_checks")
    assert_one_message(failed, "Center 2/Malignant/2 Malignant Image.bmp", "cannot be decoded as an image")
    with pytest.raises(Exception, match="cannot be decoded as an image"):  # --debug: the error itself, its traceback
        run_cli(lymphus, *base, "--verification_mode", "basic_checks", "--debug")
    assert not list(tmp_path.glob(".out.*")) and not (tmp_path / "out").exists()
    # Another export running into the same folder.
    with lymphus.export_lock(tmp_path / "out"):
        assert_one_message(run_cli(lymphus, *base, "--verification_mode", "basic_checks"), "another export into", "is running")
    # The Hub refusing the token.
    lymphus.write_synthetic_archives(tmp_path / "good", cases_per_group=3, scale=0.1)
    export(tmp_path / "good", tmp_path / "export")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    refused = run_cli(lymphus, "push", str(tmp_path / "export"), "--repo_id", f"{local_hub.user}/refused")
    assert_one_message(refused, "401")
    assert "hf_not_a_valid_token" not in refused[1] + refused[2]


# The dataset card: every number from the data exported


def test_the_card_states_the_numbers_of_the_data_exported(tmp_path):
    archives = tmp_path / "archives"
    lymphus.write_synthetic_archives(archives, cases_per_group=10, scale=0.25)
    out = export(archives, tmp_path / "out")
    card = (out / "README.md").read_text()
    prose = card.split("\n---\n", 1)[1]
    # An independent reading of the archives: members per group, image sizes from PIL.
    counts, sizes = {}, {}
    for centre in lymphus.CENTRES:
        with zipfile.ZipFile(archives / lymphus._ARCHIVES[centre]["file"]) as archive:
            images = [name for name in archive.namelist() if name.endswith("Image.bmp")]
            counts[centre] = [sum(f"/{group}/" in name for name in images) for group in ("Benign", "Malignant")]
            sizes[centre] = [Image.open(io.BytesIO(archive.read(name))).size for name in images]
    total = sum(map(sum, counts.values()))
    widths = [w for centre in sizes for w, _ in sizes[centre]]
    heights = [h for centre in sizes for _, h in sizes[centre]]
    assert f"This export holds {total} cases" in prose
    for centre, (benign, malignant) in counts.items():
        assert f"{centre}: {benign} benign + {malignant} malignant" in prose
    assert f"widths {min(widths)}–{max(widths)} and heights {min(heights)}–{max(heights)} px" in prose
    ranges = {}
    for centre, centre_sizes in sizes.items():
        ranges[centre] = [f(dimension) for dimension in zip(*centre_sizes) for f in (min, max)]  # width, then height
        assert "{}: {}–{} × {}–{}".format(centre, *ranges[centre]) in prose
    assert f"({round(100 * sum(c[1] for c in counts.values()) / total)} % malignant" in prose
    assert "size_categories:\n- n<1K" in card
    # No number that only the official release has (counts, size ranges) is stated.
    synthetic_numbers = {total, *[n for c in counts.values() for n in c], *map(sum, counts.values()), min(widths), max(widths), min(heights), max(heights), *[n for r in ranges.values() for n in r]}
    official_numbers = {338, 180, 158, 99, 81, 76, 82, 248, 826, 226, 724, 570, 290} - synthetic_numbers
    assert len(official_numbers) >= 10
    stated = {int(n) for n in re.findall(r"(?<![\w.-])\d+(?![\w.])", prose)}
    assert not stated & official_numbers, sorted(stated & official_numbers)
