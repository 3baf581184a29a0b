#!/usr/bin/env python
"""Run train_vit.py for every (model, seed) pair and report the spread: one run on 338 patients says little.

Offline, end to end: two tiny models built from configs (a ViT and a ConvNeXt), two seeds, on a synthetic export
written once to <output_dir>/synthetic-lymphus, two runs at once (no download; about a minute on 2 CPU cores):

    python sweep.py --offline_demo --output_dir runs/sweep-demo

Any models (Hub ids, local model folders, or .json config files for models built from a config), any seeds; every
option sweep.py does not know is forwarded verbatim to each train_vit.py run:

    python sweep.py --dataset_name <user>/lymphus --dataset_config center1 --external_config center2 \
        --models google/vit-base-patch16-224-in21k,facebook/dinov2-small,facebook/convnext-tiny-224 \
        --seeds 0,1,2 --output_dir sweep-center1 \
        --roi crop --class_weighting balanced --num_train_epochs 20 --learning_rate 5e-5 --bf16

The same sweep as parallel Hugging Face Jobs, each pushing its model and card to <prefix>-<model>-seed<k>
(OUT/jobs.json records run -> job id and repo, never the token); then, once they have run, the same leaderboard
from those repos (it says which runs are still running or failed):

    python sweep.py --launch_on_hub a10g-small --hub_model_id_prefix <user>/lymphus-sweep \
        --dataset_name <user>/lymphus --models google/vit-base-patch16-224-in21k,facebook/dinov2-small \
        --seeds 0,1,2 --output_dir sweep-hub --roi crop --num_train_epochs 20 --learning_rate 5e-5 --bf16
    python sweep.py --collect --output_dir sweep-hub

Outputs in --output_dir:
  leaderboard.csv          one row per run: model, seed, ROI, validation / test / external AUC with CIs, sensitivity
                           and specificity at the validation threshold, run folder or Hub repo, exit status, error
                           (a forwarded --cv_folds: out-of-fold AUC and per-fold AUC mean / SD in place of validation)
  leaderboard.md           per model: mean ± SD across seeds (ddof=1), the figure to quote; apart from it, the AUC
                           of the seeds' averaged predictions (an ensemble no run saved) with its DeLong CI; every
                           run; failed runs with the end of their log
  forest_external_auc.png  external AUC and CI per run, grouped by model, with the mean across seeds (± 1 SD)
  runs/<model>/seed<k>/    each run's train_vit.py outputs, train_vit.log and sweep_run.json
  sweep.json               the settings every run shares (a re-run with other settings is refused)

A run is finished when train_vit.py exited 0 and left metrics_<split>.json (metrics_oof.json in place of validation's
for --cv_folds) and predictions.csv: sweep.py then writes its sweep_run.json with "status": "finished". Running the
same command again skips finished runs and retries the others (resume). A run that fails is recorded (exit status, end of its log) and the others go on; the sweep
then exits with status 1 (train_vit.py refusing the options stops it at once). --output_dir and --dataset_* are
sweep.py's own; the options it sets per run (--model_name_or_path, --model_config_json, --seed, --hub_model_id) are
refused among the forwarded ones, and so are abbreviations of its own; every other forwarded option must be one of
train_vit.py's (read from `train_vit.py --help`), and a value that looks like a Hub token is refused wherever it is
given but --hub_token, all before anything is written or submitted.

One sweep per --output_dir at a time (a lock on <output_dir>/.sweep.lock: a second fails at once). The train_vit.py
runs die with the sweep, even when it is SIGKILLed; SIGINT or SIGTERM ends them, says so and exits non-zero.
--collect counts a Hub run as finished only when its Job completed and its repo was pushed after the Job was created:
an earlier sweep's results in a repo of the same name are never shown as this sweep's.
"""

import difflib
import json
import logging
import os
import re
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from pathlib import Path

from lymphus_ml.cli import DEBUG_FLAG, argument_parser, run
from lymphus_ml.hub import (
    HubJobArguments,
    boolean_flag,
    is_option,
    job_script_args,
    option_name,
    option_names,
    refuse_token_values,
    resolve_hub_token,
    without_boolean_flag,
)
from lymphus_ml.leaderboard import row_from_metrics_files, write_leaderboard
from lymphus_ml.run_folder import write_text_atomic
from lymphus_ml.runs import (
    TRAIN_VIT_SCRIPT,
    folder_lock,
    log_tail,
    missing_run_files,
    read_run_metrics,
    read_run_predictions,
    run_script,
    script_option_names,
    stop_scripts_on_signals,
)
from lymphus_ml.sweep_jobs import (
    JOBS_FILE,
    check_launch_request,
    hub_run_row,
    launch_runs,
    read_config_file,
    read_jobs,
)


logger = logging.getLogger(__name__)

RUN_MARKER = "sweep_run.json"
LOCK_FILE = ".sweep.lock"  # one sweep per --output_dir at a time (runs.folder_lock)
RUN_LOG = "train_vit.log"
HUB_REPO_NAME_LIMIT = 96

# Options sweep.py sets for each run: refused among the options forwarded to train_vit.py.
MANAGED_OPTIONS = {
    "--model_name_or_path": "give the models with --models (comma-separated)",
    "--model_config_json": "give the models with --models (a .json config file counts as a model)",
    "--seed": "give the seeds with --seeds (comma-separated)",
    "--hub_model_id": "each run pushes to <--hub_model_id_prefix>-<model>-seed<k>",
}

# The offline demo: two tiny architectures built from configs (lymphus_ml.demo_configs: TINY_VIT_CONFIG, train_vit.py's
# own demo model, and TINY_CONVNEXT_CONFIG), two seeds, settings that train in seconds on a CPU.
DEMO_MODELS = ("vit-tiny", "convnext-tiny")
DEMO_SEEDS = "0,1"
DEMO_PARALLEL_RUNS = 2
DEMO_OPTIONS = {
    "--roi": "crop", "--num_train_epochs": "2", "--learning_rate": "1e-3", "--n_bootstrap": "200",
    "--use_cpu": None, "--report_to": "none", "--disable_tqdm": "True", "--save_total_limit": "1",
}


@dataclass
class SweepArguments:
    """What to sweep and where the leaderboard goes; any other option is forwarded to every train_vit.py run."""

    models: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated models: Hub ids or local folders (--model_name_or_path of train_vit.py), or "
            ".json config files (--model_config_json: a model built from a config, offline)."
        },
    )
    seeds: str | None = field(default=None, metadata={"help": "Comma-separated seeds (default 0,1,2; demo 0,1)."})
    finetuning: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated train_vit.py --finetuning schemes (full, linear_probe, lora) as a leaderboard "
            "axis: each (model, scheme) is one entry, <model>-<scheme>, over the seeds. Default: train_vit.py's."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where runs/<model>/seed<k>/ and the leaderboard go (required)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "A LymphUs export: a folder written by `lymphus.py export`, or a Hub id."}
    )
    dataset_config: str = field(default="center1", metadata={"help": "Subset every run trains on."})
    external_config: str = field(
        default="center2", metadata={"help": "Subset every run is externally validated on (all its splits)."}
    )
    hub_model_id_prefix: str | None = field(
        default=None,
        metadata={
            "help": "USER/NAME: each run pushes to USER/NAME-<model>-seed<k> (with --launch_on_hub, or when "
            "--push_to_hub is forwarded), and --collect reads those repos."
        },
    )
    collect: bool = field(
        default=False,
        metadata={
            "help": "Build the leaderboard from the Hub repos of a --launch_on_hub sweep (runs from "
            "<output_dir>/jobs.json, or --models, --seeds and --hub_model_id_prefix) and say which are not done."
        },
    )
    offline_demo: bool = field(
        default=False,
        metadata={
            "help": "No download: two tiny models built from configs, seeds 0,1, on a synthetic export written once "
            "to <output_dir>/synthetic-lymphus; each default is overridable (--models, --seeds, train_vit options)."
        },
    )
    max_parallel_runs: int | None = field(
        default=None,
        metadata={
            "help": "Local runs at once (default 1; the demo 2). On a CPU, 2 on 2 cores overlap one run's start-up "
            "(single-threaded imports) with another's training; small models can share one GPU."
        },
    )
    hub_token: str | None = field(
        default=None, metadata={"help": "Hub token (default: $HF_TOKEN or the saved login); never printed or shipped."}
    )


@dataclass
class SweepRun:
    """One (model, seed) pair: `option` and `value` are how train_vit.py is told the model."""

    model: str
    slug: str
    seed: int
    option: str | None = None
    value: str | None = None
    finetuning: str | None = None  # train_vit.py --finetuning, when sweep.py --finetuning gives the schemes

    @property
    def key(self) -> str:
        return f"{self.slug}/seed{self.seed}"

    def folder(self, output_dir) -> Path:
        return Path(output_dir) / "runs" / self.slug / f"seed{self.seed}"

    def repo_id(self, prefix) -> str | None:
        return f"{prefix}-{self.slug}-seed{self.seed}" if prefix else None


def parse_sweep_arguments(args=None):
    """(sweep_args, job_args, forwarded): sweep.py's own options, and the rest for train_vit.py, checked."""
    parser = argument_parser(
        (SweepArguments, HubJobArguments),
        description="Run train_vit.py for every (model, seed) pair and write a leaderboard.",
        epilog="Any other option is forwarded to every train_vit.py run (see python train_vit.py --help).",
    )
    argv = [argument for argument in (sys.argv[1:] if args is None else list(args)) if argument != DEBUG_FLAG]
    refuse_token_values(argv, "sweep.py")  # before parsing: argparse's own errors quote values
    sweep_args, job_args, forwarded = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    own_options = [f"--{item.name}" for kind in (SweepArguments, HubJobArguments) for item in fields(kind)]
    check_forwarded_options(forwarded, own_options)
    if sweep_args.collect and forwarded:
        got = option_name(forwarded[0]) if forwarded[0].startswith("-") else "a value"
        raise ValueError(f"--collect reads finished runs and takes no train_vit.py option (got {got}).")
    if sweep_args.output_dir is None:
        raise ValueError("--output_dir is required: the folder for runs/<model>/seed<k>/ and the leaderboard.")
    modes = [name for name, on in (("--collect", sweep_args.collect), ("--launch_on_hub", job_args.launch_on_hub),
                                   ("--offline_demo", sweep_args.offline_demo)) if on]
    if len(modes) > 1:
        raise ValueError(f"{' and '.join(modes)} cannot be combined.")
    if sweep_args.max_parallel_runs is not None and sweep_args.max_parallel_runs < 1:
        raise ValueError(f"--max_parallel_runs {sweep_args.max_parallel_runs}: give 1 or more.")
    if forwarded:
        check_train_vit_options(forwarded, own_options)
    return sweep_args, job_args, job_script_args(forwarded)


def check_forwarded_options(forwarded, own_options):
    """Refuse what would make the runs wrong: options sweep.py sets per run, abbreviations of its own, stray values."""
    if forwarded and not forwarded[0].startswith("-"):
        raise ValueError(
            f"Unexpected value {forwarded[0]!r}: give several models or seeds comma-separated, with no space."
        )
    for argument in forwarded:
        if not argument.startswith("--"):
            continue
        name = option_name(argument)
        if name in MANAGED_OPTIONS:
            raise ValueError(f"{name} is set by sweep.py for each run: {MANAGED_OPTIONS[name]}.")
        abbreviated = [option for option in own_options if option.startswith(name) and option != name]
        if abbreviated:
            raise ValueError(
                f"{name} looks like an abbreviation of {', '.join(abbreviated)}: options must be spelt in full."
            )


def check_train_vit_options(forwarded, own_options):
    """Every forwarded option must be one of train_vit.py's (read from its --help): a misspelt one, a token option
    above all, never reaches a run's command, a Job or a file. Names the option, never its value."""
    known = script_option_names(TRAIN_VIT_SCRIPT)
    for argument in forwarded:
        if not is_option(argument):
            continue
        name = option_name(argument)
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known | set(own_options)), n=1)
            raise ValueError(
                f"{name} is an option of neither sweep.py nor train_vit.py"
                + (f" (did you mean {close[0]}?)" if close else "")
                + "; options must be spelt in full (python train_vit.py --help lists them). Nothing was run."
            )


def parse_seeds(text) -> list[int]:
    seeds = []
    for item in text.split(","):
        if not re.fullmatch(r"\s*\d+\s*", item):
            raise ValueError(f"--seeds {text}: {item!r} is not a non-negative integer (give e.g. --seeds 0,1,2).")
        seeds.append(int(item))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text} repeats a seed.")
    return seeds


def model_slug(model: str) -> str:
    """A repo- and folder-safe name: a config file's stem, a folder's name, a Hub id's name."""
    path = Path(model)
    name = path.stem if model.endswith(".json") else path.name if path.exists() else model.split("/")[-1]
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "model"


def parse_schemes(text) -> list[str | None]:
    """--finetuning full,lora -> ["full", "lora"]; not given -> [None] (train_vit.py's default, no axis)."""
    if text is None:
        return [None]
    from lymphus_ml.finetuning import FINETUNING_SCHEMES

    schemes = [scheme.strip() for scheme in text.split(",")]
    unknown = [scheme for scheme in schemes if scheme not in FINETUNING_SCHEMES]
    if unknown or len(set(schemes)) != len(schemes):
        raise ValueError(f"--finetuning {text}: give distinct schemes among {', '.join(FINETUNING_SCHEMES)}.")
    return schemes


def plan_runs(models_text, seeds_text, prefix=None, schemes_text=None) -> list[SweepRun]:
    """Every (model, scheme, seed), model by model; each model checked (a .json file, a folder, or a Hub id)."""
    models = [model.strip() for model in models_text.split(",")]
    if not all(models):
        raise ValueError(f"--models {models_text} has an empty entry; separate models with single commas.")
    runs, slugs = [], {}
    for model in models:
        if model.endswith(".json"):
            if not Path(model).is_file():
                raise FileNotFoundError(f"--models: config file {model} not found.")
            option = "--model_config_json"
        elif Path(model).exists() or re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model):
            option = "--model_name_or_path"
        else:
            raise ValueError(f"--models: {model!r} is neither a .json config file, a local folder, nor a Hub model id.")
        slug = model_slug(model)
        if slug in slugs:
            raise ValueError(
                f"--models: {slugs[slug]!r} and {model!r} both get the name {slug!r}; rename one (folder or file)."
            )
        slugs[slug] = model
        runs += [
            SweepRun(model, f"{slug}-{scheme}" if scheme else slug, seed, option, model, scheme)
            for scheme in parse_schemes(schemes_text) for seed in parse_seeds(seeds_text)
        ]
    if len({sweep_run.key for sweep_run in runs}) != len(runs):
        raise ValueError(f"--models {models_text} with --finetuning {schemes_text}: two runs get the same name; rename one.")
    if prefix:
        longest = max((sweep_run.repo_id(prefix) for sweep_run in runs), key=len)
        if len(longest.split("/")[-1]) > HUB_REPO_NAME_LIMIT:
            raise ValueError(
                f"Repo name {longest} is over {HUB_REPO_NAME_LIMIT} characters: shorten --hub_model_id_prefix."
            )
    return runs


def apply_offline_demo(sweep_args, forwarded, output_dir) -> list[str]:
    """The demo's defaults where the command gave none; returns the forwarded options with the demo's added."""
    output_dir = output_dir.resolve()
    sweep_args.dataset_name = sweep_args.dataset_name or str(output_dir / "synthetic-lymphus" / "export")
    configs = [str(output_dir / "configs" / f"{name}.json") for name in DEMO_MODELS]
    sweep_args.models = sweep_args.models or ",".join(configs)
    sweep_args.seeds = sweep_args.seeds or DEMO_SEEDS
    sweep_args.max_parallel_runs = sweep_args.max_parallel_runs or DEMO_PARALLEL_RUNS
    given = option_names(forwarded)
    for option, value in DEMO_OPTIONS.items():
        if option not in given:
            forwarded = forwarded + ([option] if value is None else [option, value])
    return forwarded


def write_offline_demo_inputs(sweep_args, output_dir):
    """The demo's config files and synthetic export, written once (a re-run reuses them)."""
    from lymphus_ml.data import write_synthetic_export
    from lymphus_ml.demo_configs import TINY_CONVNEXT_CONFIG, TINY_VIT_CONFIG

    output_dir = output_dir.resolve()
    (output_dir / "configs").mkdir(parents=True, exist_ok=True)
    for name, config in zip(DEMO_MODELS, (TINY_VIT_CONFIG, TINY_CONVNEXT_CONFIG)):
        path = output_dir / "configs" / f"{name}.json"
        if not path.is_file():
            write_text_atomic(path, json.dumps(config, indent=2) + "\n")
    export = output_dir / "synthetic-lymphus" / "export"
    if sweep_args.dataset_name == str(export):
        logger.info(f"The synthetic export, written once: {export}")
        write_synthetic_export(output_dir / "synthetic-lymphus", reuse=True)


def sweep_settings(sweep_args, forwarded) -> dict:
    """What every run shares (a local dataset by its absolute path): runs made with other settings do not mix."""
    dataset = sweep_args.dataset_name
    if dataset is not None and Path(dataset).exists():
        dataset = str(Path(dataset).resolve())
    return {"dataset_name": dataset, "dataset_config": sweep_args.dataset_config,
            "external_config": sweep_args.external_config, "train_vit_options": list(forwarded)}


def has_started_runs(output_dir) -> bool:
    markers = output_dir.glob(f"runs/*/*/{RUN_MARKER}")
    finished = any(read_run_marker(path.parent).get("status") == "finished" for path in markers)
    return finished or (output_dir / JOBS_FILE).is_file()


def prepare_output_dir(output_dir, settings, compare=True) -> dict:
    """Create or reuse the sweep folder: never a non-empty folder that is not a sweep's; never runs with other settings.

    Returns the settings in force (the recorded ones when not comparing, as for --collect).
    """
    manifest = output_dir / "sweep.json"
    if output_dir.is_file():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file.")
    if output_dir.is_dir() and any(item.name != LOCK_FILE for item in output_dir.iterdir()) and not manifest.is_file():
        raise FileExistsError(
            f"--output_dir {output_dir} is not empty and holds no sweep.json: choose a new or empty folder."
        )
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        if not compare:
            return {**settings, **{key: value for key, value in recorded.items() if value is not None}}
        differing = [key for key in settings if recorded.get(key) != settings[key]]
        if differing and has_started_runs(output_dir):
            key = differing[0]
            raise ValueError(
                f"{output_dir} holds runs made with {key} = {recorded.get(key)!r}, not {settings[key]!r}: their "
                "results would not be comparable. Use another --output_dir, or the same settings to resume."
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(manifest, json.dumps(settings, indent=2) + "\n")
    return settings


def train_vit_arguments(sweep_run, sweep_args, forwarded, run_output_dir, inline_config=False) -> list[str]:
    """train_vit.py's command line for one run (a config file's contents inline for a Hub Job, which cannot read it)."""
    value = sweep_run.value
    if inline_config and sweep_run.option == "--model_config_json":
        value = json.dumps(read_config_file(sweep_run.value), separators=(",", ":"))
    arguments = ["--dataset_name", sweep_args.dataset_name, "--dataset_config", sweep_args.dataset_config,
                 "--external_config", sweep_args.external_config, sweep_run.option, value,
                 "--seed", str(sweep_run.seed), "--output_dir", str(run_output_dir)]
    if sweep_run.finetuning:
        arguments += ["--finetuning", sweep_run.finetuning]
    if sweep_args.hub_model_id_prefix:
        arguments += ["--hub_model_id", sweep_run.repo_id(sweep_args.hub_model_id_prefix)]
    return arguments + list(forwarded)


def job_commands(runs, sweep_args, forwarded) -> dict[str, list[str]]:
    """Each run's train_vit.py command line in its Hub Job: it pushes to the run's repo, a config file sent inline."""
    return {sweep_run.key: train_vit_arguments(sweep_run, sweep_args, ["--push_to_hub", *forwarded],
                                               f"{sweep_run.slug}-seed{sweep_run.seed}", inline_config=True)
            for sweep_run in runs}


def read_run_marker(folder) -> dict:
    path = Path(folder) / RUN_MARKER
    return json.loads(path.read_text()) if path.is_file() else {}


def error_line(tail: str) -> str:
    """The line that says what went wrong: train_vit.py's `error: ...`, else the last line of the log."""
    lines = tail.splitlines()
    errors = [line for line in lines if line.startswith("error:") or re.match(r"^\w*(Error|Exception)\b", line)]
    return (errors[-1] if errors else lines[-1] if lines else "no output")[:400]


def run_train_vit(sweep_run, arguments, folder, env) -> dict:
    """train_vit.py for one run, as its own process (output in train_vit.log); writes and returns sweep_run.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_MARKER).unlink(missing_ok=True)
    logger.info(f"{sweep_run.slug} seed {sweep_run.seed}: train_vit.py started, log in {folder / RUN_LOG}")
    start = time.monotonic()
    returncode = run_script(TRAIN_VIT_SCRIPT, arguments, folder / RUN_LOG, env=env, check=False)
    missing = missing_run_files(folder)
    record = {"status": "finished" if returncode == 0 and not missing else "failed",
              "returncode": returncode, "seconds": round(time.monotonic() - start, 1),
              "model": sweep_run.model, "seed": sweep_run.seed, "train_vit_arguments": arguments}
    if record["status"] == "failed":
        record["log_tail"] = log_tail(folder / RUN_LOG)
        record["error"] = error_line(record["log_tail"]) if returncode else f"train_vit.py wrote no {missing}"
        if returncode < 0:
            record["error"] = f"train_vit.py was ended by {signal.Signals(-returncode).name} (the sweep stopping, or from outside)"
    write_text_atomic(folder / RUN_MARKER, json.dumps(record, indent=2) + "\n")
    return record


def is_argument_error(record) -> bool:
    """train_vit.py refused its command line (argparse exits 2; lymphus_ml.cli names unknown options): every run
    would fail the same way."""
    return record["returncode"] == 2 or "Unknown option" in (record.get("error") or "")


def base_row(sweep_run, output_dir=None, prefix=None) -> dict:
    return {"model": sweep_run.model, "model_slug": sweep_run.slug, "finetuning": sweep_run.finetuning or "full",
            "seed": sweep_run.seed, "status": "pending",
            "run_dir": str(sweep_run.folder(output_dir).relative_to(output_dir)) if output_dir else None,
            "hub_repo": sweep_run.repo_id(prefix)}


def local_results(runs, output_dir, prefix=None) -> tuple[list, dict]:
    """(rows, predictions by run key) from the run folders: finished runs' metrics, failed runs' exit and log."""
    rows, predictions = [], {}
    for sweep_run in runs:
        folder, row = sweep_run.folder(output_dir), base_row(sweep_run, output_dir, prefix)
        marker = read_run_marker(folder)
        if marker.get("status") == "finished":
            row.update(row_from_metrics_files(read_run_metrics(folder), source=f"{folder}/"), status="finished")
            predictions[sweep_run.key] = read_run_predictions(folder / "predictions.csv")
        elif marker:
            row.update(status="failed", returncode=marker.get("returncode"), error=marker.get("error"),
                       log_tail=marker.get("log_tail"))
        rows.append(row)
    return rows, predictions


def run_sweep(runs, sweep_args, forwarded, output_dir, settings) -> list:
    """Every run not yet finished (--max_parallel_runs at once); the leaderboard is rewritten as each ends.

    Returns the rows. train_vit.py refusing its options stops the sweep: every run would fail the same way.
    """
    env = dict(os.environ)
    if sweep_args.hub_token:
        env["HF_TOKEN"] = sweep_args.hub_token  # the child's environment only: never its command line
    workers = sweep_args.max_parallel_runs or 1
    if workers > 1 and "OMP_NUM_THREADS" not in env:
        # Runs at once share the cores: torch threads beyond them would only wait for each other.
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // workers))
    pending = [item for item in runs if read_run_marker(item.folder(output_dir)).get("status") != "finished"]
    logger.info(f"{len(runs)} runs: {len(runs) - len(pending)} already finished (skipped), {len(pending)} to run.")
    queue, running, ended = list(pending), {}, 0
    # SIGINT/SIGTERM end the running train_vit.py processes (before the pool waits for its threads), say so, exit
    # non-zero; SIGKILL ends them too (runs.start_script ties them to this process).
    stopping = stop_scripts_on_signals("sweep.py", "Run the same command to resume: finished runs are kept.")
    with ThreadPoolExecutor(max_workers=workers) as pool, stopping:
        while queue or running:
            while queue and len(running) < workers:  # submitted one by one: a stop leaves the rest unstarted
                sweep_run = queue.pop(0)
                arguments = train_vit_arguments(sweep_run, sweep_args, forwarded, sweep_run.folder(output_dir))
                running[pool.submit(run_train_vit, sweep_run, arguments, sweep_run.folder(output_dir), env)] = sweep_run
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                sweep_run, record, ended = running.pop(future), future.result(), ended + 1
                outcome = f"failed (exit status {record['returncode']}): {record.get('error')}"
                if record["status"] == "finished":
                    outcome = f"finished in {record['seconds']:.0f} s"
                logger.info(f"[{ended}/{len(pending)}] {sweep_run.slug} seed {sweep_run.seed} {outcome}")
                rows, predictions = local_results(runs, output_dir, sweep_args.hub_model_id_prefix)
                write_leaderboard(output_dir, rows, predictions, settings)
                if record["status"] == "failed" and is_argument_error(record):
                    queue.clear()
                    raise ValueError(
                        f"train_vit.py refused the options it was given: {record['error']} "
                        f"(see {sweep_run.folder(output_dir) / RUN_LOG})."
                    )
    rows, predictions = local_results(runs, output_dir, sweep_args.hub_model_id_prefix)
    write_leaderboard(output_dir, rows, predictions, settings)
    return rows


def check_run_request(sweep_args, job_args, forwarded):
    """What every mode but --collect needs; a prefix is for pushing (--push_to_hub or --launch_on_hub)."""
    if sweep_args.models is None:
        raise ValueError(
            "--models is required: comma-separated Hub ids, local folders or .json configs (or --offline_demo)."
        )
    if sweep_args.dataset_name is None:
        raise ValueError("--dataset_name is required: a folder written by `lymphus.py export`, or a Hub id.")
    pushing = boolean_flag(forwarded, "--push_to_hub")
    if pushing and not sweep_args.hub_model_id_prefix:
        raise ValueError(
            "--push_to_hub needs --hub_model_id_prefix USER/NAME: each run pushes to USER/NAME-<model>-seed<k>."
        )
    if sweep_args.hub_model_id_prefix and not (pushing or job_args.launch_on_hub):
        raise ValueError("--hub_model_id_prefix names the repos runs push to: add --push_to_hub or --launch_on_hub "
                         "(or --collect to read them).")
    check_cv_with_finetuning(sweep_args, forwarded)


def check_cv_with_finetuning(sweep_args, forwarded):
    """A forwarded --cv_folds K (K > 0) trains every run in full: a --finetuning axis with another scheme is refused
    here, before any run starts, rather than by each of its train_vit.py runs."""
    from lymphus_ml.hub import option_values

    folds = option_values(forwarded, "--cv_folds")
    if not folds or not folds[-1].lstrip("-").isdigit() or int(folds[-1]) <= 0 or not sweep_args.finetuning:
        return
    others = [scheme for scheme in parse_schemes(sweep_args.finetuning) if scheme not in (None, "full")]
    if others:
        raise ValueError(
            f"--cv_folds {folds[-1]} with --finetuning {sweep_args.finetuning}: cross-validated runs are fully "
            f"fine-tuned, so {', '.join(others)} cannot be swept with --cv_folds. Use --finetuning full, or drop --cv_folds."
        )


def collect_runs(sweep_args, output_dir) -> list[SweepRun]:
    """The runs to collect: --models/--seeds/--hub_model_id_prefix, else those jobs.json recorded at launch."""
    if sweep_args.models:
        if not sweep_args.hub_model_id_prefix:
            raise ValueError(
                "--collect with --models needs --hub_model_id_prefix (the repos are <prefix>-<model>-seed<k>)."
            )
        return plan_runs(sweep_args.models, sweep_args.seeds or "0,1,2", schemes_text=sweep_args.finetuning)
    jobs = read_jobs(output_dir)
    if not jobs:
        raise FileNotFoundError(
            f"{output_dir / JOBS_FILE} not found: give --models, --seeds and --hub_model_id_prefix to say which "
            "repos to collect."
        )
    return [SweepRun(job["model"], job["model_slug"], int(job["seed"]), finetuning=job.get("finetuning"))
            for job in jobs.values()]


def collect_from_hub(runs, sweep_args, output_dir, token) -> tuple[list, dict]:
    """(rows, predictions) from each run's repo; a run of jobs.json only from what its own Job pushed (hub_run_row)."""
    from huggingface_hub import HfApi

    api, jobs, rows, predictions = HfApi(token=token), read_jobs(output_dir), [], {}
    for sweep_run in runs:
        job, prefix = jobs.get(sweep_run.key), sweep_args.hub_model_id_prefix
        repo_id = sweep_run.repo_id(prefix) if prefix else job["repo_id"]
        hub_fields, run_predictions = hub_run_row(api, repo_id, job, token)
        rows.append({**base_row(sweep_run), "hub_repo": repo_id, "job_id": job["job_id"] if job else None,
                     **hub_fields})
        if run_predictions is not None:
            predictions[sweep_run.key] = run_predictions
    return rows, predictions


def report(rows, output_dir):
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    logger.info(f"Leaderboard in {output_dir}: leaderboard.md, leaderboard.csv, forest_external_auc.png ("
                + ", ".join(f"{n} {status}" for status, n in counts.items()) + ")")
    for row in rows:
        if row["status"] != "finished":
            logger.info(f"  {row['model_slug']} seed {row['seed']}: {row['status']}: {row.get('error') or ''}")


def main(args=None):
    # Arguments: sweep.py's own, and the options forwarded to every train_vit.py run (checked against train_vit.py's)
    sweep_args, job_args, forwarded = parse_sweep_arguments(args)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])
    output_dir = Path(sweep_args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file.")

    # Collect: the leaderboard of a Hub sweep from its repos, each run's results checked to come from its own Job
    if sweep_args.collect:
        with folder_lock(output_dir, LOCK_FILE, "sweep.py"):
            settings = prepare_output_dir(output_dir, sweep_settings(sweep_args, forwarded), compare=False)
            runs = collect_runs(sweep_args, output_dir)
            rows, predictions = collect_from_hub(runs, sweep_args, output_dir, resolve_hub_token(sweep_args.hub_token))
            write_leaderboard(output_dir, rows, predictions, settings)
        report(rows, output_dir)
        return rows

    # The runs: every (model, scheme, seed) (the demo's configs are written, once, inside the sweep folder)
    if sweep_args.offline_demo:
        forwarded = apply_offline_demo(sweep_args, forwarded, output_dir)
    check_run_request(sweep_args, job_args, forwarded)
    runs = None if sweep_args.offline_demo else plan_runs(
        sweep_args.models, sweep_args.seeds or "0,1,2", sweep_args.hub_model_id_prefix, sweep_args.finetuning
    )

    # Hub Jobs: one per run, in parallel on Hugging Face hardware, then stop (everything checked before any is sent)
    if job_args.launch_on_hub:
        forwarded = without_boolean_flag(forwarded, "--push_to_hub")  # every Job pushes: the same settings either way
        token = resolve_hub_token(sweep_args.hub_token)
        check_launch_request(sweep_args.dataset_name, sweep_args.hub_model_id_prefix, runs, forwarded, token)
        with folder_lock(output_dir, LOCK_FILE, "sweep.py"):
            prepare_output_dir(output_dir, sweep_settings(sweep_args, forwarded))
            commands = job_commands(runs, sweep_args, forwarded)
            return launch_runs(runs, commands, job_args, output_dir, token, sweep_args.hub_model_id_prefix)

    # Local runs, skipping those already finished; one sweep per folder at a time
    with folder_lock(output_dir, LOCK_FILE, "sweep.py"):
        settings = prepare_output_dir(output_dir, sweep_settings(sweep_args, forwarded))
        if sweep_args.offline_demo:
            write_offline_demo_inputs(sweep_args, output_dir)
            runs = plan_runs(
                sweep_args.models, sweep_args.seeds or "0,1,2", sweep_args.hub_model_id_prefix, sweep_args.finetuning
            )
        rows = run_sweep(runs, sweep_args, forwarded, output_dir, settings)
    report(rows, output_dir)
    failed = [row for row in rows if row["status"] != "finished"]
    if failed:
        raise ValueError(
            f"{len(failed)} of {len(rows)} runs failed (e.g. {failed[0]['model_slug']} seed {failed[0]['seed']}: "
            f"{failed[0].get('error')}); all are in {output_dir / 'leaderboard.md'}. "
            "Run the same command to retry them."
        )
    return rows


if __name__ == "__main__":
    run(main)
