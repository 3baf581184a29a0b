"""The facts of the official LymphUs release, as this project keeps them: one home for them all.

What the publisher states (citation, description, homepage, terms of use, archive URLs), what a published audit of
the real files measured (each archive's and spreadsheet's size and SHA-256; every member's in
reference/official_cases.csv), and what this project defines once and for all on top of them (label and mask names,
centres, the split fractions and seeds, the cross-validation folds, the spreadsheet's columns and their types, the
`datasets.Features` schema, the Hub benchmark's task ids, the size limits of what an archive may hold).

lymphus.py (the builder and its commands) and the library modules alike import these facts from here, so no library
module needs to import the script for a constant: lymphus.py imports the library modules that read the archives, and
they import this module, never the script. Anything that differs from these facts raises LymphUsFormatError.
"""

from pathlib import Path

import datasets


CITATION = """\
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

DESCRIPTION = """\
LymphUs is a public two-centre database of cervical lymph node B-mode ultrasound images from 338
patients with papillary thyroid carcinoma (centre 1: 99 benign + 81 malignant; centre 2: 76 benign
+ 82 malignant). Each case has one grayscale image, an expert segmentation mask of the node, the
pathology label (benign or malignant = metastatic) and radiologists' semantic features.
"""

HOMEPAGE = "https://qamebi.com/cervical-lymph-node/"

# The landing page says the data are freely accessible for research and asks users to cite both
# papers; it states no licence for the images. The data article itself is CC BY 4.0.
LICENSE = "other"
LICENSE_NAME = "lymphus-research-use"
# The one name of these terms, in the dataset card and in every card of what is trained on it (lymphus_ml.cards,
# the Space card).
LYMPHUS_LICENSE = {"license": LICENSE, "license_name": LICENSE_NAME, "license_link": HOMEPAGE}
LICENSE_DETAILS = (
    "The landing page states that the data are freely accessible for research and asks users to cite "
    "the data article and the study; it states no licence for the images themselves. The data article "
    "(Data in Brief, 2026) is published under CC BY 4.0."
)

URLS = {
    "center1": "https://qamebi.com/wp-content/uploads/2026/03/Center-1.zip",
    "center2": "https://qamebi.com/wp-content/uploads/2026/03/Center-2.zip",
}

# SHA-256 and size of the official archives and spreadsheets (the publisher gives none: these come
# from a published audit of the real files, see reference/official_cases.csv for every member).
ARCHIVES = {
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
OFFICIAL_CASES_CSV = Path(__file__).parents[1] / "reference" / "official_cases.csv"
# What a Hugging Face Job of a script importing this module needs beside it (lymphus_ml.hub ships it).
SHIPPED_FILES = ("reference/official_cases.csv",)

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

FEATURES = datasets.Features(
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

# Limits checked before anything is inflated or decoded (a 4 MB zip can hold gigabytes). A member of an official case
# may be up to MEMBER_SIZE_FACTOR times that case's official Image.bmp (the same pixels re-saved at 32 bits), a
# spreadsheet that many times the official one's; any other member, and the inside of a spreadsheet (itself a zip),
# up to MEMBER_SIZE_CAP. Images may have up to MAX_IMAGE_PIXELS (the official ones have at most 598,024).
MEMBER_SIZE_FACTOR = 4
MEMBER_SIZE_CAP = 16 * 2**20
MAX_IMAGE_PIXELS = 4096 * 4096


class LymphUsFormatError(ValueError):
    """The archives do not hold what the official release holds; the message names the place."""

