"""Inference throughput of predict.py: images/s of segmenter + crop + classifier, without an expert mask.

Two numbers per run, on one device:
  pipeline     = inference.predict_masks (resize, segmenter, logits upsampled to each image's size, argmax) + the crop
                 from the predicted mask + inference.predict_probabilities (classifier), images already in memory;
  end to end   = `python predict.py` on a folder of PNG files, as its own process (scripts never import scripts):
                 start-up and imports, loading both models, reading the files, the pipeline, writing one mask PNG
                 per image and predictions.csv.
plus the segmenter and the classifier stages alone. Models are built from configs (random weights: speed only).

    python benchmarks/bench_predict.py                      # CPU: tiny SegFormer (64 px) + tiny ViT (32 px)
    python benchmarks/bench_predict.py --device cuda        # GPU: SegFormer-B0 (512 px) + ViT-B/16 (224 px)

Images are made-up grayscale ultrasound-like frames at the official LymphUs sizes (widths 248-826, heights 226-724),
with a bright ellipse, so that the crop path is taken for most of them.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lymphus_ml import inference  # noqa: E402
from lymphus_ml.runs import PROJECT_ROOT, run_script  # noqa: E402


# The tiny models of the tests (tests/test_segformer.py, tests/test_predict.py).
TINY_SEGFORMER = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64], "num_attention_heads": [1, 1, 2, 2],
                  "decoder_hidden_size": 32}
TINY_VIT = {"image_size": 32, "patch_size": 8, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
            "intermediate_size": 64}
SEGFORMER_B0 = {}  # SegformerConfig's defaults are the MiT-b0 encoder with a 256-wide decode head
VIT_B16 = {"image_size": 224, "patch_size": 16}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--model", choices=["tiny", "base"], help="default: base on GPU, tiny on CPU")
    parser.add_argument("--n_images", type=int, help="default: 256 on GPU, 32 on CPU")
    parser.add_argument("--batch_size", type=int, help="default: 32 on GPU, 8 on CPU")
    parser.add_argument("--roi", default="crop", choices=["full", "crop", "masked"])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images (best is reported)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.model = args.model or ("base" if gpu else "tiny")
    args.n_images = args.n_images or (256 if gpu else 32)
    args.batch_size = args.batch_size or (32 if gpu else 8)
    return args


def make_images(n, seed=0):
    """Grayscale frames at official LymphUs sizes: speckle noise plus one bright ellipse."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        height, width = int(rng.integers(226, 725)), int(rng.integers(248, 827))
        pixels = rng.normal(70, 20, size=(height, width))
        yy, xx = np.mgrid[0:height, 0:width]
        cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        ry, rx = rng.uniform(0.1, 0.25) * height, rng.uniform(0.1, 0.25) * width
        pixels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] += 90
        images.append(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))
    return images


def save_models(directory, name, roi):
    """A segmenter and a classifier as train_segformer.py / train_vit.py save them, built from configs."""
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        AutoModelForSemanticSegmentation,
        SegformerImageProcessor,
        ViTImageProcessor,
    )

    segmenter_config, classifier_config = (TINY_SEGFORMER, TINY_VIT) if name == "tiny" else (SEGFORMER_B0, VIT_B16)
    segmenter_size = 64 if name == "tiny" else 512
    id2label = {0: "background", 1: "lymph_node"}
    config = AutoConfig.for_model("segformer", num_labels=2, id2label=id2label, **segmenter_config)
    AutoModelForSemanticSegmentation.from_config(config).save_pretrained(directory / "segmenter")
    processor = SegformerImageProcessor(size={"height": segmenter_size, "width": segmenter_size}, do_reduce_labels=False)
    processor.save_pretrained(directory / "segmenter")
    config = AutoConfig.for_model(
        "vit", num_labels=2, id2label={0: "benign", 1: "malignant"}, label2id={"benign": 0, "malignant": 1}, **classifier_config
    )
    config.update({"roi_mode": roi, "roi_margin": 0.1, "youden_threshold": 0.5, "positive_label": "malignant"})
    AutoModelForImageClassification.from_config(config).save_pretrained(directory / "classifier")
    size = classifier_config["image_size"]
    processor = ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor.save_pretrained(directory / "classifier")
    return directory / "segmenter", directory / "classifier", segmenter_size, size


def best_rate(function, n_images, repeats):
    function()  # warm-up (kernels, allocator, thread pools)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return n_images / min(times)


def main():
    args = parse_args()
    torch.manual_seed(0)  # the random weights decide how many nodes are "found", hence how often the crop path runs
    inference.logger.disabled = True  # one warning per empty mask would be timed too
    images = make_images(args.n_images)
    with tempfile.TemporaryDirectory() as directory:
        directory = Path(directory)
        segmenter_path, classifier_path, segmenter_size, classifier_size = save_models(directory, args.model, args.roi)
        segmenter, segmenter_processor = inference.load_segmenter(str(segmenter_path), args.device)
        classifier, classifier_processor = inference.load_classifier(str(classifier_path), args.device)
        settings = inference.classifier_settings(classifier.config)
        masks = inference.predict_masks(segmenter, segmenter_processor, images, args.batch_size)
        views = [inference.roi_from_predicted_mask(image, mask, args.roi, 0.1)[0] for image, mask in zip(images, masks)]

        def pipeline():
            predicted = inference.predict_masks(segmenter, segmenter_processor, images, args.batch_size)
            crops = [
                inference.roi_from_predicted_mask(image, mask, settings["roi_mode"], settings["roi_margin"])[0]
                for image, mask in zip(images, predicted)
            ]
            return inference.predict_probabilities(
                classifier, classifier_processor, crops, settings["positive_index"], args.batch_size
            )

        folder = directory / "images"
        folder.mkdir()
        for index, image in enumerate(images):
            image.save(folder / f"{index:05d}.png")
        argv = ["--input", str(folder), "--classifier", str(classifier_path), "--segmenter", str(segmenter_path),
                "--output_dir", str(directory / "out"), "--device", args.device, "--batch_size", str(args.batch_size)]
        results = {
            "segmenter_only": best_rate(
                lambda: inference.predict_masks(segmenter, segmenter_processor, images, args.batch_size), len(images), args.repeats
            ),
            "classifier_only": best_rate(
                lambda: inference.predict_probabilities(classifier, classifier_processor, views, 1, args.batch_size), len(images), args.repeats
            ),
            "pipeline": best_rate(pipeline, len(images), args.repeats),
            "end_to_end": best_rate(
                lambda: run_script(PROJECT_ROOT / "predict.py", argv, directory / "predict.log"), len(images), args.repeats
            ),
        }
    if args.device.startswith("cuda"):
        device = torch.cuda.get_device_name(0)
    else:
        device = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads"
    mean_pixels = np.mean([i.width * i.height for i in images])
    record = {
        "device": device,
        "model": args.model,
        "segmenter_input": f"{segmenter_size}x{segmenter_size}",
        "classifier_input": f"{classifier_size}x{classifier_size}",
        "roi": args.roi,
        "n_images": len(images),
        "mean_image_pixels": int(mean_pixels),
        "batch_size": args.batch_size,
        "nodes_found": int(sum(m.any() for m in masks)),
        "images_per_second": {name: round(rate, 1) for name, rate in results.items()},
        "torch": torch.__version__,
    }
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
