#!/usr/bin/env python
"""Reproduce the LymphUs multicentre study design: radiologists' semantic features vs image models, cross-centre.

The design of Abbasian Ardakani et al. (J Ultrasound Med 2023, doi:10.1002/jum.16131), on a LymphUs export: for
each development centre A (center1, center2) every model is fitted on A's train split, its decision threshold is
chosen on A's validation split (Youden's J), and it is evaluated unchanged on A's internal test split and on the
whole other centre B (subset `A_to_B`, external validation): four test sets. Models:

- `semantic-features`: scikit-learn logistic regression on the spreadsheet's semantic features (the reference of
  every DeLong comparison);
- `short-long-axis-ratio`: a one-feature logistic regression on the short/long axis ratio (a classic sign);
- image models: `train_vit.py` runs made here (--train_vit_args), and/or existing checkpoints (--image_models).

Offline demo (synthetic archives -> export -> semantic model, baseline and one tiny ViT per direction -> report),
a few minutes on 2 CPU cores:

    python benchmark_lymphus.py --offline_demo --output_dir /tmp/lymphus-benchmark

On a real export (local folder or Hub id), with a ViT fine-tuned per direction by train_vit.py:

    python benchmark_lymphus.py --dataset_name <user>/lymphus --output_dir lymphus-benchmark \
        --train_vit_args '{"vit-base": ["--model_name_or_path", "google/vit-base-patch16-224-in21k",
                           "--roi", "crop", "--num_train_epochs", "20", "--learning_rate", "5e-5", "--bf16"]}'

With checkpoints you already have (say which development centre each was trained on; it is evaluated only on
that centre's validation/test splits and on the other centre):

    python benchmark_lymphus.py --dataset_name <user>/lymphus \
        --image_models "vit:center1=runs/vit-center1,vit:center2=runs/vit-center2" --output_dir lymphus-benchmark

Outputs in --output_dir: report.md (one results table, ROC and calibration figures; usable as a model or dataset
card section), results.json, predictions.csv (model, test_set, case_id, label, probability, ...), figures/*.png,
and image_models/<name>-<centre>/ for the train_vit.py runs.
"""

import csv
import json
import logging
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import lymphus
from lymphus_ml.cli import parse_arguments, run
from lymphus_ml.data import dataset_is_synthetic, load_lymphus, write_synthetic_export
from lymphus_ml.evaluation import (
    CLINICAL_METRIC_PATH,
    apply_threshold,
    clinical_metrics_at_thresholds,
    json_safe,
    load_metric,
    metric_functions,
    positive_probabilities,
    youden_threshold,
)
from lymphus_ml.images import ClassificationTransform, model_input_size, processor_mean_std
from lymphus_ml.plots import agg_pyplot


logger = logging.getLogger(__name__)

REFERENCE_MODEL = "semantic-features"
# Columns the short/long axis ratio is computed from (whichever the export has).
AXIS_COLUMNS = ("minimum_diameter", "maximum_diameter", "aspect_ratio")
BASELINE_MODEL = "short-long-axis-ratio"
# Options of train_vit.py that this script sets per direction: a user value would break the protocol.
MANAGED_TRAIN_VIT_OPTIONS = ("--dataset_name", "--dataset_config", "--external_config", "--output_dir", "--hub_model_id")
# A tiny ViT built from a config (no download): the offline demo's image model.
DEMO_VIT_ARGS = [
    "--model_config_json",
    '{"model_type":"vit","image_size":32,"patch_size":8,"num_hidden_layers":2,"hidden_size":32,'
    '"num_attention_heads":2,"intermediate_size":64}',
    "--roi", "crop",
    "--num_train_epochs", "5",
    "--learning_rate", "1e-3",
    "--per_device_train_batch_size", "8",
    "--per_device_eval_batch_size", "16",
    "--n_bootstrap", "200",
    "--use_cpu",
    "--report_to", "none",
    "--disable_tqdm", "True",
]
TRAIN_VIT_SCRIPT = Path(__file__).resolve().parent / "train_vit.py"
# A test set with fewer cases than this in a class is flagged in the report.
SMALL_SET = 30
STUDY_REFERENCE = (
    "Abbasian Ardakani A, Mohammadi A, Mirza-Aghazadeh-Attari M, Faeghi F, Vogl TJ, Acharya UR. Diagnosis of "
    "Metastatic Lymph Nodes in Patients With Papillary Thyroid Cancer: A Comparative Multi-Center Study of Semantic "
    "Features and Deep Learning-Based Models. J Ultrasound Med 2023;42(6):1211-1221. doi:10.1002/jum.16131"
)


@dataclass
class DataArguments:
    """Which LymphUs export to benchmark on, and its columns."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A LymphUs export: a folder written by `lymphus.py export`, or a Hub dataset id."},
    )
    development_centres: str = field(
        default="center1,center2",
        metadata={"help": "Comma-separated development centres; each is also tested on the other centre."},
    )
    measurement_columns: str = field(
        default=",".join(lymphus.MEASUREMENT_FEATURES),
        metadata={"help": "Continuous semantic features: median-imputed (with a missing indicator), standardised."},
    )
    coded_columns: str = field(
        default=",".join(lymphus.CODED_FEATURES),
        metadata={"help": "Integer-coded semantic features: one-hot, with 'not recorded' as a category of its own."},
    )
    label_column_name: str = field(default="label", metadata={"help": "ClassLabel column to predict."})
    case_id_column_name: str = field(default="case_id", metadata={"help": "Unique case identifier column."})
    positive_label: str = field(default="malignant", metadata={"help": "Class whose probability is scored."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded datasets and models are stored."})
    offline_demo: bool = field(
        default=False,
        metadata={
            "help": "Offline demo: write synthetic archives, export them into <output_dir>/synthetic_data and "
            "benchmark on that (with a tiny ViT per direction unless image models are given). Not with --dataset_name."
        },
    )
    demo_cases_per_group: int = field(default=30, metadata={"help": "Synthetic cases per centre and label (demo)."})
    demo_scale: float = field(default=0.2, metadata={"help": "Synthetic image size as a fraction of the official (demo)."})

    def __post_init__(self):
        if self.offline_demo and self.dataset_name is not None:
            raise ValueError(f"--offline_demo builds its own data; drop --dataset_name {self.dataset_name} or the demo flag.")
        if not self.offline_demo and self.dataset_name is None:
            raise ValueError("--dataset_name is required (a `lymphus.py export` folder or a Hub id), or pass --offline_demo.")
        for centre in split_list(self.development_centres):
            if centre not in lymphus.CENTRES:
                raise ValueError(f"--development_centres has {centre!r}; choose from {lymphus.CENTRES}.")


@dataclass
class ModelArguments:
    """The semantic-feature model, the baseline, and the image models compared with them."""

    logistic_c: float = field(
        default=1.0,
        metadata={"help": "Inverse L2 strength of both logistic regressions (scikit-learn's C; 1.0 is its default)."},
    )
    train_vit_args: str | None = field(
        default=None,
        metadata={
            "help": "Image models trained here with train_vit.py, one run per development centre: JSON (or a .json "
            'file) mapping a model name to its train_vit.py arguments, e.g. {"vit": ["--roi", "crop", ...]} (a list '
            "or one shell-quoted string); a bare list names the model 'vit'. --dataset_name, --dataset_config, "
            "--external_config and --output_dir are set here."
        },
    )
    image_models: str | None = field(
        default=None,
        metadata={
            "help": "Existing checkpoints (Hub id or folder), each tied to the centre it was developed on: "
            "'NAME:CENTRE=PATH,...' e.g. 'vit:center1=runs/vit-c1,vit:center2=runs/vit-c2' (NAME: defaults to "
            "'checkpoint'). Evaluated on that centre's validation (threshold) and test splits and on the other centre."
        },
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size for --image_models inference."})
    use_cpu: bool = field(default=False, metadata={"help": "Run --image_models inference on the CPU even if a GPU exists."})
    seed: int = field(default=0, metadata={"help": "Seed of the logistic regressions, train_vit.py runs and bootstrap."})


@dataclass
class ReportArguments:
    """Where the report goes and how uncertainty and calibration are computed."""

    output_dir: str = field(default="lymphus-benchmark", metadata={"help": "Report folder."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Stratified bootstrap resamples for the 95%% CIs."})
    confidence_level: float = field(default=0.95, metadata={"help": "Confidence level of the intervals."})
    calibration_bins: int = field(
        default=10, metadata={"help": "Most quantile bins of a reliability curve; fewer for small sets (about 10 cases a bin)."}
    )
    metric_path: str = field(
        default=str(CLINICAL_METRIC_PATH),
        metadata={"help": "The clinical_classification evaluate module (its folder)."},
    )


# Case-level predictions and their pairing


@dataclass
class CasePredictions:
    """One model's probabilities of the positive class on one set of cases (labels 0/1)."""

    case_ids: list
    labels: np.ndarray
    probabilities: np.ndarray

    def __post_init__(self):
        self.case_ids = [str(case_id) for case_id in self.case_ids]
        self.labels = np.asarray(self.labels, dtype=int)
        self.probabilities = np.asarray(self.probabilities, dtype=float)
        if not len(self.case_ids) == len(self.labels) == len(self.probabilities):
            raise ValueError(
                f"{len(self.case_ids)} case ids, {len(self.labels)} labels and {len(self.probabilities)} probabilities: "
                "one of each per case."
            )
        duplicates = sorted({case_id for case_id in self.case_ids if self.case_ids.count(case_id) > 1})
        if duplicates:
            raise ValueError(f"Case ids appear more than once: {duplicates[:5]}.")


def paired_predictions(reference: CasePredictions, other: CasePredictions, reference_name="reference", other_name="model", test_set="the test set"):
    """(labels, reference probabilities, other probabilities) over the same cases, in the reference's order.

    DeLong's test compares two AUCs on the same cases: the two models must have scored exactly the same case ids,
    with the same labels; anything else is an error that names the cases.
    """
    position = {case_id: index for index, case_id in enumerate(other.case_ids)}
    only_reference = [case_id for case_id in reference.case_ids if case_id not in position]
    only_other = sorted(set(other.case_ids) - set(reference.case_ids))
    if only_reference or only_other:
        raise ValueError(
            f"{other_name} and {reference_name} were not scored on the same cases of {test_set}: "
            f"{len(only_reference)} only in {reference_name} (e.g. {only_reference[:3]}), {len(only_other)} only in "
            f"{other_name} (e.g. {only_other[:3]}). DeLong's test needs both models on the same cases: evaluate them "
            "on the same dataset export and subset."
        )
    order = np.array([position[case_id] for case_id in reference.case_ids], dtype=int)
    other_labels = other.labels[order]
    disagree = [case_id for case_id, a, b in zip(reference.case_ids, reference.labels, other_labels) if a != b]
    if disagree:
        raise ValueError(
            f"{other_name} and {reference_name} disagree on the label of {len(disagree)} case(s) of {test_set} "
            f"(e.g. {disagree[:3]}): they were evaluated on different versions of the data."
        )
    return reference.labels, reference.probabilities, other.probabilities[order]


def delong_versus_reference(reference: CasePredictions, other: CasePredictions, delong_test, reference_name=REFERENCE_MODEL, other_name="model", test_set="the test set", delong_difference_ci=None, confidence_level=0.95) -> dict:
    """Paired two-sided DeLong test of AUC(other) == AUC(reference); auc_difference = other - reference, with its
    DeLong confidence interval when `delong_difference_ci` (the metric module's) is given."""
    labels, reference_probabilities, other_probabilities = paired_predictions(reference, other, reference_name, other_name, test_set)
    result = delong_test(labels, other_probabilities, reference_probabilities)
    record = {
        "reference_model": reference_name,
        "auc": result["auc_a"],
        "auc_reference": result["auc_b"],
        "auc_difference": result["auc_difference"],
        "z": result["z"],
        "p_value": result["p_value"],
        "n": int(len(labels)),
    }
    if delong_difference_ci is not None:
        interval = delong_difference_ci(labels, other_probabilities, reference_probabilities, confidence_level)
        record.update(auc_difference_ci_low=interval["ci_low"], auc_difference_ci_high=interval["ci_high"])
    return record


def adjust_p_values(rows, holm_adjust):
    """Holm-adjusted DeLong p-values over every comparison in the report (one family), beside the raw ones."""
    compared = [row for row in rows if row.get("delong")]
    adjusted = holm_adjust([row["delong"]["p_value"] if row["delong"]["p_value"] is not None else float("nan") for row in compared])
    for row, p_value in zip(compared, adjusted):
        row["delong"]["p_value_holm"] = p_value
    return rows


# Semantic features: the tabular models


def split_list(value) -> list[str]:
    return [item.strip() for item in str(value or "").split(",") if item.strip()]


def semantic_frame(table, columns) -> pd.DataFrame:
    """The semantic-feature columns of a datasets.Dataset, DataFrame or dict of lists, as float64 (NaN = not recorded)."""
    available = list(table.column_names) if hasattr(table, "column_names") else list(table.keys() if isinstance(table, dict) else table.columns)
    missing = [column for column in columns if column not in available]
    if missing:
        raise ValueError(f"Semantic feature column(s) {missing} not found; choose from {available}.")
    if hasattr(table, "select_columns"):
        frame = table.select_columns(list(columns)).to_pandas()
    else:
        frame = pd.DataFrame({column: list(table[column]) for column in columns})
    for column in columns:
        try:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
        except (TypeError, ValueError) as error:
            raise ValueError(f"Semantic feature column {column!r} is not numeric ({error}); codes must be numbers.") from None
    return frame[list(columns)]


def build_semantic_model(measurement_columns, coded_columns, c=1.0, seed=0):
    """scikit-learn Pipeline: the semantic-feature logistic regression.

    Measurements: median imputation with a missing indicator, then standardisation. Coded features: a missing value
    becomes its own category (code -1, "not recorded": in LymphUs a blank often means "not applicable", e.g. the
    prominent echogenicity of a homogeneous node), then one-hot encoding that ignores codes unseen in training
    (all-zero row). L2-penalised logistic regression with strength 1/C.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers = []
    if measurement_columns:
        measurements = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        transformers.append(("measurement", measurements, list(measurement_columns)))
    if coded_columns:
        codes = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value=-1, keep_empty_features=True)),
                ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("coded", codes, list(coded_columns)))
    if not transformers:
        raise ValueError("The semantic model needs at least one of --measurement_columns / --coded_columns.")
    return Pipeline(
        [
            ("features", ColumnTransformer(transformers, remainder="drop")),
            ("logistic", LogisticRegression(C=c, max_iter=5000, random_state=seed)),
        ]
    )


def short_to_long_axis_ratio(frame) -> np.ndarray:
    """(n, 1) short/long axis ratio: minimum_diameter / maximum_diameter, else from aspect_ratio, else NaN.

    aspect_ratio is long/short in LymphUs (or short/long elsewhere): min(a, 1/a) is the short/long ratio either way.
    """
    frame = pd.DataFrame(frame)
    ratio = pd.Series(np.nan, index=frame.index, dtype="float64")
    if {"minimum_diameter", "maximum_diameter"} <= set(frame.columns):
        short, long = frame["minimum_diameter"].astype("float64"), frame["maximum_diameter"].astype("float64")
        valid = (long > 0) & (short >= 0)
        ratio = ratio.where(~valid, np.minimum(short, long) / np.maximum(short, long))
    if "aspect_ratio" in frame.columns:
        aspect = frame["aspect_ratio"].astype("float64")
        from_aspect = np.minimum(aspect, 1.0 / aspect.where(aspect > 0))
        ratio = ratio.fillna(from_aspect.where(aspect > 0))
    return ratio.to_numpy().reshape(-1, 1)


def axis_ratio_feature_names(transformer, input_features):
    return np.array(["short_long_ratio"], dtype=object)


def build_axis_ratio_model(c=1.0, seed=0):
    """The single-feature baseline: logistic regression on the short/long axis ratio (median-imputed, standardised).

    A logistic regression, not the raw ratio, so that the score is a probability (Brier score, calibration); its
    AUC equals the raw ratio's when the coefficient is positive (rounder nodes more often malignant).
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return Pipeline(
        [
            ("ratio", FunctionTransformer(short_to_long_axis_ratio, feature_names_out=axis_ratio_feature_names)),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=c, max_iter=5000, random_state=seed)),
        ]
    )


def fit_tabular_model(model, frame, labels, name="semantic model", where="train"):
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"{name}: the {where} split has only label(s) {sorted(set(labels.tolist()))}; it needs both classes.")
    return model.fit(frame, labels)


def positive_probability(model, frame) -> np.ndarray:
    """Probability of label 1 from a fitted scikit-learn classifier."""
    classes = list(model.classes_)
    return model.predict_proba(frame)[:, classes.index(1)]


def logistic_coefficients(model) -> dict:
    """{feature name: coefficient} of a fitted pipeline's final logistic regression (on the transformed scale)."""
    names = model[:-1].get_feature_names_out()
    logistic = model[-1]
    return {"intercept": float(logistic.intercept_[0]), **{str(n): float(v) for n, v in zip(names, logistic.coef_[0])}}


# Image models


def parse_train_vit_args(value) -> dict[str, list[str]]:
    """--train_vit_args (JSON or a .json file) -> {model name: train_vit.py arguments}."""
    if value is None:
        return {}
    text = Path(value).read_text() if str(value).strip().endswith(".json") and Path(value).is_file() else value
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--train_vit_args is not JSON ({error}): {value!r}. Example: '{{\"vit\": [\"--roi\", \"crop\"]}}'.") from None
    if isinstance(spec, (list, str)):
        spec = {"vit": spec}
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"--train_vit_args must map model names to argument lists, got {value!r}.")
    runs = {}
    for name, arguments in spec.items():
        arguments = shlex.split(arguments) if isinstance(arguments, str) else [str(a) for a in arguments]
        managed = [a for a in arguments if a.split("=", 1)[0] in MANAGED_TRAIN_VIT_OPTIONS]
        if managed:
            raise ValueError(
                f"--train_vit_args for {name!r} sets {managed}: this script sets {list(MANAGED_TRAIN_VIT_OPTIONS)} "
                "per development centre; remove them."
            )
        runs[check_model_name(name)] = arguments
    return runs


def parse_image_models(value) -> dict[str, dict[str, str]]:
    """'NAME:CENTRE=PATH,...' -> {name: {development centre: checkpoint}}."""
    models = {}
    for entry in split_list(value):
        head, equals, path = entry.partition("=")
        name, _, centre = head.rpartition(":")
        if not equals or not path.strip():
            raise ValueError(f"--image_models entry {entry!r} is not NAME:CENTRE=PATH (e.g. vit:center1=runs/vit-c1).")
        name, centre = check_model_name(name or "checkpoint"), centre.strip()
        if centre not in lymphus.CENTRES:
            raise ValueError(f"--image_models entry {entry!r}: development centre {centre!r} is not one of {lymphus.CENTRES}.")
        if centre in models.setdefault(name, {}):
            raise ValueError(f"--image_models gives {name!r} twice for {centre}: {models[name][centre]} and {path}.")
        models[name][centre] = path.strip()
    return models


def check_model_name(name) -> str:
    name = str(name).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"Model name {name!r}: use letters, digits, '.', '_' or '-' (it names files and table rows).")
    if name in (REFERENCE_MODEL, BASELINE_MODEL):
        raise ValueError(f"Model name {name!r} is taken by a built-in model; choose another.")
    return name


def train_vit_run_args(arguments, dataset_name, development_centre, external_centre, output_dir, seed=0) -> list[str]:
    """train_vit.py arguments of one direction: internal splits of `development_centre`, external = the other centre."""
    run = list(arguments) + [
        "--dataset_name", str(dataset_name),
        "--dataset_config", development_centre,
        "--external_config", external_centre,
        "--output_dir", str(output_dir),
    ]
    if not any(a.split("=", 1)[0] == "--seed" for a in arguments):
        run += ["--seed", str(seed)]
    return run


def read_train_vit_predictions(path) -> dict[str, CasePredictions]:
    """train_vit.py's predictions.csv -> {split: CasePredictions} (splits: validation, test, external)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in ("case_id", "split", "label", "probability") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} has no column(s) {missing} (columns: {reader.fieldnames}); is it train_vit.py's predictions.csv?")
        rows = list(reader)
    by_split = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    return {
        split: CasePredictions([r["case_id"] for r in split_rows], [int(r["label"]) for r in split_rows], [float(r["probability"]) for r in split_rows])
        for split, split_rows in by_split.items()
    }


def load_image_checkpoint(path, cache_dir=None):
    """(model, image processor) of an image-classification checkpoint: Hub id or folder."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(path, cache_dir=cache_dir)
    image_processor = AutoImageProcessor.from_pretrained(path, cache_dir=cache_dir)
    return model.eval(), image_processor


def predict_images(model, image_processor, dataset, positive_label="malignant", batch_size=16, device="cpu", image_column="image", mask_column="mask") -> np.ndarray:
    """Probability of `positive_label` for every row of `dataset`, with train_vit.py's evaluation preprocessing.

    The ROI mode and margin come from the checkpoint's config (`roi_mode`, `roi_margin`, written by train_vit.py;
    default: the whole image), so a crop model sees crops here too.
    """
    import torch

    config = model.config
    label2id = {str(k): int(v) for k, v in (config.label2id or {}).items()}
    if positive_label not in label2id:
        raise ValueError(f"Checkpoint {config.name_or_path!r} has labels {list(label2id)}, not {positive_label!r}: is it a LymphUs classifier?")
    roi, margin = getattr(config, "roi_mode", "full"), float(getattr(config, "roi_margin", 0.1))
    num_channels = getattr(config, "num_channels", 3)
    mean, std = processor_mean_std(image_processor, num_channels)
    transform = ClassificationTransform(
        model_input_size(image_processor),
        mean,
        std,
        roi=roi,
        margin=margin,
        train=False,
        num_channels=num_channels,
    )
    columns = [image_column] + ([mask_column] if roi != "full" else [])
    view = dataset.select_columns(columns)
    model = model.to(device)
    logits = []
    with torch.no_grad():
        for start in range(0, len(view), batch_size):
            batch = view[start : start + batch_size]
            masks = batch.get(mask_column) or [None] * len(batch[image_column])
            pixels = torch.stack([transform(image, mask) for image, mask in zip(batch[image_column], masks)]).to(device)
            logits.append(model(pixel_values=pixels).logits.float().cpu().numpy())
    logits = np.concatenate(logits) if logits else np.zeros((0, len(label2id)))
    return positive_probabilities(logits, label2id[positive_label])


def labelled_predictions(split_dataset, probabilities, positive_index, data_args) -> CasePredictions:
    """CasePredictions of a dataset split: its case ids, its labels as 0/1 (1 = positive class), `probabilities`."""
    labels = (np.asarray(list(split_dataset[data_args.label_column_name])) == positive_index).astype(int)
    return CasePredictions(list(split_dataset[data_args.case_id_column_name]), labels, probabilities)


# Metrics, calibration


def n_calibration_bins(n_cases: int, max_bins: int = 10) -> int:
    """About ten cases a bin, between 2 and `max_bins`."""
    return int(max(2, min(max_bins, n_cases // 10)))


def calibration(references, probabilities, max_bins=10, brier_score_ci=None, n_bootstrap=1000, confidence_level=0.95, seed=0) -> dict:
    """Brier score and a quantile-binned reliability curve (mean predicted probability vs observed frequency)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    references = np.asarray(references, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    n_bins = n_calibration_bins(len(references), max_bins)
    observed, predicted = calibration_curve(references, probabilities, n_bins=n_bins, strategy="quantile")
    brier = {"brier_score": float(brier_score_loss(references, probabilities, pos_label=1))}
    if brier_score_ci is not None:
        interval = brier_score_ci(references, probabilities, n_bootstrap=n_bootstrap, confidence_level=confidence_level, seed=seed)
        brier.update(brier_score_ci_low=interval["ci_low"], brier_score_ci_high=interval["ci_high"])
    return {
        **brier,
        "n_bins": n_bins,
        "strategy": "quantile",
        "mean_predicted": [float(v) for v in predicted],
        "fraction_positive": [float(v) for v in observed],
    }


def validation_threshold(validation: CasePredictions, metric_path, where) -> float:
    threshold = youden_threshold(validation.labels, validation.probabilities, metric_path)
    if not math.isfinite(threshold):
        raise ValueError(f"{where}: the validation split has a single class, so Youden's threshold is undefined; it needs both labels.")
    return threshold


# Figures


def plot_roc_overlay(curves, path, title="ROC curves") -> Path:
    """One ROC curve per model; curves: list of dicts with name, references, probabilities, roc_auc, threshold."""
    from sklearn.metrics import roc_curve

    plt = agg_pyplot()
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    for index, curve in enumerate(curves):
        references = np.asarray(curve["references"], dtype=int)
        probabilities = np.asarray(curve["probabilities"], dtype=float)
        if len(np.unique(references)) < 2:
            continue
        fpr, tpr, _ = roc_curve(references, probabilities)
        auc = curve.get("roc_auc")
        line = axes.plot(fpr, tpr, lw=2, color=f"C{index}", label=f"{curve['name']} (AUC {auc:.3f})" if auc is not None else curve["name"])[0]
        if curve.get("threshold") is not None:
            predicted = apply_threshold(probabilities, curve["threshold"])
            sensitivity, specificity = predicted[references == 1].mean(), 1 - predicted[references == 0].mean()
            axes.plot([1 - specificity], [sensitivity], "o", color=line.get_color(), markeredgecolor="black")
    axes.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="1 - specificity", ylabel="Sensitivity")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


def plot_calibration(curves, path, title="Calibration") -> Path:
    """Reliability curves; curves: list of dicts with name, mean_predicted, fraction_positive, brier_score."""
    plt = agg_pyplot()
    figure, axes = plt.subplots(figsize=(5, 5), dpi=100)
    axes.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    for index, curve in enumerate(curves):
        axes.plot(
            curve["mean_predicted"],
            curve["fraction_positive"],
            "o-",
            color=f"C{index}",
            label=f"{curve['name']} (Brier {curve['brier_score']:.3f})",
        )
    axes.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="Mean predicted probability", ylabel="Observed fraction malignant")
    axes.set_title(title, fontsize=9)
    axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return Path(path)


# Report


def _estimate(values, name, digits=3):
    value = values.get(name)
    if value is None:
        return "n/a"
    if name == "roc_auc" and values.get("perfect_separation"):
        return f"{value:.{digits}f} (perfectly separated: no CI)"
    low, high = values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high")
    if low is None or high is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _p_value(p):
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def small_set(info) -> bool:
    return min(info["n_positive"], info["n_negative"]) < SMALL_SET


def report_row(row, test_set_info) -> str:
    """One results-table row of report.md."""
    metrics, delong, calibration_values = row["metrics"], row.get("delong"), row["calibration"]
    test_set = test_set_info["display_name"] + (" ⚠" if small_set(test_set_info) else "")
    if row["model"] == REFERENCE_MODEL:
        difference, p_raw, p_holm = "reference", "—", "—"
    elif not delong or delong.get("auc_difference") is None:
        difference, p_raw, p_holm = "n/a", "n/a", "n/a"
    else:
        difference = _estimate({"d": delong["auc_difference"], "d_ci_low": delong.get("auc_difference_ci_low"),
                                "d_ci_high": delong.get("auc_difference_ci_high")}, "d")
        difference = difference if difference.startswith("-") else "+" + difference
        p_raw, p_holm = _p_value(delong.get("p_value")), _p_value(delong.get("p_value_holm"))
    cells = [test_set, f"`{row['model']}`", f"{row['threshold']:.3f}"]
    cells += [_estimate(metrics, name) for name in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "accuracy")]
    cells += [_estimate(calibration_values, "brier_score"), difference, p_raw, p_holm]
    return "| " + " | ".join(cells) + " |"


def build_report(results: dict) -> str:
    """report.md from results.json's content: the table has one row per (test set, model) of results["rows"]."""
    level = int(round(results["confidence_level"] * 100))
    lines = ["# LymphUs multicentre benchmark: semantic features vs image models", ""]
    if results.get("synthetic"):
        lines += [
            "> **SYNTHETIC DATA.** This benchmark ran on a synthetic LymphUs export (made-up images and features): "
            "the numbers only show that the pipeline runs and say nothing about lymph nodes.",
            "",
        ]
    lines += [
        "> **Not for clinical use.** Research comparison of models; none of them is validated for diagnosis.",
        "",
        f"Dataset: `{results['dataset']}`. Study design of {STUDY_REFERENCE}.",
        "",
        "## Protocol",
        "",
        "For each development centre A, every model is fitted on A's `train` split; its decision threshold is "
        "chosen on A's `validation` split (Youden's J = sensitivity + specificity - 1) and applied unchanged to "
        "A's internal `test` split and to the whole other centre B (subset `A_to_B`: external validation, no case "
        "of B used for fitting, model selection or the threshold).",
        "",
        "| test set | development centre | kind | subset / split | cases | malignant | benign |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for test_set, info in results["test_sets"].items():
        lines.append(
            f"| {info['display_name']}{' ⚠' if small_set(info) else ''} | {info['development_centre']} | {info['kind']} | `{info['subset']}` / `{info['split']}` "
            f"| {info['n']} | {info['n_positive']} | {info['n_negative']} |"
        )
    lines += ["", "## Models", ""]
    for name, info in results["models"].items():
        lines.append(f"- `{name}` ({info['kind']}): {info['description']}")
    lines += [
        "",
        "## Results",
        "",
        f"AUC with {level}% stratified bootstrap CI ({results['n_bootstrap']} resamples); sensitivity, specificity, "
        f"PPV, NPV and accuracy at the validation threshold with exact (Clopper-Pearson) {level}% CIs; Brier score "
        f"(lower is better) with its bootstrap CI; ΔAUC against `{REFERENCE_MODEL}` on the same cases with DeLong's "
        f"{level}% CI, and the two-sided paired DeLong test, raw and Holm-adjusted over all "
        f"{sum(1 for row in results['rows'] if row.get('delong'))} comparisons of this report. DeLong p is n/a when "
        "the variance of the AUC difference is 0 with different AUCs, or a class has fewer than 2 cases; identical "
        "rankings give p = 1.",
        "",
        f"⚠ marks a test set with fewer than {SMALL_SET} cases of a class: its intervals are wide and its p-values "
        "rest on few cases; read them as descriptive.",
        "",
        "| test set | model | threshold | AUC | sensitivity | specificity | PPV | NPV | accuracy | Brier | ΔAUC vs semantic | DeLong p | Holm p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        lines.append(report_row(row, results["test_sets"][row["test_set"]]))
    lines += ["", "## Figures", ""]
    for test_set, figures in results["figures"].items():
        name = results["test_sets"][test_set]["display_name"]
        lines += [
            f"### {name}",
            "",
            f"![ROC curves, {name}]({figures['roc']}) ![Calibration, {name}]({figures['calibration']})",
            "",
        ]
    lines += [
        "Dots on the ROC curves: the operating point at each model's validation threshold. Calibration: "
        "quantile bins of predicted probability (about ten cases a bin).",
        "",
        "## Files",
        "",
        "- `results.json`: every number above, thresholds, calibration curves, the logistic coefficients.",
        "- `predictions.csv`: one row per model, test set and case (model, test_set, case_id, label, probability).",
    ]
    if any(info["kind"] == "image (train_vit.py)" for info in results["models"].values()):
        lines.append("- `image_models/<model>-<centre>/`: the train_vit.py runs (weights, model card, their own metrics).")
    lines += [
        "",
        "## Limitations",
        "",
        "- Two centres, small test sets: intervals are wide and a non-significant DeLong test is not evidence of equivalence.",
        "- Intervals are over cases only; they ignore the variability of training (seeds, splits).",
        "- Thresholds come from small validation splits; recalibrate before any use elsewhere.",
        "",
    ]
    return "\n".join(lines)


def write_predictions(path, rows) -> Path:
    """predictions.csv: model, test_set, development_centre, case_id, label, probability, prediction_at_threshold."""
    fields = ["model", "test_set", "development_centre", "case_id", "label", "probability", "prediction_at_threshold"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def parse_args(args=None):
    """(data_args, model_args, report_args, train_vit_runs, checkpoints, centres), with conflicts refused."""
    data_args, model_args, report_args = parse_arguments((DataArguments, ModelArguments, ReportArguments), args)
    train_vit_runs = parse_train_vit_args(model_args.train_vit_args)
    checkpoints = parse_image_models(model_args.image_models)
    clashes = sorted(set(train_vit_runs) & set(checkpoints))
    if clashes:
        raise ValueError(f"Model name(s) {clashes} appear in both --train_vit_args and --image_models; rename one.")
    centres = split_list(data_args.development_centres)
    for name, paths in checkpoints.items():
        unknown = sorted(set(paths) - set(centres))
        if unknown:
            raise ValueError(f"--image_models {name} has checkpoints for {unknown}, not in --development_centres {centres}.")
    return data_args, model_args, report_args, train_vit_runs, checkpoints, centres


def write_demo_export(output_dir, data_args, model_args) -> str:
    """Synthetic archives in the official format, exported: the offline demo's dataset."""
    dataset_name = write_synthetic_export(
        output_dir / "synthetic_data", data_args.demo_scale, data_args.demo_cases_per_group, model_args.seed
    )
    logger.info(f"Synthetic export in {dataset_name}")
    return dataset_name


def load_designs(dataset_name, centres, data_args, measurement_columns, coded_columns):
    """(designs, test_sets, tabular_columns): per development centre, its splits and the whole other centre."""
    from datasets import ClassLabel

    tabular_columns = list(dict.fromkeys(measurement_columns + coded_columns))
    designs, test_sets = {}, {}
    for centre in centres:
        other = next(c for c in lymphus.CENTRES if c != centre)
        development = load_lymphus(dataset_name, centre, cache_dir=data_args.cache_dir)
        transfer = load_lymphus(dataset_name, f"{centre}_to_{other}", cache_dir=data_args.cache_dir)
        for split in ("train", "validation", "test"):
            if split not in development:
                raise ValueError(f"Subset {centre} of {dataset_name} has splits {list(development)}, not {split!r}.")
        columns = development["train"].column_names
        for column in [data_args.label_column_name, data_args.case_id_column_name] + measurement_columns + coded_columns:
            if column not in columns:
                raise ValueError(f"Column {column!r} not found in {dataset_name} subset {centre}; choose from {columns}.")
        label_feature = development["train"].features[data_args.label_column_name]
        if not isinstance(label_feature, ClassLabel) or data_args.positive_label not in label_feature.names:
            raise ValueError(f"Column {data_args.label_column_name!r} is {label_feature}: need a ClassLabel with {data_args.positive_label!r}.")
        positive_index = label_feature.names.index(data_args.positive_label)
        tabular_columns += [c for c in AXIS_COLUMNS if c in columns and c not in tabular_columns]
        seen = {case_id for split in development.values() for case_id in split[data_args.case_id_column_name]}
        shared = sorted(seen.intersection(transfer["test"][data_args.case_id_column_name]))
        if shared:
            raise ValueError(f"Subset {centre}_to_{other}'s test split shares {len(shared)} cases with {centre} (e.g. {shared[:3]}): not an external set.")
        splits = {"validation": development["validation"], "internal": development["test"], "external": transfer["test"]}
        designs[centre] = {"other": other, "train": development["train"], "splits": splits, "positive_index": positive_index}
        for role, test_set in (("internal", f"{centre}_test"), ("external", f"{centre}_to_{other}")):
            labels = (np.asarray(list(splits[role][data_args.label_column_name])) == positive_index).astype(int)
            test_sets[test_set] = {
                "display_name": f"{centre} test (internal)" if role == "internal" else f"{other} (external, developed on {centre})",
                "development_centre": centre,
                "kind": role,
                "subset": centre if role == "internal" else f"{centre}_to_{other}",
                "split": "test",
                "n": int(labels.size),
                "n_positive": int(labels.sum()),
                "n_negative": int(labels.size - labels.sum()),
            }
        designs[centre]["roles"] = {"internal": f"{centre}_test", "external": f"{centre}_to_{other}"}
    return designs, test_sets, tabular_columns


def fit_tabular_models(designs, data_args, model_args, measurement_columns, coded_columns, tabular_columns):
    """(models, predictions): the semantic-feature model and the axis-ratio baseline, fitted per development centre.

    predictions: {(model, centre): {"validation" | "internal" | "external": CasePredictions}}.
    """
    predictions = {}
    models = {
        REFERENCE_MODEL: {
            "kind": "semantic features",
            "description": f"logistic regression (L2, C={model_args.logistic_c}) on the radiologists' semantic features: "
            f"measurements {measurement_columns} median-imputed with missing indicators and standardised; coded "
            f"features {coded_columns} one-hot encoded with 'not recorded' as its own category, unseen codes ignored.",
            "coefficients": {},
        },
        BASELINE_MODEL: {
            "kind": "single feature",
            "description": f"logistic regression (C={model_args.logistic_c}) on the short/long axis ratio "
            "(minimum_diameter / maximum_diameter, else from aspect_ratio; median-imputed): a probability, so "
            "calibration is defined; same ranking (AUC) as the raw ratio when rounder nodes are more often malignant.",
            "coefficients": {},
        },
    }
    for centre, design in designs.items():
        positive_index = design["positive_index"]
        train_labels = (np.asarray(list(design["train"][data_args.label_column_name])) == positive_index).astype(int)
        train_frame = semantic_frame(design["train"], tabular_columns)
        for name, model in (
            (REFERENCE_MODEL, build_semantic_model(measurement_columns, coded_columns, model_args.logistic_c, model_args.seed)),
            (BASELINE_MODEL, build_axis_ratio_model(model_args.logistic_c, model_args.seed)),
        ):
            fit_tabular_model(model, train_frame, train_labels, name=f"{name} on {centre}")
            models[name]["coefficients"][centre] = logistic_coefficients(model)
            predictions[name, centre] = {
                role: labelled_predictions(split, positive_probability(model, semantic_frame(split, tabular_columns)), positive_index, data_args)
                for role, split in design["splits"].items()
            }
        logger.info(f"Fitted {REFERENCE_MODEL} and {BASELINE_MODEL} on {centre} train ({len(train_labels)} cases)")
    return models, predictions


def run_train_vit(arguments, run_dir):
    """train_vit.py as its own process (scripts never import each other); a failure names the run."""
    completed = subprocess.run([sys.executable, str(TRAIN_VIT_SCRIPT), *arguments], check=False)
    if completed.returncode != 0:
        raise ValueError(f"train_vit.py for {run_dir} failed (exit status {completed.returncode}); its output is above.")


def train_image_models(train_vit_runs, designs, dataset_name, output_dir, seed, models, predictions):
    """train_vit.py runs, one per model and direction; their predictions.csv join `predictions`."""
    for name, arguments in train_vit_runs.items():
        models[name] = {"kind": "image (train_vit.py)", "description": f"train_vit.py {shlex.join(arguments)}", "runs": {}}
        for centre, design in designs.items():
            run_dir = output_dir / "image_models" / f"{name}-{centre}"
            logger.info(f"train_vit.py for {name}, developed on {centre}: {run_dir}")
            run_train_vit(train_vit_run_args(arguments, dataset_name, centre, design["other"], run_dir, seed), run_dir)
            run = read_train_vit_predictions(run_dir / "predictions.csv")
            missing = [split for split in ("validation", "test", "external") if split not in run]
            if missing:
                raise ValueError(f"{run_dir}/predictions.csv has no rows for split(s) {missing}; train_vit.py wrote {list(run)}.")
            predictions[name, centre] = {"validation": run["validation"], "internal": run["test"], "external": run["external"]}
            models[name]["runs"][centre] = str(run_dir.relative_to(output_dir))


def evaluate_checkpoints(checkpoints, designs, data_args, model_args, models, predictions):
    """Existing checkpoints, each evaluated only on data its development centre did not train on."""
    import torch

    device = "cuda" if torch.cuda.is_available() and not model_args.use_cpu else "cpu"
    for name, paths in checkpoints.items():
        models[name] = {"kind": "image (checkpoint)", "description": "existing checkpoints: " + ", ".join(f"{c}: `{p}`" for c, p in paths.items()), "runs": dict(paths)}
        for centre, path in paths.items():
            model, image_processor = load_image_checkpoint(path, data_args.cache_dir)
            design = designs[centre]
            predictions[name, centre] = {
                role: labelled_predictions(
                    split,
                    predict_images(model, image_processor, split, data_args.positive_label, model_args.eval_batch_size, device),
                    design["positive_index"],
                    data_args,
                )
                for role, split in design["splits"].items()
            }
            logger.info(f"Evaluated checkpoint {path} ({name}, developed on {centre})")


def compare_models(designs, models, predictions, test_sets, report_args, seed):
    """(rows, prediction rows): thresholds on validation, metrics on the test sets, DeLong against the semantic model."""
    metric = load_metric(report_args.metric_path)
    functions = metric_functions(report_args.metric_path)
    rows, prediction_rows = [], []
    for centre, design in designs.items():
        for name in models:
            if (name, centre) not in predictions:
                continue
            model_predictions = predictions[name, centre]
            threshold = validation_threshold(model_predictions["validation"], report_args.metric_path, f"{name} developed on {centre}")
            for role in ("internal", "external"):
                test_set = design["roles"][role]
                reference = predictions[REFERENCE_MODEL, centre][role]
                # Every model on the same cases (labels included) as the reference, in the same order.
                labels, _, probabilities = paired_predictions(reference, model_predictions[role], REFERENCE_MODEL, name, test_set)
                cases = CasePredictions(reference.case_ids, labels, probabilities)
                results = clinical_metrics_at_thresholds(
                    metric,
                    cases.labels,
                    cases.probabilities,
                    {"at_validation_threshold": threshold},
                    n_bootstrap=report_args.n_bootstrap,
                    confidence_level=report_args.confidence_level,
                    seed=seed,
                )["at_validation_threshold"]
                delong = None if name == REFERENCE_MODEL else json_safe(
                    delong_versus_reference(
                        reference, cases, functions.delong_test, REFERENCE_MODEL, name, test_set,
                        functions.delong_difference_ci, report_args.confidence_level,
                    )
                )
                rows.append(
                    {
                        "model": name,
                        "test_set": test_set,
                        "development_centre": centre,
                        "threshold": threshold,
                        "metrics": results,
                        "calibration": calibration(
                            cases.labels, cases.probabilities, report_args.calibration_bins, functions.brier_score_ci,
                            report_args.n_bootstrap, report_args.confidence_level, seed,
                        ),
                        "delong": delong,
                    }
                )
                predicted = apply_threshold(cases.probabilities, threshold)
                prediction_rows += [
                    {"model": name, "test_set": test_set, "development_centre": centre, "case_id": c, "label": int(y), "probability": float(p), "prediction_at_threshold": int(d)}
                    for c, y, p, d in zip(cases.case_ids, cases.labels, cases.probabilities, predicted)
                ]
                logger.info(f"{test_set} {name}: AUC {_estimate(results, 'roc_auc')}, DeLong p vs {REFERENCE_MODEL} {_p_value((delong or {}).get('p_value'))}")
    rows.sort(key=lambda row: list(test_sets).index(row["test_set"]))
    return adjust_p_values(rows, functions.holm_adjust), prediction_rows


def plot_figures(rows, prediction_rows, test_sets, output_dir) -> dict:
    """ROC and calibration figures per test set, every model overlaid; returns {test_set: {kind: path}}."""
    figures = {}
    for test_set, info in test_sets.items():
        set_rows = [row for row in rows if row["test_set"] == test_set]
        set_predictions = [r for r in prediction_rows if r["test_set"] == test_set]
        curves = []
        for row in set_rows:
            model_rows = [r for r in set_predictions if r["model"] == row["model"]]
            curves.append(
                {
                    "name": row["model"],
                    "references": [r["label"] for r in model_rows],
                    "probabilities": [r["probability"] for r in model_rows],
                    "roc_auc": row["metrics"].get("roc_auc"),
                    "threshold": row["threshold"],
                    **row["calibration"],
                }
            )
        title = f"{info['display_name']}\nsubset {info['subset']} / {info['split']}, n={info['n']}"
        figures[test_set] = {"roc": f"figures/roc_{slug(test_set)}.png", "calibration": f"figures/calibration_{slug(test_set)}.png"}
        plot_roc_overlay(curves, output_dir / figures[test_set]["roc"], title=f"ROC, {title}")
        plot_calibration(curves, output_dir / figures[test_set]["calibration"], title=f"Calibration, {title}")
    return figures


def main(args=None):
    # Arguments
    data_args, model_args, report_args, train_vit_runs, checkpoints, centres = parse_args(args)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
        level=logging.INFO,
    )
    logger.setLevel(logging.INFO)
    output_dir = Path(report_args.output_dir)
    (output_dir / "figures").mkdir(parents=True, exist_ok=True)

    # Data (the offline demo's synthetic export, with a tiny ViT when no image model is given)
    dataset_name = data_args.dataset_name
    if data_args.offline_demo:
        dataset_name = write_demo_export(output_dir, data_args, model_args)
        if not train_vit_runs and not checkpoints:
            train_vit_runs = {"tiny-vit": list(DEMO_VIT_ARGS)}
    measurement_columns, coded_columns = split_list(data_args.measurement_columns), split_list(data_args.coded_columns)
    designs, test_sets, tabular_columns = load_designs(dataset_name, centres, data_args, measurement_columns, coded_columns)

    # Models: semantic features and the axis-ratio baseline, train_vit.py runs, existing checkpoints
    models, predictions = fit_tabular_models(designs, data_args, model_args, measurement_columns, coded_columns, tabular_columns)
    train_image_models(train_vit_runs, designs, dataset_name, output_dir, model_args.seed, models, predictions)
    if checkpoints:
        evaluate_checkpoints(checkpoints, designs, data_args, model_args, models, predictions)

    # Evaluate and compare
    rows, prediction_rows = compare_models(designs, models, predictions, test_sets, report_args, model_args.seed)
    figures = plot_figures(rows, prediction_rows, test_sets, output_dir)

    # Report
    record = {
        "dataset": Path(dataset_name).name + " (local export)" if Path(dataset_name).exists() else dataset_name,
        "synthetic": dataset_is_synthetic(dataset_name),
        "protocol": "fit on the development centre's train split; Youden threshold on its validation split; evaluate "
        "unchanged on its test split (internal) and on all of the other centre (external)",
        "reference_model": REFERENCE_MODEL,
        "positive_label": data_args.positive_label,
        "n_bootstrap": report_args.n_bootstrap,
        "confidence_level": report_args.confidence_level,
        "seed": model_args.seed,
        "models": models,
        "test_sets": test_sets,
        "rows": rows,
        "figures": figures,
    }
    record = json_safe(record)
    (output_dir / "results.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    write_predictions(output_dir / "predictions.csv", prediction_rows)
    (output_dir / "report.md").write_text(build_report(record))
    logger.info(f"Report in {(output_dir / 'report.md').resolve()} ({len(rows)} rows: {len(models)} models x {len(test_sets)} test sets)")
    return record


if __name__ == "__main__":
    run(main)
