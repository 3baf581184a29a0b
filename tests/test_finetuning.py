"""train_vit.py --finetuning full|linear_probe|lora (lymphus_ml/finetuning.py) on a tiny ViT built from a config.

References: the saved weights against the weights before training (a linear probe's backbone is bit-identical);
peft's own count of the LoRA layers it injected; the run's predictions.csv against the adapter reloaded from disk
and from the local Hub through load_classifier, AutoModelForImageClassification and pipeline().
"""

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fixtures import TINY_VIT, run_script_in_process, vit_args  # noqa: E402

import train_vit  # noqa: E402
from lymphus_ml import finetuning  # noqa: E402
from lymphus_ml.demo_configs import TINY_CONVNEXT_CONFIG  # noqa: E402


def quick_args(export, output_dir, *extra):
    args = vit_args(export, output_dir, "--max_steps", "2", "--n_bootstrap", "0", *extra)
    args[args.index("--n_bootstrap") + 1] = "0"
    return args


def model_from_config(config: dict):
    from transformers import AutoConfig, AutoModelForImageClassification

    config = dict(config)
    model_type = config.pop("model_type")
    return AutoModelForImageClassification.from_config(AutoConfig.for_model(model_type, num_labels=2, **config))


def external_probabilities(output_dir):
    with open(Path(output_dir) / "predictions.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == "external"]
    return [row["case_id"] for row in rows], np.array([float(row["probability"]) for row in rows])


def test_lora_targets_the_attention_projections_and_refuses_a_model_without():
    model = model_from_config(json.loads(TINY_VIT))
    targets = finetuning.attention_projections(model)
    assert targets == ["attention.k_proj", "attention.o_proj", "attention.q_proj", "attention.v_proj"]
    model.config._name_or_path = "some/base"  # a Hub id: nothing is saved
    lora = finetuning.apply_finetuning(model, finetuning.FinetuningArguments(finetuning="lora"))
    from peft.tuners.lora import LoraLayer

    layers = [name for name, module in lora.named_modules() if isinstance(module, LoraLayer)]
    assert len(layers) == 4 * model.config.num_hidden_layers and all(".attention." in name for name in layers)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert lora.peft_config["default"].base_model_name_or_path == "some/base"

    convnext = model_from_config(TINY_CONVNEXT_CONFIG)
    convnext.config._name_or_path = "some/convnext"
    with pytest.raises(ValueError, match="no attention projections.*--lora_target_modules"):
        finetuning.apply_finetuning(convnext, finetuning.FinetuningArguments(finetuning="lora"))
    wrong = finetuning.FinetuningArguments(finetuning="lora", lora_target_modules="no_such_layer")
    vit = model_from_config(json.loads(TINY_VIT))
    vit.config._name_or_path = "some/base"
    with pytest.raises(ValueError, match="--lora_target_modules no_such_layer matches no layer"):
        finetuning.apply_finetuning(vit, wrong)
    with pytest.raises(ValueError, match="--merge_adapter"):
        finetuning.FinetuningArguments(finetuning="full", merge_adapter=True)


def test_linear_probe_trains_the_head_and_leaves_the_backbone_bit_identical(small_export, tmp_path, monkeypatch):
    from transformers import AutoModelForImageClassification

    before = {}

    def recording(model, args, *rest):
        before.update({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        return finetuning.apply_finetuning(model, args, *rest)

    monkeypatch.setattr(train_vit, "apply_finetuning", recording)
    output_dir = tmp_path / "probe"
    train_vit.main(quick_args(small_export, output_dir, "--finetuning", "linear_probe"))
    after = AutoModelForImageClassification.from_pretrained(output_dir).state_dict()
    assert set(after) == set(before)
    backbone = [name for name in before if not name.startswith("classifier.")]
    assert backbone and all(torch.equal(before[name], after[name]) for name in backbone)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # the head did learn

    record = json.loads((output_dir / "finetuning.json").read_text())
    head = sum(after[name].numel() for name in before if name.startswith("classifier."))
    assert record["scheme"] == "linear_probe" and record["trainable"] == head
    assert record["total"] == sum(tensor.numel() for tensor in after.values())
    assert record["weight_bytes"] == (output_dir / "model.safetensors").stat().st_size
    assert record["seconds_per_epoch"] > 0 and record["peak_memory_bytes"] > 0
    in_metrics = json.loads((output_dir / "metrics_test.json").read_text())["finetuning"]
    assert in_metrics == {key: value for key, value in record.items()
                          if key not in ("seconds_per_epoch", "peak_memory_bytes", "peak_memory_kind")} | {
        "measured_costs": "finetuning.json"}  # machine measurements stay out: same seed, same metrics
    assert "Linear probe: the backbone was frozen" in (output_dir / "README.md").read_text()


def test_lora_run_shares_the_adapter_that_reloads_to_the_runs_probabilities(small_export, tmp_path, local_hub):
    from huggingface_hub import HfApi, ModelCard
    from transformers import AutoModelForImageClassification, pipeline

    from lymphus_ml.data import load_evaluation_sets
    from lymphus_ml.inference import load_classifier, predict_split_probabilities

    output_dir, repo_id = tmp_path / "lora", f"{local_hub.user}/vit-lymphus-lora"
    args = ["--finetuning", "lora", "--lora_r", "4", "--push_to_hub", "--hub_model_id", repo_id]
    train_vit.main(quick_args(small_export, output_dir, *args, "--hub_token", local_hub.token))

    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "config.json").exists()
    adapter_config = json.loads((output_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((output_dir / "base_model").resolve())
    assert adapter_config["r"] == 4 and adapter_config["modules_to_save"] == ["classifier"]
    uploaded = set(HfApi(token=local_hub.token).list_repo_files(repo_id))
    assert {"adapter_config.json", "adapter_model.safetensors", "classifier_config.json", "preprocessor_config.json",
            "finetuning.json", "README.md"} <= uploaded
    assert not any(name.startswith("base_model/") or name.startswith("model") for name in uploaded)
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    record = json.loads((output_dir / "finetuning.json").read_text())
    assert record["shared"] == "adapter"
    assert record["weight_bytes"] == (output_dir / "adapter_model.safetensors").stat().st_size
    assert f"{record['weight_bytes']:,} bytes (adapter)" in card.text

    case_ids, expected = external_probabilities(output_dir)
    _, evaluation_sets = load_evaluation_sets(str(small_export), "center1", "center2", do_train=False)
    assert list(evaluation_sets["external"]["case_id"]) == case_ids
    for source in (str(output_dir), repo_id):
        model, processor = load_classifier(source, device="cpu")
        assert model.config.roi_mode == "crop" and model.config.youden_threshold == pytest.approx(
            json.loads((output_dir / "threshold.json").read_text())["youden_threshold"])
        probabilities = predict_split_probabilities(model, processor, evaluation_sets["external"])
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)

    # transformers' own loaders (peft installed): the base from adapter_config.json, the adapter on it
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(pixel_values=pixel_values).logits
        auto = AutoModelForImageClassification.from_pretrained(output_dir).eval()
        torch.testing.assert_close(auto(pixel_values=pixel_values).logits, reference, atol=1e-5, rtol=1e-5)
    classifier = pipeline("image-classification", model=str(output_dir), device="cpu")
    assert {score["label"] for score in classifier(evaluation_sets["external"][0]["image"])} == {"benign", "malignant"}


def test_merge_adapter_saves_a_full_model_with_the_runs_probabilities(small_export, tmp_path):
    from lymphus_ml.data import load_evaluation_sets
    from lymphus_ml.inference import load_classifier, predict_split_probabilities

    output_dir = tmp_path / "merged"
    train_vit.main(quick_args(small_export, output_dir, "--finetuning", "lora", "--merge_adapter"))
    assert (output_dir / "model.safetensors").exists() and not (output_dir / "adapter_config.json").exists()
    record = json.loads((output_dir / "finetuning.json").read_text())
    assert record["shared"] == "model" and record["lora"]["merged"] is True
    model, processor = load_classifier(str(output_dir), device="cpu")
    assert not any("lora" in name for name, _ in model.named_parameters())
    _, evaluation_sets = load_evaluation_sets(str(small_export), "center1", "center2", do_train=False)
    _, expected = external_probabilities(output_dir)
    np.testing.assert_allclose(predict_split_probabilities(model, processor, evaluation_sets["external"]), expected,
                               atol=1e-5)


# sweep.py --finetuning: the scheme as a leaderboard axis


def test_sweep_plans_model_by_scheme_by_seed():
    import sweep

    runs = sweep.plan_runs("org/vit-a,org/vit-b", "0,1", "me/sw", "full,lora")
    assert [(run.slug, run.finetuning, run.seed) for run in runs] == [
        ("vit-a-full", "full", 0), ("vit-a-full", "full", 1), ("vit-a-lora", "lora", 0), ("vit-a-lora", "lora", 1),
        ("vit-b-full", "full", 0), ("vit-b-full", "full", 1), ("vit-b-lora", "lora", 0), ("vit-b-lora", "lora", 1),
    ]
    assert runs[2].repo_id("me/sw") == "me/sw-vit-a-lora-seed0"
    assert [run.finetuning for run in sweep.plan_runs("org/vit-a", "0")] == [None]  # no axis: train_vit's default
    for text in ("full,fancy", "lora,lora"):
        with pytest.raises(ValueError, match="distinct schemes among full, linear_probe, lora"):
            sweep.plan_runs("org/vit-a", "0", None, text)


def test_sweep_leaderboard_has_a_row_and_a_forest_group_per_model_and_scheme(small_export, tmp_path, monkeypatch):
    from sklearn.metrics import roc_auc_score

    import sweep

    monkeypatch.setattr(sweep, "run_script", run_script_in_process)  # the runs' outputs are read, not their processes

    config = tmp_path / "vit-micro.json"
    config.write_text(TINY_VIT)
    output_dir = tmp_path / "sweep"
    sweep.main(["--dataset_name", str(small_export), "--models", str(config), "--seeds", "0", "--finetuning",
                "linear_probe,lora", "--output_dir", str(output_dir), "--max_parallel_runs", "2", "--roi", "crop",
                "--max_steps", "2", "--learning_rate", "1e-3", "--n_bootstrap", "0", "--saliency", "none", "--use_cpu",
                "--report_to", "none", "--disable_tqdm", "True"])
    with open(output_dir / "leaderboard.csv", newline="") as handle:
        rows = {row["model_slug"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"vit-micro-linear_probe", "vit-micro-lora"}
    for slug, scheme in (("vit-micro-linear_probe", "linear_probe"), ("vit-micro-lora", "lora")):
        run_dir = output_dir / "runs" / slug / "seed0"
        assert rows[slug]["finetuning"] == scheme and rows[slug]["status"] == "finished"
        assert json.loads((run_dir / "finetuning.json").read_text())["scheme"] == scheme
        with open(run_dir / "predictions.csv", newline="") as handle:
            external = [row for row in csv.DictReader(handle) if row["split"] == "external"]
        labels, scores = [int(row["label"]) for row in external], [float(row["probability"]) for row in external]
        assert float(rows[slug]["external_auc"]) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert (output_dir / "runs" / "vit-micro-lora" / "seed0" / "adapter_config.json").exists()
    assert "vit-micro-lora" in (output_dir / "leaderboard.md").read_text()
    assert (output_dir / "forest_external_auc.png").exists()
