"""What the lymphus scripts share: the release's facts and the reading of its archives, the export folder, images and
ROI, data loading, training, evaluation, plots, cards, Hub, inference.

Library code only: nothing here imports a script (`train_vit.py`, `train_segformer.py`, `predict.py`,
`benchmark_lymphus.py`, `sweep.py`, `app.py`); the scripts import these modules and `lymphus.py`.
"""
