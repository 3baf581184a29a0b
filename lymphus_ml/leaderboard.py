"""Leaderboards over several train_vit.py runs (models x seeds): one row per run, per model the mean ± SD across
seeds (the figure to quote), apart from it the AUC of the seeds' averaged predictions (an ensemble no run saved), and
a forest plot of external AUC whose diamond is the mean across seeds.

A cross-validated run (train_vit.py --cv_folds) has metrics_oof.json in place of metrics_validation.json: its
development figures are the out-of-fold AUC (pooled over the folds, with its CI) and the per-fold AUC, which the
per-model summary pools across folds and seeds (mean ± SD).

A run's numbers come from its `metrics_<split>.json` files (a local run folder, or files downloaded from its Hub
repo) or, when those are absent, from the `model-index` of its model card; its predictions from `predictions.csv`.
"""

import csv
import math
import os
import re
from pathlib import Path

import numpy as np

from lymphus_ml.evaluation import CLINICAL_METRIC_PATH, format_estimate, json_safe, metric_functions
from lymphus_ml.plots import forest_entries, plot_forest
from lymphus_ml.run_folder import write_text_atomic
from lymphus_ml.runs import CV_DEVELOPMENT_SPLIT, RUN_SPLITS


LEADERBOARD_TEMPLATE = Path(__file__).resolve().parent.parent / "sweep_leaderboard.md"
SHIPPED_FILES = ("sweep_leaderboard.md",)


# Sensitivity and specificity at the threshold chosen on validation, where that threshold is applied unchanged.
THRESHOLD_SPLITS = ("test", "external")
LEADERBOARD_THRESHOLD_METRICS = ("sensitivity", "specificity")
AVERAGED_SPLITS = ("test", "external")
SUMMARY_METRICS = (
    "validation_auc", "test_auc", "external_auc",
    "test_sensitivity", "test_specificity", "external_sensitivity", "external_specificity",
)
SUMMARY_LABELS = {
    "validation_auc": "validation AUC",
    "test_auc": "test AUC",
    "external_auc": "external AUC",
    "test_sensitivity": "test sensitivity",
    "test_specificity": "test specificity",
    "external_sensitivity": "external sensitivity",
    "external_specificity": "external specificity",
    "oof_auc": "OOF AUC",
    "oof_fold_auc": "per-fold OOF AUC",
}
# Cross-validated runs' development figures: the pooled out-of-fold AUC (mean ± SD across seeds) and the per-fold
# AUC (mean ± SD across folds and seeds).
CV_SUMMARY_METRICS = ("oof_auc", "oof_fold_auc")
CV_COLUMNS = ("oof_auc", "oof_auc_ci_low", "oof_auc_ci_high", "oof_n_folds", "oof_per_fold_auc_mean", "oof_per_fold_auc_sd")
# A model card's `model-index` names the external set's split "all" (every split of the other centre).
CARD_SPLITS = {"validation": "validation", "test": "test", "all": "external", "external": "external", "oof": "oof"}


def metric_columns() -> list[str]:
    columns = []
    for split in RUN_SPLITS:
        columns += [f"{split}_auc", f"{split}_auc_ci_low", f"{split}_auc_ci_high"]
    for split in THRESHOLD_SPLITS:
        for name in LEADERBOARD_THRESHOLD_METRICS:
            columns += [f"{split}_{name}", f"{split}_{name}_ci_low", f"{split}_{name}_ci_high"]
    return columns


CSV_COLUMNS = (
    "model", "model_slug", "finetuning", "seed", "status", "roi", "youden_threshold", "confidence_level",
    *metric_columns(), *CV_COLUMNS, "run_dir", "hub_repo", "hub_commit", "job_id", "returncode", "error",
)


def number(value):
    """A finite float, or None (missing, null, NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def row_from_metrics_files(metrics: dict, source="") -> dict:
    """Leaderboard fields from train_vit.py's metrics_<split>.json contents ({split: dict}): ROC-AUC with its CI,
    sensitivity and specificity at the validation (Youden) threshold on test and external, ROI, threshold.

    A --cv_folds run gives "oof" (metrics_oof.json) in place of "validation": its pooled out-of-fold AUC goes to
    oof_auc (validation_auc stays empty), with the number of folds and the per-fold AUCs (oof_fold_aucs; their mean
    and SD in oof_per_fold_auc_mean / _sd); the threshold is then the out-of-fold one.
    """
    row = {}
    development = CV_DEVELOPMENT_SPLIT if CV_DEVELOPMENT_SPLIT in metrics and "validation" not in metrics else "validation"
    for split in (development, *RUN_SPLITS[1:]):
        if split not in metrics:
            also = " (nor metrics_oof.json of a --cv_folds run)" if split == "validation" else ""
            raise ValueError(f"{source}metrics_{split}.json is missing{also}.")
        for key in ("at_0.5", "at_youden"):
            if not isinstance(metrics[split].get(key), dict):
                raise ValueError(f"{source}metrics_{split}.json has no {key!r} results.")
        at_half = metrics[split]["at_0.5"]
        for suffix in ("", "_ci_low", "_ci_high"):
            row[f"{split}_auc{suffix}"] = number(at_half.get(f"roc_auc{suffix}"))
        if at_half.get("perfect_separation"):  # Newcombe's one-sided bound is not a two-sided interval to tabulate
            row[f"{split}_auc_ci_low"] = row[f"{split}_auc_ci_high"] = None
    if development == CV_DEVELOPMENT_SPLIT:
        row.update(cv_fields(metrics[development], source))
    for split in THRESHOLD_SPLITS:
        at_youden = metrics[split]["at_youden"]
        for name in LEADERBOARD_THRESHOLD_METRICS:
            for suffix in ("", "_ci_low", "_ci_high"):
                row[f"{split}_{name}{suffix}"] = number(at_youden.get(f"{name}{suffix}"))
    row["roi"] = metrics["external"].get("roi")
    row["youden_threshold"] = number(metrics[development].get("youden_threshold"))
    row["confidence_level"] = number(metrics[development]["at_0.5"].get("confidence_level"))
    return row


def cv_fields(oof: dict, source="") -> dict:
    """oof_n_folds, oof_fold_aucs (one AUC per fold: None for a fold where it is undefined) and their mean and SD,
    from metrics_oof.json's content."""
    folds = oof.get("per_fold_roc_auc")
    if not isinstance(folds, list) or not folds:
        raise ValueError(f"{source}metrics_oof.json has no per-fold ROC-AUC (per_fold_roc_auc).")
    return {
        "oof_n_folds": int(oof.get("n_folds") or len(folds)),
        "oof_fold_aucs": [number(value) for value in folds],
        "oof_per_fold_auc_mean": number(oof.get("per_fold_roc_auc_mean")),
        "oof_per_fold_auc_sd": number(oof.get("per_fold_roc_auc_sd")),
    }


# train_vit.py's model-index holds only the Hub's metric ids (sensitivity is `recall`); specificity has none, so it
# comes from the run's metrics_*.json (sweep_jobs.hub_run_results reads those first). A local-data card has no model-index.
CARD_METRIC_NAMES = {"roc_auc": "roc_auc", "recall": "sensitivity"}
# The confidence interval rides in the metric's display name, where model-index keeps extra information.
CARD_INTERVAL = re.compile(r"\((\d+)% CI (-?[0-9.]+)-(-?[0-9.]+)")


def row_from_eval_results(eval_results) -> dict:
    """Leaderboard fields from a model card's `model-index` (huggingface_hub `EvalResult`s).

    ROC-AUC per split (split "all" is the external set), sensitivity at the Youden threshold
    (`metric_config` "youden", threshold in `metric_args`); CIs from the display name ("... (95% CI a-b, ...)").
    Results computed on segmenter-cropped images (`..._predicted_roi`) are left out.
    """
    row = {}
    for result in eval_results or []:
        if str(result.dataset_name or "").endswith("predicted_roi"):
            continue
        split = CARD_SPLITS.get(result.dataset_split)
        metric = CARD_METRIC_NAMES.get(result.metric_type)
        if split is None or metric is None:
            continue
        arguments = result.metric_args if isinstance(result.metric_args, dict) else {}
        if metric == "roc_auc":
            name = f"{split}_auc"
        elif metric in LEADERBOARD_THRESHOLD_METRICS and result.metric_config == "youden" and split in THRESHOLD_SPLITS:
            name = f"{split}_{metric}"
            row["youden_threshold"] = number(arguments.get("threshold"))
        else:
            continue
        interval = CARD_INTERVAL.search(str(result.metric_name or ""))
        row[name] = number(result.metric_value)
        row[f"{name}_ci_low"] = number(interval.group(2)) if interval else None
        row[f"{name}_ci_high"] = number(interval.group(3)) if interval else None
        if interval:
            row["confidence_level"] = int(interval.group(1)) / 100
    return row


def averaged_predictions(predictions_by_run: dict, split: str):
    """(case_ids, labels, mean probability per case) over runs ({run name: read_run_predictions(...)}).

    Every run must have scored the same cases of `split` with the same labels: otherwise the average mixes
    different test sets, and the error names the run and cases that differ.
    """
    names = list(predictions_by_run)
    reference_name = names[0]
    reference = predictions_by_run[reference_name].get(split)
    if not reference:
        raise ValueError(f"{reference_name}: predictions.csv has no rows for split {split!r}.")
    case_ids = sorted(reference)
    probabilities = []
    for name in names:
        cases = predictions_by_run[name].get(split, {})
        if set(cases) != set(reference):
            differing = sorted(set(cases) ^ set(reference))
            raise ValueError(
                f"{name} scored other {split} cases than {reference_name} ({len(differing)} differ, e.g. "
                f"{differing[:3]}): the seeds' predictions cannot be averaged."
            )
        for case_id in case_ids:
            if cases[case_id][0] != reference[case_id][0]:
                raise ValueError(
                    f"{name} labels {split} case {case_id!r} {cases[case_id][0]}, "
                    f"{reference_name} {reference[case_id][0]}."
                )
        probabilities.append([cases[case_id][1] for case_id in case_ids])
    labels = np.array([reference[case_id][0] for case_id in case_ids], dtype=int)
    return case_ids, labels, np.mean(np.asarray(probabilities, dtype=float), axis=0)


def averaged_auc(labels, probabilities, confidence_level=0.95, metric_path=CLINICAL_METRIC_PATH) -> dict:
    """ROC-AUC of averaged predictions with its DeLong CI (the metric module's `delong_ci`), NaN-free for JSON."""
    delong_ci = metric_functions(metric_path).delong_ci
    result = delong_ci(list(labels), list(probabilities), confidence_level=confidence_level)
    return json_safe({**result, "n": int(len(labels)), "confidence_level": confidence_level})


def seed_summary(rows) -> dict:
    """{model_slug: {"model", "n_runs", "n_finished", metric: {"mean", "sd", "n"}}} over each model's finished runs.

    SD is the sample standard deviation (ddof=1), None with fewer than two values. Cross-validated runs add oof_auc
    (across seeds) and oof_fold_auc: every fold's AUC of every run pooled (its "n" counts folds, "n_runs" the runs).
    """
    summary = {}
    for row in rows:
        entry = summary.setdefault(row["model_slug"], {"model": row["model"], "n_runs": 0, "n_finished": 0, "rows": []})
        entry["n_runs"] += 1
        if row["status"] == "finished":
            entry["n_finished"] += 1
            entry["rows"].append(row)
    for entry in summary.values():
        finished = entry.pop("rows")
        for metric in (*SUMMARY_METRICS, "oof_auc"):
            entry[metric] = spread([row[metric] for row in finished if row.get(metric) is not None])
        with_folds = [row for row in finished if row.get("oof_fold_aucs")]
        entry["oof_fold_auc"] = spread([value for row in with_folds for value in row["oof_fold_aucs"] if value is not None])
        entry["oof_fold_auc"]["n_runs"] = len(with_folds)
    return summary


def spread(values) -> dict:
    return {
        "mean": float(np.mean(values)) if values else None,
        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
        "n": len(values),
    }


def seed_averaged_aucs(rows, predictions, metric_path=CLINICAL_METRIC_PATH) -> dict:
    """{model_slug: {split: averaged_auc(...) | None}} from the finished runs' predictions ({run key: ...}).

    `predictions` is keyed like `run_key(row)`; the CI level is the runs' own (95 % when they do not say).
    """
    averaged = {}
    for slug in dict.fromkeys(row["model_slug"] for row in rows):
        finished = [row for row in rows if row["model_slug"] == slug and run_key(row) in predictions]
        averaged[slug] = {split: None for split in AVERAGED_SPLITS}
        if not finished:
            continue
        levels = {row.get("confidence_level") for row in finished} - {None}
        level = levels.pop() if len(levels) == 1 else 0.95
        by_run = {f"{slug} seed {row['seed']}": predictions[run_key(row)] for row in finished}
        for split in AVERAGED_SPLITS:
            if all(split in run for run in by_run.values()):
                _, labels, probabilities = averaged_predictions(by_run, split)
                result = averaged_auc(labels, probabilities, level, metric_path)
                averaged[slug][split] = {**result, "n_seeds": len(by_run)}
    return averaged


def run_key(row) -> str:
    return f"{row['model_slug']}/seed{row['seed']}"


def write_leaderboard_csv(path, rows) -> Path:
    """One line per run, CSV_COLUMNS; empty cells for what a run does not have."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: "" if row.get(column) is None else row[column] for column in CSV_COLUMNS})
    return write_text_atomic(path, buffer.getvalue())


def format_value(value, low=None, high=None) -> str:
    text = format_estimate(value, low, high, style="leaderboard", missing="–")
    no_interval = value is not None and (low is None or high is None) and value in (0.0, 1.0)
    return text + (" (perfectly separated: no CI)" if no_interval else "")


def format_spread(entry, n_finished) -> str:
    """mean ± SD; "(n=k of N)" where the mean rests on fewer than the model's N finished runs (a run lacks the
    metric), "(n=1)" where one run gives it."""
    if entry["mean"] is None:
        return "–"
    text = f"{entry['mean']:.3f}" if entry["sd"] is None else f"{entry['mean']:.3f} ± {entry['sd']:.3f}"
    if entry["n"] < n_finished:
        return f"{text} (n={entry['n']} of {n_finished})"
    return f"{text} (n=1)" if entry["n"] == 1 else text


def summary_metrics(summary) -> list[str]:
    """The per-model table's metrics: SUMMARY_METRICS; when some run is cross-validated, its out-of-fold AUC and
    per-fold AUC come right after validation AUC, which is left out when no run has one (every run cross-validated)."""
    if not any(entry["oof_auc"]["n"] for entry in summary.values()):
        return list(SUMMARY_METRICS)
    validation = ["validation_auc"] if any(entry["validation_auc"]["n"] for entry in summary.values()) else []
    return [*validation, *CV_SUMMARY_METRICS, *SUMMARY_METRICS[1:]]


def format_fold_spread(entry) -> str:
    """mean ± SD over the folds of every cross-validated run, with how many folds of how many runs."""
    if entry["mean"] is None:
        return "–"
    text = f"{entry['mean']:.3f}" if entry["sd"] is None else f"{entry['mean']:.3f} ± {entry['sd']:.3f}"
    return f"{text} ({entry['n']} folds of {entry['n_runs']} run{'s' if entry['n_runs'] != 1 else ''})"


def summary_table(summary) -> list[str]:
    """Per model: the mean ± SD across its finished runs, the figure to quote for a single run of that model (for
    the per-fold OOF AUC: across the folds of its runs)."""
    metrics = summary_metrics(summary)
    header = ["model", "finished runs", *[SUMMARY_LABELS[m] for m in metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for slug, entry in summary.items():
        cells = [f"`{slug}`", f"{entry['n_finished']}/{entry['n_runs']}"]
        cells += [format_fold_spread(entry[metric]) if metric == "oof_fold_auc" else format_spread(entry[metric], entry["n_finished"])
                  for metric in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ensemble_table(averaged) -> list[str]:
    """Per model: the AUC of the seeds' averaged predictions with its DeLong CI. An ensemble no run saved, so no one
    can download it; it usually reads above a single run's AUC, so it is kept apart from the per-model means."""
    header = ["model", "seeds", *[f"ensemble {split} AUC (CI)" for split in AVERAGED_SPLITS]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for slug, results in averaged.items():
        present = [result for result in results.values() if result is not None]
        if not present:
            continue
        cells = [f"`{slug}`", str(present[0]["n_seeds"])]
        for split in AVERAGED_SPLITS:
            result = results.get(split)
            cells.append(
                "–" if result is None
                else format_value(result["roc_auc"], result.get("roc_auc_ci_low"), result.get("roc_auc_ci_high"))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


def development_cell(row) -> str:
    """Validation AUC (CI); for a cross-validated run the out-of-fold AUC (CI) and its per-fold mean ± SD."""
    if row.get("oof_auc") is None:
        return format_value(row.get("validation_auc"), row.get("validation_auc_ci_low"), row.get("validation_auc_ci_high"))
    text = "OOF " + format_value(row["oof_auc"], row.get("oof_auc_ci_low"), row.get("oof_auc_ci_high"))
    if row.get("oof_per_fold_auc_mean") is not None:
        sd = row.get("oof_per_fold_auc_sd")
        text += f"; {row.get('oof_n_folds')} folds {row['oof_per_fold_auc_mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
    return text


def runs_table(rows) -> list[str]:
    cross_validated = any(row.get("oof_auc") is not None for row in rows)
    development = "validation / OOF AUC (CI)" if cross_validated else "validation AUC (CI)"
    header = ["model", "seed", "status", "ROI", development, "test AUC (CI)", "external AUC (CI)",
              "external sensitivity (CI)", "external specificity (CI)", "where"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        cells = [f"`{row['model_slug']}`", str(row["seed"]), row["status"], row.get("roi") or "–", development_cell(row)]
        for name in ("test_auc", "external_auc", "external_sensitivity", "external_specificity"):
            cells.append(format_value(row.get(name), row.get(f"{name}_ci_low"), row.get(f"{name}_ci_high")))
        cells.append(f"`{row.get('hub_repo') or row.get('run_dir') or '–'}`")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def problem_runs(rows) -> list[dict]:
    """Failed, running and missing runs, each with what is known (exit status and log tail, job state)."""
    problems = []
    for row in rows:
        if row["status"] == "finished":
            continue
        title = f"### `{row['model_slug']}` seed {row['seed']}: {row['status']}"
        if row.get("returncode") is not None:
            title += f" (exit status {row['returncode']})"
        problems.append({
            "title": title,
            "error": str(row["error"]) if row.get("error") else None,
            "log_tail": row["log_tail"].rstrip() if row.get("log_tail") else None,
            "where": f"{row['run_dir']}/train_vit.log" if row.get("run_dir") else "its log",
        })
    return problems


def leaderboard_markdown(rows, summary, averaged, settings: dict, forest_plot: str | None) -> str:
    """leaderboard.md (the sweep_leaderboard.md template): what was compared, per model (mean ± SD, seed-averaged AUC),
    the forest plot, every run, the runs not finished."""
    import jinja2

    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    levels = {row.get("confidence_level") for row in rows} - {None}
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(LEADERBOARD_TEMPLATE.parent)), keep_trailing_newline=True,
        trim_blocks=True, undefined=jinja2.StrictUndefined,
    )
    return environment.get_template(LEADERBOARD_TEMPLATE.name).render(
        dataset_name=settings.get("dataset_name"),
        dataset_config=settings.get("dataset_config"),
        external_config=settings.get("external_config"),
        options=" ".join(settings.get("train_vit_options") or []) or "(none)",
        n_runs=len(rows),
        status_counts=", ".join(f"{n} {status}" for status, n in counts.items()),
        level=f"{levels.pop():.0%}" if len(levels) == 1 else "95%",
        cross_validated=any(row.get("oof_auc") is not None for row in rows),
        summary_table=summary_table(summary),
        ensemble_table=ensemble_table(averaged),
        forest_plot=forest_plot,
        runs_table=runs_table(rows),
        problems=problem_runs(rows),
    )


def write_leaderboard(output_dir, rows, predictions, settings, metric_path=CLINICAL_METRIC_PATH) -> dict:
    """leaderboard.csv, leaderboard.md and forest_external_auc.png in `output_dir`; returns what they hold."""
    output_dir = Path(output_dir)
    summary = seed_summary(rows)
    averaged = seed_averaged_aucs(rows, predictions, metric_path)
    write_leaderboard_csv(output_dir / "leaderboard.csv", rows)
    forest_plot = "forest_external_auc.png"
    partial = output_dir / f".partial-{forest_plot}"
    plot_forest(forest_entries(rows, summary), partial)
    os.replace(partial, output_dir / forest_plot)
    markdown = leaderboard_markdown(rows, summary, averaged, settings, forest_plot)
    write_text_atomic(output_dir / "leaderboard.md", markdown)
    return {"summary": summary, "averaged": averaged}
