"""Is the data pipeline of train_vit.py ever the bottleneck? Images/s of the full training step vs the model alone.

In one process on one device:
  full step   = DataLoader over the training split as train_vit.py feeds it (`PreparedCases`: each image decoded,
                ROI cut and resized once, kept in memory; each batch augmented, normalised and collated in
                `__getitems__`, pinned copy to the device) + forward/backward/AdamW step;
  model alone = the same forward/backward/AdamW step on a batch already on the device.
ratio = full / model alone (medians); >= 0.9 means the pipeline keeps the model fed. It also prints the data pipeline alone
(DataLoader iterated without the model) and the one-off preparation (decode + ROI + resize of the whole split).
Other processes sharing the CPU move these numbers: the rates are medians over --repeats rounds that alternate
full step and model alone, and the load average is printed with them.

    python benchmarks/bench_train_vit.py                        # CPU: tiny ViT (64 px), fp32
    python benchmarks/bench_train_vit.py --num_workers 4        # GPU: ViT-B/16 (224 px), bf16 autocast

Without --dataset_name it writes synthetic archives at the official image sizes (lymphus.py synth) and
exports them to a temporary folder first (about 15 s), so it runs offline.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lymphus_ml import images  # noqa: E402
from lymphus_ml.demo_configs import TINY_VIT_CONFIG  # noqa: E402


# The README's tiny ViT, and the ViT-B/16 architecture (random weights: speed does not depend on them).
TINY_VIT = TINY_VIT_CONFIG
VIT_B16 = {"model_type": "vit", "image_size": 224, "patch_size": 16}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_name", help="LymphUs export or Hub id (default: synthetic, at official sizes)")
    parser.add_argument("--dataset_config", default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=["tiny", "vit-base"], help="default: vit-base on GPU, tiny on CPU")
    parser.add_argument("--roi", default="crop", choices=images.ROI_MODES)
    parser.add_argument("--batch_size", type=int, help="default: 128 on GPU, 32 on CPU")
    parser.add_argument("--num_workers", type=int, help="DataLoader workers (default: 4 on GPU, 0 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per round (default: 100 on GPU, 20 on CPU)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the rates are their medians")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    args.model = args.model or ("vit-base" if gpu else "tiny")
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.num_workers = args.num_workers if args.num_workers is not None else (4 if gpu else 0)
    args.steps = args.steps or (100 if gpu else 20)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    return args


def synthetic_export(directory):
    import lymphus

    lymphus.write_synthetic_archives(Path(directory) / "archives")
    archives, export = Path(directory) / "archives", Path(directory) / "export"
    return lymphus.export_dataset(archives, export, verification_mode="basic_checks")


def build_model(name, device):
    from transformers import AutoConfig, AutoModelForImageClassification

    config_dict = dict(TINY_VIT if name == "tiny" else VIT_B16)
    config = AutoConfig.for_model(config_dict.pop("model_type"), num_labels=2, **config_dict)
    model = AutoModelForImageClassification.from_config(config).to(device)
    return model, config.image_size


def timed_steps(step, batches, steps, warmup, device):
    """Images/s over `steps` calls of step(batch) after `warmup` untimed ones; batches is an iterator."""
    for _ in range(warmup):
        step(next(batches))
    synchronize(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        images += step(next(batches))
    synchronize(device)
    return images / (time.perf_counter() - start)


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def endless(loader):
    while True:
        yield from loader


def measure(args, train):
    """(rates {full, model_only, data_only}: lists over the rounds, preparation seconds, input size)."""
    model, image_size = build_model(args.model, args.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.device.startswith("cuda"))
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step(batch):
        pixel_values = batch["pixel_values"].to(args.device, non_blocking=True)
        labels = batch["labels"].to(args.device, non_blocking=True)
        with autocast:
            loss = model(pixel_values=pixel_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return pixel_values.shape[0]

    # The train_vit.py training view, in a DataLoader set up as the Trainer's (pinned memory, prefetch 2)
    start = time.perf_counter()
    view = images.PreparedCases(train, (image_size, image_size), [0.5] * 3, [0.5] * 3, roi=args.roi, train=True)
    preparation = time.perf_counter() - start
    loader = torch.utils.data.DataLoader(
        view,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=images.collate_fn,
        num_workers=args.num_workers,
        pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.num_workers > 0,
    )
    batches = endless(loader)
    ready = {
        "pixel_values": torch.randn(args.batch_size, 3, image_size, image_size, device=args.device),
        "labels": torch.randint(0, 2, (args.batch_size,), device=args.device),
    }
    # Batches prefetched while the workers start would flatter the first timed steps: warm up past them.
    warmup = max(args.warmup, 2 * 2 * args.num_workers)
    rates = {"full": [], "model_only": [], "data_only": []}
    for _ in range(args.repeats):
        rates["full"].append(timed_steps(step, batches, args.steps, warmup, args.device))
        rates["model_only"].append(timed_steps(step, endless([ready]), args.steps, args.warmup, args.device))
        count = lambda batch: batch["pixel_values"].shape[0]  # noqa: E731
        rates["data_only"].append(timed_steps(count, batches, args.steps, warmup, "cpu"))
    return rates, preparation, image_size, len(view)


def main():
    args = parse_args()
    from datasets import load_dataset

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        dataset_name = args.dataset_name or synthetic_export(scratch)
        train = load_dataset(str(dataset_name), args.dataset_config, split="train")
        load_before = os.getloadavg()[0]
        rates, preparation, image_size, cases = measure(args, train)
        load_after = os.getloadavg()[0]

    full, model_only, data_only = (statistics.median(rates[key]) for key in ("full", "model_only", "data_only"))
    gpu = args.device.startswith("cuda")
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    results = {
        "device": device,
        "model": args.model,
        "input": f"{image_size}x{image_size}",
        "dtype": args.dtype,
        "roi": args.roi,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "repeats": args.repeats,
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "preparation_s": round(preparation, 3),
        "prepared_cases": cases,
        "full_step_images_per_s": round(full, 1),
        "model_only_images_per_s": round(model_only, 1),
        "data_only_images_per_s": round(data_only, 1),
        "ratio": round(full / model_only, 3),
        "rounds": {key: [round(rate, 1) for rate in values] for key, values in rates.items()},
        "round_ratios": [round(a / b, 3) for a, b in zip(rates["full"], rates["model_only"])],
    }
    print(
        f"{device} | {args.model} {image_size}px {args.dtype} | roi {args.roi} | batch {args.batch_size} "
        f"| workers {args.num_workers} | load average {load_before:.2f} -> {load_after:.2f}\n"
        f"preparation (once per run):        {preparation:8.2f} s for {cases} cases\n"
        f"full training step (data + model): {full:8.1f} images/s   rounds {results['rounds']['full']}\n"
        f"model alone (ready tensors):       {model_only:8.1f} images/s   rounds {results['rounds']['model_only']}\n"
        f"data pipeline alone:               {data_only:8.1f} images/s   rounds {results['rounds']['data_only']}\n"
        f"ratio: {full / model_only:.3f} "
        f"({'data pipeline keeps up' if full / model_only >= 0.9 else 'data pipeline is the bottleneck'}); "
        f"per round (full and model alone back to back): {results['round_ratios']}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
