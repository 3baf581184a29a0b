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

This file holds the builder, the export that runs it and the commands. What they stand on lives in library modules
that never import this script: the release's facts (citation, URLs, SHA-256 of each archive, label names, the
spreadsheet's columns, the schema) in lymphus_ml/release.py; reading one centre's archive in lymphus_ml/archives.py,
its spreadsheet in lymphus_ml/spreadsheet.py, a case's images in lymphus_ml/case_images.py; the splits and folds in
lymphus_ml/splits.py; `synth` in lymphus_ml/synthetic_archives.py; the export folder in lymphus_ml/export_folder.py.
"""

import errno
import io
import json
import logging
import os
import signal
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import datasets
from datasets.exceptions import DatasetGenerationError
from datasets.utils.info_utils import VerificationMode
from PIL import Image

# The library modules this file stands on (none imports it). An `X as X` import is not used here: it keeps X
# reachable as lymphus.X (for the tests, the benchmarks and users) from the module that defines it.
from lymphus_ml import release
from lymphus_ml.archives import locate_source, read_centre
from lymphus_ml.archives import read_official_cases as read_official_cases
from lymphus_ml.case_images import load_case
from lymphus_ml.export_folder import (
    EXPORT_MARKER,
    check_not_data_folder,
    check_replaceable,
    clean_leftovers,
    disk_full_error,
    export_discrepancies,
    export_lock,
    make_staging,
    put_in_place,
    read_export_marker,
    remove_ours,
    remove_quietly,
    write_export_marker,
)
from lymphus_ml.export_folder import ExportMarkerError as ExportMarkerError
from lymphus_ml.export_folder import OutputFolderError as OutputFolderError
from lymphus_ml.release import (
    BENCHMARK_FRAMEWORK,
    BENCHMARK_METRICS,
    CENTRES,
    FOLD_SEED,
    LABEL_NAMES,
    LYMPHUS_LICENSE,
    MASK_LABELS,
    N_FOLDS,
    SEMANTIC_FEATURES,
    SPLIT_FRACTIONS,
    SPLIT_SEED,
    SPLITS,
    LymphUsFormatError,
    benchmark_task_id,
)
from lymphus_ml.release import CODED_FEATURES as CODED_FEATURES
from lymphus_ml.release import MEASUREMENT_FEATURES as MEASUREMENT_FEATURES
from lymphus_ml.release import MEMBER_SIZE_CAP as MEMBER_SIZE_CAP
from lymphus_ml.release import MEMBER_SIZE_FACTOR as MEMBER_SIZE_FACTOR
from lymphus_ml.release import SPREADSHEET_COLUMNS as SPREADSHEET_COLUMNS
from lymphus_ml.splits import assign_folds as assign_folds
from lymphus_ml.splits import assign_splits as assign_splits
from lymphus_ml.synthetic_archives import is_synthetic_archive, write_synthetic_archives


# The release's facts, under a classic `datasets` builder's names: lymphus_ml/release.py holds them (with the checksums
# of each archive, the label names and the spreadsheet's columns), shared with the library modules.
_CITATION = release.CITATION
_DESCRIPTION = release.DESCRIPTION
_HOMEPAGE = release.HOMEPAGE
_LICENSE = release.LICENSE
_LICENSE_DETAILS = release.LICENSE_DETAILS
_URLS = release.URLS
_ARCHIVES = release.ARCHIVES
_FEATURES = release.FEATURES

logger = logging.getLogger(__name__)
# datasets rebinds a builder module's `open`, `os`, `Path`... to streaming wrappers (and imports scipy to do so) unless
# the module says it is done. This builder reads local files only: it keeps the standard ones, and each export worker
# starts about 0.2 s sooner.
_patched_for_streaming = True
# What a Hugging Face Job of a script importing this module needs beside it (lymphus_ml.hub ships it).
SHIPPED_FILES = ("dataset_card.md",)


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
            # Last: from here on the staging folder is a complete export.
            write_export_marker(staging, str(LymphUs.VERSION))
        except BaseException as error:
            remove_quietly(staging)
            if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full_error(error, output_dir) from None
            raise
        put_in_place(staging, output_dir, overwrite)
    return output_dir


def build_centres(data_dir, staging, verification_mode):
    """{centre: build_centre_parquet(...)}, one process per centre (decoding and checking images is CPU-bound).

    The workers die with the export, even when it is killed (export_worker_init); on the first error, or Ctrl-C, the
    other worker is stopped rather than waited for.
    """
    import multiprocessing

    import openpyxl  # noqa: F401 (imported once here, not in each worker: forked workers inherit it)

    from lymphus_ml.runs import export_worker_init  # light: the standard library only

    Image.init()  # every PIL plugin (TIFF masks, and datasets' list of formats need them), once rather than per worker

    # Forked (Linux's default up to Python 3.13, pinned here): each worker is the export's own child, which is what
    # export_worker_init ties its life to.
    pool = ProcessPoolExecutor(
        max_workers=min(len(CENTRES), os.cpu_count() or 1),
        mp_context=multiprocessing.get_context("fork"),
        initializer=export_worker_init,
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
