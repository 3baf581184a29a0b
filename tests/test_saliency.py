"""lymphus_ml/saliency.py: saliency maps for any image classifier, scored against the expert node mask.

The end-to-end tests train tiny ViTs on synthetic 64x64 images whose answer is known: in one set only a corner
marker carries the label (the node is drawn alike in both classes), in the other only the node's brightness does.
The first model must put its saliency off the node (below the node's area share, the chance level), the second
on it. References are independent: captum's `Occlusion` for the batched occlusion, the completeness axiom
(attributions sum to score(x) - score(baseline)) for integrated gradients, scipy for the intervals.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from PIL import Image
from scipy import stats
from transformers import AutoConfig, AutoModelForImageClassification


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lymphus_ml import evaluation, saliency, saliency_controls  # noqa: E402


SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this module: the same sums in the same order on any machine (reproducible training),
    and no oversubscription on a shared 2-core runner, where 2 threads made these tiny models ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_cases(count: int, cue: str, seed: int):
    """(images uint8 (N, 64, 64), node masks 0/1 (N, 64, 64), labels 0/1 alternating) on a noisy grey background.

    cue "marker": a white 8x8 square top-left for label 1, bottom-right for label 0; the node disc's brightness is
    drawn from the same range (40-160) for both labels. cue "node": no marker; the node is bright for 1, dark for 0.
    The disc (radius 10-14, centre 24-40) never reaches the marker corners. The background (mean 110) is darker
    than the occlusion baseline (127.5, the normalisation mean), as B-mode background is.
    """
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:SIZE, :SIZE]
    labels = np.arange(count) % 2
    images = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    masks = np.empty((count, SIZE, SIZE), dtype=np.uint8)
    for index, label in enumerate(labels):
        centre_row, centre_column = rng.uniform(24, 40, size=2)
        node = (rows - centre_row) ** 2 + (columns - centre_column) ** 2 <= rng.uniform(10, 14) ** 2
        image = rng.normal(110, 20, size=(SIZE, SIZE))
        if cue == "marker":
            image[node] = rng.normal(rng.uniform(40, 160), 20, size=node.sum())
            corner = slice(2, 10) if label == 1 else slice(54, 62)
            image[corner, corner] = 255
        else:
            image[node] = rng.normal(200 if label == 1 else 30, 20, size=node.sum())
        images[index] = np.clip(image, 0, 255)
        masks[index] = node
    return images, masks, labels


def pixel_values(images) -> torch.Tensor:
    """uint8 grayscale (N, H, W) -> (N, 3, H, W) normalised as ViTImageProcessor does (mean 0.5, std 0.5)."""
    scaled = torch.tensor(images, dtype=torch.float32)[:, None] / 255
    return ((scaled - 0.5) / 0.5).repeat(1, 3, 1, 1)


def tiny_model(model_type: str = "vit", seed: int = 0):
    torch.manual_seed(seed)
    options = {
        "vit": dict(image_size=SIZE, patch_size=16, num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                    intermediate_size=128),
        "resnet": dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
        "convnext": dict(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]),
    }[model_type]
    return AutoModelForImageClassification.from_config(AutoConfig.for_model(model_type, num_labels=2, **options))


def trained_vit(images, labels, epochs: int = 30):
    """A tiny ViT fitted with AdamW, fixed seeds for weights and batch order: ~2 s on one thread."""
    model = tiny_model("vit")
    inputs, targets = pixel_values(images), torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=order).split(32):
            loss = torch.nn.functional.cross_entropy(model(pixel_values=inputs[batch]).logits, targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model, images, labels) -> float:
    with torch.no_grad():
        return float((model(pixel_values=pixel_values(images)).logits.argmax(1).numpy() == labels).mean())


@pytest.fixture(scope="module", params=["marker", "node"])
def cue_model(request):
    """(cue, model, held-out images, masks, labels); the model must have learnt its cue on unseen images."""
    images, _, labels = synthetic_cases(128, request.param, seed=0)
    model = trained_vit(images, labels)
    test_images, test_masks, test_labels = synthetic_cases(48, request.param, seed=1)
    assert accuracy(model, images, labels) >= 0.95
    assert accuracy(model, test_images, test_labels) >= 0.95
    return request.param, model, test_images, test_masks, test_labels


def test_occlusion_finds_the_cue(cue_model):
    cue, model, images, masks, labels = cue_model
    maps = saliency.saliency_maps(model, pixel_values(images), labels)  # default: occlusion
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == np.float32
    summary = saliency.saliency_summary(maps, masks)
    chance = summary["node_area_fraction_mean"]
    assert 0.05 < chance < 0.2
    if cue == "marker":  # below chance: the saliency is on the corners, not on the node
        assert summary["energy_in_node_ci_high"] < chance
        assert summary["energy_minus_area_ci_high"] < 0
        assert summary["pointing_game_hit_rate"] < 0.2
        marker_corner = np.zeros((SIZE, SIZE), dtype=bool)
        marker_corner[:12, :12] = marker_corner[-12:, -12:] = True
        peaks = maps.reshape(len(maps), -1).argmax(axis=1)
        assert marker_corner.reshape(-1)[peaks].mean() >= 0.9
    else:  # well above chance
        assert summary["energy_in_node_ci_low"] > 1.5 * chance
        assert summary["energy_minus_area_ci_low"] > 0.05
        assert summary["pointing_game_hit_rate"] > 0.4


def test_integrated_gradients_finds_the_cue(cue_model):
    cue, model, images, masks, labels = cue_model
    # Localisation, not completeness (its own test below takes the adaptive path): a fixed 64-step Riemann sum.
    maps = saliency.saliency_maps(model, pixel_values(images), labels, method="integrated_gradients",
                                  integrated_gradients_steps=64, completeness_tolerance=None)
    summary = saliency.saliency_summary(maps, masks)
    if cue == "marker":
        assert summary["pointing_game_hit_rate"] < 0.2
        assert summary["energy_in_node_mean"] < 2 * summary["node_area_fraction_mean"]
    else:
        assert summary["pointing_game_hit_rate"] > 0.5
        assert summary["energy_in_node_ci_low"] > 1.5 * summary["node_area_fraction_mean"]


@pytest.mark.parametrize("model_type", ["vit", "resnet", "convnext"])
@pytest.mark.parametrize("window_fraction", [1 / 8, 0.2])  # 0.2: 13-px window, stride 6, last one cut at the border
def test_occlusion_matches_captum(model_type, window_fraction):
    model = tiny_model(model_type).eval()
    images, _, _ = synthetic_cases(3, "node", seed=2)
    inputs, targets = pixel_values(images), [0, 1, 1]
    ours = saliency.saliency_maps(model, inputs, targets, window_fraction=window_fraction, batch_size=100)
    (window, stride) = saliency.occlusion_window(SIZE, SIZE, window_fraction)
    reference = Occlusion(lambda x: saliency.target_log_odds(model(pixel_values=x).logits)).attribute(
        inputs, sliding_window_shapes=(3, *window), strides=(3, *stride), baselines=0.0, target=targets,
        perturbations_per_eval=50,
    )
    assert torch.equal(reference[:, 0], reference[:, 2])  # captum gives every channel the window's value
    np.testing.assert_allclose(ours, reference[:, 0].detach().numpy(), rtol=1e-4, atol=1e-5 * np.abs(ours).max())
    assert np.abs(ours).max() > 0


def test_target_log_odds_against_softmax():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    probabilities = torch.softmax(logits, dim=1)
    expected = torch.log(probabilities / (1 - probabilities))
    torch.testing.assert_close(saliency.target_log_odds(logits), expected)


def test_integrated_gradients_is_complete_and_restores_training_mode():
    """Completeness: the attributions of an image sum to score(image) - score(all-zero baseline)."""
    model = tiny_model("vit").train()
    images, _, _ = synthetic_cases(4, "node", seed=3)
    inputs = pixel_values(images)
    maps = saliency.saliency_maps(model, inputs, 1, method="integrated_gradients", integrated_gradients_steps=32)
    assert model.training
    with torch.no_grad():
        model.eval()
        expected = (saliency.target_log_odds(model(pixel_values=inputs).logits)
                    - saliency.target_log_odds(model(pixel_values=torch.zeros_like(inputs)).logits))[:, 1]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), expected.numpy(), rtol=0.02, atol=1e-3)
    per_image_targets = saliency.saliency_maps(model, inputs, [1, 1, 1, 1], method="integrated_gradients",
                                               integrated_gradients_steps=32)
    np.testing.assert_allclose(per_image_targets, maps, rtol=1e-5, atol=1e-7)


def test_unknown_method_and_bad_shape_are_refused():
    model = tiny_model("vit")
    with pytest.raises(ValueError, match="grad_cam"):
        saliency.saliency_maps(model, torch.zeros(1, 3, SIZE, SIZE), 0, method="grad_cam")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        saliency.saliency_maps(model, torch.zeros(3, SIZE, SIZE), 0)


def test_energy_pointing_game_counts_positive_saliency_only():
    maps = np.array([[3.0, -5.0], [1.0, 0.0]])
    node = np.array([[1, 1], [0, 0]])
    assert saliency.energy_pointing_game(maps, node) == pytest.approx(3 / 4)
    assert saliency.energy_pointing_game(maps, 1 - node) == pytest.approx(1 / 4)
    assert np.isnan(saliency.energy_pointing_game(-np.abs(maps), node))


def test_pointing_game_hit_ties_and_flat_maps():
    node = np.array([[1, 0], [0, 0]])
    assert saliency.pointing_game_hit(np.array([[2.0, 2.0], [0.0, 1.0]]), node)  # tie, one peak pixel inside
    assert not saliency.pointing_game_hit(np.array([[1.0, 2.0], [0.0, 2.0]]), node)  # both peak pixels outside
    assert not saliency.pointing_game_hit(np.zeros((2, 2)), node)  # flat map: no peak
    assert saliency.pointing_game_hit(np.array([[-1.0, -3.0], [-2.0, -3.0]]), node)  # the peak, even if negative


@pytest.mark.parametrize("confidence_level", [0.95, 0.9])
def test_saliency_summary_against_scipy(confidence_level):
    rng = np.random.default_rng(4)
    maps = rng.normal(size=(30, 8, 8))
    masks = (rng.uniform(size=(30, 8, 8)) < rng.uniform(0.1, 0.6, size=(30, 1, 1))).astype(np.uint8)
    maps[0] = -1.0  # no positive saliency: energy undefined, a pointing-game miss (flat map)
    summary = saliency.saliency_summary(maps, masks, confidence_level=confidence_level)

    positive = np.maximum(maps, 0)
    energy = np.array([p[m == 1].sum() / p.sum() for p, m in zip(positive[1:], masks[1:])])
    area = masks.reshape(30, -1).mean(axis=1)
    hits = sum(bool(m.reshape(-1)[s.reshape(-1).argmax()]) for s, m in zip(maps[1:], masks[1:]))
    energy_ci = stats.ttest_1samp(energy, 0).confidence_interval(confidence_level)
    excess_ci = stats.ttest_1samp(energy - area[1:], 0).confidence_interval(confidence_level)
    hit_ci = stats.binomtest(hits, 30).proportion_ci(confidence_level=confidence_level, method="exact")

    assert summary["n_images"] == 30 and summary["n_images_with_saliency"] == 29
    assert summary["energy_in_node_mean"] == pytest.approx(energy.mean())
    assert (summary["energy_in_node_ci_low"], summary["energy_in_node_ci_high"]) == pytest.approx(tuple(energy_ci))
    assert summary["energy_minus_area_mean"] == pytest.approx((energy - area[1:]).mean())
    assert (summary["energy_minus_area_ci_low"], summary["energy_minus_area_ci_high"]) == pytest.approx(
        tuple(excess_ci))
    assert summary["node_area_fraction_mean"] == pytest.approx(area.mean())
    assert summary["pointing_game_hits"] == hits and summary["pointing_game_hit_rate"] == pytest.approx(hits / 30)
    assert (summary["pointing_game_ci_low"], summary["pointing_game_ci_high"]) == pytest.approx(tuple(hit_ci))
    assert all(isinstance(value, (int, float)) for value in summary.values())


@pytest.mark.parametrize("hits", [0, 1, 9, 10])
def test_clopper_pearson_against_scipy_at_the_edges(hits):
    reference = stats.binomtest(hits, 10).proportion_ci(method="exact")
    assert evaluation.metric_functions().clopper_pearson_interval(hits, 10) == pytest.approx((reference.low, reference.high))


def test_resize_mask_is_nearest_neighbour():
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[2:6, 4:8] = 255
    expected = np.zeros((16, 16), dtype=np.uint8)
    expected[4:12, 8:16] = 1
    np.testing.assert_array_equal(saliency.resize_mask(mask, (16, 16)), expected)
    np.testing.assert_array_equal(saliency.resize_mask(Image.fromarray(mask // 255), (16, 16)), expected)
    assert saliency.resize_mask(mask, (4, 2)).shape == (4, 2)  # (height, width)


def test_representative_cases_skip_undefined_scores():
    scores = [0.5, np.nan, 0.9, 0.1, 0.3]
    assert saliency.representative_cases(scores) == [("best", 2), ("median", 4), ("worst", 3)]
    assert saliency.representative_cases([np.nan]) == []


def test_plot_saliency_cases_writes_three_rows(tmp_path):
    images, masks, _ = synthetic_cases(5, "node", seed=5)
    maps = np.random.default_rng(5).normal(size=(5, SIZE, SIZE))
    scores = saliency.saliency_scores(maps, masks)["energy_in_node"]
    path = saliency.plot_saliency_cases(images, masks, maps, scores, tmp_path / "cases.png", title="synthetic")
    with Image.open(path) as figure:
        assert figure.format == "PNG" and figure.size == (750, 750)  # 7.5 x 2.5 in per row at 100 dpi


# Randomised controls (Adebayo et al. 2018), case sample, completeness of integrated gradients


def test_a_model_beats_its_randomised_controls_only_when_it_learned_the_node(cue_model):
    """train_vit.py's default (occlusion, 4 x 4 non-overlapping windows, the predicted class): the node model's
    share in the node exceeds the all-weights-re-initialised control's (paired interval above 0); the marker model
    exceeds neither control. (The head-re-initialised control keeps the trained features, which read the node: at
    this grid the node model's excess over it is not significant; it is reported, not asserted.)"""
    cue, model, images, masks, _ = cue_model
    inputs = pixel_values(images)
    with torch.no_grad():
        predicted = model(pixel_values=inputs).logits.argmax(1)
    result = saliency_controls.saliency_with_controls(model, inputs, masks, predicted, seed=0, window_fraction=0.25,
                                             stride_fraction=0.25)
    controls = result["summary"]["controls"]
    assert set(controls) == {"head_reinitialised", "all_reinitialised"}
    for control in controls.values():
        assert control["excess_energy_in_node_n_pairs"] >= 24  # pairs where both maps have positive saliency
        if cue == "node":
            assert controls["all_reinitialised"]["excess_energy_in_node_ci_low"] > 0.1
        else:  # the marker model looks at the corners: no more saliency in the node than its controls
            assert control["excess_energy_in_node_ci_low"] < 0 and control["excess_energy_in_node_mean"] < 0.02


@pytest.mark.parametrize("cue_model", ["node"], indirect=True)  # one trained model is enough: the node model
def test_integrated_gradients_on_a_trained_model_is_complete_within_five_percent(cue_model):
    """Completeness on the trained node model: attributions sum to score(x) - score(0) within 5 % (90th
    percentile), checked against the model's own scores; the fixed 8-step run is reported less complete."""
    cue, model, images, _, labels = cue_model
    assert cue == "node"
    inputs = pixel_values(images[:12])
    maps, info = saliency.saliency_maps(model, inputs, labels[:12], method="integrated_gradients", details=True)
    with torch.no_grad():
        change = (saliency.target_log_odds(model(pixel_values=inputs).logits)
                  - saliency.target_log_odds(model(pixel_values=torch.zeros_like(inputs)).logits))
    change = change[torch.arange(12), torch.as_tensor(labels[:12])].numpy()
    errors = np.abs(maps.sum(axis=(1, 2)) - change) / np.abs(change)
    np.testing.assert_allclose(info["completeness_error"], errors, rtol=1e-3, atol=1e-4)
    assert np.percentile(errors, 90) < 0.05 and (info["steps"] >= 64).all()
    _, coarse = saliency.saliency_maps(model, inputs, labels[:12], method="integrated_gradients", details=True,
                                       integrated_gradients_steps=8, completeness_tolerance=None)
    assert (coarse["steps"] == 8).all() and np.median(coarse["completeness_error"]) > np.median(errors)
    summary = saliency.completeness_summary(info["completeness_error"])
    assert summary["completeness_error_p90"] == pytest.approx(np.percentile(errors, 90), rel=1e-3)


def test_randomised_controls_reinitialise_the_head_then_everything():
    model = tiny_model("vit", seed=1).eval()
    with torch.no_grad():  # stands for training: every weight moved away from its initial value
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
    state = torch.random.get_rng_state()
    controls = saliency_controls.randomised_controls(model, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's random stream is left alone
    head_control, fresh = controls["head_reinitialised"], controls["all_reinitialised"]
    assert saliency_controls.classifier_head_name(model) == "classifier"
    for name, parameter in model.named_parameters():
        same_in_head_control = torch.equal(parameter, head_control.get_parameter(name))
        assert same_in_head_control != name.startswith("classifier.")
        assert not torch.equal(parameter, fresh.get_parameter(name))
    torch.manual_seed(7)
    reference = AutoModelForImageClassification.from_config(model.config)
    for name, parameter in reference.named_parameters():
        assert torch.equal(parameter, fresh.get_parameter(name))
        if name.startswith("classifier."):
            assert torch.equal(parameter, head_control.get_parameter(name))
    assert saliency_controls.classifier_head_name(tiny_model("resnet")) == "classifier"  # Sequential(Flatten, Linear)


def test_paired_excess_against_scipy():
    rng = np.random.default_rng(6)
    trained = {"energy_in_node": rng.uniform(size=20), "pointing_game_hit": rng.uniform(size=20) < 0.8}
    control = {"energy_in_node": rng.uniform(size=20), "pointing_game_hit": rng.uniform(size=20) < 0.5}
    trained["energy_in_node"][3] = np.nan  # no positive saliency: that pair is left out
    excess = saliency_controls.paired_excess(trained, control, confidence_level=0.9)
    both = ~np.isnan(trained["energy_in_node"])
    energy = stats.ttest_rel(trained["energy_in_node"][both], control["energy_in_node"][both])
    hits = stats.ttest_rel(trained["pointing_game_hit"].astype(float), control["pointing_game_hit"].astype(float))
    assert excess["excess_energy_in_node_n_pairs"] == 19 and excess["excess_pointing_game_n_pairs"] == 20
    assert (excess["excess_energy_in_node_ci_low"], excess["excess_energy_in_node_ci_high"]) == pytest.approx(
        tuple(energy.confidence_interval(0.9)))
    assert (excess["excess_pointing_game_ci_low"], excess["excess_pointing_game_ci_high"]) == pytest.approx(
        tuple(hits.confidence_interval(0.9)))
    same = saliency_controls.paired_excess(trained, {**control, "pointing_game_hit": trained["pointing_game_hit"]})
    assert same["excess_pointing_game_mean"] == 0 and np.isnan(same["excess_pointing_game_ci_low"])


def test_stratified_sample_keeps_the_label_mix_and_is_seeded():
    labels = np.array([0] * 100 + [1] * 58)
    sample = saliency.stratified_sample(labels, 24, seed=3)
    assert len(sample) == 24 and len(set(sample)) == 24 and (np.diff(sample) > 0).all()
    assert np.bincount(labels[sample]).tolist() == [15, 9]  # 24 * 100/158 = 15.2, 24 * 58/158 = 8.8
    np.testing.assert_array_equal(sample, saliency.stratified_sample(labels, 24, seed=3))
    assert not np.array_equal(sample, saliency.stratified_sample(labels, 24, seed=4))
    np.testing.assert_array_equal(saliency.stratified_sample(labels, 0, seed=3), np.arange(158))
    np.testing.assert_array_equal(saliency.stratified_sample(labels[:20], 24, seed=3), np.arange(20))
    rare = np.array([0] * 99 + [1])
    assert np.bincount(rare[saliency.stratified_sample(rare, 10, seed=0)]).tolist() == [9, 1]  # each label kept


def test_plot_saliency_cases_shows_the_controls(tmp_path):
    images, masks, _ = synthetic_cases(5, "node", seed=5)
    rng = np.random.default_rng(5)
    maps = {name: rng.normal(size=(5, SIZE, SIZE)) for name in ("trained", *saliency.CONTROLS)}
    scores = {name: saliency.saliency_scores(m, masks)["energy_in_node"] for name, m in maps.items()}
    path = saliency.plot_saliency_cases(
        images, masks, maps["trained"], scores["trained"], tmp_path / "cases.png",
        controls={name: maps[name] for name in saliency.CONTROLS},
        control_scores={name: scores[name] for name in saliency.CONTROLS},
    )
    with Image.open(path) as figure:
        assert figure.size == (1250, 750)  # five columns of 2.5 in
