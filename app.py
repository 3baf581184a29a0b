#!/usr/bin/env python
"""A Gradio app (the Hugging Face Space SDK): upload a lymph node ultrasound image, see the malignancy probability.

    python app.py --classifier <user>/vit-lymphus-center1 --segmenter <user>/segformer-lymphus-center1
    python app.py --offline_demo          # tiny models trained on synthetic data (no network), cached in runs/app-demo/

The page shows the malignancy probability, the label at the classifier's validation (Youden) threshold, for a
classifier trained with --cv_folds its conformal prediction set ({benign}, {malignant} or both: "uncertain: refer";
`prediction_set` in the JSON output, null otherwise), the node outline found by the segmenter (required for a
classifier trained on the node's crop or masked crop: such a classifier is refused without one) and an occlusion
saliency heatmap over the classifier's view. Images of any mode or bit depth are accepted, as by predict.py, and
refused as it refuses them (one message on the page): smaller than 32 pixels on a side, over PIL's
decompression-bomb limit, or of several frames (an animated GIF, a TIFF stack).
Uploads and result pictures are deleted from the server 10 minutes after they were made. Not for clinical use.

--offline_demo runs `train_vit.py --offline_demo` and `train_segformer.py --offline_demo` once (about 1.5 minutes
on 2 CPU cores) and reuses the models while they are complete in --demo_dir. It deletes or replaces only what it
wrote there (listed in --demo_dir's .lymphus-demo.json); anything else in its way is named and left alone. A failed
training is one message naming the script and the end of its log.

Publish it as a Gradio Space that loads the models by Hub id (the Space gets this file, the project modules it
imports, its card, requirements.txt and space_config.json, which names the models it serves and records each file
it shipped with its SHA-256). An existing Space is updated only when that record proves it ours (every file we
shipped unchanged, none of ours overwriting one of the user's); files an earlier push shipped and this one does not
are deleted by exact name, anything else is kept. With --private a new Space is created private and an existing
public one is made private:

    python app.py --push_to_space <user>/lymphus-demo --classifier <user>/vit-lymphus-center1 \
        --segmenter <user>/segformer-lymphus-center1
"""

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no analytics, no version check

from lymphus_ml.app_prediction import load_models, predict_image  # noqa: E402
from lymphus_ml.cli import parse_arguments, run  # noqa: E402
from lymphus_ml.images import read_grayscale_image  # noqa: E402
from lymphus_ml.offline_demo import prepare_offline_demo, synthetic_examples  # noqa: E402
from lymphus_ml.space import push_space, read_space_config  # noqa: E402


logger = logging.getLogger(__name__)

TITLE = "LymphUs: lymph node ultrasound"
# Gradio keeps every upload and every result picture in its cache folder: every minute, those older than 10 minutes
# are deleted (and all of them when the server stops). The examples stay.
DELETE_CACHE = (60, 600)
NOT_FOR_CLINICAL_USE = "**Not for clinical use.** A research demo; it has not been validated for diagnosis or patient care."


@dataclass
class AppArguments:
    classifier: str | None = field(
        default=None,
        metadata={
            "help": "Classifier written by train_vit.py: local folder or Hub id (default: the Hub ids in "
            "space_config.json beside app.py, as in a Space written by --push_to_space)."
        },
    )
    segmenter: str | None = field(
        default=None,
        metadata={
            "help": "Segmenter written by train_segformer.py (folder or Hub id): draws the node's outline; required "
            "for a classifier trained on --roi crop or masked."
        },
    )
    offline_demo: bool = field(
        default=False,
        metadata={"help": "Serve the tiny offline demo models: trained on synthetic data once, then reused (no network)."},
    )
    demo_dir: str = field(
        default="runs/app-demo",
        metadata={"help": "Where --offline_demo keeps its models and the example images are written."},
    )
    server_name: str | None = field(
        default=None,
        metadata={"help": "Address to listen on (default: $GRADIO_SERVER_NAME, else 127.0.0.1; 0.0.0.0 for all)."},
    )
    server_port: int | None = field(
        default=None, metadata={"help": "Port (default: $GRADIO_SERVER_PORT, else the first free from 7860)."}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if available)."})
    push_to_space: str | None = field(
        default=None,
        metadata={
            "help": "USER/NAME: create or update a Gradio Space serving --classifier (and --segmenter), given as "
            "Hub ids, then exit."
        },
    )
    private: bool = field(default=False, metadata={"help": "With --push_to_space: create the Space private, or make an existing public one private."})
    hub_token: str | None = field(
        default=None, metadata={"help": "Token for --push_to_space (default: $HF_TOKEN or the saved login)."}
    )


def check_arguments(app_args) -> None:
    if app_args.offline_demo and (app_args.classifier or app_args.segmenter or app_args.push_to_space):
        raise ValueError(
            "--offline_demo serves its own tiny models: leave out --classifier, --segmenter and --push_to_space."
        )
    if app_args.push_to_space and not app_args.classifier:
        raise ValueError("--push_to_space needs --classifier (and --segmenter for a crop or masked classifier), as Hub ids.")


def model_sources(app_args) -> dict:
    """{"classifier": ..., "segmenter": ... or None}: the offline demo's models (trained or reused), the options,
    else the Hub ids of space_config.json (a Space starts with no option)."""
    if app_args.offline_demo:
        return {name: str(path) for name, path in prepare_offline_demo(app_args.demo_dir).items()}
    if app_args.classifier:
        return {"classifier": app_args.classifier, "segmenter": app_args.segmenter}
    config = read_space_config(__file__)
    if config is None:
        raise ValueError("Pass --classifier (a folder or Hub id), or --offline_demo to serve the tiny demo models.")
    return {"classifier": config["classifier"], "segmenter": config.get("segmenter")}


# The page


def classify_upload(image, models):
    """The page's action and the API's `/predict`: (probability, label, details, outline, heatmap, result) for an
    uploaded file (`image`: its path); the first five are the page's human-readable view (probability rounded to 4
    decimals), `result` the same prediction as JSON for API clients (`api_result`). gr.Error (one message on the
    page) for no file, an upload no longer kept, or a file that is not one still image of a sensible size
    (`lymphus_ml.images.open_image`: too small, too large, several frames, not an image)."""
    import gradio as gr

    if image is None:
        raise gr.Error("Upload an image first, or pick an example.", print_exception=False)
    name = Path(image).name
    if not Path(image).is_file():
        raise gr.Error(
            f"{name} is no longer on the server (uploads and results are deleted after {DELETE_CACHE[1] // 60} "
            "minutes): upload it again.", print_exception=False,
        )
    try:
        pixels, conversion = read_grayscale_image(image, name)
    except ValueError as error:
        if str(error).startswith("Cannot read image"):
            message = f"{name} is not an image file the app can read: upload a PNG, BMP, TIFF or JPEG ultrasound image."
        else:
            message = str(error)
        raise gr.Error(message, print_exception=False) from None
    result = predict_image(pixels, models)
    note = "; ".join(part for part in (conversion, result["note"]) if part)
    details = (
        f"**{result['label']}** at the classifier's validation threshold {result['threshold']:.4f} "
        f"(probability ≥ threshold: {result['positive_label']}).{set_description(result)}\n\n"
        f"{note[:1].upper() + note[1:]}."
    )
    return (round(result["probability"], 4), result["label"], details, result["outline"], result["heatmap"],
            api_result(result, note, models))


def set_description(result) -> str:
    """The conformal prediction set in words for the page ("" for a classifier without conformal thresholds)."""
    if result.get("prediction_set") is None:
        return ""
    members = "{" + ", ".join(result["prediction_set"]) + "}"
    level = f"{100 * result['conformal_level']:g} %"
    if len(result["prediction_set"]) == 1:
        return f"\n\nConformal prediction set at {level}: **{members}**."
    why = "both classes are plausible" if result["prediction_set"] else "neither class is plausible"
    return f"\n\nConformal prediction set at {level}: **{members}**, {why}: **{result['prediction_set_label']}**."


def api_result(result, note, models) -> dict:
    """The prediction as the API's JSON output: the probability unrounded, the label and the threshold that gave it,
    the conformal prediction set (prediction_set: the class names in it, prediction_set_label, conformal_level; null
    for a classifier trained without --cv_folds), the ROI the classifier saw (full, crop, masked; full when the
    predicted node is empty), the models."""
    return {
        "probability": result["probability"],
        "label": result["label"],
        "threshold": result["threshold"],
        "positive_label": result["positive_label"],
        "prediction_set": result["prediction_set"],
        "prediction_set_label": result["prediction_set_label"],
        "conformal_level": result["conformal_level"],
        "roi": result["roi"],
        "roi_mode": models.settings["roi_mode"],
        "node_pixels": result["node_pixels"],
        "classifier": models.classifier_name,
        "segmenter": models.segmenter_name,
        "note": note,
    }


def probability_label(positive_label) -> str:
    return "Malignancy probability" if positive_label == "malignant" else f"Probability of {positive_label}"


def page_header(models) -> str:
    settings = models.settings
    segmenter = f"segmenter `{models.segmenter_name}`" if models.segmenter_name else "no segmenter"
    return (
        f"# {TITLE}\n\n> {NOT_FOR_CLINICAL_USE}\n\n"
        f"Classifier `{models.classifier_name}` (trained on the {settings['roi_mode']} view, validation threshold "
        f"{settings['threshold']:.4f}{conformal_header(settings)}), {segmenter}. Upload a B-mode ultrasound image (any mode or bit depth)."
    )


def conformal_header(settings) -> str:
    conformal = settings.get("conformal")
    return f", conformal prediction sets at {100 * conformal['level']:g} %" if conformal else ""


def build_demo(models, examples=(), delete_cache=DELETE_CACHE):
    """The Gradio Blocks: an upload, the results, the examples; `classify_upload` wired as the API `/predict`, whose
    input is `image` and whose last output is the JSON result. Uploads and result pictures are deleted from the
    server after `delete_cache` = (every, age) seconds."""
    import gradio as gr

    def classify(image):
        return classify_upload(image, models)

    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=delete_cache) as demo:
        gr.Markdown(page_header(models), elem_id="header")
        outline = gr.Image(
            label="Node outline (predicted, red)", type="pil", format="png", interactive=False, render=False,
            elem_id="outline",
        )
        heatmap = gr.Image(
            label="Saliency (occlusion) for the label, over the classifier's view", type="pil", format="png",
            interactive=False, render=False, elem_id="heatmap",
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Ultrasound image (PNG, BMP, TIFF, JPEG)", type="filepath", elem_id="upload")
                button = gr.Button("Classify", variant="primary", elem_id="classify")
                examples_column = gr.Column()
            with gr.Column():
                probability = gr.Number(
                    label=probability_label(models.settings["positive_label"]), precision=4, interactive=False,
                    elem_id="probability",
                )
                label = gr.Textbox(label="Label at the validation threshold", interactive=False, elem_id="label")
                details = gr.Markdown(label="Details", elem_id="details")
                result = gr.JSON(label="Result (JSON, as API clients get it)", elem_id="result")
        with gr.Row():
            outline.render()
            heatmap.render()
        outputs = [probability, label, details, outline, heatmap, result]
        button.click(classify, inputs=upload, outputs=outputs, api_name="predict")
        if examples:
            with examples_column:
                gr.Examples(
                    [[str(path)] for path in examples], inputs=upload, outputs=outputs, fn=classify,
                    run_on_click=True, cache_examples=False, label="Synthetic examples (made-up pixels, no patient data)",
                    example_labels=[Path(path).stem.replace("-", " ") for path in examples],
                )
        gr.Markdown(NOT_FOR_CLINICAL_USE, elem_id="footer")
    return demo


def launch(demo, app_args, allowed_paths=(), prevent_thread_lock=False):
    """Serve `demo` on --server_name / --server_port; never a share link."""
    demo.launch(
        server_name=app_args.server_name,
        server_port=app_args.server_port,
        share=False,
        allowed_paths=[str(path) for path in allowed_paths],
        prevent_thread_lock=prevent_thread_lock,
    )
    return demo


def main(args=None):
    # Arguments
    (app_args,) = parse_arguments([AppArguments], args)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("lymphus_ml").setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    check_arguments(app_args)

    # A Space: publish this app serving the Hub models, then exit
    if app_args.push_to_space:
        from lymphus_ml.hub import require_hub_token

        token = require_hub_token(app_args.hub_token, "--push_to_space")
        url = push_space(app_args.push_to_space, app_args.classifier, app_args.segmenter, token, app_args.private or None)
        logger.info(f"Space {app_args.push_to_space} updated: {url}")
        return url

    # Models
    sources = model_sources(app_args)
    models = load_models(sources["classifier"], sources["segmenter"], app_args.device)

    # Examples
    examples_folder = Path(app_args.demo_dir) / "examples"
    examples = synthetic_examples(examples_folder)

    # Serve
    return launch(build_demo(models, examples), app_args, [examples_folder])


if __name__ == "__main__":
    run(main)
