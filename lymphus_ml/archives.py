"""Reading one centre of the official release: its zip (`Center-1.zip`) or the folder a user got by unzipping it.

locate_source finds a centre's archive (in data_dir, else downloaded) and checks it before anything is inflated: every
member's size against the official inventory (reference/official_cases.csv), and, unless told otherwise, its SHA-256
against the official one. read_centre cross-checks the spreadsheet against the members and returns the centre's cases
with their split and fold; lymphus_ml.case_images decodes each case. The release's facts are in lymphus_ml.release.
"""

import csv
import functools
import hashlib
import logging
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from datasets.exceptions import NonMatchingChecksumError

from lymphus_ml.release import (
    ARCHIVES,
    HOMEPAGE,
    MEMBER_SIZE_CAP,
    MEMBER_SIZE_FACTOR,
    OFFICIAL_CASES_CSV,
    SEMANTIC_FEATURES,
    URLS,
    LymphUsFormatError,
)
from lymphus_ml.run_folder import sha256_of_file  # the one file hash (standard library only)
from lymphus_ml.splits import assign_folds, assign_splits
from lymphus_ml.spreadsheet import parse_spreadsheet


# The builder's logger: every message of a build or an export is the `lymphus` logger's, whichever module writes it.
logger = logging.getLogger("lymphus")

# The official member names, exactly: ASCII digits without leading zeros, so that no other spelling of a case
# number (a "01", an Arabic-Indic "١") can stand beside the real member and replace its image.
_CASE_MEMBER = re.compile(
    r"^Center (?P<centre>[12])/(?P<folder>Benign|Malignant)/"
    r"(?P<index>[1-9][0-9]*) (?P<group>Benign|Malignant) (?P<kind>Image\.bmp|Mask\.tif|Lesion\.bmp)$",
    re.ASCII,
)
_IGNORED_MEMBER = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|Thumbs\.db$)")


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


def locate_source(centre, data_dir, dl_manager=None, verify_checksums=True):
    """Find a centre's archive (data_dir zip, data_dir folder, else the official URL) and check it."""
    archive = ARCHIVES[centre]
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
                f"Download {archive['file']} from {HOMEPAGE} or run `python lymphus.py synth --output_dir "
                f"{data_dir}`."
            )
    else:
        path = Path(dl_manager.download(URLS[centre]))
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
        archive["spreadsheet"]: MEMBER_SIZE_FACTOR * archive["spreadsheet_bytes"] for archive in ARCHIVES.values()
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
        expected = ARCHIVES[source.centre]["sha256"]
        if source.sha256 != expected:
            raise NonMatchingChecksumError(
                f"{source.path}: SHA-256 {source.sha256} is not the official {ARCHIVES[source.centre]['file']}'s "
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
    with open(OFFICIAL_CASES_CSV, newline="") as f:
        return list(csv.DictReader(f))


def official_member_hashes(centre):
    hashes = {ARCHIVES[centre]["spreadsheet"]: ARCHIVES[centre]["spreadsheet_sha256"]}
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
    spreadsheet = ARCHIVES[source.centre]["spreadsheet"]
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
                f"no member '{ARCHIVES[source.centre]['folder']}/{row['group']}/{row['image_name']} {row['group']} "
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
    spreadsheet = ARCHIVES[source.centre]["spreadsheet"]
    folder = ARCHIVES[source.centre]["folder"]
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

