"""Time `lymphus.py export` against datasets' ImageFolder on the same official-size synthetic data.

    python benchmarks/bench_export.py [--repeats 3]

(a) export: both centres from the two archives -> verified Parquet for every subset + the card
    (checksums, spreadsheet parsing and cross-checks, every image, mask and lesion decoded and checked).
(b) ImageFolder: `load_dataset("imagefolder")` on the same images and masks, already extracted, with
    a metadata.csv linking each image to its mask (`image_file_name`, `mask_file_name`, label, centre),
    then `to_parquet` of the result. Extraction is not timed; (b) verifies nothing.
Each is timed twice: in this process (the work alone), and as a whole process (`python lymphus.py export ...`
against `python -c` doing (b)), start-up and imports included, which is what a user waits for; and the CPU seconds
of those processes (workers included), which a busy machine changes least.
Target: ratio (a) / (b) <= 1.0. Prints the best and the median of `--repeats` interleaved runs of each.
"""

import argparse
import csv
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import datasets  # noqa: E402

import lymphus  # noqa: E402


def extract_for_imagefolder(archives, folder):
    """Unzip both archives and write the metadata file ImageFolder reads to link image and mask."""
    rows = []
    for centre in lymphus.CENTRES:
        with zipfile.ZipFile(archives / lymphus._ARCHIVES[centre]["file"]) as archive:
            archive.extractall(folder)
            for name in archive.namelist():
                if name.endswith(" Image.bmp"):
                    rows.append({
                        "image_file_name": name,
                        "mask_file_name": name.replace(" Image.bmp", " Mask.tif"),
                        "label": name.split("/")[1].lower(),
                        "centre": centre,
                    })
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def time_export(archives, work):
    start = time.perf_counter()
    lymphus.export_dataset(archives, work / f"export-{time.perf_counter_ns()}", verification_mode="basic_checks")
    return time.perf_counter() - start


def time_imagefolder(folder, work):
    start = time.perf_counter()
    dataset = datasets.load_dataset(
        "imagefolder", data_dir=str(folder), split="train", cache_dir=str(work / f"cache-{time.perf_counter_ns()}")
    )
    dataset.to_parquet(str(work / f"imagefolder-{time.perf_counter_ns()}.parquet"))
    return time.perf_counter() - start, len(dataset)


IMAGEFOLDER_PROCESS = """
import sys, datasets
datasets.disable_progress_bars()
dataset = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], split="train", cache_dir=sys.argv[2])
dataset.to_parquet(sys.argv[3])
"""


def time_process(command):
    """(wall seconds, CPU seconds: user + system of the process and its children, e.g. the export's workers)."""
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)


def time_export_process(archives, work):
    output_dir = work / f"export-{time.perf_counter_ns()}"
    options = ["--data_dir", str(archives), "--output_dir", str(output_dir), "--verification_mode", "basic_checks"]
    return time_process([sys.executable, str(Path(lymphus.__file__)), "export", *options])


def time_imagefolder_process(folder, work):
    stamp = time.perf_counter_ns()
    paths = [str(folder), str(work / f"cache-{stamp}"), str(work / f"imagefolder-{stamp}.parquet")]
    return time_process([sys.executable, "-c", IMAGEFOLDER_PROCESS, *paths])


def report(title, export_times, imagefolder_times):
    export_seconds, imagefolder_seconds = min(export_times), min(imagefolder_times)
    median_ratio = statistics.median(export_times) / statistics.median(imagefolder_times)
    print(title)
    print(f"  (a) lymphus export, all subsets:      {export_seconds:.2f} s   (runs: {runs(export_times)})")
    print(f"  (b) ImageFolder load + to_parquet:    {imagefolder_seconds:.2f} s   (runs: {runs(imagefolder_times)})")
    print(f"  ratio (a)/(b), best runs:   {export_seconds / imagefolder_seconds:.2f}  (target <= 1.0)")
    print(f"  ratio (a)/(b), median runs: {median_ratio:.2f}")


def runs(times):
    return ", ".join(f"{t:.2f}" for t in times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        archives = work / "archives"
        lymphus.write_synthetic_archives(archives)  # official counts, sizes and mask extents
        n_cases = extract_for_imagefolder(archives, work / "extracted")
        export_times, imagefolder_times, export_processes, imagefolder_processes = [], [], [], []
        for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
            export_times.append(time_export(archives, work))
            seconds, n_rows = time_imagefolder(work / "extracted", work)
            assert n_rows == n_cases, (n_rows, n_cases)
            imagefolder_times.append(seconds)
            export_processes.append(time_export_process(archives, work))
            imagefolder_processes.append(time_imagefolder_process(work / "extracted", work))
    print(f"cases: {n_cases} (official-size synthetic archives)")
    report("In this process (the work alone):", export_times, imagefolder_times)
    walls, cpus = ([[run[i] for run in runs] for runs in (export_processes, imagefolder_processes)] for i in (0, 1))
    report("Whole processes (start-up and imports included):", *walls)
    # What a busy machine changes least: the CPU time each whole process takes, its worker processes included.
    report("Whole processes, CPU seconds (user + system, workers included):", *cpus)


if __name__ == "__main__":
    main()
