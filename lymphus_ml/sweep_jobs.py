"""sweep.py's Hub side: one Hugging Face Job per run, recorded in jobs.json, and each run's results read back from
its repo, only those its own Job pushed.

A run is anything with `key`, `model`, `slug`, `seed`, `option` and `repo_id(prefix)` (sweep.py's `SweepRun`).
jobs.json maps a run's key to its model, seed, repo, Job id, URL and creation time; never the token. A Job reads
nothing local, so `check_launch_request` refuses local datasets, models and paths before the first one is submitted.
"""

import json
import logging
import re
from datetime import datetime
from pathlib import Path

from lymphus_ml.hub import check_hub_job_request, is_option, launch_job, option_name
from lymphus_ml.leaderboard import row_from_eval_results, row_from_metrics_files
from lymphus_ml.run_folder import write_text_atomic
from lymphus_ml.runs import CV_DEVELOPMENT_SPLIT, RUN_SPLITS, TRAIN_VIT_SCRIPT, read_run_predictions


logger = logging.getLogger(__name__)

JOBS_FILE = "jobs.json"
JOB_FAILED_STAGES = ("ERROR", "CANCELED", "DELETED")
JOB_ACTIVE_STAGES = ("RUNNING", "SCHEDULING")
# Forwarded options whose value train_vit.py reads as a file or folder (or a Hub id): a Hub Job cannot read local ones.
READ_PATH_OPTION = re.compile(r"(name_or_path|_path|_name|_json|_config|resume_from_checkpoint|deepspeed)$")


def check_launch_request(dataset_name, hub_model_id_prefix, runs, forwarded, token):
    """A Hub Job reads nothing local: a Hub dataset, Hub (or config) models, a repo per run, a token."""
    if dataset_name is None:
        raise ValueError("--launch_on_hub needs --dataset_name: the dataset's Hub id (`python lymphus.py push`).")
    check_hub_job_request(dataset_name, True, token)
    if not hub_model_id_prefix or "/" not in hub_model_id_prefix:
        raise ValueError(
            "--launch_on_hub needs --hub_model_id_prefix USER/NAME: each run pushes to USER/NAME-<model>-seed<k>."
        )
    local = [item.model for item in runs if item.option == "--model_name_or_path" and Path(item.model).exists()]
    if local:
        raise ValueError(
            f"--models {local[0]} is a local folder, which a Hub Job cannot read: push it and give its Hub id."
        )
    for config in dict.fromkeys(item.model for item in runs if item.option == "--model_config_json"):
        read_config_file(config)  # sent inline: every one must read before the first Job is submitted
    for name, value in option_values(forwarded):
        if READ_PATH_OPTION.search(name) and Path(value).expanduser().exists():
            raise ValueError(
                f"{name} {value} is a local path, which a Hub Job cannot read: push it to the Hub and give its id."
            )


def option_values(forwarded) -> list[tuple[str, str]]:
    """(option, value) of every `--name value` and `--name=value` among forwarded arguments."""
    pairs = []
    for index, argument in enumerate(forwarded):
        if not is_option(argument):
            continue
        if "=" in argument:
            pairs.append((option_name(argument), argument.split("=", 1)[1]))
        elif index + 1 < len(forwarded) and not is_option(forwarded[index + 1]):
            pairs.append((option_name(argument), forwarded[index + 1]))
    return pairs


def read_config_file(path) -> dict:
    """A --models .json config: a JSON object with "model_type" (train_vit.py builds the model from it)."""
    try:
        config = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"--models {path} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(f'--models {path} is not a model config: a JSON object with "model_type" is needed.')
    return config


def read_jobs(output_dir) -> dict:
    path = Path(output_dir) / JOBS_FILE
    return json.loads(path.read_text()).get("runs", {}) if path.is_file() else {}


def job_stage(api, job) -> tuple[str, str | None, datetime | None]:
    """(stage, message, created_at) of a recorded job: COMPLETED, ERROR, RUNNING, ... or UNKNOWN when the Hub cannot
    say (then the creation time recorded at launch)."""
    from huggingface_hub.errors import HfHubHTTPError

    recorded = datetime.fromisoformat(job["created_at"]) if job.get("created_at") else None
    try:
        info = api.inspect_job(job_id=job["job_id"], namespace=job.get("namespace"))
    except HfHubHTTPError as error:
        return "UNKNOWN", str(error).splitlines()[0], recorded
    status = info.status
    stage = getattr(status.stage, "value", status.stage) if status is not None else "UNKNOWN"
    return str(stage), getattr(status, "message", None), info.created_at or recorded


def launch_runs(runs, commands, job_args, output_dir, token, hub_model_id_prefix) -> dict:
    """One Hub Job per run not already submitted (or whose job failed), running train_vit.py with `commands[run.key]`;
    jobs.json is rewritten after each submission."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    api, jobs = HfApi(token=token), read_jobs(output_dir)
    for sweep_run in runs:
        recorded = jobs.get(sweep_run.key)
        if recorded is not None:
            stage, _, _ = job_stage(api, recorded)
            if stage not in JOB_FAILED_STAGES:
                logger.info(f"{sweep_run.key}: job {recorded['job_id']} already submitted ({stage}); not resubmitted.")
                continue
            logger.info(f"{sweep_run.key}: job {recorded['job_id']} ended {stage}; submitting it again.")
        job = launch_job(TRAIN_VIT_SCRIPT, commands[sweep_run.key], job_args.launch_on_hub, token,
                         timeout=job_args.job_timeout, namespace=job_args.job_namespace)
        owner = getattr(job, "owner", None)
        jobs[sweep_run.key] = {
            "model": sweep_run.model, "model_slug": sweep_run.slug, "finetuning": sweep_run.finetuning,
            "seed": sweep_run.seed,
            "repo_id": sweep_run.repo_id(hub_model_id_prefix), "job_id": job.id, "job_url": job.url,
            "namespace": getattr(owner, "name", None) or job_args.job_namespace, "flavor": job_args.launch_on_hub,
            "created_at": job.created_at.isoformat() if getattr(job, "created_at", None) else None,
        }
        write_text_atomic(output_dir / JOBS_FILE, json.dumps({"runs": jobs}, indent=2) + "\n")
    logger.info(f"{len(jobs)} jobs recorded in {output_dir / JOBS_FILE}; when they are done: "
                f"python sweep.py --collect --output_dir {output_dir}")
    return jobs


def hub_run_results(repo_id, token, revision=None):
    """(leaderboard fields, predictions) of a run's Hub repo at `revision`, or None while it has no predictions.csv.

    The metrics files are preferred (specificity is only there); without them the model card's model-index (a run on a
    Hub dataset) gives the AUCs and sensitivity (and CIs if it has them); a card without one gives nothing.
    """
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    def download(filename):
        return hf_hub_download(repo_id, filename, revision=revision, token=token)

    try:
        predictions = read_run_predictions(download("predictions.csv"))
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    metrics = {}
    try:
        for split in RUN_SPLITS:
            try:
                metrics[split] = json.loads(Path(download(f"metrics_{split}.json")).read_text())
            except EntryNotFoundError:
                if split != "validation":
                    raise
                split = CV_DEVELOPMENT_SPLIT  # a --cv_folds run: metrics_oof.json in place of metrics_validation.json
                metrics[split] = json.loads(Path(download(f"metrics_{split}.json")).read_text())
    except EntryNotFoundError:
        metrics = None
    except json.JSONDecodeError as error:
        raise ValueError(f"{repo_id}: metrics_{split}.json is not valid JSON: {error}") from None
    if metrics is not None:
        return row_from_metrics_files(metrics, source=f"{repo_id}: "), predictions
    try:
        card = ModelCard.load(download("README.md"))
    except EntryNotFoundError:
        return {}, predictions
    return row_from_eval_results(card.data.eval_results), predictions


def latest_commit(api, repo_id):
    """(sha, date) of the repo's latest commit, or None when the repo does not exist (yet)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.model_info(repo_id)
    except RepositoryNotFoundError:
        return None
    return info.sha, info.last_modified


def is_complete(results) -> bool:
    """A development AUC (validation, or out-of-fold for a --cv_folds run), a test and an external AUC."""
    if results is None:
        return False
    row = results[0]
    development = row.get("validation_auc") is not None or row.get(f"{CV_DEVELOPMENT_SPLIT}_auc") is not None
    return development and all(row.get(f"{split}_auc") is not None for split in RUN_SPLITS[1:])


def hub_run_row(api, repo_id, job, token) -> tuple[dict, dict | None]:
    """(leaderboard fields, predictions or None) of one run from its repo and its recorded Job (None if none).

    A run of jobs.json is finished only when its Job COMPLETED and the repo's latest commit is newer than the Job:
    results committed before it (an earlier sweep's, under the same names) are never shown as this sweep's. A run
    without a recorded Job is read as its repo stands (the commit is in `hub_commit`).
    """
    row, commit = {}, latest_commit(api, repo_id)
    if commit is not None:
        row["hub_commit"] = commit[0]
    if job is None:
        results = hub_run_results(repo_id, token, commit[0]) if commit else None
        if is_complete(results):
            return {**row, **results[0], "status": "finished"}, results[1]
        return {**row, "status": "not found", "error": f"{repo_id} has no results yet (still running or failed)"}, None
    stage, message, created_at = job_stage(api, job)
    detail = f"job {job['job_id']} {stage}" + (f": {message}" if message else "")
    where = f" ({job['job_url']})" if job.get("job_url") else ""
    fresh = commit is not None and created_at is not None and commit[1] is not None and commit[1] > created_at
    stale = "" if commit is None or fresh else (
        f"; {repo_id} holds only what was committed before this job was created (commit {commit[0][:8]}"
        + (f" of {commit[1]:%Y-%m-%d %H:%M} UTC" if commit[1] else "") + "): not this sweep's results, not shown"
    )
    if stage == "COMPLETED" and fresh:
        results = hub_run_results(repo_id, token, commit[0])
        if is_complete(results):
            return {**row, **results[0], "status": "finished"}, results[1]
        return {**row, "status": "failed", "error": f"{detail}, but {repo_id} has no complete results{where}"}, None
    if stage in JOB_ACTIVE_STAGES:
        return {**row, "status": "running", "error": f"{detail}{stale}{where}"}, None
    if stage == "UNKNOWN":
        return {**row, "status": "unknown", "error": f"{detail}{stale}{where}"}, None
    # ERROR, CANCELED, DELETED, or COMPLETED without pushing anything new
    pushed = "" if stage != "COMPLETED" else f"; it pushed no results to {repo_id}"
    return {**row, "status": "failed", "error": f"{detail}{pushed}{stale}{where}"}, None
