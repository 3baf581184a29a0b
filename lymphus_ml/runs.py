"""Child runs of the training scripts, and what a `train_vit.py` run folder holds.

The scripts never import each other: sweep.py, benchmark_lymphus.py and the app's offline demo start
`train_vit.py` (or `train_segformer.py`) as a process (`start_script` / `run_script`), with its output in a log,
and read the run folder back (`read_run_predictions`, `read_run_metrics`); train_vit.py writes its predictions.csv
with `write_run_predictions`.
"""

import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO


PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAIN_VIT_SCRIPT = PROJECT_ROOT / "train_vit.py"
# The evaluation splits of a train_vit.py run: metrics_<split>.json and the `split` column of predictions.csv.
RUN_SPLITS = ("validation", "test", "external")
PREDICTION_COLUMNS = ("case_id", "split", "label", "probability", "prediction_at_youden")
LOG_TAIL_LINES = 25


@dataclass
class ScriptRun:
    """A started script: its process and its log (None: the output goes to this process's)."""

    script: Path
    process: subprocess.Popen
    log_path: Path | None = None
    log: IO | None = None

    def wait(self) -> int:
        """The exit status, once the script has ended (its log closed)."""
        status = self.process.wait()
        if self.log is not None:
            self.log.close()
        return status

    def failure(self, status: int, what: str | None = None, lines: int = LOG_TAIL_LINES) -> str:
        """`<what> failed (exit status N)`, with the end of its log (or a pointer to the output above)."""
        what = what or Path(self.script).name
        if self.log_path is None:
            return f"{what} failed (exit status {status}); its output is above."
        return f"{what} failed (exit status {status}); end of {self.log_path}:\n{log_tail(self.log_path, lines)}"


def start_script(script, arguments, log_path=None, env=None, cwd=None) -> ScriptRun:
    """`python script arguments...` as its own process, its output (stdout and stderr) in `log_path` if given."""
    log = open(log_path, "w") if log_path is not None else None
    command = [sys.executable, str(script), *[str(argument) for argument in arguments]]
    stdout = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
    process = subprocess.Popen(command, env=env, cwd=cwd, **stdout)
    return ScriptRun(Path(script), process, Path(log_path) if log_path is not None else None, log)


def run_script(script, arguments, log_path=None, env=None, cwd=None, check=True, what=None) -> int:
    """Run a script to its end (see `start_script`); returns its exit status, or with `check` raises ValueError
    naming `what` (default: the script) and the end of its log when it fails."""
    started = start_script(script, arguments, log_path, env, cwd)
    status = started.wait()
    if check and status != 0:
        raise ValueError(started.failure(status, what))
    return status


def log_tail(path, lines=LOG_TAIL_LINES) -> str:
    """The last `lines` non-blank lines of a log (progress bars' carriage returns as line ends); "" without a log."""
    if not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def write_run_predictions(path, rows) -> Path:
    """train_vit.py's predictions.csv; rows: dicts with case_id, split, label, probability, prediction_at_youden."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def read_run_predictions(path) -> dict:
    """{split: {case_id: (label, probability)}} from train_vit.py's predictions.csv (in its row order); each fault
    names its row."""
    path, predictions = Path(path), {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in PREDICTION_COLUMNS[:4] if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} has no column(s) {missing}; its header is {reader.fieldnames}. "
                "Is it train_vit.py's predictions.csv?"
            )
        for line, record in enumerate(reader, start=2):
            split, case_id = record["split"], record["case_id"]
            try:
                label, probability = int(record["label"]), float(record["probability"])
            except ValueError:
                raise ValueError(
                    f"{path}, line {line}: label {record['label']!r} / probability {record['probability']!r} "
                    "is not a number."
                ) from None
            if label not in (0, 1) or not 0.0 <= probability <= 1.0:
                raise ValueError(
                    f"{path}, line {line}: label {label} must be 0/1 and probability {probability} in [0, 1]."
                )
            if case_id in predictions.setdefault(split, {}):
                raise ValueError(f"{path}, line {line}: case {case_id!r} appears twice in split {split!r}.")
            predictions[split][case_id] = (label, probability)
    return predictions


def read_run_metrics(folder) -> dict:
    """{split: metrics_<split>.json} of a train_vit.py run folder, for every split of RUN_SPLITS."""
    folder, metrics = Path(folder), {}
    for split in RUN_SPLITS:
        path = folder / f"metrics_{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing.")
        try:
            metrics[split] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    return metrics
