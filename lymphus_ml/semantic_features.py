"""The radiologists' semantic features as tabular models (benchmark_lymphus.py's reference and baseline).

`build_semantic_model`: logistic regression on every semantic feature (measurements imputed and standardised, coded
features one-hot); `build_axis_ratio_model`: a one-feature logistic regression on the short/long axis ratio.
Both are scikit-learn pipelines on the frame `semantic_frame` makes of a dataset split.
"""

import numpy as np
import pandas as pd


def semantic_frame(table, columns) -> pd.DataFrame:
    """The semantic-feature columns of a datasets.Dataset, DataFrame or dict of lists, as float64 (NaN = not recorded)."""
    available = list(table.column_names) if hasattr(table, "column_names") else list(table.keys() if isinstance(table, dict) else table.columns)
    missing = [column for column in columns if column not in available]
    if missing:
        raise ValueError(f"Semantic feature column(s) {missing} not found; choose from {available}.")
    if hasattr(table, "select_columns"):
        frame = table.select_columns(list(columns)).to_pandas()
    else:
        frame = pd.DataFrame({column: list(table[column]) for column in columns})
    for column in columns:
        try:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
        except (TypeError, ValueError) as error:
            raise ValueError(f"Semantic feature column {column!r} is not numeric ({error}); codes must be numbers.") from None
    return frame[list(columns)]


def build_semantic_model(measurement_columns, coded_columns, c=1.0, seed=0):
    """scikit-learn Pipeline: the semantic-feature logistic regression.

    Measurements: median imputation with a missing indicator, then standardisation. Coded features: a missing value
    becomes its own category (code -1, "not recorded": in LymphUs a blank often means "not applicable", e.g. the
    prominent echogenicity of a homogeneous node), then one-hot encoding that ignores codes unseen in training
    (all-zero row). L2-penalised logistic regression with strength 1/C.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers = []
    if measurement_columns:
        measurements = Pipeline(
            [
                ("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                ("scale", StandardScaler()),
            ]
        )
        transformers.append(("measurement", measurements, list(measurement_columns)))
    if coded_columns:
        codes = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value=-1, keep_empty_features=True)),
                ("one_hot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("coded", codes, list(coded_columns)))
    if not transformers:
        raise ValueError("The semantic model needs at least one of --measurement_columns / --coded_columns.")
    return Pipeline(
        [
            ("features", ColumnTransformer(transformers, remainder="drop")),
            ("logistic", LogisticRegression(C=c, max_iter=5000, random_state=seed)),
        ]
    )


def short_to_long_axis_ratio(frame) -> np.ndarray:
    """(n, 1) short/long axis ratio: minimum_diameter / maximum_diameter, else from aspect_ratio, else NaN.

    aspect_ratio is long/short in LymphUs (or short/long elsewhere): min(a, 1/a) is the short/long ratio either way.
    """
    frame = pd.DataFrame(frame)
    ratio = pd.Series(np.nan, index=frame.index, dtype="float64")
    if {"minimum_diameter", "maximum_diameter"} <= set(frame.columns):
        short, long = frame["minimum_diameter"].astype("float64"), frame["maximum_diameter"].astype("float64")
        valid = (long > 0) & (short >= 0)
        ratio = ratio.where(~valid, np.minimum(short, long) / np.maximum(short, long))
    if "aspect_ratio" in frame.columns:
        aspect = frame["aspect_ratio"].astype("float64")
        from_aspect = np.minimum(aspect, 1.0 / aspect.where(aspect > 0))
        ratio = ratio.fillna(from_aspect.where(aspect > 0))
    return ratio.to_numpy().reshape(-1, 1)


def axis_ratio_feature_names(transformer, input_features):
    return np.array(["short_long_ratio"], dtype=object)


def build_axis_ratio_model(c=1.0, seed=0):
    """The single-feature baseline: logistic regression on the short/long axis ratio (median-imputed, standardised).

    A logistic regression, not the raw ratio, so that the score is a probability (Brier score, calibration); its
    AUC equals the raw ratio's when the coefficient is positive (rounder nodes more often malignant).
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    return Pipeline(
        [
            ("ratio", FunctionTransformer(short_to_long_axis_ratio, feature_names_out=axis_ratio_feature_names)),
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("scale", StandardScaler()),
            ("logistic", LogisticRegression(C=c, max_iter=5000, random_state=seed)),
        ]
    )


def fit_tabular_model(model, frame, labels, name="semantic model", where="train"):
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"{name}: the {where} split has only label(s) {sorted(set(labels.tolist()))}; it needs both classes.")
    return model.fit(frame, labels)


def positive_probability(model, frame) -> np.ndarray:
    """Probability of label 1 from a fitted scikit-learn classifier."""
    classes = list(model.classes_)
    return model.predict_proba(frame)[:, classes.index(1)]


def logistic_coefficients(model) -> dict:
    """{feature name: coefficient} of a fitted pipeline's final logistic regression (on the transformed scale)."""
    names = model[:-1].get_feature_names_out()
    logistic = model[-1]
    return {"intercept": float(logistic.intercept_[0]), **{str(n): float(v) for n, v in zip(names, logistic.coef_[0])}}
