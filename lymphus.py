"""LymphUs: cervical lymph node ultrasound images of patients with papillary thyroid carcinoma.

A `datasets` builder for the two official archives (`Center-1.zip`, `Center-2.zip`), plus the
commands that turn them into a Parquet export with a dataset card, push it to the Hub, and write
synthetic archives in the identical format for tests and offline demos:

    python lymphus.py synth --output_dir archives/                     # synthetic Center-1/2.zip
    python lymphus.py export --data_dir archives/ --output_dir lymphus-export \
        --verification_mode basic_checks                               # synthetic: checksums differ
    python lymphus.py push lymphus-export --repo_id you/lymphus --private

    >>> import datasets
    >>> datasets.load_dataset("lymphus-export", "center1")             # or the Hub id after `push`

The builder class is instantiated directly (datasets >= 4 has no loading scripts):

    >>> builder = LymphUs(config_name="center1", data_dir="archives/")
    >>> builder.download_and_prepare()   # refuses archives whose SHA-256 is not the official one
    >>> dataset = builder.as_dataset()

The export folder is ours alone: `--overwrite` replaces only a folder holding the marker an export writes
(EXPORT_MARKER, which lists every file with its SHA-256) and nothing else, one export runs per folder at a time (a lock
beside it), and the new export replaces the old one in a single rename, so the path always holds one complete export.
`push` uploads exactly the files the marker lists, and nothing at all from a folder holding any other or changed file.
"""

import contextlib
import csv
import errno
import functools
import hashlib
import io
import json
import logging
import os
import re
import secrets
import signal
import sys
import zipfile
import zlib
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
from datasets.exceptions import DatasetGenerationError, NonMatchingChecksumError
from datasets.utils.info_utils import VerificationMode
from PIL import Image


logger = logging.getLogger(__name__)
# datasets rebinds a builder module's `open`, `os`, `Path`... to streaming wrappers (and imports scipy to do so) unless
# the module says it is done. This builder reads local files only: it keeps the standard ones, and each export worker
# starts about 0.2 s sooner.
_patched_for_streaming = True

_CITATION = """\
@article{mohammadi2026lymphus,
  title   = {LymphUs: A multicenter open-access database of lymph node ultrasound images in patients with papillary thyroid carcinoma for clinical and artificial intelligence research},
  author  = {Mohammadi, Afshin and Mohebbi, Alisa and Mirza-Aghazadeh-Attari, Mohammad and Mohammadzadeh, Sara and Acharya, U. Rajendra and Tan, Ru-San and others},
  journal = {Data in Brief},
  pages   = {112694},
  year    = {2026},
  doi     = {10.1016/j.dib.2026.112694}
}
@article{abbasianardakani2023metastatic,
  title   = {Diagnosis of Metastatic Lymph Nodes in Patients With Papillary Thyroid Cancer: A Comparative Multi-Center Study of Semantic Features and Deep Learning-Based Models},
  author  = {Abbasian Ardakani, Ali and Mohammadi, Afshin and Mirza-Aghazadeh-Attari, Mohammad and Faeghi, Fariborz and Vogl, Thomas J. and Acharya, U. Rajendra},
  journal = {Journal of Ultrasound in Medicine},
  volume  = {42},
  number  = {6},
  pages   = {1211--1221},
  year    = {2023},
  doi     = {10.1002/jum.16131}
}
"""  # noqa: E501 (BibTeX as published, one field a line)

_DESCRIPTION = """\
LymphUs is a public two-centre database of cervical lymph node B-mode ultrasound images from 338
patients with papillary thyroid carcinoma (centre 1: 99 benign + 81 malignant; centre 2: 76 benign
+ 82 malignant). Each case has one grayscale image, an expert segmentation mask of the node, the
pathology label (benign or malignant = metastatic) and radiologists' semantic features.
"""

_HOMEPAGE = "https://qamebi.com/cervical-lymph-node/"

# The landing page says the data are freely accessible for research and asks users to cite both
# papers; it states no licence for the images. The data article itself is CC BY 4.0.
_LICENSE = "other"
_LICENSE_NAME = "lymphus-research-use"
# The one name of these terms, in the dataset card and in every card of what is trained on it (lymphus_ml.cards,
# the Space card).
LYMPHUS_LICENSE = {"license": _LICENSE, "license_name": _LICENSE_NAME, "license_link": _HOMEPAGE}
_LICENSE_DETAILS = (
    "The landing page states that the data are freely accessible for research and asks users to cite "
    "the data article and the study; it states no licence for the images themselves. The data article "
    "(Data in Brief, 2026) is published under CC BY 4.0."
)

_URLS = {
    "center1": "https://qamebi.com/wp-content/uploads/2026/03/Center-1.zip",
    "center2": "https://qamebi.com/wp-content/uploads/2026/03/Center-2.zip",
}

# SHA-256 and size of the official archives and spreadsheets (the publisher gives none: these come
# from a published audit of the real files, see reference/official_cases.csv for every member).
_ARCHIVES = {
    "center1": {
        "file": "Center-1.zip",
        "folder": "Center 1",
        "bytes": 21_867_173,
        "sha256": "03990985c9c9b1e0e7a4f48775182a3943117b661c30152e9d9fe4fc594f380c",
        "spreadsheet": "Center 1/Lymphnode US features Database 1.xlsx",
        "spreadsheet_bytes": 25_897,
        "spreadsheet_sha256": "fc6e5a4eeadaf0ce5a37d903109871bf254a569e8e1cc98e61dab3ebee30bfce",
        "group_counts": {"Benign": 99, "Malignant": 81},
    },
    "center2": {
        "file": "Center-2.zip",
        "folder": "Center 2",
        "bytes": 29_108_550,
        "sha256": "93c5c8c24ea42afafb1c120cdeebd1813d86e894a9d10d0b1b4a80b353d9f6fb",
        "spreadsheet": "Center 2/Lymphnode US features Database 2.xlsx",
        "spreadsheet_bytes": 26_740,
        "spreadsheet_sha256": "ec50058bf8e38dba8a12964f15992b9d2b54de29d80401995e00c88638b24fac",
        "group_counts": {"Benign": 76, "Malignant": 82},
    },
}

# One row per case of the official release: size, mask extent and SHA-256 of every member.
_OFFICIAL_CASES_CSV = Path(__file__).parent / "reference" / "official_cases.csv"
# What a Hugging Face Job of a script importing this module needs beside it (lymphus_ml.hub ships them).
SHIPPED_FILES = ("reference/official_cases.csv", "dataset_card.md")

LABEL_NAMES = ["benign", "malignant"]
# The mask's pixel values; shipped as id2label.json, which the Hub's segmentation tooling reads.
MASK_LABELS = {0: "background", 1: "lymph_node"}
CENTRES = ["center1", "center2"]
SPLITS = ["train", "validation", "test"]
# LymphUs as a Hub benchmark (eval.yaml in the export; the trainers' .eval_results/lymphus.yaml in every pushed
# model): per subset's test split, the classifiers' ROC-AUC and the segmenters' mean Dice over images. A
# `<source>_to_<target>` subset's test split is all of the other centre: the external validation.
BENCHMARK_METRICS = {"classification": ("malignancy-roc-auc", "ROC-AUC of malignant vs benign (train_vit.py)"),
                     "segmentation": ("node-dice", "mean Dice of the node mask over images (train_segformer.py)")}
BENCHMARK_FRAMEWORK = "lymphus"


def benchmark_task_id(kind: str, config: str) -> str:
    """The eval.yaml task (one Hub leaderboard) of a `kind` ("classification"/"segmentation") on a subset's test split."""
    return f"{config}-{BENCHMARK_METRICS[kind][0]}"


def eval_yaml() -> str:
    """The export's eval.yaml: LymphUs as a Hub benchmark, one task (leaderboard) per subset and metric."""
    lines = [
        "# LymphUs as a Hugging Face benchmark (https://huggingface.co/docs/hub/eval-results). The models that",
        "# train_vit.py and train_segformer.py push report into these tasks in their .eval_results/lymphus.yaml.",
        "name: LymphUs",
        "description: >",
        "  Cervical lymph node ultrasound (papillary thyroid carcinoma, two centres): malignancy classification",
        "  (ROC-AUC) and node segmentation (mean Dice over images), on each subset's test split; a",
        "  <source>_to_<target> subset tests on every case of the other centre (external validation).",
        f"evaluation_framework: {BENCHMARK_FRAMEWORK}",
        "tasks:",
    ]
    for kind, (_, description) in BENCHMARK_METRICS.items():
        for config in (config.name for config in LymphUs.BUILDER_CONFIGS):
            lines += [f"  - id: {benchmark_task_id(kind, config)}  # {description}", f"    config: {config}", "    split: test"]
    return "\n".join(lines) + "\n"
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}
# Fixed so that the same archives always give the same split membership; changing it changes every
# published split, so it is part of the dataset's definition, not a knob.
SPLIT_SEED = 20230601
# Cross-validation folds over each centre's development cases (train + validation), part of the dataset's
# definition like the splits: fixed so that two studies cross-validate on the same folds.
N_FOLDS = 5
FOLD_SEED = 20230602

# The spreadsheet's header row, verbatim (with the source's spelling), and our column for each.
SPREADSHEET_COLUMNS = {
    "Image name": "image_name",
    "Group": "group",
    "Maximum diameter": "maximum_diameter",
    "Minimum diameter": "minimum_diameter",
    "Aspect ratio": "aspect_ratio",
    "Hypoechoic": "hypoechoic",
    "Hyperechoic": "hyperechoic",
    "Isoechoic": "isoechoic",
    "Homogeneity": "homogeneity",
    "Prominent Echogenicty (For Heterogeneous nodes)": "prominent_echogenicity",
    "Loss of fatty hilum/thinning of hilum": "loss_of_fatty_hilum",
    "Centrality": "centrality",
    "Microcalcifications": "microcalcifications",
    "Necrosis": "necrosis",
    "Margin1": "margin1",
    "Margin2": "margin2",
    "Internal component": "internal_component",
    "Intranodal cystic lesion": "intranodal_cystic_lesion",
}
MEASUREMENT_FEATURES = ["maximum_diameter", "minimum_diameter", "aspect_ratio"]
CODED_FEATURES = [name for name in list(SPREADSHEET_COLUMNS.values())[5:]]
SEMANTIC_FEATURES = {
    **{name: datasets.Value("float64") for name in MEASUREMENT_FEATURES},
    **{name: datasets.Value("int32") for name in CODED_FEATURES},
}
# The sheet's coding is not published: numbers are taken as they are, and only these words are mapped.
YES_NO_WORDS = {
    "yes": 1, "y": 1, "true": 1, "present": 1, "positive": 1, "+": 1,
    "no": 0, "n": 0, "false": 0, "absent": 0, "negative": 0, "-": 0,
}

_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "mask": datasets.Image(),
        "label": datasets.ClassLabel(names=LABEL_NAMES),
        "centre": datasets.Value("string"),
        "case_id": datasets.Value("string"),
        "patient_id": datasets.Value("string"),
        "fold": datasets.Value("int8"),  # 0..N_FOLDS-1 for train and validation rows, null for test rows
        **SEMANTIC_FEATURES,
    }
)

# The official member names, exactly: ASCII digits without leading zeros, so that no other spelling of a case
# number (a "01", an Arabic-Indic "١") can stand beside the real member and replace its image.
_CASE_MEMBER = re.compile(
    r"^Center (?P<centre>[12])/(?P<folder>Benign|Malignant)/"
    r"(?P<index>[1-9][0-9]*) (?P<group>Benign|Malignant) (?P<kind>Image\.bmp|Mask\.tif|Lesion\.bmp)$",
    re.ASCII,
)
_IGNORED_MEMBER = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")
# A number written as text in a cell: ASCII digits only (float() alone also takes "١", "1_000", "nan", "inf").
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

# Limits checked before anything is inflated or decoded (a 4 MB zip can hold gigabytes). A member of an official case
# may be up to MEMBER_SIZE_FACTOR times that case's official Image.bmp (the same pixels re-saved at 32 bits), a
# spreadsheet that many times the official one's; any other member, and the inside of a spreadsheet (itself a zip),
# up to MEMBER_SIZE_CAP. Images may have up to MAX_IMAGE_PIXELS (the official ones have at most 598,024).
MEMBER_SIZE_FACTOR = 4
MEMBER_SIZE_CAP = 16 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096

# Written by `export` into every export it finishes, last: it lists every file with its size and SHA-256, so that
# `--overwrite` and `push` can tell an export of ours (unchanged, nothing added) from any other folder.
EXPORT_MARKER = ".lymphus-export.json"
# Written into a staging folder when it is made, removed when the export is complete: marks leftovers of a killed run.
STAGING_MARKER = ".lymphus-staging"
SYNTHETIC_COMMENT = b"LymphUs synthetic archive (lymphus.py synth): no patient data"


class LymphUsFormatError(ValueError):
    """The archives do not hold what the official release holds; the message names the place."""


class OutputFolderError(FileExistsError):
    """The output folder cannot be written or replaced safely (not ours, the data folder, another export running)."""


class ExportMarkerError(ValueError):
    """An export marker that is not what `export` writes (edited, truncated): it vouches for nothing."""


@dataclass
class LymphUsConfig(datasets.BuilderConfig):
    """Which centres go into which split. `test_centre` set: the whole of that centre is the test split."""

    centres: tuple = ("center1", "center2")
    test_centre: Optional[str] = None


class LymphUs(datasets.GeneratorBasedBuilder):
    """LymphUs, built from the official archives (or a `data_dir` holding them or their folders)."""

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = LymphUsConfig
    BUILDER_CONFIGS = [
        LymphUsConfig(
            name="all",
            centres=("center1", "center2"),
            description="Both centres; each split is the union of the per-centre splits. For pooled training.",
        ),
        LymphUsConfig(
            name="center1",
            centres=("center1",),
            description="Centre 1 only: internal validation within one centre.",
        ),
        LymphUsConfig(
            name="center2",
            centres=("center2",),
            description="Centre 2 only: internal validation within one centre.",
        ),
        LymphUsConfig(
            name="center1_to_center2",
            centres=("center1",),
            test_centre="center2",
            description="External validation: train/validation of centre 1, test = all of centre 2.",
        ),
        LymphUsConfig(
            name="center2_to_center1",
            centres=("center2",),
            test_centre="center1",
            description="External validation: train/validation of centre 2, test = all of centre 1.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "all"

    def _info(self):
        return datasets.DatasetInfo(
            description=_DESCRIPTION,
            features=_FEATURES,
            homepage=_HOMEPAGE,
            license=_LICENSE,
            citation=_CITATION,
        )

    def download_and_prepare(self, *args, verification_mode=VerificationMode.ALL_CHECKS, **kwargs):
        # datasets defaults to basic_checks; this builder refuses unofficial archives unless asked.
        return super().download_and_prepare(*args, verification_mode=verification_mode or "all_checks", **kwargs)

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_split_kwargs):
        self._verify_official_checksums = verification_mode == VerificationMode.ALL_CHECKS
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_split_kwargs)

    def _split_generators(self, dl_manager):
        verify = getattr(self, "_verify_official_checksums", True)
        centres = sorted(set(self.config.centres) | {self.config.test_centre} - {None})
        sources = {centre: locate_source(centre, self.config.data_dir, dl_manager, verify) for centre in centres}
        self.source_descriptions = {centre: describe_source(source) for centre, source in sources.items()}
        cases = {centre: read_centre(source) for centre, source in sources.items()}
        splits = {
            split: [case for centre in self.config.centres for case in cases[centre] if case["split"] == split]
            for split in SPLITS
        }
        if self.config.test_centre:
            splits["test"] = cases[self.config.test_centre]
        self.label_counts = {
            split: [sum(case["label"] == name for case in splits[split]) for name in LABEL_NAMES] for split in SPLITS
        }
        return [datasets.SplitGenerator(name=split, gen_kwargs={"cases": splits[split]}) for split in SPLITS]

    def _generate_examples(self, cases):
        mismatched_lesions = []
        for case in cases:
            example, lesion_matches = load_case(case)
            if not lesion_matches:
                mismatched_lesions.append(case["case_id"])
            yield case["case_id"], example
        if mismatched_lesions:
            logger.warning(
                f"Lesion.bmp is no longer image x mask for {len(mismatched_lesions)} case(s): "
                f"{', '.join(mismatched_lesions)}. The release defined it so; the image and mask are used as they are."
            )


# Reading the archives


@dataclass
class CentreSource:
    """One centre's files: an official-format zip, or the folder a user got by unzipping it."""

    centre: str
    path: Path
    names: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict, repr=False)  # member -> bytes once inflated (zip directory / stat)
    _zip: Optional[zipfile.ZipFile] = field(default=None, repr=False)

    def __post_init__(self):
        self.is_folder = self.path.is_dir()

    def read(self, member):
        if self.is_folder:
            return (self.path.parent / member).read_bytes()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        try:
            return self._zip.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as error:
            raise LymphUsFormatError(f"{self.describe(member)}: cannot be read from the zip ({error})") from None

    @functools.cached_property
    def sha256(self):
        """The archive's SHA-256 (None for a folder), computed once for the check and the card."""
        return None if self.is_folder else sha256_of_file(self.path)

    @functools.cached_property
    def first_unofficial_member(self):
        """For a folder: (member, its SHA-256 or None if missing, the official one) of the first member that
        differs from the release, or None when all match. Computed once for the check and the card."""
        for member, expected in official_member_hashes(self.centre).items():
            actual = hashlib.sha256(self.read(member)).hexdigest() if member in self.names else None
            if actual != expected:
                return member, actual, expected
        return None

    def crc32(self, member):
        """The CRC-32 the zip stores for a member (None for a folder): a check without inflating it."""
        if self.is_folder:
            return None
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.getinfo(member).CRC

    def describe(self, member=None):
        return f"{self.path}" + (f" member '{member}'" if member else "")


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_source(centre, data_dir, dl_manager=None, verify_checksums=True):
    """Find a centre's archive (data_dir zip, data_dir folder, else the official URL) and check it."""
    archive = _ARCHIVES[centre]
    if data_dir:
        zip_path, folder = Path(data_dir) / archive["file"], Path(data_dir) / archive["folder"]
        if zip_path.is_file():
            path = zip_path
            if folder.is_dir():
                logger.warning(
                    f"{centre}: data_dir holds both '{zip_path}' and the folder '{folder}': using the zip, the "
                    "folder is not read."
                )
        elif folder.is_dir():
            path = folder
        else:
            raise FileNotFoundError(
                f"{centre}: neither '{zip_path}' nor the extracted folder '{folder}' exists in data_dir '{data_dir}'. "
                f"Download {archive['file']} from {_HOMEPAGE} or run `python lymphus.py synth --output_dir "
                f"{data_dir}`."
            )
    else:
        path = Path(dl_manager.download(_URLS[centre]))
    sizes = list_members(path)
    source = CentreSource(centre=centre, path=path, names=list(sizes), sizes=sizes)
    check_member_sizes(source)
    if verify_checksums:
        verify_official_checksums(source)
    return source


def list_members(path):
    """{member: its size once inflated}, from the zip's directory (nothing is inflated) or the folder's files.

    A name the zip holds twice is refused (which copy is the case's cannot be told), and so is a link in a folder
    that leads out of it or to a folder (its target would be read as a member of the release).
    """
    if path.is_dir():
        return list_folder_members(path)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except zipfile.BadZipFile as error:
        raise LymphUsFormatError(f"{path}: not a readable zip archive ({error})") from None
    sizes = {}
    for info in infos:
        if info.filename in sizes and not _IGNORED_MEMBER.search(info.filename):
            raise LymphUsFormatError(
                f"{path} member '{info.filename}': appears twice in the archive; which one is the release's cannot "
                "be told."
            )
        sizes[info.filename] = info.file_size
    return sizes


def list_folder_members(folder):
    root = folder.resolve()
    sizes = {}
    for directory, subfolders, files in os.walk(folder):
        for name in sorted(subfolders) + sorted(files):
            path = Path(directory) / name
            member = path.relative_to(folder.parent).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if root not in target.parents:
                    raise LymphUsFormatError(
                        f"{folder.parent} member '{member}': a link to '{target}', outside '{folder}'; copy the file "
                        "itself in."
                    )
                if target.is_dir():
                    raise LymphUsFormatError(
                        f"{folder.parent} member '{member}': a link to the folder '{target}'; copy the files "
                        "themselves in."
                    )
                if not target.is_file():
                    raise LymphUsFormatError(
                        f"{folder.parent} member '{member}': a link to '{target}', which is not a file."
                    )
            if name in files:
                sizes[member] = path.stat().st_size
    return dict(sorted(sizes.items()))


@functools.lru_cache(maxsize=None)
def official_member_size_limits():
    """{member: the most bytes it may inflate to} for every member of the official release (see MEMBER_SIZE_FACTOR)."""
    limits = {
        archive["spreadsheet"]: MEMBER_SIZE_FACTOR * archive["spreadsheet_bytes"] for archive in _ARCHIVES.values()
    }
    for row in read_official_cases():
        stem = f"Center {row['centre']}/{row['group']}/{row['index_within_group']} {row['group']}"
        for kind in ("Image.bmp", "Mask.tif", "Lesion.bmp"):
            limits[f"{stem} {kind}"] = MEMBER_SIZE_FACTOR * int(row["image_bytes"])
    return limits


def check_member_sizes(source):
    """Refuse, before anything is inflated, a member larger than the inventory allows (or the cap, if not in it)."""
    limits = official_member_size_limits()
    for member, size in source.sizes.items():
        if _IGNORED_MEMBER.search(member):
            continue  # never read
        limit = limits.get(member, MEMBER_SIZE_CAP)
        if size > limit:
            basis = (
                "the official member's size allows"
                if member in limits
                else "the cap for members not in the official inventory"
            )
            raise LymphUsFormatError(
                f"{source.describe(member)}: inflates to {size:,} bytes, more than the {limit:,} {basis}; nothing "
                "was inflated."
            )


def verify_official_checksums(source):
    """A zip must be the official archive byte for byte; an unzipped folder, every official member."""
    fix = (
        "If this is a re-zipped copy or synthetic archives, pass verification_mode='basic_checks' "
        "(--verification_mode basic_checks)."
    )
    if not source.is_folder:
        expected = _ARCHIVES[source.centre]["sha256"]
        if source.sha256 != expected:
            raise NonMatchingChecksumError(
                f"{source.path}: SHA-256 {source.sha256} is not the official {_ARCHIVES[source.centre]['file']}'s "
                f"{expected}. {fix}"
            )
    elif source.first_unofficial_member is not None:
        member, actual, expected = source.first_unofficial_member
        if actual is None:
            raise NonMatchingChecksumError(f"{source.describe(member)}: missing from the extracted folder. {fix}")
        raise NonMatchingChecksumError(
            f"{source.describe(member)}: SHA-256 {actual} is not the official member's {expected}. {fix}"
        )


def read_official_cases():
    with open(_OFFICIAL_CASES_CSV, newline="") as f:
        return list(csv.DictReader(f))


def official_member_hashes(centre):
    hashes = {_ARCHIVES[centre]["spreadsheet"]: _ARCHIVES[centre]["spreadsheet_sha256"]}
    for row in read_official_cases():
        if f"center{row['centre']}" == centre:
            stem = f"Center {row['centre']}/{row['group']}/{row['index_within_group']} {row['group']}"
            hashes[f"{stem} Image.bmp"] = row["image_member_sha256"]
            hashes[f"{stem} Mask.tif"] = row["mask_member_sha256"]
            hashes[f"{stem} Lesion.bmp"] = row["lesion_member_sha256"]
    return hashes


def read_centre(source):
    """Cross-check the spreadsheet against the members; return the centre's cases with their split."""
    members = index_members(source)
    spreadsheet = _ARCHIVES[source.centre]["spreadsheet"]
    rows = parse_spreadsheet(source.read(spreadsheet), source.describe(spreadsheet))
    cases = []
    for row in rows:
        kinds = members.get((row["group"], row["image_name"]), {})
        missing = [kind for kind in ("Image.bmp", "Mask.tif") if kind not in kinds]
        if missing:
            other_group = "Malignant" if row["group"] == "Benign" else "Benign"
            hint = ""
            if (other_group, row["image_name"]) in members:
                hint = (
                    f" The {other_group} folder has case {row['image_name']}: "
                    "does the sheet's Group disagree with the folder?"
                )
            raise LymphUsFormatError(
                f"{source.describe(spreadsheet)} row {row['row']} (Group {row['group']}, Image name "
                f"{row['image_name']}): "
                f"no member '{_ARCHIVES[source.centre]['folder']}/{row['group']}/{row['image_name']} {row['group']} "
                f"{missing[0]}'.{hint}"
            )
        label = row["group"].lower()
        case_id = f"{source.centre}-{label}-{row['image_name']}"
        cases.append(
            {
                "source": source,
                "centre": source.centre,
                "label": label,
                "case_id": case_id,
                # One image per patient in the release, so the case is the patient; splits group by this anyway.
                "patient_id": case_id,
                "members": kinds,
                "features": {name: row[name] for name in SEMANTIC_FEATURES},
            }
        )
    rowless = sorted(set(members) - {(row["group"], row["image_name"]) for row in rows})
    if rowless:
        group, index = rowless[0]
        raise LymphUsFormatError(
            f"{source.describe(next(iter(members[rowless[0]].values())))}: no row of the spreadsheet has Group "
            f"{group} "
            f"and Image name {index} ({len(rowless)} case(s) without a row in all)."
        )
    patients = [(case["patient_id"], case["label"]) for case in cases]
    splits = assign_splits(patients)
    folds = assign_folds(patients, splits)
    for case in cases:
        case["split"] = splits[case["patient_id"]]
        case["fold"] = folds.get(case["patient_id"])
    return cases


def index_members(source):
    """Map (group, case number) -> {kind: member}; refuse anything the release does not hold."""
    members = {}
    spreadsheet = _ARCHIVES[source.centre]["spreadsheet"]
    folder = _ARCHIVES[source.centre]["folder"]
    if spreadsheet not in source.names:
        raise LymphUsFormatError(f"{source.describe()}: the spreadsheet '{spreadsheet}' is missing.")
    for name in source.names:
        if name == spreadsheet or _IGNORED_MEMBER.search(name):
            continue
        match = _CASE_MEMBER.fullmatch(name)
        if not match or not name.startswith(folder + "/"):
            raise LymphUsFormatError(
                f"{source.describe(name)}: unexpected member; the release holds only "
                f"'{folder}/<Benign|Malignant>/<n> <Group> Image.bmp|Mask.tif|Lesion.bmp' and the spreadsheet."
            )
        if match["folder"] != match["group"]:
            raise LymphUsFormatError(
                f"{source.describe(name)}: a {match['group']} file in the {match['folder']} folder."
            )
        members.setdefault((match["group"], int(match["index"])), {})[match["kind"]] = name
    return members


def parse_spreadsheet(xlsx_bytes, where):
    """Rows of the features sheet as typed dicts; blank rows skipped; each bad cell named.

    Every cell is read as a person sees it in a spreadsheet program (see cell_as_shown); a cell whose shown value
    cannot be read from the file stops the export, as does a value outside the header's columns.
    """
    import openpyxl

    check_xlsx_size(xlsx_bytes, where)
    try:
        # Twice: the values as last computed (what is shown), and the formulas (to tell a formula never computed).
        shown = openpyxl.load_workbook(io.BytesIO(xlsx_bytes), data_only=True).worksheets[0]
        stored = openpyxl.load_workbook(io.BytesIO(xlsx_bytes), data_only=False).worksheets[0]
    except Exception as error:
        raise LymphUsFormatError(f"{where}: not a readable .xlsx workbook ({error})") from None
    check_merged_cells(shown, where)
    rows = zip(shown.iter_rows(), stored.iter_rows())
    header_cells, _ = next(rows, ((), ()))
    header = [str(cell.value).strip() if cell.value is not None else "" for cell in header_cells]
    while header and header[-1] == "":
        header.pop()
    if header != list(SPREADSHEET_COLUMNS):
        missing = [h for h in SPREADSHEET_COLUMNS if h not in header]
        unexpected = [h for h in header if h not in SPREADSHEET_COLUMNS]
        raise LymphUsFormatError(
            f"{where}: row 1 headers differ from the official ones; missing {missing}, unexpected {unexpected}, got "
            f"{header}"
        )
    parsed, seen = [], {}
    for row_number, (shown_cells, stored_cells) in enumerate(rows, start=2):
        values = []
        for column, (cell, formula) in enumerate(zip(shown_cells, stored_cells)):
            name = header[column] if column < len(header) else None
            place = (
                f"{where} row {row_number} column '{name}'"
                if name
                else f"{where} row {row_number} cell {cell.coordinate}"
            )
            value = cell_as_shown(cell, formula, place)
            if name is None and not is_blank(value):
                raise LymphUsFormatError(
                    f"{place}: value {value!r} is outside the {len(header)} official columns; move it or delete it."
                )
            values.append(value)
        values = values[: len(header)] + [None] * (len(header) - len(values))
        if all(is_blank(value) for value in values):
            continue
        record = {"row": row_number}
        for column, value in zip(SPREADSHEET_COLUMNS, values):
            record[SPREADSHEET_COLUMNS[column]] = parse_cell(
                value, SPREADSHEET_COLUMNS[column], f"{where} row {row_number} column '{column}'"
            )
        if record["image_name"] is None or record["group"] is None:
            raise LymphUsFormatError(
                f"{where} row {row_number}: 'Image name' and 'Group' must both be filled, got {values[:2]}"
            )
        key = (record["group"], record["image_name"])
        if key in seen:
            raise LymphUsFormatError(
                f"{where} rows {seen[key]} and {row_number}: both are Group {key[0]}, Image name {key[1]}"
            )
        seen[key] = row_number
        parsed.append(record)
    return parsed


def is_blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def check_xlsx_size(xlsx_bytes, where):
    """An .xlsx is itself a zip: refuse one that would inflate past MEMBER_SIZE_CAP before openpyxl inflates it."""
    try:
        with zipfile.ZipFile(io.BytesIO(xlsx_bytes)) as workbook:
            inflated = sum(info.file_size for info in workbook.infolist())
    except zipfile.BadZipFile as error:
        raise LymphUsFormatError(f"{where}: not a readable .xlsx workbook ({error})") from None
    if inflated > MEMBER_SIZE_CAP:
        raise LymphUsFormatError(
            f"{where}: the workbook inflates to {inflated:,} bytes, more than the cap of {MEMBER_SIZE_CAP:,}; "
            "nothing was inflated."
        )


def check_merged_cells(sheet, where):
    """A merged range shows one value across several cells but stores it in the first only: the others would read
    blank."""
    for merged in sheet.merged_cells.ranges:
        first = sheet.cell(merged.min_row, merged.min_col)
        if not is_blank(first.value):
            raise LymphUsFormatError(
                f"{where} cells {merged.coord}: merged, so {first.value!r} shows in each of them but is stored in "
                f"{first.coordinate} only; unmerge the cells and fill each one."
            )


def cell_as_shown(cell, formula_cell, where):
    """The value a person sees in the cell: a formula's last computed value, a number at its displayed decimals.

    A formula saved without its computed value (files written by scripts) has nothing to show: that stops the
    export, naming the cell, instead of becoming a blank.
    """
    if formula_cell.data_type == "f" and cell.value is None:
        text = (
            formula_cell.value
            if isinstance(formula_cell.value, str)
            else getattr(formula_cell.value, "text", formula_cell.value)
        )
        raise LymphUsFormatError(
            f"{where}: the formula {text} has no computed value saved in the file; open and save the workbook in a "
            f"spreadsheet program, or type the value."
        )
    return number_as_shown(cell.value, cell.number_format, where)


def number_as_shown(value, number_format, where):
    """A number rounded to the decimals its format shows (12.345 formatted "0.0" is shown, and read, as 12.3).

    Formats that change more than the decimals (percent, scientific, fractions, hidden ";;;") stop the export,
    naming the cell. "General" shows the number as stored. Excel rounds half away from zero: so does this.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or number_format in (None, "General", "@"):
        return value
    # Drop what does not change the number: quoted text, escaped characters, padding, colours and conditions.
    section = re.sub(r'"[^"]*"|\\.|_.|\*.|\[[^\]]*\]', "", number_format).split(";")[0].strip()
    if section.lower() == "general":  # e.g. "[$-409]General": a locale tag, then General
        return value
    if not re.fullmatch(r"[#0,]*(\.[#0]*)?", section) or not re.search(r"[#0]", section):
        raise LymphUsFormatError(
            f"{where}: the number {value!r} is shown through the format {number_format!r}, which changes more than "
            f"its decimals; set the cell's format to General or type the value as it should read."
        )
    if isinstance(value, int):
        return value
    decimals = len(section.partition(".")[2])
    return float(Decimal(repr(value)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def parse_cell(value, column, where):
    """One spreadsheet cell as its typed value: blank -> None (never 0), a bad value -> an error naming it."""
    if isinstance(value, str):
        value = value.strip()
        if value == "":
            return None
    if value is None:
        return None
    if column == "group":
        if isinstance(value, str) and value.capitalize() in ("Benign", "Malignant"):
            return value.capitalize()
        raise LymphUsFormatError(f"{where}: value {value!r} is neither 'Benign' nor 'Malignant'")
    if isinstance(value, str) and column in CODED_FEATURES and value.lower() in YES_NO_WORDS:
        return YES_NO_WORDS[value.lower()]
    try:
        number = float(value) if not isinstance(value, str) or _NUMBER_TEXT.fullmatch(value) else float("nan")
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not np.isfinite(number):
        raise LymphUsFormatError(
            f"{where}: value {value!r} is not a number" + (" or a yes/no word" if column in CODED_FEATURES else "")
        )
    if column in MEASUREMENT_FEATURES:
        return number
    if number != int(number):
        raise LymphUsFormatError(f"{where}: value {value!r} is not a whole number (expected an integer code)")
    return int(number)


def assign_splits(patients, seed=SPLIT_SEED, fractions=SPLIT_FRACTIONS):
    """Patient-grouped, label-stratified split: {patient_id: split}.

    Patients of each label are sorted by id, shuffled with a fixed-seed generator and cut at the
    rounded fractions, so membership depends only on the set of patients and never on file order.
    Validation and test get at least one patient of each label that has three or more (this only
    matters for tiny synthetic archives: it changes nothing at the official counts).
    """
    labels = {}
    for patient_id, label in patients:
        if labels.setdefault(patient_id, label) != label:
            raise LymphUsFormatError(
                f"patient {patient_id} has cases with both labels; a patient-level split needs one label per patient"
            )
    assignment = {}
    rng = np.random.default_rng(seed)
    for label in sorted(set(labels.values())):
        ids = sorted(patient for patient, patient_label in labels.items() if patient_label == label)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        at_least = 1 if len(ids) >= 3 else 0
        n_test = max(at_least, round(len(ids) * fractions["test"]))
        n_validation = max(at_least, round(len(ids) * fractions["validation"]))
        for position, patient_id in enumerate(ids):
            assignment[patient_id] = (
                "test" if position < n_test else "validation" if position < n_test + n_validation else "train"
            )
    return assignment


def assign_folds(patients, splits, n_folds=N_FOLDS, seed=FOLD_SEED):
    """Patient-grouped, label-stratified cross-validation folds of the development patients: {patient_id: fold}.

    Development = train + validation (assign_splits' output, unchanged); test patients get no fold. The
    patients of each label are sorted by id, shuffled with a fixed-seed generator and dealt to folds in turn,
    the deal going on from one label to the next, so each fold holds floor or ceil of n_label / n_folds
    patients of each label, fold sizes differ by at most one, and the folds depend only on the set of patients.
    """
    labels = dict(patients)
    rng = np.random.default_rng(seed)
    folds, position = {}, 0
    for label in sorted(set(labels.values())):
        ids = sorted(p for p, l in labels.items() if l == label and splits[p] != "test")
        for i in rng.permutation(len(ids)):
            folds[ids[i]] = position % n_folds
            position += 1
    return folds


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


# Synthetic archives in the official format


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
        path = output_dir / _ARCHIVES[centre]["file"]
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
            stem = f"{_ARCHIVES[centre]['folder']}/{row['group']}/{row['index_within_group']} {row['group']}"
            members[f"{stem} Image.bmp"] = encode(Image.fromarray(image), "BMP")
            members[f"{stem} Mask.tif"] = encode(Image.fromarray(mask.astype(bool)), "TIFF", compression="packbits")
            members[f"{stem} Lesion.bmp"] = encode(Image.fromarray(image * mask), "BMP")
        members[_ARCHIVES[centre]["spreadsheet"]] = synthetic_spreadsheet(rows, centre, rng)
        path = output_dir / _ARCHIVES[centre]["file"]
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


# Export: Parquet per centre and split, a dataset card, and configs that compose them


def parquet_path(centre, split):
    return f"data/{centre}/{split}-00000-of-00001.parquet"


def config_parts(config):
    """The (centre, split) Parquet files behind each split of a config: composed, never copied."""
    parts = {split: [(centre, split) for centre in config.centres] for split in SPLITS}
    if config.test_centre:
        parts["test"] = [(config.test_centre, split) for split in SPLITS]
    return parts


def export_dataset(data_dir, output_dir, verification_mode="all_checks", overwrite=False):
    """Build both centres once, write Parquet + README.md + id2label.json, and put the finished folder in place.

    Everything is written in a staging folder beside `output_dir` and moved there at the end (put_in_place), so a
    failed export leaves nothing that looks complete. `overwrite` replaces only an unchanged earlier export.
    """
    output_dir = Path(output_dir)
    check_not_data_folder(output_dir, data_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    with export_lock(output_dir):
        clean_leftovers(output_dir)
        check_replaceable(output_dir, overwrite)
        staging = make_staging(output_dir)
        try:
            built = build_centres(data_dir, staging, verification_mode)
            remove_ours(staging / "build")
            remove_ours(staging / "cache")
            render_card(built).save(staging / "README.md")
            (staging / "id2label.json").write_text(
                json.dumps({str(k): v for k, v in MASK_LABELS.items()}, indent=2) + "\n"
            )
            (staging / "eval.yaml").write_text(eval_yaml())
            write_export_marker(staging)  # last: from here on the staging folder is a complete export
        except BaseException as error:
            remove_quietly(staging)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full_error(error, output_dir) from None
            raise
        put_in_place(staging, output_dir, overwrite)
    return output_dir


def disk_full_error(error, output_dir):
    """One sentence for a full disk (or quota), instead of the error of whichever write hit it."""
    where = f" writing '{error.filename}'" if error.filename else ""
    return OSError(
        error.errno,
        f"{error.strerror}{where}: nothing was exported to '{output_dir}' (the partial files are deleted). "
        f"Free some space on that disk, or choose an --output_dir on another one.",
    )


def build_centres(data_dir, staging, verification_mode):
    """{centre: build_centre_parquet(...)}, one process per centre (decoding and checking images is CPU-bound).

    The workers die with the export, even when it is killed (_worker_init); on the first error, or Ctrl-C, the
    other worker is stopped rather than waited for.
    """
    import multiprocessing

    import openpyxl  # noqa: F401 (imported once here, not in each worker: forked workers inherit it)

    Image.init()  # every PIL plugin (TIFF masks, and datasets' list of formats need them), once rather than per worker

    # Forked (Linux's default up to Python 3.13, pinned here): each worker is the export's own child, which is what
    # _worker_init ties its life to.
    pool = ProcessPoolExecutor(
        max_workers=min(len(CENTRES), os.cpu_count() or 1),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    try:
        # Ctrl-C and SIGTERM wait while the workers are forked: a handler run inside fork's callbacks (logging's
        # lock release) has its exception swallowed, and the export would go on as if never stopped.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            futures = {
                centre: pool.submit(build_centre_parquet, centre, data_dir, staging, verification_mode)
                for centre in CENTRES
            }
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        for centre in CENTRES:  # raises the first worker error (in CENTRES order when both have failed)
            if futures[centre] in done:
                futures[centre].result()
        return {centre: future.result() for centre, future in futures.items()}
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public way before Python 3.14
            process.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _worker_init(parent_pid):
    """Tie a worker to the export: Ctrl-C and SIGTERM are the export's to handle (it stops the workers), and the
    kernel kills the worker when the export dies, even by SIGKILL, instead of leaving a ~250 MB orphan running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by the export while it forked this worker
    from lymphus_ml.runs import die_with_parent  # light: the standard library only

    own_progress_bar_lock()
    if not die_with_parent(signal.SIGKILL):
        import threading

        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the export died before the line above took effect
        os._exit(1)


def own_progress_bar_lock():
    """Give this worker a tqdm lock of its own. tqdm's default one is a multiprocessing lock, shared with the export
    across fork: a worker killed while drawing a progress bar (the export kills the other worker on an error) would
    leave it held, and the next progress bar of the export's process would wait for it forever."""
    import threading

    from tqdm import tqdm

    classes = [tqdm]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if cls is tqdm or "_lock" in vars(cls):
            cls.set_lock(threading.RLock())


def _exit_when_orphaned(parent_pid):
    import time

    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


def build_centre_parquet(centre, data_dir, staging, verification_mode):
    """Build one centre's splits into staging/data/<centre>/<split>-*.parquet.

    Returns their SplitInfos, label counts, the source's provenance and the (width, height) of every image.
    """
    builder = LymphUs(config_name=centre, data_dir=data_dir, cache_dir=str(staging / "cache" / centre))
    build_dir = staging / "build" / centre
    try:
        builder.download_and_prepare(str(build_dir), file_format="parquet", verification_mode=verification_mode)
    except DatasetGenerationError as error:
        if isinstance(error.__cause__, (LymphUsFormatError, OSError)):
            raise error.__cause__ from None  # the case (or the disk) at fault, not datasets' generic wrapper
        raise
    image_sizes = []
    for split in SPLITS:
        (parquet,) = build_dir.glob(f"*-{split}.parquet")
        target = staging / parquet_path(centre, split)
        target.parent.mkdir(parents=True, exist_ok=True)
        parquet.rename(target)
        image_sizes += parquet_image_sizes(target)
    return (
        {split: builder.info.splits[split] for split in SPLITS},
        builder.label_counts,
        builder.source_descriptions[centre],
        image_sizes,
    )


def parquet_image_sizes(path):
    """(width, height) of every image in a Parquet file, from the image headers (no pixel decoded)."""
    import pyarrow.parquet as pq

    return [
        Image.open(io.BytesIO(image["bytes"])).size
        for image in pq.read_table(path, columns=["image"]).column("image").to_pylist()
    ]


def describe_source(source):
    """Provenance for the card: what was read and whether it is the official release."""
    if source.is_folder:
        official = source.first_unofficial_member is None
        return {
            "name": source.path.name + "/ (extracted folder)",
            "sha256": None,
            "official": official,
            "synthetic": False,
        }
    synthetic = is_synthetic_archive(source.path)
    official = source.sha256 == _ARCHIVES[source.centre]["sha256"]
    return {"name": source.path.name, "sha256": source.sha256, "official": official, "synthetic": synthetic}


# The dataset card: every number in it comes from the data exported


def card_facts(counts, image_sizes):
    """The numbers the card states: cases per centre and label, and image size ranges, from what was exported.

    counts: {(centre, split): [benign, malignant]}; image_sizes: {centre: [(width, height), ...]}.
    """
    cases = {
        centre: [sum(counts[centre, split][label] for split in SPLITS) for label in range(len(LABEL_NAMES))]
        for centre in CENTRES
    }
    total = [sum(cases[centre][label] for centre in CENTRES) for label in range(len(LABEL_NAMES))]

    def ranges(sizes):
        return {
            "width": (min(w for w, _ in sizes), max(w for w, _ in sizes)),
            "height": (min(h for _, h in sizes), max(h for _, h in sizes)),
        }

    sizes = {centre: ranges(image_sizes[centre]) for centre in CENTRES}
    sizes["all"] = ranges([size for centre in CENTRES for size in image_sizes[centre]])
    return {"cases": cases, "total": total, "sizes": sizes, "malignant_percent": round(100 * total[1] / sum(total))}


def size_category(n):
    """The Hub's size_categories tag for n examples."""
    for bound, tag in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < bound:
            return tag
    return "100K<n<1M"


def render_card(built):
    """The export's README.md: YAML (configs composing the Parquet files, split sizes), prose from dataset_card.md.

    built: {centre: build_centre_parquet's result}.
    """
    from datasets.info import DatasetInfosDict
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    split_infos = {(centre, split): built[centre][0][split] for centre in CENTRES for split in SPLITS}
    counts = {(centre, split): built[centre][1][split] for centre in CENTRES for split in SPLITS}
    sources = {centre: built[centre][2] for centre in CENTRES}
    facts = card_facts(counts, {centre: built[centre][3] for centre in CENTRES})
    card_data = DatasetCardData(
        pretty_name="LymphUs",
        **LYMPHUS_LICENSE,
        language=["en"],
        task_categories=["image-classification", "image-segmentation"],
        size_categories=[size_category(sum(facts["total"]))],
        tags=["medical", "ultrasound", "lymph-node", "thyroid-cancer", "papillary-thyroid-carcinoma", "multicenter"]
        + (["synthetic"] if any(source["synthetic"] for source in sources.values()) else []),
    )
    infos = DatasetInfosDict()
    metadata_configs = MetadataConfigs()
    config_counts = {}
    for config in LymphUs.BUILDER_CONFIGS:
        metadata_configs[config.name] = {
            "data_files": [
                {"split": split, "path": [parquet_path(*part) for part in parts]}
                for split, parts in config_parts(config).items()
            ],
            **({"default": True} if config.name == LymphUs.DEFAULT_CONFIG_NAME else {}),
        }
        splits = datasets.SplitDict()
        for split, parts in config_parts(config).items():
            splits.add(
                datasets.SplitInfo(
                    name=split,
                    num_bytes=sum(split_infos[part].num_bytes for part in parts),
                    num_examples=sum(split_infos[part].num_examples for part in parts),
                )
            )
            config_counts[config.name, split] = [sum(counts[part][label] for part in parts) for label in range(2)]
        infos[config.name] = datasets.DatasetInfo(features=_FEATURES, splits=splits, config_name=config.name)
    metadata_configs.to_dataset_card_data(card_data)
    infos.to_dataset_card_data(card_data)
    return DatasetCard.from_template(
        card_data,
        template_path=str(Path(__file__).parent / "dataset_card.md"),
        configs=LymphUs.BUILDER_CONFIGS,
        config_counts=config_counts,
        facts=facts,
        centres=CENTRES,
        splits=SPLITS,
        split_fractions=SPLIT_FRACTIONS,
        sources=sources,
        archives=_ARCHIVES,
        urls=_URLS,
        features=_FEATURES,
        n_semantic_features=len(SEMANTIC_FEATURES),
        mask_labels=MASK_LABELS,
        id2label_json=json.dumps({str(k): v for k, v in MASK_LABELS.items()}),
        citation=_CITATION,
        license_details=_LICENSE_DETAILS,
        homepage=_HOMEPAGE,
        split_seed=SPLIT_SEED,
        n_folds=N_FOLDS,
        fold_seed=FOLD_SEED,
        lymphus_version=str(LymphUs.VERSION),
    )


# The export folder: ours alone, one export at a time, replaced in one step


def check_not_data_folder(output_dir, data_dir):
    if data_dir is None:
        return
    output, data = output_dir.resolve(), Path(data_dir).resolve()
    if output == data or output in data.parents:
        raise OutputFolderError(
            f"--output_dir '{output_dir}' {'is' if output == data else 'holds'} the data folder '{data_dir}': "
            f"the export never writes there; choose another --output_dir."
        )


@contextlib.contextmanager
def export_lock(output_dir):
    """One export per output folder at a time: an exclusive flock on `.<name>.lock` beside it.

    The kernel releases it when the holder dies, even by SIGKILL; a second export fails at once, naming the holder.
    The holder deletes the file when done; one that locked a file deleted meanwhile tries again on the new one.
    """
    import fcntl

    path = output_dir.parent / f".{output_dir.name}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderError(
                f"another export into '{output_dir}' is running (process {holder}; lock file '{path}'): wait for it "
                "to finish."
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def check_replaceable(output_dir, overwrite):
    """Refuse, before any work, an output_dir the export may not write: anything but a missing or empty folder, or,
    with `overwrite`, an unchanged earlier export (what its marker lists, and nothing else)."""
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        raise OutputFolderError(
            f"{output_dir} is {'a link' if output_dir.is_symlink() else 'not a folder'}: the export does not replace "
            "it; choose another --output_dir."
        )
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return
    if not overwrite:
        raise OutputFolderError(
            f"{output_dir} exists and is not empty; choose another --output_dir, or pass --overwrite to replace an "
            "earlier export."
        )
    refuse_unless_export(output_dir)


def refuse_unless_export(folder):
    problems = export_discrepancies(folder)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise OutputFolderError(
            f"--overwrite replaces only an unchanged folder written by `lymphus.py export`, and '{folder}' has "
            f"{problems[0]}{more}: nothing was replaced. Move your files out, or choose another --output_dir."
        )


def read_export_marker(folder):
    """The files an export's marker lists, {relative name: {"bytes": int, "sha256": hex}}; None if it has no marker.

    A marker that is not what `export` writes (not JSON, other types, a name outside the folder) vouches for nothing:
    ExportMarkerError names what is wrong with it.
    """
    path = Path(folder) / EXPORT_MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        marker = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as error:
        raise ExportMarkerError(f"a {EXPORT_MARKER} that is not valid JSON ({error})") from None
    if (
        not isinstance(marker, dict)
        or marker.get("format") != "lymphus-export"
        or not isinstance(marker.get("files"), dict)
    ):
        raise ExportMarkerError(
            f'a {EXPORT_MARKER} that is not an export marker (no "format": "lymphus-export" and "files" object)'
        )
    for name, entry in marker["files"].items():
        if not is_export_file_name(name):
            raise ExportMarkerError(
                f"a {EXPORT_MARKER} that lists {name!r}, which is not a file name inside the export"
            )
        if not (
            isinstance(entry, dict)
            and type(entry.get("bytes")) is int
            and entry["bytes"] >= 0
            and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        ):
            raise ExportMarkerError(
                f"a {EXPORT_MARKER} that gives {name!r} as {entry!r}, "
                'not {"bytes": <size>, "sha256": <64 hex digits>}'
            )
    return marker["files"]


def is_export_file_name(name):
    """A relative POSIX path below the export folder, written the one way: no '..', '//', backslash or dotfile."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    return all(part and not part.startswith(".") for part in name.split("/"))  # the export writes no dotfiles


def export_discrepancies(folder, complete=False):
    """What in `folder` its export marker does not vouch for; [] means the folder is exactly an export we wrote
    (each file listed, with the same size and SHA-256, and nothing else), so deleting it deletes nothing of a user's.
    complete: also report listed files that are missing (an upload must hold them all; a deletion does not care)."""
    folder = Path(folder)
    try:
        listed = read_export_marker(folder)
    except ExportMarkerError as error:
        return [str(error)]
    if listed is None:
        return [f"no {EXPORT_MARKER} (it was not written by `lymphus.py export`)"]
    listed_folders = {parent.as_posix() for name in listed for parent in Path(name).parents}
    problems, found = [], set()
    for directory, subfolders, files in os.walk(folder):
        for name in sorted(subfolders) + sorted(files):
            path = Path(directory) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                problems.append(f"'{relative}' (a link)")
            elif name in subfolders:
                if relative not in listed_folders:
                    problems.append(f"'{relative}/' (not written by the export)")
            elif relative == EXPORT_MARKER:
                continue
            elif relative not in listed:
                problems.append(f"'{relative}' (not written by the export)")
            elif (
                path.stat().st_size != listed[relative]["bytes"] or sha256_of_file(path) != listed[relative]["sha256"]
            ):
                problems.append(f"'{relative}' (changed since the export)")
            else:
                found.add(relative)
    if complete:
        problems += [
            f"'{name}' (listed in {EXPORT_MARKER} but missing)"
            for name in sorted(set(listed) - found)
            if not (folder / name).is_file()
        ]
    return problems


def write_export_marker(staging):
    """List every file of the finished export in its marker, then drop the staging marker: now it is an export."""
    files = {}
    for path in sorted(staging.rglob("*")):
        relative = path.relative_to(staging).as_posix()
        if path.is_file() and relative != STAGING_MARKER:
            files[relative] = {"bytes": path.stat().st_size, "sha256": sha256_of_file(path)}
    marker = {"format": "lymphus-export", "lymphus_version": str(LymphUs.VERSION), "files": files}
    (staging / EXPORT_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
    (staging / STAGING_MARKER).unlink()


def make_staging(output_dir):
    """A new folder beside output_dir (one file system: the final rename is atomic), marked as ours at once.

    Made by mkdir, not mkdtemp (mode 0700): the export's permissions follow the umask.
    """
    while True:
        staging = output_dir.parent / f".{output_dir.name}.incomplete-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            break
        except FileExistsError:
            continue
    (staging / STAGING_MARKER).write_text(f"staging folder of `lymphus.py export` into {output_dir.name}\n")
    return staging


def put_in_place(staging, output_dir, overwrite):
    """Move the finished export to output_dir so that, at every instant, the path holds one complete export.

    No earlier export (or no `overwrite`): one rename, atomic, which fails rather than replace a folder that is no
    longer empty. An earlier export: on Linux, renameat2(RENAME_EXCHANGE) swaps the two folders in one atomic
    step; the path holds the old export up to that instant and the new one after it. Where the system cannot
    exchange, two renames (old aside to `.<name>.previous-*`, then new in place): for the instant between them the
    path is missing and the complete old export sits beside it, where the next export puts it back if this one
    is killed just then (clean_leftovers). The earlier export is deleted only after the swap, and only if it
    still holds nothing but its own files.
    """
    if not overwrite or not (output_dir.is_dir() and any(output_dir.iterdir())):
        try:
            os.rename(staging, output_dir)
        except OSError as error:
            remove_quietly(staging)
            raise OutputFolderError(
                f"{output_dir} was created or filled by something else during the export ({error.strerror}): "
                f"nothing in it was replaced."
            ) from None
        return
    try:
        refuse_unless_export(output_dir)  # again: something may have been added while the export ran
        if exchange_paths(staging, output_dir):
            previous = staging
        else:
            previous = output_dir.parent / f".{output_dir.name}.previous-{secrets.token_hex(4)}"
            os.rename(output_dir, previous)
            try:
                os.rename(staging, output_dir)
            except BaseException:
                os.rename(previous, output_dir)
                raise
    except BaseException:
        remove_quietly(staging)
        raise
    discard_previous_export(previous, output_dir)


def exchange_paths(first, second):
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:  # glibc before 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(first), None, str(second))


def discard_previous_export(previous, output_dir):
    problems = export_discrepancies(previous)
    if problems:
        logger.warning(
            f"The new export is in '{output_dir}'. The previous one, moved to '{previous}', now has {problems[0]}: "
            "it is kept; delete it yourself."
        )
        return
    try:
        remove_ours(previous)
    except OSError as error:
        logger.warning(
            f"The new export is in '{output_dir}', but the previous one, moved to '{previous}', could not be deleted "
            f"({error}); the next export into '{output_dir}' tries again, or delete it yourself."
        )


def clean_leftovers(output_dir):
    """Finish what a killed export left beside output_dir (called under the lock: no other export is running).

    `.<name>.previous-*`: an earlier export set aside during a swap, put back if output_dir is missing, else deleted.
    `.<name>.incomplete-*`: a staging folder (or, after a swap, the earlier export), deleted. Only folders holding
    one of our markers are touched; anything else is named and left alone.
    """
    prefix = f".{output_dir.name}."
    for leftover in sorted(output_dir.parent.iterdir()):
        kind = leftover.name[len(prefix) :].partition("-")[0] if leftover.name.startswith(prefix) else None
        if kind not in ("previous", "incomplete"):
            continue
        ours = (
            leftover.is_dir()
            and not leftover.is_symlink()
            and ((leftover / EXPORT_MARKER).is_file() or (leftover / STAGING_MARKER).is_file())
        )
        if not ours:
            logger.warning(
                f"'{leftover}' is named like a leftover of an interrupted export but holds no marker of ours: left "
                "alone; delete it if it is not yours."
            )
        elif kind == "previous" and not (output_dir.exists() or output_dir.is_symlink()):
            leftover.rename(output_dir)
            logger.warning(
                f"Put back the previous export from '{leftover}' to '{output_dir}': an export was interrupted while "
                "replacing it."
            )
        else:
            remove_ours(leftover)
            logger.warning(f"Deleted '{leftover}', left by an interrupted export.")


def remove_ours(path):
    """Delete a folder of ours: its markers last, so that a deletion cut short is still recognised and finished by the
    next export; read-only subfolders are made writable first (they are ours too)."""
    path = Path(path)
    folders = [path] + [
        Path(d) / s for d, subfolders, _ in os.walk(path) for s in subfolders if not (Path(d) / s).is_symlink()
    ]
    for folder in folders:
        with contextlib.suppress(OSError):
            os.chmod(folder, os.stat(folder).st_mode | 0o700)
    markers = {path / EXPORT_MARKER, path / STAGING_MARKER}
    for directory, subfolders, files in os.walk(path, topdown=False):
        for name in files + subfolders:
            entry = Path(directory) / name
            if entry in markers:
                continue
            if name in subfolders and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    for marker in markers:
        marker.unlink(missing_ok=True)
    path.rmdir()


def remove_quietly(path):
    """remove_ours after a failure: a second error must not hide the first (the next export finishes the job)."""
    try:
        if path.exists():
            remove_ours(path)
    except OSError as error:
        logger.warning(f"Could not delete '{path}' ({error}); the next export into the same folder will.")


# Hub


def push_export(export_dir, repo_id, private=False, token=None):
    """Upload an export folder as a dataset repo; `datasets.load_dataset(repo_id, config)` then works.

    Exactly the files the export's marker lists are uploaded, and only if the folder holds nothing else and none of
    them changed (the rule `--overwrite` follows): a file a user added (a `patients.csv`, an .env) is never published.
    Returns (repo URL, whether the repo is private). The token comes from `token`, else huggingface_hub.get_token()
    (HF_TOKEN or `hf auth login`), and is never printed.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir} is not a folder: give a folder written by `python lymphus.py export`.")
    problems = export_discrepancies(export_dir, complete=True)
    if problems:
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(
            f"{export_dir} has {', '.join(problems[:10])}{more}: `push` uploads only an unchanged folder written by "
            f"`python lymphus.py export`, exactly the files its {EXPORT_MARKER} lists. Nothing was uploaded: move "
            f"other files out (or export again), then push."
        )
    files = sorted(read_export_marker(export_dir))
    token = token or get_token()
    if token is None:
        raise ValueError("No Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again.")
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    is_private = bool(api.repo_info(repo_id, repo_type="dataset").private)
    if private and not is_private:
        raise ValueError(
            f"The dataset repo {repo_id} already exists and is public, but --private was given: nothing was uploaded. "
            f"Make it private in its settings on the Hub, or push without --private."
        )
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(export_dir / name)) for name in files]
    api.create_commit(repo_id, operations, repo_type="dataset", commit_message="Upload LymphUs export")
    return repo_url, is_private


# Command line


@dataclass
class SynthArguments:
    output_dir: str = field(metadata={"help": "Folder to write Center-1.zip and Center-2.zip into."})
    cases_per_group: Optional[int] = field(
        default=None, metadata={"help": "Keep only cases 1..n of each group (default: the official 338 cases)."}
    )
    scale: float = field(
        default=1.0,
        metadata={"help": "Multiply every official image size and mask extent by this (1.0: official sizes)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic pixels and features."})


@dataclass
class ExportArguments:
    output_dir: str = field(metadata={"help": "Folder to write the Parquet files and README.md into."})
    data_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Folder with Center-1.zip / Center-2.zip or their extracted 'Center 1/', 'Center 2/' folders. "
                "Default: download the official archives."
        },
    )
    verification_mode: str = field(
        default="all_checks",
        metadata={
            "help": "all_checks: refuse archives whose SHA-256 is not the official one. basic_checks: accept them "
                "(re-zipped copies, synthetic archives). Content checks always run.",
            "choices": ["all_checks", "basic_checks"],
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace output_dir if it is an earlier, unchanged export (its .lymphus-export.json); any other "
                "non-empty folder is refused."
        },
    )


@dataclass
class PushArguments:
    export_dir: str = field(
        metadata={
            "help": "A folder written by `python lymphus.py export` (also accepted as the first positional argument)."
        }
    )
    repo_id: str = field(metadata={"help": "Dataset repo on the Hub, e.g. 'your-name/lymphus'."})
    private: bool = field(
        default=False,
        metadata={
            "help": "Create the repo as private (an existing public repo is then refused). Without it a new repo is "
                "public."
        },
    )


COMMANDS = {"synth": SynthArguments, "export": ExportArguments, "push": PushArguments}
USAGE = "usage: python lymphus.py {synth,export,push} [options]   (python lymphus.py <command> --help for the options)"


def main(argv=None):
    from lymphus_ml.cli import DEBUG_FLAG, parse_arguments

    argv = [argument for argument in (sys.argv[1:] if argv is None else argv) if argument != DEBUG_FLAG]
    if argv in ([], ["-h"], ["--help"]):
        print(USAGE)
        return
    if argv[0] not in COMMANDS:
        raise ValueError(f"unknown command {argv[0]!r}. {USAGE}")
    command, argv = argv[0], argv[1:]
    if command == "push" and argv and not argv[0].startswith("-"):
        argv = ["--export_dir", *argv]  # `push OUT --repo_id ID`
    (args,) = parse_arguments([COMMANDS[command]], argv, plain=True)  # no transformers: a dataset tool starts fast
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if command == "synth":
        paths = write_synthetic_archives(
            args.output_dir, cases_per_group=args.cases_per_group, scale=args.scale, seed=args.seed
        )
        print(
            "Wrote "
            + ", ".join(str(p) for p in paths)
            + " (synthetic: export them with --verification_mode basic_checks)"
        )
    elif command == "export":
        output_dir = export_dataset(args.data_dir, args.output_dir, args.verification_mode, args.overwrite)
        print(f"Exported to {output_dir}: datasets.load_dataset({str(output_dir)!r}, 'center1')")
    else:
        url, private = push_export(args.export_dir, args.repo_id, private=args.private)
        visibility = (
            "a PRIVATE repo: only you (and your organisation) can read it"
            if private
            else "a PUBLIC repo: anyone can download it"
        )
        print(f"Pushed {args.export_dir} to {url}, {visibility}. datasets.load_dataset({args.repo_id!r}, 'center1')")


def _stop_on_sigterm(signum, frame):
    sys.exit(128 + signum)  # unwinds like Ctrl-C: the staging folder is deleted and the workers stopped


if __name__ == "__main__":
    from lymphus_ml.cli import run

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    run(main)
