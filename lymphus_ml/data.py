"""Loading LymphUs for training and evaluation: subsets, the external centre (checked for leaks), synthetic exports."""

from pathlib import Path

import numpy as np
from datasets import concatenate_datasets, load_dataset


def load_evaluation_sets(
    dataset_name, dataset_config, external_config=None, cache_dir=None, do_train=True, required_columns=(), case_id_column="case_id"
):
    """(dataset, evaluation_sets): the training subset's DatasetDict, and {validation, test, external} to evaluate.

    The external subset (all its splits together) must share no case or patient with the training/validation data.
    """
    dataset = load_lymphus(dataset_name, dataset_config, cache_dir=cache_dir)
    for split in ("train", "validation") if do_train else ("validation",):
        if split not in dataset:
            raise ValueError(
                f"Subset {dataset_config} of {dataset_name} has splits {list(dataset)}, not {split!r}: "
                "model selection (and the threshold) need a validation split."
            )
    reference_split = dataset["train" if "train" in dataset else "validation"]
    for column in required_columns:
        if column not in reference_split.column_names:
            raise ValueError(f"Column {column!r} not found in {dataset_name}; choose one of {reference_split.column_names}.")
    evaluation_sets = {split: dataset[split] for split in ("validation", "test") if split in dataset}
    if external_config:
        external = load_lymphus(dataset_name, external_config, cache_dir=cache_dir)
        external = concatenate_datasets(list(external.values()))
        development = [dataset[split] for split in ("train", "validation") if split in dataset]
        for column in (case_id_column, "patient_id"):
            if column not in external.column_names:
                continue
            seen = set().union(*(set(split[column]) for split in development if column in split.column_names))
            shared = sorted(seen.intersection(external[column]))
            if shared:
                raise ValueError(
                    f"--external_config {external_config} shares {len(shared)} {column} values with the "
                    f"training/validation data of --dataset_config {dataset_config} (e.g. {shared[:3]}); "
                    "external validation needs the other centre: use --dataset_config center1 --external_config center2."
                )
        evaluation_sets["external"] = external
    return dataset, evaluation_sets


def load_lymphus(dataset_name, config, cache_dir=None):
    """`load_dataset`, rebuilt from the files when `dataset_name` is a local export folder.

    datasets' cache does not notice that a local folder's files were replaced (huggingface/datasets#2956): a
    re-export to the same folder would otherwise train on the previous export's data.
    """
    local = Path(dataset_name).is_dir()
    return load_dataset(dataset_name, config, cache_dir=cache_dir, download_mode="force_redownload" if local else None)


def write_synthetic_export(folder, scale=0.25, cases_per_group=None, seed=0, reuse=False) -> str:
    """Synthetic LymphUs archives (official counts unless `cases_per_group`, images at `scale` x the official
    sizes) in `folder`/archives, exported as Parquet to `folder`/export; returns the export's path.

    The one writer of every demo's synthetic data. With `reuse`, a complete export already there (`export_problems`
    finds nothing) is returned as it is: written once per folder. An incomplete one is rebuilt only where its marker
    vouches for every file left in it (`lymphus.py export --overwrite`'s rule), else refused, naming what is wrong."""
    import lymphus

    folder = Path(folder)
    if reuse and (folder / "export").exists() and not export_problems(folder / "export"):
        return str(folder / "export")
    lymphus.write_synthetic_archives(folder / "archives", cases_per_group=cases_per_group, scale=scale, seed=seed)
    lymphus.export_dataset(folder / "archives", folder / "export", verification_mode="basic_checks", overwrite=True)
    return str(folder / "export")


def export_problems(folder) -> list[str]:
    """What keeps `folder` from being a complete export written by `lymphus.py export`: no marker, a file the
    marker does not list or that changed since, a file it lists that is missing; [] for a complete export."""
    from lymphus_ml.export_folder import export_discrepancies

    return export_discrepancies(folder, complete=True)


def split_sizes(dataset, label_column, class_names) -> dict:
    """{"n": cases, <class name>: cases of that class, ...} of one split."""
    counts = np.bincount(np.asarray(list(dataset[label_column]), dtype=int), minlength=len(class_names))
    return {"n": len(dataset), **{name: int(count) for name, count in zip(class_names, counts)}}


def dataset_is_synthetic(dataset_name) -> bool:
    """True when the dataset card says so: a `synthetic` tag, or the banner `lymphus.py export` writes for them."""
    from huggingface_hub import DatasetCard

    try:
        card_path = Path(dataset_name) / "README.md"
        card = DatasetCard.load(card_path if card_path.is_file() else dataset_name)
    except Exception:  # no card, offline, private: treat as not known to be synthetic
        return False
    tags = [str(tag).lower() for tag in (card.data.get("tags") or [])]
    return any("synthetic" in tag for tag in tags) or "**SYNTHETIC DATA.**" in card.text


def dataset_revision(dataset_name) -> str | None:
    """The commit of a Hub dataset (what `load_dataset` resolved), for the card; None for a local export."""
    if Path(dataset_name).exists():
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(dataset_name).sha
    except Exception:  # offline with a cached copy: the card then names the dataset without a revision
        return None


def empty_mask_cases(split_dataset, mask_column="mask", case_id_column="case_id") -> list[str]:
    """Case ids whose node mask has no node pixel: their crop would be the whole image, their `masked` view black."""
    from PIL import Image as PILImage

    masks = split_dataset.select_columns([mask_column, case_id_column])
    empty = []
    for row in masks:
        mask = row[mask_column]
        if (mask.getbbox() if isinstance(mask, PILImage.Image) else np.asarray(mask).any() or None) is None:
            empty.append(row[case_id_column])
    return empty
