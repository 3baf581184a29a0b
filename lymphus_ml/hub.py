"""The Hub: the token, pushing a results folder, and running a script as a Hugging Face Job with what it imports.

One Job mechanism for every script: `launch_job` uploads the script, every project module it can import
(imports inside functions included, found by reading the code) and the data files those modules declare in
`SHIPPED_FILES`, keeping their relative paths, to the Jobs artifacts bucket (huggingface_hub's public
`HfApi.sync_job_volume`, which keeps that bucket private and warns when it is public); the Job (`HfApi.run_job`)
mounts that folder and runs `uv run` on the script there, so its PEP 723 block gives the dependencies and its imports
resolve beside it. A Job whose shipped files import a module the block does not declare is refused before anything is
uploaded. The token travels only as the `HF_TOKEN` secret: never in the command, the environment or a shipped file.
"""

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from secrets import token_hex

from lymphus_ml.shipped_files import check_job_dependencies, distribution_key, job_files, pep723_dependencies


PROJECT_ROOT = Path(__file__).resolve().parent.parent
JOB_MOUNT_PATH = "/data"
# The image `HfApi.run_uv_job` documents as its default (uv on Python 3.12); run_job needs it named.
JOB_IMAGE = "ghcr.io/astral-sh/uv:python3.12-bookworm"
# Options that only make sense where the run is launched; the token travels as a secret.
LOCAL_ONLY_OPTIONS = ("--launch_on_hub", "--job_timeout", "--job_namespace", "--hub_token")
LOCAL_ONLY_FLAGS = ("--debug",)


@dataclass
class HubJobArguments:
    """Submit this same run to Hugging Face Jobs instead of running it here."""

    launch_on_hub: str | None = field(
        default=None,
        metadata={"help": "Hardware flavor (a10g-small, t4-small, ...): submit this run as a Hub Job and exit."},
    )
    job_timeout: str = field(default="8h", metadata={"help": "Job timeout (e.g. 90m, 8h)."})
    job_namespace: str | None = field(default=None, metadata={"help": "User or organisation that runs the Job."})


def resolve_hub_token(hub_token: str | None = None) -> str | None:
    """--hub_token (or "hub_token" in a JSON arguments file), else huggingface_hub's own lookup (HF_TOKEN, then the
    saved login). Never logged or written anywhere."""
    if hub_token:
        return hub_token
    from huggingface_hub import get_token

    return get_token()


def missing_token_error(what: str) -> ValueError:
    """The one error for a Hub action without a token: `<what> needs a token: ...` and the three ways to give one."""
    return ValueError(f"{what} needs a token: pass --hub_token, set HF_TOKEN or run `hf auth login`.")


# What a Hub user access token looks like: refused wherever it would travel as an ordinary argument.
HUB_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def refuse_token_values(argv, where: str) -> None:
    """Refuse a Hub token anywhere in `argv` but as --hub_token's value: it would land in commands, logs and files.

    The message names the option it was given to (or its position), never the value.
    """
    skip = False
    for index, argument in enumerate(argv):
        if skip:
            skip = False
            continue
        if argument.startswith("-") and option_name(argument) == "--hub_token":
            skip = "=" not in argument
            continue
        if HUB_TOKEN_PATTERN.search(argument):
            if argument.startswith("-") and "=" in argument:
                given = f"given to {argument.split('=', 1)[0]}"
            elif index > 0 and argv[index - 1].startswith("-"):
                given = f"given to {option_name(argv[index - 1])}"
            else:
                given = f"argument {index + 1}"
            raise ValueError(
                f"{where}: a value that looks like a Hub token ({given}) is refused: it would be written into commands, "
                "logs and result files. Give the token with --hub_token or HF_TOKEN (or `hf auth login`) only; "
                "nothing was written or submitted."
            )


def require_hub_token(hub_token: str | None, what: str) -> str:
    """The token from `resolve_hub_token`, or `missing_token_error(what)`."""
    token = resolve_hub_token(hub_token)
    if token is None:
        raise missing_token_error(what)
    return token


# What a push uploads (of the files a run wrote, per its run marker): the model, its processor, the card, metrics,
# predictions and plots. Not checkpoints, the offline demo's synthetic data, TensorBoard logs, pickles
# (training_args.bin) or dotfiles (an .env holding a token, say).
UPLOAD_IGNORE_PATTERNS = [
    "checkpoint-*", "checkpoint-*/**", "synthetic-lymphus/**", "runs/**", "base_model/**", "_*", "*.bin", "*.pkl", ".*", "**/.*",
]


def hub_repo_id(hub_model_id: str | None, output_dir, token) -> str:
    """`user/name` to push to: --hub_model_id, with the token's user when it has no namespace; else the output
    folder's name under that user (what Trainer.push_to_hub does)."""
    name = hub_model_id or Path(output_dir).resolve().name
    if "/" in name:
        return name
    from huggingface_hub import HfApi

    return f"{HfApi(token=token).whoami()['name']}/{name}"


def push_folder_to_hub(
    output_dir,
    repo_id: str,
    token: str | None = None,
    *,
    private: bool | None = None,
    commit_message: str = "Upload LymphUs results",
) -> str:
    """Create `repo_id` if needed and upload all of `output_dir` as ONE commit under UPLOAD_IGNORE_PATTERNS; returns
    the commit URL. For a folder the project wrote whole (the tests' models); a training run uses `push_run_to_hub`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(output_dir),
        ignore_patterns=UPLOAD_IGNORE_PATTERNS,
        commit_message=commit_message,
    )
    return commit.commit_url


def push_run_to_hub(
    output_dir,
    repo_id: str,
    token: str | None = None,
    *,
    private: bool | None = None,
    commit_message: str = "Upload LymphUs results",
    extra_files: dict | None = None,
) -> str:
    """Create `repo_id` if needed and upload, as ONE commit, exactly the files the run that just finished in
    `output_dir` wrote (its run marker, lymphus_ml.run_folder), less UPLOAD_IGNORE_PATTERNS: never a file that was
    there before, put beside them, or changed since; plus `extra_files` ({path in repo: text}, made for the push:
    the model's .eval_results). Returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import filter_repo_objects

    from lymphus_ml.run_folder import files_written_by_last_run

    output_dir = Path(output_dir)
    names = list(filter_repo_objects(files_written_by_last_run(output_dir), ignore_patterns=UPLOAD_IGNORE_PATTERNS))
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if private and not api.repo_info(repo_id).private:
        raise ValueError(
            f"The model repo {repo_id} already exists and is public, but --hub_private_repo was given: nothing was "
            "uploaded. Make it private in its settings on the Hub, or push without --hub_private_repo."
        )
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name)) for name in names]
    operations += [CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode())
                   for name, text in (extra_files or {}).items()]
    commit = api.create_commit(repo_id, operations, commit_message=commit_message)
    return commit.commit_url


def option_name(argument: str) -> str:
    """`--hub-token=x` -> `--hub_token`: HfArgumentParser accepts dashes for underscores, so compare both alike."""
    return "--" + argument.split("=", 1)[0].lstrip("-").replace("-", "_")


def is_option(argument) -> bool:
    """`--name`, `--name=value`, `-x`; not a value such as -1 or -0.5."""
    return re.match(r"-[^\d.]", argument) is not None


BOOLEAN_WORDS = {"true": True, "t": True, "yes": True, "y": True, "1": True,
                 "false": False, "f": False, "no": False, "n": False, "0": False}


def option_names(forwarded) -> set[str]:
    """The option names (`--name`, spelt canonically) in a list of command-line arguments."""
    return {option_name(argument) for argument in forwarded if argument.startswith("--")}


def boolean_flag(forwarded, name) -> bool:
    """Whether a forwarded boolean option is on: `--push_to_hub`, `--push_to_hub True`, `--push_to_hub=false`, ..."""
    value = False
    for index, argument in enumerate(forwarded):
        if argument.startswith("--") and option_name(argument) == name:
            following = forwarded[index + 1] if index + 1 < len(forwarded) else ""
            word = argument.split("=", 1)[1] if "=" in argument else following
            value = BOOLEAN_WORDS.get(word.lower(), True)
    return value


def without_boolean_flag(forwarded, name) -> list[str]:
    """`forwarded` less a boolean option and its optional True/False value."""
    kept, skip = [], False
    for index, argument in enumerate(forwarded):
        if skip:
            skip = False
            continue
        if argument.startswith("--") and option_name(argument) == name:
            following = forwarded[index + 1] if index + 1 < len(forwarded) else ""
            skip = "=" not in argument and following.lower() in BOOLEAN_WORDS
            continue
        kept.append(argument)
    return kept


def json_file_arguments(path) -> list[str]:
    """A JSON arguments file (what HfArgumentParser.parse_json_file reads) as command-line arguments."""
    arguments = []
    for key, value in json.loads(Path(path).read_text()).items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        arguments += [f"--{key}", *(json.dumps(v) if isinstance(v, (dict, list)) else str(v) for v in values)]
    return arguments


def job_script_args(argv: list[str], drop=LOCAL_ONLY_OPTIONS) -> list[str]:
    """argv with the options that only make sense locally removed, the token above all (it travels as a secret).

    A single .json arguments file is expanded first: the file itself is never shipped (it may hold the token).
    """
    if len(argv) == 1 and argv[0].endswith(".json"):
        argv = json_file_arguments(argv[0])
    forwarded, skip = [], False
    for argument in argv:
        if skip:
            skip = False
            continue
        if argument.startswith("--") and option_name(argument) in LOCAL_ONLY_FLAGS:
            continue
        if argument.startswith("--") and option_name(argument) in drop:
            skip = "=" not in argument
            continue
        forwarded.append(argument)
    return forwarded


def check_hub_job_request(dataset_name, push_to_hub, hub_token):
    """A Hub Job runs on ephemeral hardware and cannot see local files: refuse what would be lost or unreadable."""
    if Path(dataset_name).exists():
        raise ValueError(
            f"--dataset_name {dataset_name} is a local folder, which a Hub Job cannot read; push it "
            "with `python lymphus.py push` and pass its Hub id."
        )
    if not push_to_hub:
        raise ValueError(
            "--launch_on_hub runs on ephemeral hardware: add --push_to_hub (and --hub_model_id) to keep the results."
        )
    if hub_token is None:
        raise missing_token_error("--launch_on_hub")


def launch_job(script, script_args: list[str], flavor: str, token: str, *, timeout: str = "8h", namespace=None):
    """Run `script` (a project file, PEP 723 dependencies) with `script_args` as a Hugging Face Job; returns JobInfo.

    Refuses a script whose shipped files import an undeclared module (`check_job_dependencies`). Ships
    `job_files(script)` (relative paths kept) to a fresh folder of the private `<namespace>/jobs-artifacts` bucket
    with `HfApi.sync_job_volume` and mounts it at /data, as `HfApi.run_uv_job` does for a single local script. The
    token is the HF_TOKEN secret.
    """
    from huggingface_hub import HfApi

    check_job_dependencies(script)
    api = HfApi(token=token)
    namespace = namespace or api.whoami()["name"]
    files = job_files(script)
    folder = f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="lymphus-job-") as staging:
        for file in files:
            (Path(staging) / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PROJECT_ROOT / file, Path(staging) / file)
        # Writable, as run_uv_job mounts a local script's folder: the Job may write beside the script.
        volume = api.sync_job_volume(staging, JOB_MOUNT_PATH, remote_name=folder, read_only=False, namespace=namespace)
    job = api.run_job(
        image=JOB_IMAGE,
        command=["uv", "run", f"{JOB_MOUNT_PATH}/{files[0]}", *script_args],
        secrets={"HF_TOKEN": token},
        flavor=flavor,
        timeout=timeout,
        volumes=[volume],
        namespace=namespace,
    )
    print(f"Submitted Hugging Face Job {job.id} on {flavor} ({len(files)} files shipped): {job.url}")
    return job


def check_job_paths(paths: dict) -> None:
    """A Hub Job cannot read this machine's files: refuse an option (a local model, processor, segmenter, checkpoint
    or metric folder, a .json config file) naming one, before anything is submitted. `paths`: {option: value}."""
    for option, value in paths.items():
        if not value or not isinstance(value, str):
            continue
        if option == "--metric_path":
            raise ValueError(
                f"--metric_path {value}: a Hub Job evaluates with the metric modules it ships beside the script "
                "(metrics/), and cannot read another; leave --metric_path out, or run locally."
            )
        if option == "--model_config_json":
            if not value.strip().endswith(".json"):
                continue  # the JSON itself travels in the command
            try:
                inline = json.dumps(json.loads(Path(value).read_text()), separators=(",", ":"))
                fix = f"pass the JSON itself, which the script accepts too: --model_config_json '{inline}'"
            except (OSError, ValueError):
                fix = "pass the JSON itself, which the script accepts too: --model_config_json '{\"model_type\": ...}'"
            raise ValueError(f"--model_config_json {value} is a file, which a Hub Job cannot read; {fix}.")
        if Path(value).exists():
            raise ValueError(
                f"{option} {value} is a local path, which a Hub Job cannot read; upload it to the Hub "
                f"(`hf upload <user>/<name> {value}`) and pass its Hub id."
            )


# --report_to integrations (transformers) -> the distribution each needs installed in the Job.
REPORT_TO_DISTRIBUTIONS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio",
                           "comet_ml": "comet-ml", "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive",
                           "codecarbon": "codecarbon", "swanlab": "swanlab", "azure_ml": "azureml-core"}


def option_values(forwarded, name) -> list[str]:
    """The values given to option `name` (`--name a b`, `--name=a,b`) in a list of command-line arguments."""
    values = []
    for index, argument in enumerate(forwarded):
        if argument.startswith("--") and option_name(argument) == name:
            if "=" in argument:
                values.append(argument.split("=", 1)[1])
                continue
            for following in forwarded[index + 1:]:
                if following.startswith("--"):
                    break
                values.append(following)
    return [value for joined in values for value in joined.split(",") if value]


def check_job_options(script, forwarded) -> None:
    """Refuse an option that needs a module the Job does not install: --report_to X where the script's PEP 723 block
    lacks X's distribution (the run would train, then fail or log nowhere)."""
    declared = {distribution_key(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in pep723_dependencies(script)}
    for integration in option_values(forwarded, "--report_to"):
        if integration in ("none", "all"):
            continue
        distribution = REPORT_TO_DISTRIBUTIONS.get(integration, integration)
        if distribution_key(distribution) not in declared:
            raise ValueError(
                f"--report_to {integration} needs {distribution}, which a Hub Job of {Path(script).name} does not "
                "install (its PEP 723 block lacks it): use --report_to none, or add it to the block."
            )


def submit_script_job(script, argv, job_args, dataset_name, push_to_hub: bool, token, paths: dict | None = None):
    """A trainer's --launch_on_hub: check the request (`paths`: {option: value} of the options naming a model, a
    config or a folder, none of which may be local; options needing a module the Job lacks), then the same command
    (less local-only options) as a Job."""
    check_hub_job_request(dataset_name, push_to_hub, token)
    check_job_paths(paths or {})
    forwarded = job_script_args(argv)
    check_job_options(script, forwarded)
    return launch_job(
        script, forwarded, job_args.launch_on_hub, token, timeout=job_args.job_timeout,
        namespace=job_args.job_namespace,
    )
