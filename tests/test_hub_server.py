"""The local Hub (tests/hub_server.py) driven by the real huggingface_hub, datasets and transformers clients."""

import os
import uuid

import pytest
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_whoami_accepts_the_fixture_token_and_rejects_others(local_hub):
    assert local_hub.token.startswith("hf_")
    assert os.environ["HF_ENDPOINT"] == local_hub.endpoint
    assert HfApi(token=local_hub.token).whoami()["name"] == "local-user"
    with pytest.raises(HfHubHTTPError) as error:
        HfApi(token="hf_not_the_right_token").whoami()
    assert error.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):  # writes need a valid token too
        HfApi(token="hf_not_the_right_token").create_repo(_unique("nope"))
    assert local_hub.find_requests("GET", r"^/api/whoami-v2$")[-1]["headers"]["authorization"] == (
        "Bearer hf_not_the_right_token"
    )


def test_upload_folder_lfs_and_download_round_trip(local_hub, tmp_path):
    api = HfApi(token=local_hub.token)
    repo_id = api.create_repo(_unique("model"), private=True).repo_id
    assert repo_id.startswith("local-user/")
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo(repo_id)
    assert error.value.response.status_code == 409

    contents = {
        "notes.txt": b"lymph node ultrasound\n",
        "weights.safetensors": os.urandom(300_000),  # LFS by .gitattributes pattern
        "data/blob.dat": os.urandom(10 * 1024 * 1024 + 123),  # LFS because > 10 MB
    }
    folder = tmp_path / "folder"
    for name, data in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="add files")

    assert set(api.list_repo_files(repo_id)) == {".gitattributes", *contents}
    lines = local_hub.find_requests("POST", rf"^/api/models/{repo_id}/commit/main$")[-1]["json"]
    lfs_paths = {line["value"]["path"] for line in lines if line["key"] == "lfsFile"}
    assert lfs_paths == {"weights.safetensors", "data/blob.dat"}
    assert {line["value"]["path"] for line in lines if line["key"] == "file"} == {"notes.txt"}
    assert len(local_hub.find_requests("PUT", r"^/_lfs/")) >= 2  # the LFS "basic" transfer was used, not xet
    assert not local_hub.find_requests(path_regex="xet")

    for name, data in contents.items():
        path = hf_hub_download(repo_id, name, token=local_hub.token, cache_dir=tmp_path / "cache")
        assert open(path, "rb").read() == data
    assert local_hub.read_file(repo_id, "notes.txt") == contents["notes.txt"]

    info = api.model_info(repo_id, files_metadata=True)
    assert info.private is True and info.sha == local_hub.commits(repo_id)[-1]["id"]
    assert {s.rfilename: s.lfs is not None for s in info.siblings}["weights.safetensors"] is True
    with pytest.raises(RepositoryNotFoundError):  # private: anonymous reads are refused
        HfApi().model_info(repo_id, token=False)

    fs = HfFileSystem(token=local_hub.token, skip_instance_cache=True)
    assert fs.info(f"{repo_id}/data/blob.dat")["size"] == len(contents["data/blob.dat"])
    with fs.open(f"{repo_id}/data/blob.dat", "rb", block_size=1024) as f:
        f.seek(5_000_000)
        assert f.read(10) == contents["data/blob.dat"][5_000_000:5_000_010]
    assert any("range" in r["headers"] for r in local_hub.find_requests("GET", r"/resolve/"))


README = """---
configs:
- config_name: first
  data_files:
  - split: train
    path: data/first/train-*.parquet
  - split: test
    path: data/first/test-*.parquet
- config_name: second
  data_files: data/second/*.parquet
---
# toy dataset
"""


def test_load_dataset_with_yaml_configs(local_hub, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = {
        "data/first/train-00000-of-00001.parquet": {"case_id": ["a", "b", "c"], "label": [0, 1, 0]},
        "data/first/test-00000-of-00001.parquet": {"case_id": ["d"], "label": [1]},
        "data/second/train-00000-of-00001.parquet": {"case_id": ["x", "y"], "label": [1, 1]},
    }
    folder = tmp_path / "dataset"
    for name, columns in tables.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), folder / name)
    (folder / "README.md").write_text(README)
    api = HfApi(token=local_hub.token)
    repo_id = api.create_repo(_unique("dataset"), repo_type="dataset").repo_id
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="dataset")

    first = datasets.load_dataset(repo_id, "first", cache_dir=str(tmp_path / "cache"))  # public: no token needed
    assert set(first) == {"train", "test"}
    assert first["train"].to_dict() == tables["data/first/train-00000-of-00001.parquet"]
    assert first["test"].to_dict() == tables["data/first/test-00000-of-00001.parquet"]
    second = datasets.load_dataset(repo_id, "second", cache_dir=str(tmp_path / "cache"))
    assert second["train"].to_dict() == tables["data/second/train-00000-of-00001.parquet"]
    assert local_hub.find_requests("GET", rf"^/api/datasets/{repo_id}/tree/")


def test_dataset_push_to_hub_round_trip(local_hub, tmp_path):
    import datasets

    features = datasets.Features(
        {"label": datasets.ClassLabel(names=["benign", "malignant"]), "x": datasets.Value("float32")}
    )
    dataset = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"label": [0, 1, 1], "x": [0.5, 1.5, 2.5]}, features=features),
            "test": datasets.Dataset.from_dict({"label": [1], "x": [3.5]}, features=features),
        }
    )
    repo_id = f"local-user/{_unique('pushed')}"
    dataset.push_to_hub(repo_id, config_name="center1", token=local_hub.token)
    loaded = datasets.load_dataset(repo_id, "center1", cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].features == features
    assert loaded["train"].to_dict() == dataset["train"].to_dict()
    assert loaded["test"].to_dict() == dataset["test"].to_dict()


def test_transformers_push_to_hub_then_pipeline(local_hub):
    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                       intermediate_size=37, id2label={0: "benign", 1: "malignant"},
                       label2id={"benign": 0, "malignant": 1})
    model = ViTForImageClassification(config)
    repo_id = f"local-user/{_unique('vit')}"
    model.push_to_hub(repo_id, token=local_hub.token)
    ViTImageProcessor(size={"height": 32, "width": 32}).push_to_hub(repo_id, token=local_hub.token)
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(HfApi().list_repo_files(repo_id))

    classifier = pipeline("image-classification", model=repo_id)
    predictions = classifier(Image.new("RGB", (48, 40), color=(120, 60, 30)), top_k=2)
    assert {p["label"] for p in predictions} == {"benign", "malignant"}
    loaded = classifier.model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in model.state_dict().items())


def test_run_uv_job_records_flavor_secrets_and_arguments(local_hub):
    api = HfApi(token=local_hub.token)
    # A URL: a local script file would be uploaded to a bucket through xet, which the local hub does not implement.
    script = "https://example.com/train_vit.py"
    job = api.run_uv_job(script, script_args=["--num_train_epochs", "1"], dependencies=["transformers"],
                         flavor="a10g-small", secrets={"HF_TOKEN": local_hub.token})

    request = local_hub.find_requests("POST", r"^/api/jobs/local-user$")[-1]
    spec = request["json"]
    assert request["headers"]["authorization"] == f"Bearer {local_hub.token}"
    assert spec["flavor"] == "a10g-small"
    assert spec["secrets"] == {"HF_TOKEN": local_hub.token}  # the client sends secret values in clear (over TLS)
    assert spec["command"] == ["uv", "run", "--with", "transformers", script, "--num_train_epochs", "1"]
    assert spec["dockerImage"].startswith("ghcr.io/astral-sh/uv")
    assert job.status.stage == "RUNNING" and job.flavor == "a10g-small" and job.owner.name == "local-user"
    assert api.inspect_job(job_id=job.id).id == job.id
