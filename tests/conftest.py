# ============================================================================================================
# Local Hub (owner: hub helper). Keep this block first: the environment below must be set before anything
# imports huggingface_hub / datasets / transformers, which read these variables at import time.
# ============================================================================================================
import atexit
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest


_HUB_TMP = Path(tempfile.mkdtemp(prefix="lymphus-tests-hf-"))
atexit.register(shutil.rmtree, _HUB_TMP, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_HUB_PORT = _free_port()
os.environ.update(
    {
        "HF_ENDPOINT": f"http://127.0.0.1:{_HUB_PORT}",  # all client calls go to the local hub, never the internet
        "HF_HOME": str(_HUB_TMP / "hf_home"),  # hub cache, token file, xet cache: never ~/.cache
        "HF_DATASETS_CACHE": str(_HUB_TMP / "hf_home" / "datasets"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # hf_xet is installed and would be used for every upload: force plain LFS
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_EXPERIMENTAL_WARNING": "1",  # run_job / run_uv_job are flagged experimental
        "HF_UPDATE_DOWNLOAD_COUNTS": "0",  # datasets would otherwise HEAD an S3 url on each load_dataset
    }
)
for _name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
              "TRANSFORMERS_CACHE"):
    os.environ.pop(_name, None)  # tests pass token= explicitly (or monkeypatch HF_TOKEN)
for _module, _attribute in (("huggingface_hub.constants", "ENDPOINT"), ("datasets.config", "HF_ENDPOINT")):
    if _module in sys.modules and getattr(sys.modules[_module], _attribute) != os.environ["HF_ENDPOINT"]:
        raise RuntimeError(
            f"{_module} was imported before tests/conftest.py set HF_ENDPOINT: tests would reach the real Hub. "
            "Do not import huggingface_hub / datasets / transformers in a conftest loaded before this one."
        )

LOCAL_HUB_TOKEN = "hf_local_test_token_0123456789"


@pytest.fixture(scope="session")
def local_hub():
    """The local Hub-compatible server (tests/hub_server.py), started once per session on HF_ENDPOINT.

    Attributes: endpoint (URL), token (valid bearer token), user ("local-user"), root (storage dir),
    requests (every request: dict with method, path, query, headers, json, body_size, status).
    Helpers: find_requests(method, path_regex), commits(repo_id, repo_type), read_file(repo_id, path, ...).
    State is shared by the whole session: use a unique repo name per test.
    """
    sys.path.insert(0, str(Path(__file__).parent))
    from hub_server import LocalHub

    hub = LocalHub(_HUB_TMP / "hub", port=_HUB_PORT, token=LOCAL_HUB_TOKEN).start()
    yield hub
    hub.stop()


# ======================================== end of Local Hub block ============================================

# One torch thread per process, in this process and in every script the tests start (they inherit it), unless the
# environment says otherwise: the tiny models gain nothing from a second thread, and on a shared 2-core machine
# idle threads spin and cost CPU time (tests/test_predict.py: 31 CPU-s with 2 threads, 18 with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (a plugin): set it there too
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The shared session fixtures (synthetic exports, tiny trained models) live in tests/fixtures.py, loaded here after
# the environment above is set.
from fixtures import (  # noqa: E402, F401  (pytest registers the fixtures found in this module)
    bucket_recorder,
    crop_classifier,
    full_classifier,
    official_archives,
    official_export,
    run_cli,
    segmenter,
    small_export,
    train_vit_options_in_process,
)
