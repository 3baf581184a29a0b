"""What we share works in other people's hands: the Space installs only what it imports (torch as the CPU build),
the cards name one licence for the LymphUs terms and inherit a base model's, ..."""

import ast
import re
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lymphus_ml import shipped_files, space  # noqa: E402


def distribution_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_distributions(script) -> set[str]:
    """Distributions of the third-party modules the files shipped with `script` import, read independently of
    lymphus_ml.shipped_files.third_party_imports."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    project = {p.stem for p in REPO.glob("*.py")} | {"lymphus_ml"}
    found = set()
    for file in (f for f in shipped_files.job_files(REPO / script) if f.endswith(".py")):
        for node in ast.walk(ast.parse((REPO / file).read_text())):
            if isinstance(node, ast.Import):
                tops = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = {node.module.split(".")[0]}
            else:
                continue
            for top in tops - project - set(sys.stdlib_module_names) - {"__future__"}:
                found |= {distribution_key(d) for d in distributions[top]}
    return found


def test_the_space_installs_only_what_it_imports_with_torch_as_the_cpu_build():
    lines = space.space_requirements().splitlines()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    requirements = {distribution_key(re.split(r"[<>=!~ ]", line)[0]): line for line in lines[1:]}
    assert set(requirements) == imported_distributions("app.py") - {"gradio"}  # the SDK installs gradio
    assert not set(requirements) & {"pandas", "statsmodels", "accelerate", "pytest", "playwright", "gradio-client"}
    project = dict(re.match(r"(torch|torchvision)==([0-9.]+)$", line.split("#")[0].strip()).groups()
                   for line in (REPO / "requirements.txt").read_text().splitlines()
                   if re.match(r"(torch|torchvision)==", line))
    for name in ("torch", "torchvision"):
        assert requirements[name] == f"{name}=={project[name]}+cpu"  # the CPU wheel index's local version label
    assert requirements["captum"] == "captum>=0.9" and requirements["huggingface-hub"] == "huggingface_hub>=2,<3"


def test_the_space_refuses_an_import_requirements_txt_does_not_list(tmp_path):
    requirements = [line for line in (REPO / "requirements.txt").read_text().splitlines() if not line.startswith("captum")]
    (tmp_path / "requirements.txt").write_text("\n".join(requirements) + "\n")
    with pytest.raises(ValueError, match=r"lymphus_ml/saliency.py import captum, which .*requirements.txt does not list"):
        space.space_requirements(tmp_path / "requirements.txt")
    (tmp_path / "requirements.txt").write_text((REPO / "requirements.txt").read_text().replace("torch==", "torch>="))
    with pytest.raises(ValueError, match=r"must pin torch exactly"):
        space.space_requirements(tmp_path / "requirements.txt")


# Licences: one name for the LymphUs terms; a base model's inherited through huggingface_hub's public API


def test_the_lymphus_terms_have_one_name_in_the_dataset_model_and_space_cards():
    import lymphus
    from lymphus_ml import cards

    assert cards.LYMPHUS_DATA_LICENSE == lymphus.LYMPHUS_LICENSE == {
        "license": "other", "license_name": "lymphus-research-use", "license_link": lymphus._HOMEPAGE}
    card = space.space_card("u/space", "u/model", gradio_version="6.0.0")
    assert (card.data.license, card.data.license_name, card.data.license_link) == tuple(lymphus.LYMPHUS_LICENSE.values())
    text = cards.license_text(cards.card_license(None, None))
    assert "lymphus-research-use" in text and "None" not in text


def push_base_model(local_hub, name, front_matter) -> tuple[str, str]:
    from huggingface_hub import HfApi

    api, repo_id = HfApi(token=local_hub.token), f"{local_hub.user}/{name}"
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_file(path_or_fileobj=f"---\n{front_matter}\n---\n# base\n".encode(), path_in_repo="README.md",
                             repo_id=repo_id)
    return repo_id, commit.oid


def test_a_base_models_licence_is_inherited_at_its_revision(local_hub):
    from lymphus_ml import cards

    repo_id, first = push_base_model(local_hub, "base-apache", "license: apache-2.0")
    _, second = push_base_model(local_hub, "base-apache", "license: mit")
    assert cards.base_model_license(repo_id, first) == {"license": "apache-2.0"}
    assert cards.base_model_license(repo_id, second) == cards.base_model_license(repo_id) == {"license": "mit"}
    assert cards.card_license(None, cards.base_model_license(repo_id, first)) == {"license": "apache-2.0"}
    assert cards.card_license("cc-by-4.0", cards.base_model_license(repo_id, first)) == {"license": "cc-by-4.0"}
    assert cards.license_text({"license": "apache-2.0"}) == "`apache-2.0`"


def test_a_base_licensed_other_passes_its_terms_on_and_never_prints_none(local_hub):
    from huggingface_hub import ModelCardData

    from lymphus_ml import cards

    named, _ = push_base_model(local_hub, "base-other-named",
                               "license: other\nlicense_name: acme-model-terms\nlicense_link: https://acme.test/terms")
    fields = cards.card_license(None, cards.base_model_license(named))
    assert fields == {"license": "other", "license_name": "acme-model-terms", "license_link": "https://acme.test/terms"}
    text = cards.license_text(fields)
    assert "`acme-model-terms`, https://acme.test/terms" in text and "base model" in text and "None" not in text
    assert ModelCardData(**fields).to_dict() == fields  # what the card's YAML carries

    bare, _ = push_base_model(local_hub, "base-other-bare", "license: other")
    fields = cards.card_license(None, cards.base_model_license(bare))
    assert fields == {"license": "other"}
    text = cards.license_text(fields)
    assert "None" not in text and "does not name" in text and "()" not in text


def test_no_licence_where_the_base_model_has_no_card_or_cannot_be_read(local_hub, tmp_path, caplog):
    from huggingface_hub import HfApi

    from lymphus_ml import cards

    repo_id = f"{local_hub.user}/base-no-card"
    HfApi(token=local_hub.token).create_repo(repo_id, exist_ok=True)
    assert cards.base_model_license(repo_id) is None
    assert cards.base_model_license(str(tmp_path)) is None  # a local folder is not a Hub model
    assert cards.base_model_license(f"{local_hub.user}/no-such-model") is None
    assert "could not be read" in caplog.text
    assert cards.card_license(None, None) == cards.LYMPHUS_DATA_LICENSE


# transformers' run_semantic_segmentation.py: the dataset card's recipe, run on the small export


def card_block(card_text, heading, language) -> str:
    """The first ```language block after `heading` in a card."""
    after = card_text[card_text.index(heading):]
    return re.search(rf"```{language}\n(.*?)```", after, flags=re.S).group(1)


def test_the_cards_segmentation_recipe_gives_what_transformers_example_expects(small_export, local_hub, monkeypatch):
    """The card's Python recipe, run as written (ids substituted) against the local hub; then the data side of
    run_semantic_segmentation.py as that example does it: load_dataset(name), its `image` and `label` columns,
    id2label.json from the dataset repo, np.array(label) as the class map with do_reduce_labels off."""
    import json

    import numpy as np
    from datasets import load_dataset
    from huggingface_hub import hf_hub_download

    import lymphus

    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    card = (small_export / "README.md").read_text()
    heading = "### Segmentation with transformers' example (`run_semantic_segmentation.py`)"
    repo_id = f"{local_hub.user}/lymphus-segmentation-center1"
    recipe = card_block(card, heading, "python").replace("<this repo id or export folder>", str(small_export))
    exec(recipe.replace("<user>/lymphus-segmentation-center1", repo_id), {})
    command = card_block(card, heading, "bash")
    assert "--do_reduce_labels" not in command and "--dataset_name <user>/lymphus-segmentation-center1" in command
    assert "`ignore_index=0` to `ignore_index=255`" in card

    # The example's data side (its dataset_config_name is never passed to load_dataset)
    dataset = load_dataset(repo_id)
    source = load_dataset(str(small_export), "center1")
    assert set(dataset) == {"train", "validation", "test"}  # a validation split: no train_val_split carved off
    id2label = {int(k): v for k, v in json.load(open(hf_hub_download(repo_id, "id2label.json", repo_type="dataset"))).items()}
    assert id2label == lymphus.MASK_LABELS == {0: "background", 1: "lymph_node"}
    for split in dataset:
        assert dataset[split].column_names == ["image", "label"] and dataset[split].num_rows == source[split].num_rows
        assert dataset[split].features["label"].__class__.__name__ == "Image"
        for example, original in zip(dataset[split], source[split]):
            target = np.array(example["label"])  # preprocess_batch: mask=np.array(target), no reduce_labels
            assert target.shape == np.array(example["image"].convert("RGB")).shape[:2]
            assert np.array_equal(target, np.array(original["mask"]))
            assert set(np.unique(target)) == set(id2label)  # background and node both present, both classes
            assert 255 not in target  # the value the fixed metric ignores is never a LymphUs class


# LymphUs as a Hub benchmark: the export's eval.yaml, the models' .eval_results


def test_the_export_describes_the_lymphus_benchmark_tasks(small_export):
    import yaml
    from datasets import get_dataset_config_names

    import lymphus

    benchmark = yaml.safe_load((small_export / "eval.yaml").read_text())
    assert benchmark["name"] == "LymphUs" and benchmark["evaluation_framework"] and benchmark["description"]
    configs = get_dataset_config_names(str(small_export))
    ids = [task["id"] for task in benchmark["tasks"]]
    assert len(ids) == len(set(ids)) == 2 * len(configs)
    for task in benchmark["tasks"]:
        assert task["config"] in configs and task["split"] == "test"
        assert task["id"] in {lymphus.benchmark_task_id(kind, task["config"]) for kind in ("classification", "segmentation")}


def run_metrics(kind, test, external):
    def values(value):
        return {"at_0.5": {"roc_auc": value}} if kind == "classification" else {"dice": value}

    return {"validation": values(0.99), "test": values(test), "external": values(external)}


@pytest.mark.parametrize("kind", ["classification", "segmentation"])
def test_a_pushed_model_reports_into_the_benchmark_tasks(kind, small_export, tmp_path):
    from types import SimpleNamespace

    import yaml

    from lymphus_ml import cards

    tasks = {task["id"]: task for task in yaml.safe_load((small_export / "eval.yaml").read_text())["tasks"]}
    data_args = SimpleNamespace(dataset_name="someone/lymphus", dataset_config="center1", external_config="center2")
    files = cards.benchmark_eval_results(kind, run_metrics(kind, 0.8125, 0.7), data_args, "a" * 40, "someone/model")
    (entries,) = [yaml.safe_load(text) for name, text in files.items() if name == ".eval_results/lymphus.yaml"]
    by_task = {entry["dataset"]["task_id"]: entry for entry in entries}
    metric = "malignancy-roc-auc" if kind == "classification" else "node-dice"
    assert set(by_task) == {f"center1-{metric}", f"center1_to_center2-{metric}"} <= set(tasks)
    assert tasks[f"center1_to_center2-{metric}"]["config"] == "center1_to_center2"  # its test split: all of centre 2
    assert by_task[f"center1-{metric}"]["value"] == 0.8125 and by_task[f"center1_to_center2-{metric}"]["value"] == 0.7
    for entry in entries:
        assert entry["dataset"]["id"] == "someone/lymphus" and entry["dataset"]["revision"] == "a" * 40
        assert entry["source"]["url"].endswith("/someone/model")
    # A local export is no Hub dataset id to cite; a model trained on both centres has no external task
    assert cards.benchmark_eval_results(kind, run_metrics(kind, 0.8, 0.7), SimpleNamespace(
        dataset_name=str(small_export), dataset_config="center1", external_config="center2")) == {}
    (entries,) = map(yaml.safe_load, cards.benchmark_eval_results(kind, {"test": run_metrics(kind, 0.6, 0)["test"]}, SimpleNamespace(
        dataset_name="someone/lymphus", dataset_config="all", external_config=None)).values())
    assert [(e["dataset"]["task_id"], e["value"]) for e in entries] == [(f"all-{metric}", 0.6)]
    assert "revision" not in entries[0]["dataset"] and "source" not in entries[0]


def test_push_uploads_the_eval_results_with_the_run(local_hub, tmp_path):
    from huggingface_hub import HfApi

    from lymphus_ml.hub import push_run_to_hub
    from lymphus_ml.run_folder import RunFolder

    run = RunFolder.claim(tmp_path / "run", "train_vit.py")
    (tmp_path / "run" / "README.md").write_text("---\nlicense: mit\n---\n# model\n")
    run.complete()
    repo_id = f"{local_hub.user}/eval-results-push"
    push_run_to_hub(tmp_path / "run", repo_id, local_hub.token, extra_files={".eval_results/lymphus.yaml": "- value: 1\n"})
    files = set(HfApi(token=local_hub.token).list_repo_files(repo_id))
    assert {"README.md", ".eval_results/lymphus.yaml"} <= files and not any(".lymphus-run" in name for name in files)
    assert local_hub.read_file(repo_id, ".eval_results/lymphus.yaml") == b"- value: 1\n"


# The local evaluate modules' cards: their examples run as written


@pytest.mark.parametrize("module", ["clinical_classification", "binary_segmentation"])
def test_the_metric_module_cards_examples_run_as_written(module, monkeypatch):
    import doctest

    import yaml

    card = (REPO / "metrics" / module / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert {"evaluate", "metric"} <= set(metadata["tags"]) and metadata["description"]
    for section in ("## Metric Description", "## How to Use", "### Inputs", "### Output Values",
                    "## Limitations and Bias", "## Citation"):
        assert section in card, section
    monkeypatch.chdir(REPO)
    example = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1)
    test = doctest.DocTestParser().get_doctest(example, {}, module, str(REPO / "metrics" / module / "README.md"), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0 and runner.tries >= 4


def test_a_classifier_trained_on_a_hub_dataset_pushes_its_benchmark_results(small_export, local_hub, tmp_path, monkeypatch):
    """train_vit.py end to end on the local hub: the export pushed, one tiny run on its Hub id, pushed; the model's
    .eval_results/lymphus.yaml cites the dataset at the revision trained on, with the run's own test and external
    ROC-AUC, in the tasks of the export's eval.yaml."""
    import json

    import yaml
    from fixtures import vit_args
    from huggingface_hub import HfApi

    import lymphus
    import train_vit

    monkeypatch.setenv("HF_TOKEN", local_hub.token)
    dataset_id, model_id = f"{local_hub.user}/lymphus-benchmark", f"{local_hub.user}/vit-benchmark"
    lymphus.push_export(small_export, dataset_id, token=local_hub.token)
    revision = HfApi().dataset_info(dataset_id).sha
    output = tmp_path / "run"
    train_vit.main(vit_args(dataset_id, output, "--max_steps", "1", "--n_bootstrap", "0", "--push_to_hub",
                            "--hub_model_id", model_id))
    entries = yaml.safe_load(local_hub.read_file(model_id, ".eval_results/lymphus.yaml"))
    tasks = {task["id"] for task in yaml.safe_load(local_hub.read_file(dataset_id, "eval.yaml", "dataset"))["tasks"]}
    expected = {"center1-malignancy-roc-auc": json.loads((output / "metrics_test.json").read_text())["at_0.5"]["roc_auc"],
                "center1_to_center2-malignancy-roc-auc":
                    json.loads((output / "metrics_external.json").read_text())["at_0.5"]["roc_auc"]}
    assert {entry["dataset"]["task_id"]: entry["value"] for entry in entries} == pytest.approx(expected, abs=1e-6)
    assert set(expected) <= tasks
    assert all(entry["dataset"]["id"] == dataset_id and entry["dataset"]["revision"] == revision for entry in entries)
    assert not (output / ".eval_results").exists()  # written for the push only
    # Its card's model-index names the Hub dataset (id and revision), held-out sets first, Hub metric ids only.
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard.load(model_id)
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert list(dict.fromkeys(r.dataset_split for r in results)) == ["all", "test", "validation"]
    assert all(r.dataset_type == dataset_id and r.dataset_revision == revision for r in results)
    assert {r.metric_type for r in results} == {"roc_auc", "recall", "precision", "accuracy", "f1"}
    assert set(card.data.metrics) <= {r.metric_type for r in results}
    auc = [r for r in results if r.metric_type == "roc_auc" and r.dataset_config == "center2"]
    assert auc and auc[0].metric_value == pytest.approx(expected["center1_to_center2-malignancy-roc-auc"])
    assert "CI" in auc[0].metric_name and "not published as Hub evaluation results" not in card.text


def test_model_index_holds_hub_datasets_and_hub_metric_ids_only(tmp_path):
    """No model-index for a local folder; for a Hub id, only metrics with a Hub metric id (none for segmentation)."""
    from lymphus_ml import cards

    classification = {"test": {"at_0.5": {"threshold": 0.5, "roc_auc": 0.8, "specificity": 0.7, "npv": 0.9,
                                          "sensitivity": 0.6, "balanced_accuracy": 0.65},
                               "at_youden": {"threshold": 0.4, "specificity": 0.6, "ppv": 0.5}}}
    assert cards.classification_eval_results(classification, str(tmp_path), "center1", "center2") == []
    results = cards.classification_eval_results(classification, "user/lymphus", "center1", "center2")
    assert [(r.metric_type, r.metric_config, r.metric_value) for r in results] == [
        ("roc_auc", None, 0.8), ("precision", "youden", 0.5), ("recall", "threshold_0.5", 0.6)]
    assert all(r.dataset_type == "user/lymphus" for r in results)
    segmentation = {"test": {"dice": 0.7, "iou": 0.6, "hd95": 3.0, "detection_rate": 0.9}}
    assert cards.segmentation_eval_results(segmentation, "user/lymphus", "center1", "center2") == []
    assert cards.segmentation_eval_results(segmentation, str(tmp_path), "center1", "center2") == []
