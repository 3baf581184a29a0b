"""The dataset's split and cross-validation fold of every patient: part of its definition, fixed by seeds.

Both depend only on the set of (patient, label) pairs, never on file order, so the same archives always give the same
membership (lymphus_ml.release holds the fractions and seeds).
"""

import numpy as np

from lymphus_ml.release import FOLD_SEED, N_FOLDS, SPLIT_FRACTIONS, SPLIT_SEED, LymphUsFormatError


def assign_splits(patients, seed=SPLIT_SEED, fractions=SPLIT_FRACTIONS):
    """Patient-grouped, label-stratified split: {patient_id: split}.

    Patients of each label are sorted by id, shuffled with a fixed-seed generator and cut at the
    rounded fractions, so membership depends only on the set of patients and never on file order.
    Validation and test get at least one patient of each label that has three or more (this only
    matters for tiny synthetic archives: it changes nothing at the official counts).
    """
    labels = {}
    for patient_id, label in patients:
        if labels.setdefault(patient_id, label) != label:
            raise LymphUsFormatError(
                f"patient {patient_id} has cases with both labels; a patient-level split needs one label per patient"
            )
    assignment = {}
    rng = np.random.default_rng(seed)
    for label in sorted(set(labels.values())):
        ids = sorted(patient for patient, patient_label in labels.items() if patient_label == label)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        at_least = 1 if len(ids) >= 3 else 0
        n_test = max(at_least, round(len(ids) * fractions["test"]))
        n_validation = max(at_least, round(len(ids) * fractions["validation"]))
        for position, patient_id in enumerate(ids):
            assignment[patient_id] = (
                "test" if position < n_test else "validation" if position < n_test + n_validation else "train"
            )
    return assignment


def assign_folds(patients, splits, n_folds=N_FOLDS, seed=FOLD_SEED):
    """Patient-grouped, label-stratified cross-validation folds of the development patients: {patient_id: fold}.

    Development = train + validation (assign_splits' output, unchanged); test patients get no fold. The
    patients of each label are sorted by id, shuffled with a fixed-seed generator and dealt to folds in turn,
    the deal going on from one label to the next, so each fold holds floor or ceil of n_label / n_folds
    patients of each label, fold sizes differ by at most one, and the folds depend only on the set of patients.
    """
    labels = dict(patients)
    rng = np.random.default_rng(seed)
    folds, position = {}, 0
    for label in sorted(set(labels.values())):
        ids = sorted(p for p, l in labels.items() if l == label and splits[p] != "test")
        for i in rng.permutation(len(ids)):
            folds[ids[i]] = position % n_folds
            position += 1
    return folds

