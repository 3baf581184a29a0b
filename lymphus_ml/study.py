"""The multicentre study's comparison of models on the same cases, and its report (benchmark_lymphus.py).

Case-level predictions paired by case id (`CasePredictions`, `paired_predictions`), DeLong's test against the
reference model with Holm's adjustment, calibration (Brier score, reliability curve), the validation threshold,
and report.md from the `study_report.md` template.
"""

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lymphus_ml.evaluation import format_metric, metric_functions, youden_threshold


PROJECT_ROOT = Path(__file__).resolve().parent.parent
STUDY_REPORT_TEMPLATE = PROJECT_ROOT / "study_report.md"
SHIPPED_FILES = ("study_report.md",)
REFERENCE_MODEL = "semantic-features"
BASELINE_MODEL = "short-long-axis-ratio"
# A test set with fewer cases than this in a class is flagged in the report.
SMALL_SET = 30
STUDY_REFERENCE = (
    "Abbasian Ardakani A, Mohammadi A, Mirza-Aghazadeh-Attari M, Faeghi F, Vogl TJ, Acharya UR. Diagnosis of "
    "Metastatic Lymph Nodes in Patients With Papillary Thyroid Cancer: A Comparative Multi-Center Study of Semantic "
    "Features and Deep Learning-Based Models. J Ultrasound Med 2023;42(6):1211-1221. doi:10.1002/jum.16131"
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


# Calibration and the threshold


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


# Report


def report_estimate(values, name, digits=3) -> str:
    """`values[name]` with its interval as the report writes it: an AUC of perfectly separated classes with Newcombe's
    one-sided bound, a zero-width interval as "no variation" (`format_metric`)."""
    if name == "roc_auc" and values.get(name) is not None and values.get("perfect_separation"):
        low, high = values.get("roc_auc_ci_low"), values.get("roc_auc_ci_high")
        if low is None or high is None:
            return f"{values[name]:.{digits}f} (perfectly separated: no CI)"
        bound = f"≥ {low:.{digits}f}" if values[name] >= 1.0 else f"≤ {high:.{digits}f}"
        return f"{values[name]:.{digits}f} (perfectly separated; {bound})"
    return format_metric(values, name, style="report", digits=digits)


# Power: the paired AUCs' correlations at which the report states the detectable difference.
POWER_CORRELATIONS = (0.0, 0.5)


def detectable_difference(n_positive, n_negative, reference_auc, power=0.8, alpha=0.05) -> dict:
    """The smallest ΔAUC over the reference model's AUC that a test set of this size detects with `power` by a
    two-sided test at `alpha`, by Hanley & McNeil's variance, at each correlation of POWER_CORRELATIONS between the
    two models' AUCs (the metric module's `minimum_detectable_auc_difference`); None where no gain up to AUC 1 is."""
    minimum = metric_functions().minimum_detectable_auc_difference
    values = {}
    for correlation in POWER_CORRELATIONS:
        value = minimum(reference_auc, n_positive, n_negative, power, alpha, correlation) if reference_auc is not None else float("nan")
        values[f"r={correlation:g}"] = None if not math.isfinite(value) else value
    return values


def detectable_difference_text(info, reference_auc) -> str:
    """One line of the report's power paragraph."""
    if reference_auc is None or not 0.0 < reference_auc < 1.0:
        return f"{info['display_name']}: n/a (the reference model's AUC is {reference_auc if reference_auc is not None else 'undefined'})"
    values = detectable_difference(info["n_positive"], info["n_negative"], reference_auc)
    cells = [f"{value:+.3f} at r = {key.split('=')[1]}" if value is not None else f"not even AUC 1 at r = {key.split('=')[1]}"
             for key, value in values.items()]
    return f"{info['display_name']} ({info['n_positive']} malignant / {info['n_negative']} benign, reference AUC {reference_auc:.3f}): {', '.join(cells)}"


def report_p_value(p) -> str:
    """A p-value to 3 decimals (<0.001 below), n/a when undefined."""
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def small_set(info) -> bool:
    """Whether a test set has fewer than SMALL_SET cases of a class."""
    return min(info["n_positive"], info["n_negative"]) < SMALL_SET


def report_cells(row, test_set_info) -> list[str]:
    """The cells of one results-table row of report.md."""
    metrics, delong, calibration_values = row["metrics"], row.get("delong"), row["calibration"]
    test_set = test_set_info["display_name"] + (" ⚠" if small_set(test_set_info) else "")
    if row["model"] == REFERENCE_MODEL:
        difference, p_raw, p_holm = "reference", "—", "—"
    elif not delong or delong.get("auc_difference") is None:
        difference, p_raw, p_holm = "n/a", "n/a", "n/a"
    else:
        difference = report_estimate({"d": delong["auc_difference"], "d_ci_low": delong.get("auc_difference_ci_low"),
                                    "d_ci_high": delong.get("auc_difference_ci_high")}, "d")
        difference = difference if difference.startswith("-") else "+" + difference
        if any(auc is not None and auc in (0.0, 1.0) for auc in (delong.get("auc"), delong.get("auc_reference"))):
            difference += " †"
        p_raw, p_holm = report_p_value(delong.get("p_value")), report_p_value(delong.get("p_value_holm"))
    cells = [test_set, f"`{row['model']}`", f"{row['threshold']:.3f}"]
    cells += [report_estimate(metrics, name) for name in ("roc_auc", "sensitivity", "specificity", "ppv", "npv", "accuracy")]
    cells += [report_estimate(calibration_values, "brier_score"), difference, p_raw, p_holm]
    return cells


def reference_auc(rows, test_set):
    """The reference model's AUC on a test set (None when it was not evaluated there)."""
    for row in rows:
        if row["model"] == REFERENCE_MODEL and row["test_set"] == test_set:
            return row["metrics"].get("roc_auc")
    return None


def build_report(results: dict) -> str:
    """report.md (the study_report.md template) from results.json's content: the results table has one row per
    (test set, model) of results["rows"]."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(PROJECT_ROOT)), keep_trailing_newline=True, trim_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    test_sets = results["test_sets"]
    return environment.get_template(STUDY_REPORT_TEMPLATE.name).render(
        synthetic=results.get("synthetic"),
        dataset=results["dataset"],
        study_reference=STUDY_REFERENCE,
        test_sets=[{**info, "flag": " ⚠" if small_set(info) else ""} for info in test_sets.values()],
        models=results["models"],
        level=int(round(results["confidence_level"] * 100)),
        n_bootstrap=results["n_bootstrap"],
        reference_model=REFERENCE_MODEL,
        n_comparisons=sum(1 for row in results["rows"] if row.get("delong")),
        small_set=SMALL_SET,
        result_rows=[report_cells(row, test_sets[row["test_set"]]) for row in results["rows"]],
        figures=[{"name": test_sets[test_set]["display_name"], **figures} for test_set, figures in results["figures"].items()],
        train_vit_runs=any(info["kind"] == "image (train_vit.py)" for info in results["models"].values()),
        detectable=[detectable_difference_text(info, reference_auc(results["rows"], name))
                    for name, info in test_sets.items()],
    )


def write_study_predictions(path, rows) -> Path:
    """predictions.csv: model, test_set, development_centre, case_id, label, probability, prediction_at_threshold."""
    fields = ["model", "test_set", "development_centre", "case_id", "label", "probability", "prediction_at_threshold"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
