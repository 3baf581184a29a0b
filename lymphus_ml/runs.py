"""Child runs of the training scripts, and what a `train_vit.py` run folder holds.

The scripts never import each other: sweep.py, benchmark_lymphus.py and the app's offline demo start
`train_vit.py` (or `train_segformer.py`) as a process (`start_script` / `run_script`), with its output in a log,
and read the run folder back (`read_run_predictions`, `read_run_metrics`); train_vit.py writes its predictions.csv
with `write_run_predictions`.

One process tree that dies together: every script started here gets SIGTERM from the kernel when the process that
started it dies, even by SIGKILL (Linux `PR_SET_PDEATHSIG`), so no trainer goes on writing a run folder with parent
PID 1; inside `stop_scripts_on_signals()`, SIGINT and SIGTERM end the scripts started here, say so and exit
non-zero. The forked workers of `lymphus.py export` die with it the same way (`export_worker_init`).
`folder_lock` keeps a second process out of a folder one is writing.
"""

import contextlib
import csv
import functools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO


PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAIN_VIT_SCRIPT = PROJECT_ROOT / "train_vit.py"
# The evaluation splits of a train_vit.py run: metrics_<split>.json and the `split` column of predictions.csv.
RUN_SPLITS = ("validation", "test", "external")
# A --cv_folds run has metrics_oof.json (its out-of-fold development results) in place of metrics_validation.json.
CV_DEVELOPMENT_SPLIT = "oof"
PREDICTION_COLUMNS = ("case_id", "split", "label", "probability", "prediction_at_youden")
LOG_TAIL_LINES = 25
PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL for a script that has not ended by then


@functools.cache
def _prctl():
    """libc's prctl, resolved once in the parent: a child between fork and exec should only call it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig=signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent exits (prctl PR_SET_PDEATHSIG); False where unavailable.

    "Parent" is the thread that forked this process: `start_script` forks from one thread that lives as long as the
    process does. lymphus.py's export workers call it with SIGKILL; `start_script`'s children get SIGTERM.
    """
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _child_dies_with(parent_pid):
    """preexec_fn of every script started here: SIGTERM when this process dies, or exit now if it already has."""
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def export_worker_init(parent_pid):
    """Tie a worker of `lymphus.py export` (forked, one per centre) to the export: Ctrl-C and SIGTERM are the export's
    to handle (it stops the workers), and the kernel kills the worker when the export dies, even by SIGKILL, instead
    of leaving a ~250 MB orphan running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # blocked by the export while it forked this worker
    own_progress_bar_lock()
    if not die_with_parent(signal.SIGKILL):
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    if os.getppid() != parent_pid:  # the export died before the line above took effect
        os._exit(1)


def own_progress_bar_lock():
    """Give this worker a tqdm lock of its own. tqdm's default one is a multiprocessing lock, shared with the export
    across fork: a worker killed while drawing a progress bar (the export kills the other worker on an error) would
    leave it held, and the next progress bar of the export's process would wait for it forever."""
    from tqdm import tqdm

    classes = [tqdm]
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        if cls is tqdm or "_lock" in vars(cls):
            cls.set_lock(threading.RLock())


def _exit_when_orphaned(parent_pid):
    import time

    while os.getppid() == parent_pid:
        time.sleep(1)
    os._exit(1)


@functools.cache
def _spawner() -> ThreadPoolExecutor:
    """The one thread that forks the scripts: PR_SET_PDEATHSIG fires when the forking *thread* ends, so a child
    started from a short-lived thread (a web request's worker, a pool thread) would otherwise be killed with it."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lymphus-script-spawner")


_LIVE_LOCK = threading.Lock()
_LIVE: list["ScriptRun"] = []
_STOPPING = False  # set by stop_scripts_on_signals: this process is ending and starts no more scripts


@dataclass
class ScriptRun:
    """A started script: its process and its log (None: the output goes to this process's)."""

    script: Path
    process: subprocess.Popen
    log_path: Path | None = None
    log: IO | None = None

    def wait(self) -> int:
        """The exit status, once the script has ended (its log closed); negative: ended by that signal."""
        status = self.process.wait()
        if self.log is not None:
            self.log.close()
        with _LIVE_LOCK:
            _LIVE[:] = [started for started in _LIVE if started is not self]
        return status

    def stop(self, grace=STOP_GRACE_SECONDS) -> None:
        """SIGTERM, then SIGKILL if it has not ended after `grace` seconds (whoever waits for it gets the status)."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def failure(self, status: int, what: str | None = None, lines: int = LOG_TAIL_LINES) -> str:
        """`<what> failed (exit status N)`, with the end of its log (or a pointer to the output above)."""
        what = what or Path(self.script).name
        if self.log_path is None:
            return f"{what} failed (exit status {status}); its output is above."
        return f"{what} failed (exit status {status}); end of {self.log_path}:\n{log_tail(self.log_path, lines)}"


def _popen(command, **kwargs) -> subprocess.Popen:
    """subprocess.Popen from the spawner thread, the child tied to this process (SIGTERM when it dies)."""
    _prctl()  # resolved here, not in the forked child
    preexec = functools.partial(_child_dies_with, os.getpid())
    # preexec_fn and threads: the child only calls the prctl resolved above and os.getppid before exec.
    return _spawner().submit(
        lambda: subprocess.Popen(command, preexec_fn=preexec, **kwargs)  # noqa: PLW1509
    ).result()


def start_script(script, arguments, log_path=None, env=None, cwd=None) -> ScriptRun:
    """`python script arguments...` as its own process, its output (stdout and stderr) in `log_path` if given.

    The script dies with this process (SIGTERM, even when this one is SIGKILLed), and `stop_scripts` ends it.
    """
    refuse_when_stopping(script)
    log = open(log_path, "w") if log_path is not None else None
    command = [sys.executable, str(script), *[str(argument) for argument in arguments]]
    stdout = {"stdout": log, "stderr": subprocess.STDOUT} if log is not None else {}
    try:
        process = _popen(command, env=env, cwd=cwd, **stdout)
    except BaseException:
        if log is not None:
            log.close()
        raise
    started = ScriptRun(Path(script), process, Path(log_path) if log_path is not None else None, log)
    with _LIVE_LOCK:
        stopping = _STOPPING
        if not stopping:
            _LIVE.append(started)
    if stopping:  # started while the stop collected the others: it goes too
        started.stop()
        started.wait()
        refuse_when_stopping(script)
    return started


def refuse_when_stopping(script):
    if _STOPPING:
        raise RuntimeError(f"{Path(script).name} not started: this process is stopping (SIGINT or SIGTERM).")


def run_script(script, arguments, log_path=None, env=None, cwd=None, check=True, what=None) -> int:
    """Run a script to its end (see `start_script`); returns its exit status, or with `check` raises ValueError
    naming `what` (default: the script) and the end of its log when it fails."""
    started = start_script(script, arguments, log_path, env, cwd)
    status = started.wait()
    if check and status != 0:
        raise ValueError(started.failure(status, what))
    return status


def live_scripts() -> list[ScriptRun]:
    """The scripts started here that nobody has waited for yet, oldest first."""
    with _LIVE_LOCK:
        return [started for started in _LIVE if started.process.poll() is None]


def stop_scripts(grace=STOP_GRACE_SECONDS, for_good=False) -> list[ScriptRun]:
    """End every live script started here (SIGTERM to all at once, SIGKILL after `grace` seconds); returns them.

    `for_good`: this process is ending, so `start_script` refuses from now on (a thread about to start a script
    would otherwise start it after the others were stopped)."""
    global _STOPPING
    with _LIVE_LOCK:
        _STOPPING = _STOPPING or for_good
    running = live_scripts()
    for started in running:
        started.process.terminate()
    for started in running:
        started.stop(grace)
    return running


class ScriptsStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM inside `stop_scripts_on_signals`: a KeyboardInterrupt, so the main thread unwinds."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_scripts_on_signals(what: str, hint: str = ""):
    """Within: SIGINT and SIGTERM (and Ctrl-C) end every script started here, print one line naming them, and exit
    with 128 + the signal's number (130, 143). `what` names the caller (e.g. "sweep.py"); `hint` ends the line.

    Main thread only (Python runs signal handlers there). The scripts are stopped when the signal's exception
    leaves the block, so put thread pools that wait for them *outside* it: `with pool, stop_scripts_on_signals(...)`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop at a time: a second signal would cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise ScriptsStopped(signum)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopped = stop_scripts(for_good=True)
        names = ", ".join(f"{started.script.name} (process {started.process.pid})" for started in stopped) or "none"
        print(f"error: {what} stopped by {signal.Signals(signum).name}; scripts it had started, now ended: {names}."
              + (f" {hint}" if hint else ""), file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def script_option_names(script) -> frozenset[str]:
    """Every option `script` accepts (`--name`, spelt as `hub.option_name` spells it), read from its `--help`.

    Asking the script itself keeps one truth (its argument dataclasses, the library's and transformers' included)
    without importing a script; one run per script and file version (~5-10 s: the script's imports).
    """
    path = Path(script).resolve()
    return _script_option_names(str(path), path.stat().st_mtime_ns)


@functools.cache
def _script_option_names(path, mtime_ns) -> frozenset[str]:
    # One option per line at two spaces (argparse's layout); a wide terminal keeps each on one line.
    environment = {**os.environ, "COLUMNS": "1000"}
    process = _popen([sys.executable, path, "--help"], env=environment, stdout=subprocess.PIPE,
                     stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate()
    if process.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-LOG_TAIL_LINES:])
        raise ValueError(f"{Path(path).name} --help failed (exit status {process.returncode}):\n{tail}")
    return help_option_names(output, Path(path).name)


def help_option_names(output: str, script_name: str) -> frozenset[str]:
    """The options an argparse `--help` text (printed at COLUMNS=1000) lists, spelt as `hub.option_name` spells them."""
    from lymphus_ml.hub import option_name

    names = set()
    for line in output.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if match:
            for invocation in match.group(1).split(", "):
                name = invocation.split(" ", 1)[0]
                if name.startswith("--"):
                    names.add(option_name(name))
    if not names:
        raise ValueError(f"{script_name} --help listed no options.")
    return frozenset(names)


@contextlib.contextmanager
def folder_lock(folder, lock_name: str, what: str):
    """Within: an exclusive flock on `folder/lock_name` (the folder is created), holding this process's id.

    The kernel releases it when the holder ends, even by SIGKILL; a second holder fails at once with one message
    naming `what`, the holder's process and the lock file. The file stays (empty of meaning once unlocked): deleting
    it would let a third process lock a new file while the second still holds the old one.
    """
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock_name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(
            f"another {what} is using {folder} (process {holder}; lock file {path}): wait for it to finish, "
            "or choose another folder."
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.ftruncate(fd, 0)
        os.close(fd)


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


def development_split(split: str, present) -> str:
    """The split whose metrics file a run has for `split`: "oof" in place of "validation" for a --cv_folds run (one
    whose files `present` include metrics_oof.json but not metrics_validation.json), else `split` itself."""
    if split == "validation" and "metrics_validation.json" not in present and f"metrics_{CV_DEVELOPMENT_SPLIT}.json" in present:
        return CV_DEVELOPMENT_SPLIT
    return split


def missing_run_files(folder) -> list[str]:
    """train_vit.py's result files (metrics_<split>.json of RUN_SPLITS, predictions.csv) a run folder lacks; a
    --cv_folds run's metrics_oof.json stands for metrics_validation.json."""
    folder = Path(folder)
    present = {path.name for path in folder.glob("*") if path.is_file()} if folder.is_dir() else set()
    names = [f"metrics_{development_split(split, present)}.json" for split in RUN_SPLITS] + ["predictions.csv"]
    missing = [name for name in names if name not in present]
    return [f"{name} (or metrics_oof.json of a --cv_folds run)" if name == "metrics_validation.json" else name
            for name in missing]


def read_run_metrics(folder) -> dict:
    """{split: metrics_<split>.json} of a train_vit.py run folder, for every split of RUN_SPLITS; a --cv_folds run
    gives "oof" (metrics_oof.json, its out-of-fold results) in place of "validation"."""
    folder, metrics = Path(folder), {}
    present = {path.name for path in folder.glob("metrics_*.json")} if folder.is_dir() else set()
    for split in RUN_SPLITS:
        split = development_split(split, present)
        path = folder / f"metrics_{split}.json"
        if not path.is_file():
            also = " (nor metrics_oof.json of a --cv_folds run)" if split == "validation" else ""
            raise FileNotFoundError(f"{path} is missing{also}.")
        try:
            metrics[split] = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
    return metrics
