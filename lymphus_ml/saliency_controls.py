"""The trained model's saliency beside randomised controls, and a run's saliency study of its evaluated sets.

A score means little alone: a network with a random head, or random weights throughout, already puts much of its
saliency on a node that fills the view (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).
`saliency_with_controls` scores the trained model beside two randomised controls, the two ends of their cascading
randomisation (the classifier head re-initialised; every weight re-initialised, a fresh model from the same config
and a fixed seed), with the paired per-case excess of the trained model over each:

    result = saliency_with_controls(model, pixel_values, masks, targets, seed=42)
    result["summary"]["controls"]["head_reinitialised"]["excess_energy_in_node_ci_low"]  # > 0: beats the control

`where_the_model_looks` runs it on a sample of each evaluated set of a train_vit.py run (metrics_<split>.json and
the card's "Where the model looks").
"""

import copy
import logging
import time

import numpy as np
import torch

from lymphus_ml.evaluation import json_safe
from lymphus_ml.images import evaluation_transform
from lymphus_ml.saliency import (
    CONTROLS,
    completeness_summary,
    mean_t_interval,
    model_inputs_with_masks,
    plot_saliency_cases,
    saliency_maps,
    saliency_scores,
    saliency_summary,
    stratified_sample,
)


logger = logging.getLogger(__name__)


def classifier_head_name(model) -> str:
    """Name of the top-level module holding the last Linear layer with num_labels outputs (`classifier` in the
    transformers image classifiers: ViT, ResNet, ConvNeXt, Swin, ...)."""
    num_labels = model.config.num_labels
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module.out_features == num_labels]
    if not names:
        raise ValueError(f"No Linear layer with {num_labels} outputs in {type(model).__name__}: no classifier head to re-initialise.")
    return names[-1].split(".")[0]


def randomised_controls(model, seed: int) -> dict:
    """{"head_reinitialised": the model with its classifier head re-initialised, "all_reinitialised": a fresh
    model from the same config}, both initialised as transformers does, from `seed` (the global torch RNG is left
    as it was). The two ends of Adebayo et al.'s cascading randomisation (2018)."""
    from transformers import AutoModelForImageClassification

    parameter = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForImageClassification.from_config(model.config)
    fresh = fresh.to(device=parameter.device, dtype=parameter.dtype).eval()
    head = classifier_head_name(model)
    head_control = copy.deepcopy(model).eval()
    head_control.get_submodule(head).load_state_dict(fresh.get_submodule(head).state_dict())
    return {"head_reinitialised": head_control, "all_reinitialised": fresh}


def paired_excess(trained: dict, control: dict, confidence_level: float = 0.95) -> dict:
    """Per-case excess of the trained model over a control (`saliency_scores` of each, same cases): energy in node
    (cases where both maps have positive saliency) and pointing game (hit 1 / miss 0), mean difference with a
    paired Student t interval over cases. Bounds NaN when the differences do not vary (no interval to give)."""
    result = {}
    energy = trained["energy_in_node"] - control["energy_in_node"]
    hits = trained["pointing_game_hit"].astype(float) - control["pointing_game_hit"].astype(float)
    for name, differences in (("energy_in_node", energy[~np.isnan(energy)]), ("pointing_game", hits)):
        mean, low, high = mean_t_interval(differences, confidence_level)
        if len(differences) and np.ptp(differences) == 0:
            low = high = float("nan")
        result |= {f"excess_{name}_n_pairs": int(len(differences)), f"excess_{name}_mean": mean,
                   f"excess_{name}_ci_low": low, f"excess_{name}_ci_high": high}
    return result


def saliency_with_controls(model, pixel_values, masks, targets, method: str = "occlusion", *, seed: int = 0,
                           confidence_level: float = 0.95, **options) -> dict:
    """The trained model's saliency scores beside its randomised controls' (`randomised_controls`), on the same
    images and explaining the same class per image (`targets`), with the paired excess over each control.

    Returns {"summary": `saliency_summary` of the model + (integrated gradients) its completeness errors +
    "controls": {name: its summary + `paired_excess` of the model over it}, "maps": {"trained": (N, H, W), name:
    ...}, "scores": {"trained": `saliency_scores`, name: ...}}. options: `saliency_maps` keyword arguments.
    """
    models = {"trained": model, **randomised_controls(model, seed)}
    summary, all_maps, all_scores = {}, {}, {}
    for name, explained in models.items():
        maps, info = saliency_maps(explained, pixel_values, targets, method, details=True, **options)
        all_maps[name], all_scores[name] = maps, saliency_scores(maps, masks)
        part = saliency_summary(maps, masks, confidence_level)
        if info["completeness_error"] is not None:
            part |= completeness_summary(info["completeness_error"])
            part["integrated_gradients_steps_max"] = int(info["steps"].max()) if len(info["steps"]) else 0
        if name == "trained":
            summary = part | {"controls": {}}
        else:
            summary["controls"][name] = part | paired_excess(all_scores["trained"], all_scores[name], confidence_level)
    return {"summary": summary, "maps": all_maps, "scores": all_scores}


def where_the_model_looks(model, evaluation_sets, data_args, image_processor, class_names, positive_index, seed,
                          output_dir) -> dict:
    """{split: saliency summary + figure}: saliency maps of the evaluated sets scored against the expert masks,
    beside two randomised controls (`saliency_with_controls`).

    Each set is sampled (at most --saliency_max_cases cases, stratified by label, seeded); the best, median and worst
    case (by share of saliency in the node) go to saliency_<split>.png with the controls' maps. The sets cropped
    with a segmenter's masks are left out: the expert mask is the reference.
    """
    started, started_cpu = time.perf_counter(), time.process_time()
    transform = evaluation_transform(model, image_processor, data_args.roi, data_args.roi_margin)
    explained = "predicted" if data_args.saliency_target == "predicted" else data_args.positive_label
    options = (
        {"window_fraction": data_args.saliency_window, "stride_fraction": data_args.saliency_stride}
        if data_args.saliency == "occlusion" else {}
    )
    summaries, cases = {}, 0
    for split, split_dataset in evaluation_sets.items():
        if split.endswith("_predicted_roi"):
            continue
        sample = stratified_sample(split_dataset[data_args.label_column_name], data_args.saliency_max_cases, seed)
        pixel_values, masks, images = model_inputs_with_masks(
            split_dataset.select(sample), transform, transform.size, data_args.image_column_name,
            data_args.mask_column_name,
        )
        targets = predicted_classes(model, pixel_values) if explained == "predicted" else positive_index
        result = saliency_with_controls(
            model, pixel_values, masks, targets, data_args.saliency, seed=seed,
            confidence_level=data_args.confidence_level, **options,
        )
        summary, scores = result["summary"], result["scores"]
        of_set = f"{len(sample)} of {len(split_dataset)} cases" if len(sample) < len(split_dataset) else f"all {len(sample)} cases"
        figure = plot_saliency_cases(
            images, masks, result["maps"]["trained"], scores["trained"]["energy_in_node"],
            output_dir / f"saliency_{split}.png",
            title=f"{split}: where the model looks ({data_args.saliency}, {of_set}, explaining the "
            f"{explained} class); best, median and worst by share in the node; randomised controls right",
            controls={name: result["maps"][name] for name in CONTROLS},
            control_scores={name: scores[name]["energy_in_node"] for name in CONTROLS},
        )
        explained_counts = np.bincount(np.broadcast_to(np.asarray(targets), len(sample)), minlength=len(class_names))
        summaries[split] = json_safe({
            "method": data_args.saliency,
            "explained_class": explained,
            "explained_class_counts": dict(zip(class_names, explained_counts.tolist())),
            "n_cases_in_set": len(split_dataset),
            "case_sample": "every case" if len(sample) == len(split_dataset) else "stratified by label",
            "max_cases": data_args.saliency_max_cases,
            "sample_seed": seed,
            **({"occlusion_window_fraction": data_args.saliency_window,
                "occlusion_stride_fraction": data_args.saliency_stride} if options else {}),
            **summary,
            "excess_interval": "paired over cases: mean difference, Student t interval",
            "figure": figure.name,
        })
        cases += len(sample)
        logger.info(
            f"{split}: {summary['energy_in_node_mean']:.2f} of the saliency in the node (chance "
            f"{summary['node_area_fraction_mean']:.2f}; head re-initialised "
            f"{summary['controls']['head_reinitialised']['energy_in_node_mean']:.2f}, all re-initialised "
            f"{summary['controls']['all_reinitialised']['energy_in_node_mean']:.2f}); peak in the node for "
            f"{summary['pointing_game_hit_rate']:.2f}; {of_set}"
        )
    logger.info(
        f"Saliency: {cases} cases x 3 models in {time.perf_counter() - started:.1f} s "
        f"(CPU {time.process_time() - started_cpu:.1f} s)"
    )
    return summaries


def predicted_classes(model, pixel_values, batch_size: int = 256) -> np.ndarray:
    """The model's top class per image (argmax of the logits)."""
    import torch

    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = [model(pixel_values=batch.to(parameter.device, parameter.dtype)).logits.float().cpu()
                      for batch in torch.as_tensor(pixel_values).split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(logits).argmax(dim=1).numpy()
