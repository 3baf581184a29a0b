"""What does train_vit.py's saliency (with its two randomised controls) cost beside the rest of the run?

Runs the README's tiny demo (`train_vit.py`, tiny ViT at 64 px, --roi crop, 5 epochs, CPU) as a subprocess on a
synthetic export written once beforehand, and splits its time into saliency (the `Saliency: ... in X s (CPU Y s)`
line train_vit.py logs) and the rest (start-up, data, training, evaluation, card). Each --variants entry is one
run with those extra train_vit.py arguments; the default compares the default saliency (a stratified sample of at
most 24 cases per set, 4 x 4 occlusion windows) with every case (--saliency_max_cases 0) and with the pre-2026-12
density (every case, 1/8 windows at half-window stride, 226 passes per map), controls included in each.

Other processes sharing the CPU move wall times: CPU seconds (of the train_vit.py process) are printed beside them,
with the load average.

    python benchmarks/bench_saliency.py
    python benchmarks/bench_saliency.py --variants "" --repeats 3
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from lymphus_ml.data import write_synthetic_export  # noqa: E402


DEMO = ["--dataset_config", "center1", "--external_config", "center2", "--roi", "crop", "--num_train_epochs", "5",
        "--learning_rate", "1e-3", "--use_cpu"]
DEFAULT_VARIANTS = ["", "--saliency_max_cases 0", "--saliency_max_cases 0 --saliency_window 0.125 --saliency_stride 0.0625"]
SALIENCY_LINE = re.compile(r"Saliency: (\d+) cases x 3 models in ([\d.]+) s \(CPU ([\d.]+) s\)")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS,
                        help="extra train_vit.py arguments per run ('' = the defaults)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args()


def one_run(export, extra, folder):
    from lymphus_ml.demo_configs import TINY_VIT_CONFIG, config_json

    command = [sys.executable, str(ROOT / "train_vit.py"), "--dataset_name", export, *DEMO,
               "--model_config_json", config_json(TINY_VIT_CONFIG), "--output_dir", str(folder), *extra.split()]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise SystemExit(f"error: train_vit.py failed ({extra!r}):\n{completed.stderr[-2000:]}")
    match = SALIENCY_LINE.search(completed.stderr + completed.stdout)
    if match is None:
        raise SystemExit(f"error: no saliency timing line in the train_vit.py log ({extra!r})")
    cases, saliency_wall, saliency_cpu = int(match[1]), float(match[2]), float(match[3])
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"variant": extra or "(default)", "cases": cases, "saliency_wall_s": saliency_wall,
            "rest_wall_s": wall - saliency_wall, "saliency_cpu_s": saliency_cpu, "rest_cpu_s": cpu - saliency_cpu,
            "saliency_over_rest_wall": saliency_wall / (wall - saliency_wall),
            "saliency_over_rest_cpu": saliency_cpu / (cpu - saliency_cpu), "load_average": os.getloadavg()[0]}


def main():
    args = parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        export = write_synthetic_export(Path(folder) / "synthetic")
        for repeat in range(args.repeats):
            for index, extra in enumerate(args.variants):
                result = one_run(export, extra, Path(folder) / f"run-{repeat}-{index}")
                results.append(result)
                print(f"{result['variant']}: {result['cases']} cases x 3 models; saliency {result['saliency_wall_s']:.1f} s "
                      f"wall / {result['saliency_cpu_s']:.1f} s CPU; rest of the run {result['rest_wall_s']:.1f} s wall / "
                      f"{result['rest_cpu_s']:.1f} s CPU; saliency / rest = {result['saliency_over_rest_wall']:.2f} wall, "
                      f"{result['saliency_over_rest_cpu']:.2f} CPU (load average {result['load_average']:.1f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
