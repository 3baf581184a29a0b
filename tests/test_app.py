"""app.py, the Gradio app: the prediction as a plain function (checked against predict.py), the offline demo folder
(models reused when complete, trained by the training scripts when not), the Space push against the local hub, and
the Space's downloaded files started as a Space starts them (`python app.py`, no option), driven by gradio_client and
by Debian's chromium through Playwright.

The session's models are tiny and untrained, built from the project's configs and saved as the training scripts
save them: the app is tested, not the training (train_vit.py and train_segformer.py have their own tests)."""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import app  # noqa: E402
import predict  # noqa: E402
from lymphus_ml import app_prediction, offline_demo  # noqa: E402
from lymphus_ml.cli import run  # noqa: E402
from lymphus_ml.demo_configs import TINY_SEGFORMER_CONFIG, TINY_VIT_CONFIG  # noqa: E402
from lymphus_ml.hub import push_folder_to_hub  # noqa: E402
from lymphus_ml.plots import PREDICTED_COLOR  # noqa: E402
from lymphus_ml.runs import subprocess as runs_subprocess  # noqa: E402
from lymphus_ml.segmentation import ID2LABEL, LABEL2ID  # noqa: E402
from lymphus_ml.shipped_files import job_files  # noqa: E402


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRE_BROWSER = "LYMPHUS_REQUIRE_BROWSER"  # set (not "0"): the browser test fails, not skips, without chromium
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PROBABILITY = re.compile(r"^\d\.\d+$|^[01]$")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Fixtures: an offline demo folder, its models and examples


def save_tiny_classifier(folder, roi_mode, threshold):
    """An untrained tiny ViT with the settings train_vit.py saves in its config."""
    from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessor

    settings = {key: value for key, value in TINY_VIT_CONFIG.items() if key != "model_type"}
    config = AutoConfig.for_model("vit", num_labels=2, id2label={0: "benign", 1: "malignant"},
                                  label2id={"benign": 0, "malignant": 1}, **settings)
    config.roi_mode, config.roi_margin, config.youden_threshold, config.positive_label = roi_mode, 0.1, threshold, "malignant"
    torch.manual_seed(0)
    AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return Path(folder)


def save_tiny_segmenter(folder):
    """An untrained tiny SegFormer saved as train_segformer.py saves one (2 classes, labels not reduced)."""
    from transformers import AutoConfig, AutoModelForSemanticSegmentation, SegformerImageProcessor

    settings = {key: value for key, value in TINY_SEGFORMER_CONFIG.items() if key != "model_type"}
    config = AutoConfig.for_model("segformer", num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, **settings)
    torch.manual_seed(0)
    AutoModelForSemanticSegmentation.from_config(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                            do_reduce_labels=False).save_pretrained(folder)
    return Path(folder)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """An offline demo folder as prepare_offline_demo leaves it: a crop classifier and a segmenter."""
    folder = tmp_path_factory.mktemp("app-demo")
    save_tiny_classifier(folder / "classifier", "crop", 0.42)
    save_tiny_segmenter(folder / "segmenter")
    return folder


@pytest.fixture(scope="session")
def models(demo_dir):
    return app_prediction.load_models(demo_dir / "classifier", demo_dir / "segmenter", device="cpu")


@pytest.fixture(scope="session")
def examples(demo_dir):
    return offline_demo.synthetic_examples(demo_dir / "examples")


@pytest.fixture(scope="session")
def full_image_classifier(tmp_path_factory):
    """A classifier saved as trained on the whole image (--roi full, threshold 0.3): it needs no segmenter."""
    return save_tiny_classifier(tmp_path_factory.mktemp("full-classifier"), "full", 0.3)


def start_app(arguments, cwd, log_path, timeout=180):
    """(process, url): `python app.py ARGUMENTS` in `cwd` on a free local port, once it answers."""
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "app.py", *arguments, "--server_name", "127.0.0.1", "--server_port", str(port)],
        cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"},
    )
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited with status {process.returncode}:\n{Path(log_path).read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return process, url
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"app.py did not answer within {timeout} s:\n{Path(log_path).read_text()}")


# The offline demo models


def test_offline_demo_reuses_complete_models(demo_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("complete demo models were trained again")

    monkeypatch.setattr(runs_subprocess, "Popen", no_training)
    expected = {"classifier": demo_dir / "classifier", "segmenter": demo_dir / "segmenter"}
    assert offline_demo.prepare_offline_demo(demo_dir) == expected
    arguments = app.AppArguments(offline_demo=True, demo_dir=str(demo_dir))
    assert app.model_sources(arguments) == {name: str(path) for name, path in expected.items()}


def test_offline_demo_trains_what_is_missing_with_the_scripts(demo_dir, tmp_path):
    """Training scripts that record their command line: train_vit.py writes its model, train_segformer.py fails
    once. The finished model moves into place, the failure is reported with its log, the next call trains only the
    segmenter."""
    scripts, folder = tmp_path / "scripts", tmp_path / "demo"
    scripts.mkdir()
    record = "import shutil, sys\nopen({calls!r}, 'a').write(' '.join(sys.argv) + '\\n')\n"
    (scripts / "train_vit.py").write_text(
        record.format(calls=str(tmp_path / "train_vit.calls"))
        + f"shutil.copytree({str(demo_dir / 'classifier')!r}, sys.argv[sys.argv.index('--output_dir') + 1], "
        "dirs_exist_ok=True)\n"  # the demo's new, empty staging folder
    )
    (scripts / "train_segformer.py").write_text(
        record.format(calls=str(tmp_path / "train_segformer.calls")) + "print('out of memory'); sys.exit(3)\n"
    )
    with pytest.raises(offline_demo.DemoTrainingError, match=r"train_segformer.py --offline_demo failed \(exit status 3\)") as error:
        offline_demo.prepare_offline_demo(folder, cases_per_group=3, extra_arguments=["--max_steps", "2"], root=scripts)
    assert "out of memory" in str(error.value) and "train_vit.py" not in str(error.value)
    assert offline_demo.model_folder_complete(folder / "classifier") and not list(folder.glob(".*.partial-*"))
    assert not offline_demo.model_folder_complete(folder / "segmenter")
    (command,) = (tmp_path / "train_vit.calls").read_text().splitlines()
    export = folder / "synthetic-lymphus" / "export"
    staging = command.split()[5]
    assert re.fullmatch(re.escape(str(folder / ".classifier.partial-")) + "[0-9a-f]{8}", staging)
    assert command.split()[1:] == [
        "--offline_demo", "--dataset_name", str(export), "--output_dir", staging,
        "--roi", "crop", "--num_train_epochs", "5", "--learning_rate", "1e-3", "--max_steps", "2",
    ]
    assert (export / "README.md").is_file()  # the synthetic export both scripts train on
    with pytest.raises(offline_demo.DemoTrainingError, match="train_segformer.py"):
        offline_demo.prepare_offline_demo(folder, root=scripts)
    assert len((tmp_path / "train_vit.calls").read_text().splitlines()) == 1  # the classifier was reused
    assert len((tmp_path / "train_segformer.calls").read_text().splitlines()) == 2


def test_synthetic_examples_write_only_the_missing_ones(examples, tmp_path):
    folder = tmp_path / "examples"
    folder.mkdir()
    mine = folder / examples[0].name
    mine.write_bytes(b"a file someone put here")
    written = offline_demo.synthetic_examples(folder)
    assert [path.name for path in written] == [path.name for path in examples]
    assert mine.read_bytes() == b"a file someone put here"  # never overwritten
    assert all(path.read_bytes() == example.read_bytes() for path, example in zip(written[1:], examples[1:]))


# predict_image, the page's logic


def read(path):
    with Image.open(path) as image:
        return image.copy()


def test_predict_image_gives_what_predict_py_gives(models, examples, demo_dir, tmp_path):
    rows = predict.main(["--input", str(examples[0].parent), "--classifier", str(demo_dir / "classifier"),
                         "--segmenter", str(demo_dir / "segmenter"), "--output_dir", str(tmp_path), "--device", "cpu"])
    by_name = {Path(row["file"]).name: row for row in rows}
    assert len(by_name) == len(examples) == 4
    for path in examples:
        result = app_prediction.predict_image(read(path), models)
        row = by_name[path.name]
        assert result["probability"] == pytest.approx(row["probability_malignant"], abs=1e-6)
        assert result["label"] == row["label_at_threshold"] and result["roi"] == row["roi"]
        assert result["node_pixels"] == row["node_pixels"]
        assert result["threshold"] == pytest.approx(row["threshold"])


def test_predict_image_label_outline_and_heatmap(models, examples, demo_dir):
    image = read(examples[2])
    result = app_prediction.predict_image(image, models)
    threshold = json.loads((demo_dir / "classifier" / "config.json").read_text())["youden_threshold"]
    assert result["threshold"] == pytest.approx(threshold)
    assert result["label"] == ("malignant" if result["probability"] >= threshold else "benign")
    assert 0 <= result["probability"] <= 1
    outline = np.asarray(result["outline"])
    assert result["outline"].size == image.size and outline.shape[2] == 3
    red = np.all(outline == PREDICTED_COLOR, axis=2)
    assert (red.sum() > 0) == (result["node_pixels"] > 0)
    assert result["heatmap"].mode == "RGB" and max(result["heatmap"].size) == app_prediction.HEATMAP_SIZE
    assert result["roi"] in ("crop", "full (empty predicted mask)") and result["note"].startswith("classified the")


def test_saliency_overlay_colours_only_the_positive_saliency():
    view = Image.fromarray(np.full((40, 80), 100, dtype=np.uint8))
    saliency = np.zeros((8, 8), dtype=np.float32)
    saliency[:4, :4] = 2.0  # top-left quarter supports the label
    saliency[4:, 4:] = -5.0  # evidence against it: not drawn
    pixels = np.asarray(app_prediction.saliency_overlay(view, saliency, size=(80, 40))).astype(int)
    coloured = np.abs(pixels[..., 0] - pixels[..., 2]) > 10
    assert coloured[:15, :35].all() and not coloured[25:, :].any() and not coloured[:, 50:].any()
    plain = np.asarray(app_prediction.saliency_overlay(view, -saliency, size=(80, 40)))
    assert plain.shape == (40, 80, 3) and not (np.abs(plain[..., 0].astype(int) - plain[..., 2]) > 10)[:15, :35].any()


def test_any_mode_or_bit_depth_gives_the_same_prediction(models, examples):
    pixels = np.asarray(read(examples[3]).convert("L")).copy()
    pixels[0, 0], pixels[0, 1] = 0, 255  # full range: the 16-bit copy maps back to exactly these values
    reference = app_prediction.predict_image(Image.fromarray(pixels), models)
    sixteen_bit = Image.fromarray(pixels.astype(np.uint16) * 257)
    assert sixteen_bit.mode.startswith("I;16")
    for variant in (sixteen_bit, Image.fromarray(pixels).convert("RGB")):
        result = app_prediction.predict_image(variant, models)
        assert result["probability"] == pytest.approx(reference["probability"], abs=1e-6)
        assert result["label"] == reference["label"]
    assert "mapped from its value range [0, 65535]" in app_prediction.predict_image(sixteen_bit, models)["note"]


def test_a_full_image_classifier_needs_no_segmenter(full_image_classifier, examples):
    models = app_prediction.load_models(full_image_classifier, device="cpu")
    image = read(examples[0])
    result = app_prediction.predict_image(image, models)
    assert result["roi"] == "full" and result["node_pixels"] is None and "no segmenter" in result["note"]
    assert np.array_equal(np.asarray(result["outline"]), np.asarray(image.convert("RGB")))  # nothing drawn
    assert result["threshold"] == pytest.approx(0.3)
    assert result["label"] == ("malignant" if result["probability"] >= 0.3 else "benign")


def run_command(arguments, capsys):
    """app.py's command line in this process: (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: app.main(arguments), arguments)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--classifier", "{demo}/classifier"], "trained on --roi crop (the node, not the whole image): pass --segmenter"),
        (["--classifier", "{demo}/no-such-model"], "Cannot load the classifier"),
        ([], "Pass --classifier (a folder or Hub id), or --offline_demo"),
        (["--offline_demo", "--classifier", "x"], "--offline_demo serves its own tiny models"),
        (["--classifeir", "x"], "Unknown option(s) --classifeir"),
    ],
)
def test_bad_requests_are_one_message(arguments, message, demo_dir, capsys):
    status, stderr = run_command([argument.format(demo=demo_dir) for argument in arguments], capsys)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert status == 1 and "Traceback" not in stderr
    assert len(errors) == 1 and message in errors[0], stderr


def test_a_file_that_is_not_an_image_is_one_message_on_the_page(models, tmp_path):
    import gradio as gr

    notes = tmp_path / "notes.txt"
    notes.write_text("not pixels")
    with pytest.raises(gr.Error, match="notes.txt is not an image file the app can read"):
        app.classify_upload(str(notes), models)
    with pytest.raises(gr.Error, match="Upload an image first"):
        app.classify_upload(None, models)


# A Space on the (local) Hub


@pytest.fixture(scope="session")
def hub_with_spaces(local_hub):
    import hub_server  # tests/ is on sys.path once local_hub has started
    from hub_spaces import add_space_support

    add_space_support(hub_server)
    return local_hub


@pytest.fixture(scope="session")
def hub_models(hub_with_spaces, demo_dir):
    """The demo folder's crop classifier and segmenter pushed to the local hub: {"classifier": id, "segmenter": id}."""
    hub, ids = hub_with_spaces, {}
    for name in ("classifier", "segmenter"):
        ids[name] = f"{hub.user}/app-{name}"
        push_folder_to_hub(demo_dir / name, ids[name], token=hub.token)
    return ids


def space_file_names(hub, space_id):
    return sorted(path for path in hub.commits(space_id, "space")[-1]["files"] if path != ".gitattributes")


def test_push_to_space_uploads_the_app_and_what_it_imports(hub_with_spaces, hub_models, capsys):
    from huggingface_hub import HfApi, SpaceCard

    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/lymphus-app-push"
    arguments = ["--push_to_space", space_id, "--classifier", hub_models["classifier"], "--segmenter",
                 hub_models["segmenter"], "--hub_token", hub.token]
    app.main(arguments)
    (create,) = [r for r in hub.find_requests("POST", r"^/api/repos/create$") if r["json"]["name"] == "lymphus-app-push"]
    assert create["json"]["type"] == "space" and create["json"]["sdk"] == "gradio"
    assert HfApi().space_info(space_id).sdk == "gradio"
    shipped = job_files(REPO / "app.py")
    assert space_file_names(hub, space_id) == sorted(shipped + ["README.md", "requirements.txt", "space_config.json"])
    assert {"app.py", "lymphus_ml/app_prediction.py", "lymphus_ml/saliency.py", "lymphus.py", "reference/official_cases.csv"} <= set(shipped)
    for path in shipped:
        assert hub.read_file(space_id, path, "space") == (REPO / path).read_bytes()

    card = SpaceCard.load(space_id, repo_type="space")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and len(card.data.short_description) <= 60
    assert card.data.sdk_version == gradio_version() and "Not for clinical use" in card.text
    assert (card.data.license, card.data.license_name) == ("other", "lymphus-research-use")  # the dataset's terms
    assert card.data.models == [hub_models["classifier"], hub_models["segmenter"]]
    config = json.loads(hub.read_file(space_id, "space_config.json", "space"))
    assert {key: config[key] for key in ("classifier", "segmenter")} == {
        "classifier": hub_models["classifier"], "segmenter": hub_models["segmenter"]}
    requirements = hub.read_file(space_id, "requirements.txt", "space").decode().split()
    names = {re.split(r"[<>=]", requirement)[0] for requirement in requirements}
    assert "torch==2.14.1+cpu" in requirements and {"transformers", "huggingface_hub", "datasets"} <= names  # CPU build
    assert not names & {"gradio", "gradio_client", "playwright", "pytest"}
    for path in space_file_names(hub, space_id):
        assert hub.token.encode() not in hub.read_file(space_id, path, "space")

    # An update: a new commit, the same files. A file an earlier push shipped and this one does not is removed;
    # a file the user added is kept.
    api = HfApi(token=hub.token)
    config = json.loads(hub.read_file(space_id, "space_config.json", "space"))
    assert sorted(config["files"]) == sorted(shipped + ["README.md", "requirements.txt"])
    for path, entry in config["files"].items():  # the record that proves the Space ours: each file's SHA-256
        assert entry["sha256"] == hashlib.sha256(hub.read_file(space_id, path, "space")).hexdigest()
    old = b"old = 1\n"
    config["files"]["lymphus_ml/old.py"] = {"sha256": hashlib.sha256(old).hexdigest(),
                                            "git_oid": hashlib.sha1(b"blob %d\0" % len(old) + old).hexdigest()}
    api.upload_file(path_or_fileobj=old, path_in_repo="lymphus_ml/old.py", repo_id=space_id, repo_type="space")
    api.upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="space_config.json", repo_id=space_id,
                    repo_type="space")
    api.upload_file(path_or_fileobj=b"my notes\n", path_in_repo="notes.md", repo_id=space_id, repo_type="space")
    commits = len(hub.commits(space_id, "space"))
    app.main(arguments)
    assert len(hub.commits(space_id, "space")) == commits + 1
    assert space_file_names(hub, space_id) == sorted(shipped + ["README.md", "requirements.txt", "space_config.json", "notes.md"])
    assert hub.token not in capsys.readouterr().out

    # A Space someone else's tool wrote is not ours to replace.
    foreign = f"{hub.user}/not-our-space"
    api.create_repo(foreign, repo_type="space", space_sdk="gradio")
    api.upload_file(path_or_fileobj=b"print('hi')\n", path_in_repo="app.py", repo_id=foreign, repo_type="space")
    with pytest.raises(ValueError, match="was not written by `app.py --push_to_space`"):
        app.main(["--push_to_space", foreign, *arguments[2:]])
    assert hub.read_file(foreign, "app.py", "space") == b"print('hi')\n"


def gradio_version():
    import gradio

    return gradio.__version__


@pytest.mark.parametrize(
    "classifier, message",
    [
        ("app-classifier", "was trained on --roi crop (the node, not the whole image): pass --segmenter"),
        ("no-such-model", "--classifier local-user/no-such-model is not a model this token can read"),
    ],
)
def test_push_to_space_refuses_a_space_that_could_not_start(hub_with_spaces, hub_models, classifier, message):
    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/refused-{classifier}"
    with pytest.raises(ValueError, match=re.escape(message)):
        app.main(["--push_to_space", space_id, "--classifier", f"{hub.user}/{classifier}", "--hub_token", hub.token])
    assert ("space", space_id) not in hub.repos


def test_push_to_space_refuses_a_local_folder(hub_with_spaces, demo_dir):
    with pytest.raises(ValueError, match="is a local folder; a Space loads its models by Hub id"):
        app.main(["--push_to_space", "local-user/x", "--classifier", str(demo_dir / "classifier"),
                  "--segmenter", str(demo_dir / "segmenter"), "--hub_token", hub_with_spaces.token])


@pytest.fixture(scope="module")
def space_app(hub_with_spaces, hub_models, tmp_path_factory):
    """A Space pushed by app.py, downloaded with snapshot_download and started as a Space starts: `python app.py`
    with no option in the Space's folder, so it serves the Hub ids of its space_config.json. Yields its URL.
    Stopped after this file's tests: a Gradio server idling through the rest of the session costs CPU time."""
    from huggingface_hub import snapshot_download

    hub, space_id = hub_with_spaces, f"{hub_with_spaces.user}/lymphus-app"
    app.main(["--push_to_space", space_id, "--classifier", hub_models["classifier"], "--segmenter",
              hub_models["segmenter"], "--hub_token", hub.token])
    folder = tmp_path_factory.mktemp("space")
    space = Path(snapshot_download(space_id, repo_type="space", local_dir=folder / "space"))
    assert not (space / "train_vit.py").exists() and (space / "space_config.json").is_file()
    process, url = start_app([], space, folder / "space.log")
    yield url
    process.terminate()
    process.wait(timeout=30)
    assert (space / "runs" / "app-demo" / "examples").is_dir()  # examples synthesised from the shipped files


def test_the_space_serves_its_hub_models_to_gradio_client(space_app, hub_models, models, examples, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(space_app, verbose=False, download_files=str(tmp_path))
    expected = app_prediction.predict_image(read(examples[1]), models)  # the same weights, loaded from the demo folder
    (endpoint,) = [info for name, info in client.view_api(print_info=False, return_format="dict")["named_endpoints"].items()
                   if name == "/predict"]
    assert [parameter["parameter_name"] for parameter in endpoint["parameters"]] == ["image"]
    probability, label, details, outline, heatmap, result = client.predict(
        image=handle_file(str(examples[1])), api_name="/predict"
    )
    assert probability == pytest.approx(expected["probability"], abs=1e-4) and label == expected["label"]
    # The JSON beside the page's view: the probability unrounded, the label, the threshold and ROI that gave it
    assert result["probability"] == pytest.approx(expected["probability"], rel=1e-6)
    assert result["probability"] != round(result["probability"], 4)  # not the page's 4 decimals
    assert (result["label"], result["threshold"], result["roi"]) == (expected["label"], expected["threshold"], expected["roi"])
    assert result["classifier"] == hub_models["classifier"] and result["segmenter"] == hub_models["segmenter"]
    assert result["roi_mode"] == models.settings["roi_mode"] and result["node_pixels"] == expected["node_pixels"]
    assert "validation threshold 0.4200" in details
    assert read(outline).size == read(examples[1]).size and max(read(heatmap).size) == app_prediction.HEATMAP_SIZE
    notes = tmp_path / "notes.txt"
    notes.write_text("not pixels")
    with pytest.raises(AppError, match="notes.txt is not an image file the app can read"):
        client.predict(handle_file(str(notes)), api_name="/predict")


def screenshot_app(url, image_path, screenshot_path, wrong_file=None) -> dict:
    """In headless chromium: open the app, upload `image_path`, classify, read the results off the page and save a
    screenshot. With `wrong_file`, upload it afterwards and read the error message shown. Returns what was read."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#upload input[type=file]").set_input_files(str(image_path))
            expect(page.locator("#upload")).to_contain_text(Path(image_path).name, timeout=30_000)
            page.locator("#classify").click()
            expect(page.locator("#label textarea")).not_to_have_value("", timeout=60_000)
            expect(page.locator("#heatmap img")).to_be_visible(timeout=30_000)
            read_off = {"page_text": page.locator("body").inner_text()}
            read_off["probability"] = page.locator("#probability input").input_value()
            read_off["label"] = page.locator("#label textarea").input_value()
            read_off["details"] = page.locator("#details").inner_text()
            page.screenshot(path=str(screenshot_path), full_page=True)
            if wrong_file is not None:
                page.locator("#upload button[aria-label='Clear']").first.click()
                page.locator("#upload input[type=file]").set_input_files(str(wrong_file))
                expect(page.locator("#upload")).to_contain_text(Path(wrong_file).name, timeout=30_000)
                page.locator("#classify").click()
                toast = page.locator(".toast-body").first
                expect(toast).to_be_visible(timeout=30_000)
                read_off["error"] = toast.inner_text()
        finally:
            browser.close()
    return read_off


def browser_required() -> bool:
    return os.environ.get(REQUIRE_BROWSER, "") not in ("", "0")


# Skipped (before its fixtures start a Space) where chromium is absent, unless CI asks for the browser: .ci/run
# installs Debian's chromium and sets LYMPHUS_REQUIRE_BROWSER=1, and there a missing browser fails the test.
@pytest.mark.skipif(not Path(CHROMIUM).is_file() and not browser_required(),
                    reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
def test_a_browser_uploads_an_image_and_reads_the_result(space_app, hub_models, models, examples, tmp_path):
    assert Path(CHROMIUM).is_file(), f"Debian's chromium is needed ({REQUIRE_BROWSER} is set; .ci/run installs it)"
    notes = tmp_path / "notes.txt"
    notes.write_text("not pixels")
    screenshot = tmp_path / "app.png"
    read_off = screenshot_app(space_app, examples[2], screenshot, wrong_file=notes)
    expected = app_prediction.predict_image(read(examples[2]), models)
    assert "Not for clinical use" in read_off["page_text"] and hub_models["classifier"] in read_off["page_text"]
    assert PROBABILITY.match(read_off["probability"]), read_off
    assert float(read_off["probability"]) == pytest.approx(expected["probability"], abs=1e-4)
    assert read_off["label"] == expected["label"] and "validation threshold 0.4200" in read_off["details"]
    assert "notes.txt is not an image file the app can read" in read_off["error"]
    with Image.open(screenshot) as shot:
        assert shot.format == "PNG" and shot.size[0] == 1280 and shot.size[1] >= 600


def test_a_cv_classifier_shows_its_conformal_set_on_the_page_and_in_the_json(tmp_path, examples):
    """A classifier whose config carries conformal thresholds (as crossval.carry_settings writes them): the set is
    every class whose probability reaches its threshold; a model without them gives prediction_set null."""
    import dataclasses

    folder = save_tiny_classifier(tmp_path / "cv-classifier", "full", 0.3)
    plain = app.classify_upload(str(examples[0]), app_prediction.load_models(folder, device="cpu"))
    assert plain[5]["prediction_set"] is None and "Conformal" not in plain[2]
    p = plain[5]["probability"]
    # Thresholds around this image's probability: benign (1 - p) always in, malignant (p) just in.
    config = json.loads((folder / "config.json").read_text())
    config["conformal"] = {"level": 0.9, "class_names": ["benign", "malignant"],
                           "min_probability": {"benign": (1 - p) / 2, "malignant": p - 0.01}, "n": {"benign": 70, "malignant": 74}}
    (folder / "config.json").write_text(json.dumps(config))
    models = app_prediction.load_models(folder, device="cpu")
    assert "conformal prediction sets at 90 %" in app.page_header(models)
    cases = {  # min_probability -> the expected set, read off p(c) >= threshold_c
        "both": ({"benign": (1 - p) / 2, "malignant": p - 0.01}, ["benign", "malignant"], "uncertain: refer"),
        "malignant": ({"benign": min(1.0, 1 - p + 0.01), "malignant": p - 0.01}, ["malignant"], "malignant"),
        "benign": ({"benign": (1 - p) / 2, "malignant": min(1.0, p + 0.01)}, ["benign"], "benign"),
        "none": ({"benign": min(1.0, 1 - p + 0.01), "malignant": min(1.0, p + 0.01)}, [], "uncertain: refer"),
    }
    for name, (minimum, members, words) in cases.items():
        settings = {**models.settings, "conformal": {**models.settings["conformal"], "min_probability": minimum}}
        result = app_prediction.predict_image(read(examples[0]), dataclasses.replace(models, settings=settings))
        assert result["probability"] == pytest.approx(p, abs=1e-6)
        assert result["prediction_set"] == members and result["prediction_set_label"] == words, name
        assert result["conformal_level"] == 0.9
    # The saved config's thresholds (the "both" case) reach the page and the JSON API output
    _, label, details, _, _, output = app.classify_upload(str(examples[0]), models)
    assert output["prediction_set"] == ["benign", "malignant"] and output["prediction_set_label"] == "uncertain: refer"
    assert "Conformal prediction set at 90 %: **{benign, malignant}**" in details and "uncertain: refer" in details
    assert label == output["label"] and json.loads(json.dumps(output)) == output
