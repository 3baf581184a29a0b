"""The demos' tiny models, built from configs (no download), each small enough to train on 2 CPU cores in seconds.

One home for every offline demo: `train_vit.py` / `train_segformer.py --offline_demo` (and so the app's demo
models), sweep.py's two architectures, benchmark_lymphus.py's ViT per direction.
"""

import json


# train_vit.py --offline_demo, the app's demo classifier, sweep.py's `vit-tiny`.
TINY_VIT_CONFIG = {
    "model_type": "vit",
    "image_size": 64,
    "patch_size": 16,
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 128,
}
# benchmark_lymphus.py --offline_demo: one ViT per development centre, at 32 px.
MICRO_VIT_CONFIG = {
    "model_type": "vit",
    "image_size": 32,
    "patch_size": 8,
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
# sweep.py --offline_demo's second architecture, `convnext-tiny`.
TINY_CONVNEXT_CONFIG = {
    "model_type": "convnext", "image_size": 64, "hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1],
}
# train_segformer.py --offline_demo, the app's demo segmenter.
TINY_SEGFORMER_CONFIG = {
    "model_type": "segformer",
    "depths": [1, 1, 1, 1],
    "hidden_sizes": [8, 16, 32, 64],
    "num_attention_heads": [1, 1, 2, 2],
    "decoder_hidden_size": 32,
}


def config_json(config: dict) -> str:
    """A config as the compact JSON `--model_config_json` takes."""
    return json.dumps(config, separators=(",", ":"))
