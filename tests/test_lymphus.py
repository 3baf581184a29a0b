"""The dataset builder, export and push, on synthetic archives in the official format."""

import hashlib
import io
import logging
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

OFFICIAL_COUNTS = {"center1": {"benign": 99, "malignant": 81}, "center2": {"benign": 76, "malignant": 82}}


@pytest.fixture(scope="session")
def official_archives(tmp_path_factory):
    """Synthetic archives with the official counts, sizes and mask extents."""
    directory = tmp_path_factory.mktemp("official-archives")
    lymphus.write_synthetic_archives(directory)
    return directory


@pytest.fixture(scope="session")
def official_export(official_archives, tmp_path_factory):
    return lymphus.export_dataset(official_archives, tmp_path_factory.mktemp("exports") / "lymphus", "basic_checks")


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
    actual = hashlib.sha256((small_archives / "Center-1.zip").read_bytes()).hexdigest()
    assert "Center-1.zip" in str(error.value) and actual in str(error.value)
    assert lymphus._ARCHIVES["center1"]["sha256"] in str(error.value) and "basic_checks" in str(error.value)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.incomplete-*"))


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
    assert not list(tmp_path.glob(".out.incomplete-*"))


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
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["README.md", "data"]  # no build leftovers


# Hub


def rows(dataset):
    dataset = dataset.cast_column("image", datasets.Image(decode=False)).cast_column("mask", datasets.Image(decode=False))
    return sorted((dict(row, image=row["image"]["bytes"], mask=row["mask"]["bytes"]) for row in dataset), key=lambda row: row["case_id"])


def test_push_then_load_dataset_from_the_hub(small_archives, tmp_path, local_hub, monkeypatch, capsys):
    export = lymphus.export_dataset(small_archives, tmp_path / "export", "basic_checks")
    repo_id = f"{local_hub.user}/lymphus-{tmp_path.name}"
    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    lymphus.main(["push", str(export), "--repo_id", repo_id, "--private"])
    assert local_hub.token not in capsys.readouterr().out
    for config in ("center1", "all", "center1_to_center2"):
        remote = datasets.load_dataset(repo_id, config)
        local = datasets.load_dataset(str(export), config)
        assert set(remote) == set(lymphus.SPLITS)
        for split in lymphus.SPLITS:
            assert rows(remote[split]) == rows(local[split])
    from huggingface_hub import HfApi

    assert HfApi(token=local_hub.token).repo_info(repo_id, repo_type="dataset").private


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="README.md is missing"):
        lymphus.push_export(tmp_path, "someone/lymphus")


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
    monkeypatch.setattr(lymphus, "_URLS", {centre: f"{base}/{info['file']}" for centre, info in lymphus._ARCHIVES.items()})
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
