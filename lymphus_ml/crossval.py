"""Cross-validated development on the dataset's official folds (`fold` column, lymphus_ml.splits.assign_folds).

K models are trained on train + validation minus one fold each and predict their held-out fold after every
epoch, so each development case gets one out-of-fold (OOF) prediction per epoch. The number of epochs is the
one with the best pooled OOF ROC-AUC; the threshold, the calibration and the conformal sets are fitted on the
OOF predictions at that epoch. One model is then refit on all development cases for that many epochs and carries
them (scikit-learn's CalibratedClassifierCV with ensemble=False). The fold models' predictions of the test sets
at the chosen epoch give the fold ensemble, reported in the metrics only.

    python train_vit.py --offline_demo --cv_folds 5 --output_dir runs/cv-demo --num_train_epochs 3 --learning_rate 1e-3
"""

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace

import numpy as np
from datasets import DatasetDict
from transformers import TrainerCallback, set_seed

from lymphus_ml.calibration import METHODS
from lymphus_ml.classifier_training import build_trainer, load_model, model_view, predict_splits
from lymphus_ml.evaluation import json_safe
from lymphus_ml.images import model_num_channels
from lymphus_ml.runs import PREDICTION_COLUMNS
from lymphus_ml.training import train_and_save


logger = logging.getLogger(__name__)


@dataclass
class CrossValidationArguments:
    """--cv_folds: develop on the dataset's folds; the OOF predictions choose epochs, threshold and calibration."""

    cv_folds: int = field(
        default=0,
        metadata={"help": "0: train on train, select on validation. K (the dataset's number of folds, 5 for LymphUs): "
                  "K fold models on train + validation give out-of-fold predictions, which choose the epochs, the "
                  "Youden threshold, the calibration and the conformal sets; one model refit on all development "
                  "cases is evaluated and saved."},
    )
    fold_column_name: str = field(default="fold", metadata={"help": "Column holding each development row's fold."})
    calibration: str = field(
        default="platt",
        metadata={"help": "With --cv_folds: calibration fitted on the OOF predictions and folded into the head.",
                  "choices": list(METHODS)},
    )
    conformal_level: float = field(
        default=0.9, metadata={"help": "With --cv_folds: level of the class-conditional conformal prediction sets."}
    )

    def __post_init__(self):
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ValueError(f"--cv_folds {self.cv_folds}: use 0 (no cross-validation) or the dataset's number of folds (e.g. 5).")
        if not 0 < self.conformal_level < 1:
            raise ValueError(f"--conformal_level {self.conformal_level}: must be between 0 and 1 (e.g. 0.9).")


def development_set(dataset, cv_args, label_column, dataset_name):
    """(train + validation as one Dataset, its folds as an array), after checking the folds fit --cv_folds."""
    from datasets import concatenate_datasets

    column, k = cv_args.fold_column_name, cv_args.cv_folds
    for split in ("train", "validation"):
        if split in dataset and (column not in dataset[split].column_names or set(dataset[split][column]) == {None}):
            raise ValueError(
                f"--cv_folds {k}: {dataset_name} / {split} has no {column!r} values (an export made before folds); "
                "re-export it with lymphus.py export, or drop --cv_folds."
            )
    development = concatenate_datasets([dataset[split] for split in ("train", "validation") if split in dataset])
    folds = development[column]
    if any(fold is None for fold in folds):
        raise ValueError(f"--cv_folds {k}: {sum(f is None for f in folds)} development row(s) of {dataset_name} have no {column!r}.")
    folds = np.asarray(folds, dtype=int)
    found = sorted(set(folds.tolist()))
    if found != list(range(k)):
        raise ValueError(f"--cv_folds {k}: {dataset_name} has folds {found} ({len(found)} folds); pass --cv_folds {len(found)}.")
    labels = np.asarray(development[label_column])
    for fold in range(k):
        present = set(labels[folds == fold].tolist())
        if len(present) < 2:
            raise ValueError(f"--cv_folds {k}: fold {fold} of {dataset_name} holds only class {sorted(present)}; every fold needs both classes.")
    return development, folds


class EpochPredictions(TrainerCallback):
    """Predicts named sets (the held-out fold, the test sets) after every epoch and at the end of training.

    records: [{"epoch": float, "step": int, "logits": {name: array}}]. `trainer` is set once the Trainer exists.
    """

    def __init__(self, views: dict):
        self.views, self.trainer, self.records = views, None, []

    def on_epoch_end(self, args, state, control, **kwargs):
        self.record(state)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.records or self.records[-1]["step"] != state.global_step:
            self.record(state)

    def record(self, state):
        logits = {name: np.asarray(self.trainer.predict(view, metric_key_prefix=f"cv_{name}").predictions) for name, view in self.views.items()}
        self.records.append({"epoch": float(state.epoch or 0.0), "step": int(state.global_step), "logits": logits})


def cross_validated_training(model_args, data_args, training_args, cv_args, dataset, evaluation_sets, class_names,
                             positive_index, image_processor, run_folder):
    """--cv_folds K: K fold models on train + validation (the dataset's folds) predict their held-out fold after every
    epoch; the out-of-fold predictions choose the epochs, threshold, calibration and conformal sets (`fit_on_oof`).
    Returns (the refit model's trainer, cv). The validation split leaves `evaluation_sets`: it is development data."""
    if not training_args.do_train:
        raise ValueError("--cv_folds trains K fold models and a refit: it cannot run with --do_train False.")
    development, folds = development_set(dataset, cv_args, data_args.label_column_name, data_args.dataset_name)
    evaluation_sets.pop("validation", None)
    fold_records, test_views = [], None
    with tempfile.TemporaryDirectory() as scratch:
        fold_args = replace(training_args, output_dir=scratch, eval_strategy="no", save_strategy="no", load_best_model_at_end=False)
        for k in range(cv_args.cv_folds):
            parts = DatasetDict(train=development.select(np.flatnonzero(folds != k)), validation=development.select(np.flatnonzero(folds == k)))
            set_seed(training_args.seed)
            model = load_model(model_args, data_args, class_names, True)[0]
            trainer = build_trainer(model, image_processor, parts, data_args, fold_args, class_names, positive_index)
            channels = model_num_channels(model.config)
            test_views = test_views or {split: model_view(s, data_args, image_processor, channels) for split, s in evaluation_sets.items()}
            callback = EpochPredictions({"held_out": trainer.eval_dataset, **test_views})
            callback.trainer = trainer
            trainer.add_callback(callback)
            logger.info(f"Fold {k}: training on {len(parts['train'])} development cases, predicting the {len(parts['validation'])} held out")
            trainer.train()
            fold_records.append(callback.records)
    labels = np.asarray(development[data_args.label_column_name])
    cv = fit_on_oof(fold_records, folds, labels, positive_index, class_names, cv_args, data_args.metric_path)
    cv.update(folds=folds, case_ids=list(development[data_args.case_id_column_name]), fold_records=fold_records, development=development)
    logger.info(f"Out-of-fold: {cv['epochs']:g} epochs chosen (OOF ROC-AUC by epoch {cv['oof_roc_auc_by_epoch']}), "
                f"threshold {cv['threshold']:.4f}, calibration {cv['calibrator'].as_dict()}")
    trainer, cv["raw"] = refit_on_development(cv, development, model_args, data_args, training_args, evaluation_sets,
                                              class_names, positive_index, image_processor, run_folder)
    return trainer, cv


def refit_on_development(cv, development, model_args, data_args, training_args, evaluation_sets, class_names,
                         positive_index, image_processor, run_folder):
    """One model trained on all development cases for the OOF-chosen epochs; its test-set probabilities before
    calibration are taken, then the OOF calibration is folded into its head and the conformal thresholds put in its
    config (CalibratedClassifierCV's ensemble=False design). Returns (trainer, {split: raw predictions})."""
    refit_args = replace(training_args, eval_strategy="no", save_strategy="no", load_best_model_at_end=False,
                         num_train_epochs=cv["epochs"], max_steps=-1)
    set_seed(training_args.seed)
    model = load_model(model_args, data_args, class_names, True)[0]
    parts = DatasetDict(train=development, validation=development.select(range(1)))  # no evaluation during the refit
    trainer = build_trainer(model, image_processor, parts, data_args, refit_args, class_names, positive_index)
    train_and_save(trainer, None, run_folder)
    raw = predict_splits(trainer, evaluation_sets, data_args, image_processor, positive_index)
    carry_settings(trainer.model, cv)
    return trainer, raw


def pooled_oof(fold_records, folds):
    """{record index: OOF logits of every development case} from each fold's records (same epochs in each fold)."""
    n_records = min(len(records) for records in fold_records)
    pooled = {}
    for index in range(n_records):
        logits = np.zeros((len(folds), fold_records[0][index]["logits"]["held_out"].shape[1]))
        for fold, records in enumerate(fold_records):
            logits[folds == fold] = records[index]["logits"]["held_out"]
        pooled[index] = logits
    return pooled


def choose_epoch(fold_records, folds, labels, positive_index):
    """(record index, epochs, {index: pooled OOF AUC}): the training length with the best pooled OOF ROC-AUC
    (the earliest on ties, as a shorter training is the more conservative refit)."""
    from scipy.special import softmax
    from sklearn.metrics import roc_auc_score

    pooled = pooled_oof(fold_records, folds)
    aucs = {index: float(roc_auc_score(labels == positive_index, softmax(logits, axis=1)[:, positive_index])) for index, logits in pooled.items()}
    best = max(aucs, key=lambda index: (aucs[index], -index))
    return best, fold_records[0][best]["epoch"], aucs, pooled[best]


def per_fold_auc(oof_probabilities, references, folds) -> dict:
    from sklearn.metrics import roc_auc_score

    values = [float(roc_auc_score(references[folds == k], oof_probabilities[folds == k])) for k in sorted(set(folds.tolist()))]
    return {"per_fold_roc_auc": values, "per_fold_roc_auc_mean": float(np.mean(values)),
            "per_fold_roc_auc_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def fold_ensemble(fold_records, best, calibrator, name) -> np.ndarray | None:
    """Mean calibrated probability of the fold models (at the chosen epoch) on set `name`; None if not predicted."""
    if name not in fold_records[0][best]["logits"]:
        return None
    return np.mean([calibrator.probabilities(records[best]["logits"][name]) for records in fold_records], axis=0)


def fit_on_oof(fold_records, folds, labels, positive_index, class_names, cv_args, metric_path):
    """Everything chosen on the OOF predictions: {"epochs", "record", "oof_roc_auc_by_epoch", "oof_logits",
    "calibrator", "oof_probabilities" (calibrated), "threshold" (Youden on them), "conformal"}."""
    from lymphus_ml.calibration import fit_calibrator
    from lymphus_ml.conformal import fit_mondrian
    from lymphus_ml.evaluation import youden_threshold

    best, epochs, aucs, oof_logits = choose_epoch(fold_records, folds, labels, positive_index)
    calibrator = fit_calibrator(oof_logits, labels, positive_index, cv_args.calibration)
    probabilities = calibrator.probabilities(oof_logits)
    references = (labels == positive_index).astype(int)
    ordered = [class_names[1 - positive_index], class_names[positive_index]]  # the sets' probability is the positive's
    return {
        "epochs": epochs, "record": best, "oof_roc_auc_by_epoch": {fold_records[0][i]["epoch"]: auc for i, auc in aucs.items()},
        "oof_logits": oof_logits, "calibrator": calibrator, "oof_probabilities": probabilities, "references": references,
        "threshold": youden_threshold(references, probabilities, metric_path),
        "conformal": fit_mondrian(references, probabilities, ordered, cv_args.conformal_level),
    }


def oof_metrics(cv, folds, metric, data_args, seed) -> dict:
    """metrics_oof.json's content: the clinical metrics of the calibrated OOF predictions (at 0.5 and at the OOF
    Youden threshold, with intervals), per-fold AUC mean and SD, the chosen epochs and the calibration before/after."""
    from scipy.special import expit

    from lymphus_ml.calibration import calibration_scores, logit_difference
    from lymphus_ml.evaluation import clinical_metrics_at_thresholds

    references, probabilities = cv["references"], cv["oof_probabilities"]
    raw = expit(logit_difference(cv["oof_logits"], cv["calibrator"].positive_index))
    scores = {name: calibration_scores(references, p, data_args.n_bootstrap, data_args.confidence_level, seed)
              for name, p in (("before", raw), ("after", probabilities))}
    return {
        "split": "oof", "n_folds": int(len(set(folds.tolist()))), "youden_threshold": cv["threshold"],
        "threshold_source": "out-of-fold",
        **clinical_metrics_at_thresholds(metric, references, probabilities, {"at_0.5": 0.5, "at_youden": cv["threshold"]},
                                         n_bootstrap=data_args.n_bootstrap, confidence_level=data_args.confidence_level, seed=seed),
        **per_fold_auc(probabilities, references, folds),
        "epochs_chosen": cv["epochs"], "oof_roc_auc_by_epoch": {str(k): v for k, v in cv["oof_roc_auc_by_epoch"].items()},
        "calibration": {**cv["calibrator"].as_dict(), **scores},
        "conformal": {key: value for key, value in cv["conformal"].items()},
    }


def held_out_additions(cv, fold_records, split, references, probabilities, raw_probabilities, metric, data_args, seed, output_dir) -> dict:
    """What cross-validation adds to metrics_<split>.json of a test set: calibration before/after (Brier, ECE, with
    intervals; reliability_<split>.png), the conformal sets' coverage and referral rate, and the fold ensemble."""
    from lymphus_ml.calibration import calibration_scores, plot_reliability
    from lymphus_ml.conformal import coverage_report
    from lymphus_ml.evaluation import clinical_metrics_at_thresholds

    level = data_args.confidence_level
    figure = plot_reliability({"before calibration": (references, raw_probabilities), "after (OOF calibration)": (references, probabilities)},
                              output_dir / f"reliability_{split}.png", title=f"Reliability, {split} (n={len(references)})")
    additions = {
        "threshold_source": "out-of-fold",
        "calibration": {**cv["calibrator"].as_dict(), "figure": figure.name,
                        **{name: calibration_scores(references, p, data_args.n_bootstrap, level, seed)
                           for name, p in (("before", raw_probabilities), ("after", probabilities))}},
        "conformal": coverage_report(references, probabilities, cv["conformal"], level),
    }
    ensemble = fold_ensemble(fold_records, cv["record"], cv["calibrator"], split)
    if ensemble is not None:
        additions["cv_fold_ensemble"] = clinical_metrics_at_thresholds(
            metric, references, ensemble, {"at_youden": cv["threshold"]}, n_bootstrap=data_args.n_bootstrap, confidence_level=level, seed=seed)
    return additions


def report_cross_validation(cv, predictions, metric, data_args, seed, output_dir):
    """metrics_oof.json, the out-of-fold rows of predictions.csv (split `oof`, returned), and what cross-validation
    adds to each test set's metrics_<split>.json (calibration before/after, conformal sets, fold ensemble); the
    card's facts go to cv["summary"]."""
    fold_records, raw = cv["fold_records"], cv["raw"]
    oof = json_safe(oof_metrics(cv, cv["folds"], metric, data_args, seed))
    (output_dir / "metrics_oof.json").write_text(json.dumps(oof, indent=2, allow_nan=False) + "\n")
    held_out = {}
    for split, (references, probabilities, _) in predictions.items():
        if split not in raw:
            continue
        additions = json_safe(held_out_additions(cv, fold_records, split, references, probabilities, raw[split][1], metric,
                                                 data_args, seed, output_dir))
        path = output_dir / f"metrics_{split}.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | additions, indent=2, allow_nan=False) + "\n")
        held_out[split] = additions
    rows = [
        dict(zip(PREDICTION_COLUMNS, (case_id, "oof", int(label), float(probability), int(probability >= cv["threshold"]))))
        for case_id, label, probability in zip(cv["case_ids"], cv["references"], cv["oof_probabilities"])
    ]
    cv["summary"] = {"oof": oof, "held_out": held_out}
    return rows


def carry_settings(model, cv):
    """The OOF calibration folded into the refit model's head; the conformal thresholds into its config."""
    from lymphus_ml.calibration import fold_into_head

    fold_into_head(model, cv["calibrator"])
    model.config.conformal = json_safe(cv["conformal"])


def update_card_fields(fields, cv, development_sizes):
    """classifier_card's fields for a --cv_folds run: the cross-validation section, development sizes, the epochs."""
    summary = cv["summary"]
    fields["cross_validation"] = card_context(summary, fields["confidence_level"])
    for metrics in fields["split_metrics"].values():
        metrics["at_youden"]["threshold_range_source"] = "the out-of-fold predictions"
    fields["split_sizes"] = {"development": development_sizes} | {k: v for k, v in fields["split_sizes"].items() if k != "train"}
    if fields.get("hyperparameters"):
        n_folds = summary["oof"]["n_folds"]
        fields["hyperparameters"] |= {"epochs": cv["epochs"], "model_selection": f"best pooled out-of-fold ROC-AUC ({n_folds} folds)"}


def card_context(summary: dict, level: float) -> dict:
    """The model card's cross-validation section: OOF results, how the settings were chosen, calibration before and
    after and the conformal sets per evaluated set (flagging a class covered below the level)."""
    from lymphus_ml.evaluation import format_estimate

    oof, auc = summary["oof"], summary["oof"]["at_0.5"]

    def estimate(values, name):
        return format_estimate(values.get(name), values.get(f"{name}_ci_low"), values.get(f"{name}_ci_high"))

    sets = {"out-of-fold": oof, **summary["held_out"]}
    calibration_rows = [
        {"set": name, **{f"{metric}_{when}": estimate(values["calibration"][when], metric) for metric in ("brier_score", "ece") for when in ("before", "after")}}
        for name, values in sets.items()
    ]
    conformal_rows, below = [], []
    for name, values in summary["held_out"].items():
        report = values["conformal"]
        classes = [key.removeprefix("coverage_") for key in report if key.startswith("coverage_") and not key.endswith(("_ci_low", "_ci_high"))]
        conformal_rows.append({"set": name, "coverage": [f"{c}: {estimate(report, f'coverage_{c}')}" for c in classes],
                               "referral": estimate(report, "referral_rate")})
        below += [f"{c} on {name}" for c in classes if report[f"coverage_{c}"] is not None and report[f"coverage_{c}"] < report["level"]]
    return {
        "n": auc["n"], "n_folds": oof["n_folds"], "epochs": oof["epochs_chosen"],
        "roc_auc": estimate(auc, "roc_auc"), "per_fold": f"{oof['per_fold_roc_auc_mean']:.3f} ± {oof['per_fold_roc_auc_sd']:.3f}",
        "threshold": oof["youden_threshold"], "calibration": oof["calibration"], "level": round(100 * oof["conformal"]["level"]),
        "sensitivity": estimate(oof["at_youden"], "sensitivity"), "specificity": estimate(oof["at_youden"], "specificity"),
        "calibration_rows": calibration_rows, "conformal_rows": conformal_rows, "below_level": below,
        "ci_level": round(100 * level),
    }


def check_finetuning_scheme(cv_args, finetuning_scheme: str) -> None:
    """--cv_folds trains its fold models and the refit in full: a linear probe or LoRA would make the shared model
    another scheme than the one its out-of-fold settings were chosen on, so the pair is refused."""
    if cv_args.cv_folds and finetuning_scheme != "full":
        raise ValueError(
            f"--cv_folds with --finetuning {finetuning_scheme} is not supported: the fold models and the refit are "
            "fully fine-tuned. Use --finetuning full with --cv_folds, or drop --cv_folds."
        )
