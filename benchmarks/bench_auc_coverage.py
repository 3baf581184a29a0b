"""Simulated coverage of the 95 % AUC intervals at LymphUs' set sizes: which interval can a card print?

Binormal scores (benign ~ N(0, 1), malignant ~ N(d, 1), true AUC = Phi(d / sqrt(2))), in cells of
set size (18 = the validation split's 8 malignant / 10 benign, 36 = the test split's 16 / 20, 160 = 80 / 80)
x prevalence (0.3, 0.45, 0.6) x true AUC (0.7, 0.8, 0.9, 0.95). Per cell, the share of simulated sets whose
interval contains the true AUC, for
  newcombe   Newcombe's (2006) score-type interval (the card's headline AUC interval),
  delong     DeLong's asymptotic interval, AUC -/+ z SE clipped to [0, 1] (NaN under perfect separation),
  bootstrap  the stratified percentile bootstrap (--bootstrap_sets sets per cell, --n_bootstrap replicates each:
             fewer simulated sets than the others, so its coverage is read to about +/- 0.03).
A missing interval (DeLong or bootstrap under perfect separation) counts as not covering: a card printing
"no interval" claims nothing. "separated" is the share of sets with AUC exactly 0 or 1.

    python benchmarks/bench_auc_coverage.py                    # 1000 sets per cell, about a minute on one core
    python benchmarks/bench_auc_coverage.py --sets 200 --bootstrap_sets 0
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import ndtr, ndtri


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lymphus_ml.evaluation import metric_functions  # noqa: E402


SET_SIZES = (18, 36, 160)
PREVALENCES = (0.3, 0.45, 0.6)
AUCS = (0.7, 0.8, 0.9, 0.95)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", type=int, default=1000, help="simulated sets per cell (default 1000)")
    parser.add_argument("--bootstrap_sets", type=int, default=100, help="sets per cell for the bootstrap (0: skip)")
    parser.add_argument("--n_bootstrap", type=int, default=500, help="bootstrap replicates per set")
    parser.add_argument("--confidence_level", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def covers(interval, truth):
    low, high = interval
    return bool(low <= truth <= high)  # False for NaN


def simulate_cell(cc, rng, n_positive, n_negative, auc, args):
    """Coverage of each method and the share of perfectly separated sets in one cell."""
    shift = np.sqrt(2.0) * float(ndtri(auc))  # Phi(shift / sqrt(2)) = auc
    hits = {"newcombe": 0, "delong": 0, "bootstrap": 0}
    separated = 0
    labels = np.r_[np.ones(n_positive, dtype=int), np.zeros(n_negative, dtype=int)]
    for index in range(args.sets):
        latent = np.r_[rng.normal(shift, 1.0, n_positive), rng.normal(0.0, 1.0, n_negative)]
        scores = ndtr(latent)  # probabilities in (0, 1), same ranks
        estimate = cc.roc_auc(labels, scores)
        separated += estimate in (0.0, 1.0)
        hits["newcombe"] += covers(cc.newcombe_interval(estimate, n_positive, n_negative, args.confidence_level), auc)
        delong = cc.delong_ci(labels, scores, args.confidence_level)
        hits["delong"] += covers((delong["roc_auc_ci_low"], delong["roc_auc_ci_high"]), auc)
        if index < args.bootstrap_sets:
            replicates = cc._bootstrap_replicates(labels, scores, 0.5, args.n_bootstrap, int(rng.integers(2**31)))
            interval = (float("nan"), float("nan")) if estimate in (0.0, 1.0) else cc._percentile_interval(
                replicates["roc_auc"], args.confidence_level)
            hits["bootstrap"] += covers(interval, auc)
    coverage = {"newcombe": hits["newcombe"] / args.sets, "delong": hits["delong"] / args.sets}
    coverage["bootstrap"] = hits["bootstrap"] / args.bootstrap_sets if args.bootstrap_sets else float("nan")
    return coverage, separated / args.sets


def main():
    args = parse_args()
    cc = metric_functions()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(f"Coverage of nominal {args.confidence_level:.0%} AUC intervals, {args.sets} sets per cell "
          f"(bootstrap: {args.bootstrap_sets} sets x {args.n_bootstrap} replicates)")
    print("| malignant/benign | true AUC | separated | Newcombe | DeLong | bootstrap |")
    print("|---|---|---|---|---|---|")
    minimum = {"newcombe": 1.0, "delong": 1.0, "bootstrap": 1.0 if args.bootstrap_sets else float("nan")}
    for size in SET_SIZES:
        for prevalence in PREVALENCES:
            n_positive = int(round(size * prevalence))
            n_negative = size - n_positive
            for auc in AUCS:
                coverage, separated = simulate_cell(cc, rng, n_positive, n_negative, auc, args)
                minimum = {name: min(minimum[name], coverage[name]) for name in minimum}
                print(f"| {n_positive}/{n_negative} | {auc:.2f} | {separated:.2f} | {coverage['newcombe']:.3f} | "
                      f"{coverage['delong']:.3f} | {coverage['bootstrap']:.3f} |", flush=True)
    print(f"Lowest coverage over all cells: Newcombe {minimum['newcombe']:.3f}, DeLong {minimum['delong']:.3f}, "
          f"bootstrap {minimum['bootstrap']:.3f}  ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
