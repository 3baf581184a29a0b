"""sweep.py and lymphus_ml.runs, hardened (issue 16): one process tree that dies together, one sweep per folder,
each mean saying how many runs it rests on.

Process tests use real processes (a tiny sleeping script standing in for train_vit.py: no model, no imports);
a child counts as gone when /proc no longer shows it running (a zombie holds nothing and writes nothing).
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sweep  # noqa: E402
from lymphus_ml import leaderboard, runs  # noqa: E402


# Writes its pid to its last argument (a folder's `pid` file: train_vit.py's last argument is --output_dir's value).
SLEEPER = """
import os, sys, time
from pathlib import Path
target = Path(sys.argv[-1])
(target / "pid" if target.is_dir() else target).write_text(str(os.getpid()))
time.sleep(120)
"""


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture
def sleeper(tmp_path):
    path = tmp_path / "sleeper.py"
    path.write_text(SLEEPER)
    return path


def start_driver(tmp_path, body):
    """A Python process that imports lymphus_ml.runs (standard library only) and runs `body`."""
    driver = tmp_path / "driver.py"
    driver.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\n" + textwrap.dedent(body))
    return subprocess.Popen([sys.executable, str(driver)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# One process tree: the scripts started by runs.start_script die with the process that started them


def test_a_sigkilled_parent_takes_its_scripts_with_it_even_when_the_starting_thread_ended(sleeper, tmp_path):
    pid_file = tmp_path / "child.pid"
    driver = start_driver(tmp_path, f"""
        import threading, time
        from lymphus_ml.runs import start_script
        # Started from a thread that ends at once (as a web request's worker would): the child must outlive it.
        thread = threading.Thread(target=start_script, args=({str(sleeper)!r}, [{str(pid_file)!r}]))
        thread.start()
        thread.join()
        time.sleep(120)
    """)
    try:
        assert wait_for(pid_file.exists), driver.stderr.read() if driver.poll() is not None else "no child"
        child = int(pid_file.read_text())
        time.sleep(0.5)
        assert alive(child), "the child died with the thread that started it"
        driver.kill()
        driver.wait(timeout=30)
        assert wait_for(lambda: not alive(child), 20), f"train_vit.py stand-in {child} outlived its SIGKILLed parent"
    finally:
        driver.kill()
        driver.communicate()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_ends_the_scripts_says_so_and_exits_non_zero(sleeper, tmp_path, signum):
    pid_file = tmp_path / "child.pid"
    driver = start_driver(tmp_path, f"""
        from concurrent.futures import ThreadPoolExecutor
        from lymphus_ml.runs import run_script, stop_scripts_on_signals
        # As sweep.py does: the runs wait in pool threads, the main thread waits for the pool.
        with ThreadPoolExecutor(2) as pool, stop_scripts_on_signals("driver.py", "Run it again to resume."):
            future = pool.submit(run_script, {str(sleeper)!r}, [{str(pid_file)!r}], check=False)
            future.result()
    """)
    try:
        assert wait_for(pid_file.exists), driver.stderr.read() if driver.poll() is not None else "no child"
        child = int(pid_file.read_text())
        driver.send_signal(signum)
        _, stderr = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signum, stderr
    assert not alive(child)
    (message,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert message == (f"error: driver.py stopped by {signal.Signals(signum).name}; scripts it had started, now ended: "
                       f"sleeper.py (process {child}). Run it again to resume.")
    assert "Traceback" not in stderr


def test_a_stopped_sweep_ends_its_runs_and_records_them_as_stopped(sleeper, tmp_path, monkeypatch, capsys):
    """run_sweep in this process, the sleeping script standing in for train_vit.py: SIGTERM while two runs train."""
    monkeypatch.setattr(sweep, "TRAIN_VIT_SCRIPT", sleeper)
    monkeypatch.setattr(runs, "_STOPPING", False)  # a stopped process starts no more scripts: given back after
    output_dir = tmp_path / "sweep"
    sweep_args, _, forwarded = sweep.parse_sweep_arguments(
        ["--models", "a/b", "--seeds", "0,1,2", "--output_dir", str(output_dir), "--dataset_name", "u/d",
         "--max_parallel_runs", "2"]
    )
    planned = sweep.plan_runs(sweep_args.models, sweep_args.seeds)
    settings = sweep.prepare_output_dir(output_dir, sweep.sweep_settings(sweep_args, forwarded))

    def started():
        return [int(path.read_text()) for item in planned if (path := item.folder(output_dir) / "pid").is_file()]

    def stop_when_two_run():
        if wait_for(lambda: len(started()) == 2):
            os.kill(os.getpid(), signal.SIGTERM)  # run_sweep handles it (stop_scripts_on_signals)

    threading.Thread(target=stop_when_two_run, daemon=True).start()
    with pytest.raises(SystemExit) as stopped:
        sweep.run_sweep(planned, sweep_args, forwarded, output_dir, settings)
    assert stopped.value.code == 128 + signal.SIGTERM
    children = started()
    assert len(children) == 2 and not any(alive(pid) for pid in children)
    message = capsys.readouterr().err
    assert "error: sweep.py stopped by SIGTERM" in message and "Run the same command to resume" in message
    for item in planned[:2]:
        marker = json.loads((item.folder(output_dir) / sweep.RUN_MARKER).read_text())
        assert marker["status"] == "failed" and marker["returncode"] == -signal.SIGTERM
        assert marker["error"] == "train_vit.py was ended by SIGTERM (the sweep stopping, or from outside)"
    assert not planned[2].folder(output_dir).exists()  # the third run never started
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers given back


def test_a_run_ended_by_a_signal_is_recorded_as_such(sleeper, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "TRAIN_VIT_SCRIPT", sleeper)
    sweep_run = sweep.SweepRun("a/b", "b", 0, "--model_name_or_path", "a/b")
    folder = tmp_path / "run"

    def kill_child():
        pid_file = folder / "pid"
        if wait_for(pid_file.exists):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)

    threading.Thread(target=kill_child, daemon=True).start()
    record = sweep.run_train_vit(sweep_run, [str(folder)], folder, dict(os.environ))
    assert record["status"] == "failed" and record["returncode"] == -signal.SIGTERM
    assert record["error"] == "train_vit.py was ended by SIGTERM (the sweep stopping, or from outside)"
    assert json.loads((folder / sweep.RUN_MARKER).read_text())["error"] == record["error"]


# One sweep per output folder


def test_a_second_sweep_into_a_busy_folder_fails_at_once_and_changes_nothing(tmp_path):
    output_dir = tmp_path / "busy"
    output_dir.mkdir()
    (output_dir / "sweep.json").write_text('{"dataset_name": "first"}\n')
    before = {path.name: path.read_bytes() for path in output_dir.iterdir()}
    with runs.folder_lock(output_dir, sweep.LOCK_FILE, "sweep.py"):
        for arguments in (["--models", "a/b", "--seeds", "0", "--dataset_name", "u/other"], ["--collect"]):
            start = time.monotonic()
            with pytest.raises(ValueError, match=rf"another sweep.py is using {output_dir} \(process {os.getpid()};"):
                sweep.main([*arguments, "--output_dir", str(output_dir)])
            assert time.monotonic() - start < 5
        after = {path.name: path.read_bytes() for path in output_dir.iterdir() if path.name != sweep.LOCK_FILE}
        assert after == before
    # Released: the folder is usable again, and its lock file does not make it look foreign.
    with runs.folder_lock(output_dir, sweep.LOCK_FILE, "sweep.py"):
        pass
    assert sweep.prepare_output_dir(output_dir, {"dataset_name": "first"}, compare=False)["dataset_name"] == "first"


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path):
    output_dir = tmp_path / "held"
    driver = start_driver(tmp_path, f"""
        import time
        from lymphus_ml.runs import folder_lock
        with folder_lock({str(output_dir)!r}, ".sweep.lock", "sweep.py"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    try:
        assert driver.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=f"process {driver.pid};"):
            with runs.folder_lock(output_dir, sweep.LOCK_FILE, "sweep.py"):
                pass
        driver.kill()
        driver.wait(timeout=30)
        with runs.folder_lock(output_dir, sweep.LOCK_FILE, "sweep.py"):
            pass
    finally:
        driver.kill()
        driver.communicate()


# Each mean says how many runs it rests on


def test_a_mean_over_fewer_runs_than_finished_says_so():
    values = {0: 0.71, 1: None, 2: 0.83}  # seed 1 finished without an external AUC (e.g. an older card)
    rows = [{"model": "m", "model_slug": "m", "seed": seed, "status": "finished", "external_auc": value,
             "validation_auc": 0.6 + seed / 10} for seed, value in values.items()]
    rows.append({"model": "m", "model_slug": "m", "seed": 3, "status": "failed"})
    summary = leaderboard.seed_summary(rows)
    (line,) = [line for line in leaderboard.summary_table(summary) if line.startswith("| `m` |")]
    cells = line.strip("| ").split(" | ")
    position = {metric: index for index, metric in enumerate(leaderboard.SUMMARY_METRICS, start=2)}
    assert cells[1] == "3/4"
    expected = [0.71, 0.83]
    assert cells[position["external_auc"]] == (
        f"{statistics.mean(expected):.3f} ± {statistics.stdev(expected):.3f} (n=2 of 3)"
    )
    validation = [0.6, 0.7, 0.8]  # every finished run has it: no note
    assert cells[position["validation_auc"]] == f"{statistics.mean(validation):.3f} ± {statistics.stdev(validation):.3f}"
    assert cells[position["test_auc"]] == "–"
    assert "(n=k of N)" in (REPO / "sweep_leaderboard.md").read_text()
