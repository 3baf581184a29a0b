"""What each --finetuning scheme of train_vit.py costs: training images/s, peak memory and what is shared.

Per scheme (full, linear_probe, lora), in a fresh process each (the CPU peak resident set cannot be reset): the
model built from a config (random weights: speed does not depend on them), `lymphus_ml.finetuning.apply_finetuning`
as train_vit.py calls it, then forward/backward/AdamW steps on batches already on the device (the data pipeline
is bench_train_vit.py's business). Peak memory: CUDA, torch.cuda.max_memory_allocated over the timed steps; CPU,
the process's peak resident set (ru_maxrss: imports and the model included) and its increase over the timed and
warm-up steps (activations, gradients, optimizer state). Shared bytes: the saved weights (the
adapter for LoRA, the model otherwise).

    python benchmarks/bench_finetuning.py                     # CPU: tiny ViT (64 px), fp32
    python benchmarks/bench_finetuning.py --model vit-base    # GPU: ViT-B/16 (224 px), bf16 autocast
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lymphus_ml import finetuning  # noqa: E402
from lymphus_ml.demo_configs import TINY_VIT_CONFIG  # noqa: E402


CONFIGS = {"tiny": TINY_VIT_CONFIG, "vit-base": {"model_type": "vit", "image_size": 224, "patch_size": 16}}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", choices=list(CONFIGS), help="default: vit-base on GPU, tiny on CPU")
    parser.add_argument("--schemes", default=",".join(finetuning.FINETUNING_SCHEMES))
    parser.add_argument("--batch_size", type=int, help="default: 64 on GPU, 32 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps (default: 50 on GPU, 20 on CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the fastest is reported")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: run this scheme only
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.model = args.model or ("vit-base" if gpu else "tiny")
    args.batch_size = args.batch_size or (64 if gpu else 32)
    args.steps = args.steps or (50 if gpu else 20)
    return args


def build_model(name: str, scheme: str, folder):
    from transformers import AutoConfig, AutoModelForImageClassification

    config = dict(CONFIGS[name])
    model = AutoModelForImageClassification.from_config(AutoConfig.for_model(config.pop("model_type"), num_labels=2, **config))
    return finetuning.apply_finetuning(model, finetuning.FinetuningArguments(finetuning=scheme), base_dir=folder / "base")


def measure(args, scheme: str) -> dict:
    """Images/s of the training step and peak memory for one scheme, in this process."""
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as folder:
        model = build_model(args.model, scheme, Path(folder)).to(device).train()
        model.save_pretrained(Path(folder) / "shared")
        shared = sum(path.stat().st_size for path in (Path(folder) / "shared").glob("*.safetensors"))
    size = model.config.image_size
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # imports and model, before any step
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for _ in range(args.repeats):  # the best round: other processes on the machine only ever slow a round down
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(args.batch_size * args.steps / (time.perf_counter() - start))
    counts = finetuning.parameter_counts(model)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"scheme": scheme, "model": args.model, "device": args.device, "images_per_s": max(rates),
            "peak_memory_MiB": peak / 2**20, "trainable": counts["trainable"], "total": counts["total"],
            "shared_bytes": shared, "training_rss_increase_MiB": (peak - rss_before) / 2**20 if device.type == "cpu" else None}


def main(argv=None):
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args, args.one)))
        return None
    torch_threads = torch.get_num_threads()
    results = []
    for scheme in args.schemes.split(","):
        command = [sys.executable, __file__, "--one", scheme, "--device", args.device, "--model", args.model,
                   "--batch_size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{args.model} on {args.device} ({torch_threads} threads, load average {load}), batch {args.batch_size}, "
          f"best of {args.repeats} rounds of {args.steps} steps:")
    print("| scheme | trainable / all parameters | shared weights | train images/s | peak memory | of which training |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        extra = r["training_rss_increase_MiB"]
        print(f"| {r['scheme']} | {r['trainable']:,} / {r['total']:,} | {r['shared_bytes'] / 1024:,.0f} KiB | "
              f"{r['images_per_s']:.0f} | {r['peak_memory_MiB']:.0f} MiB | "
              f"{'n/a' if extra is None else f'{extra:.0f} MiB'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
