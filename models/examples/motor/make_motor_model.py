#!/usr/bin/env python3
"""Builds the motor example model, reproducibly, with scikit-learn and skl2onnx.

A second kind of model for reflex, made by another tool than models/make_models.py: an
anomaly scorer for an induction motor's phase current and winding temperature, trained on
a simulated stream. Writes into the directory of this script (models/examples/motor/):

  motor.onnx           the scorer: input "window" float32 [N, 128], output "score" [N, 1]
  motor.sha256         motor.onnx's SHA-256 (lowercase hex), which
                       models/tests/motor_example.rs checks
  samples.npy          float32 [400, 128] held-out windows (importing, reference profiles)
  expected_scores.npy  float32 [400] scikit-learn's scores of those windows
  labels.npy           int64 [400] 0 normal, 1 anomalous

Input layout: 2 channels x 64 samples, channel-major: 64 phase-current samples in amperes,
then 64 winding-temperature samples in degrees Celsius, sampled at 640 Hz (100 ms, five
cycles of 50 Hz mains). The score is the probability, in [0, 1], that the window is
anomalous (overload, load oscillation, harmonic distortion, overheating, intermittent
contact).

The model is a scikit-learn Pipeline(StandardScaler, MLPClassifier(16 ReLU units, logistic
output)). skl2onnx exports the scaler as the ai.onnx.ml `Scaler` op and the classifier's
label with `ArrayFeatureExtractor`, which tract does not need; so the scaler is folded
into the first layer (checked against the pipeline below), only the positive-class
probability is kept, and the graph is plain ONNX: MatMul, Add, Relu, Sigmoid.

Usage (from the repository root):
  python3 -m venv models/examples/motor/.venv
  models/examples/motor/.venv/bin/pip install -r models/examples/motor/requirements.txt
  models/examples/motor/.venv/bin/python models/examples/motor/make_motor_model.py

Deterministic: fixed seeds, single-threaded BLAS, pinned requirements; the same versions
give the same bytes (motor.sha256).
"""

import os

# Single-threaded BLAS: the same summation order on every run, so training is reproducible.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from skl2onnx import convert_sklearn  # noqa: E402
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import Pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

SEED = 20261207
FS_HZ = 640.0
SAMPLES = 64
CHANNELS = ("current", "temperature")
INPUT_LEN = len(CHANNELS) * SAMPLES
MAINS_HZ = 50.0
# ONNX default-domain opset of the export (tract-onnx runs it).
TARGET_OPSET = 17
THRESHOLD = 0.5
N_TRAIN, N_TEST, N_SAMPLES = 6000, 2000, 400
ANOMALY_FRACTION = 0.3
KINDS = ("normal", "overload", "oscillation", "harmonics", "overheating", "dropout")


def simulate(rng, n):
    """n windows [n, 2, 64] float32 (A, degC), labels int64 [n], kinds int64 [n]."""
    t = np.arange(SAMPLES) / FS_HZ
    windows = np.empty((n, len(CHANNELS), SAMPLES), dtype=np.float64)
    kinds = np.where(
        rng.random(n) < ANOMALY_FRACTION, rng.integers(1, len(KINDS), size=n), 0
    )
    for i, kind in enumerate(kinds):
        name = KINDS[kind]
        load = rng.uniform(1.3, 2.0) if name == "overload" else rng.uniform(0.3, 1.0)
        # Magnetising current plus load current, in A rms.
        i_rms = 2.0 + 6.0 * load
        f = MAINS_HZ + rng.normal(0.0, 0.2)
        phase = rng.uniform(0.0, 2.0 * np.pi)
        w = 2.0 * np.pi * f * t + phase
        h3, h5, h7 = rng.uniform(0.0, 0.02), rng.uniform(0.0, 0.03), rng.uniform(0.0, 0.01)
        if name == "harmonics":
            h5, h7 = rng.uniform(0.10, 0.25), rng.uniform(0.05, 0.15)
        wave = (
            np.sin(w)
            + h3 * np.sin(3 * w + rng.uniform(0, 2 * np.pi))
            + h5 * np.sin(5 * w + rng.uniform(0, 2 * np.pi))
            + h7 * np.sin(7 * w + rng.uniform(0, 2 * np.pi))
        )
        envelope = np.ones(SAMPLES)
        if name == "oscillation":
            depth, fm = rng.uniform(0.15, 0.4), rng.uniform(10.0, 25.0)
            envelope = 1.0 + depth * np.sin(2 * np.pi * fm * t + rng.uniform(0, 2 * np.pi))
        current = np.sqrt(2.0) * i_rms * envelope * wave
        if name == "dropout":
            start, length = rng.integers(0, SAMPLES - 16), rng.integers(6, 16)
            current[start : start + length] *= rng.uniform(0.0, 0.1)
        current += rng.normal(0.0, 0.05, SAMPLES)
        ambient = rng.uniform(15.0, 35.0)
        temperature = ambient + 45.0 * min(load, 1.6) ** 2 + rng.normal(0.0, 2.0)
        if name == "overheating":
            temperature = rng.uniform(95.0, 120.0)
        drift = rng.normal(0.0, 0.02) * np.arange(SAMPLES)
        windows[i, 0] = current
        windows[i, 1] = temperature + drift + rng.normal(0.0, 0.05, SAMPLES)
    labels = (kinds > 0).astype(np.int64)
    return windows.astype(np.float32), labels, kinds.astype(np.int64)


def fold_scaler(pipeline):
    """The pipeline's MLP with the StandardScaler folded into its first layer."""
    scaler, mlp = pipeline.named_steps["scale"], pipeline.named_steps["mlp"]
    folded = copy.deepcopy(mlp)
    w, b = mlp.coefs_[0], mlp.intercepts_[0]
    folded.coefs_[0] = w / scaler.scale_[:, None]
    folded.intercepts_[0] = b - (scaler.mean_ / scaler.scale_) @ w
    return folded


def to_onnx(mlp):
    """skl2onnx export, cut after the Sigmoid: one output, "score" [N, 1]."""
    onx = convert_sklearn(
        mlp,
        name="motor",
        initial_types=[("window", FloatTensorType([None, INPUT_LEN]))],
        options={id(mlp): {"zipmap": False}},
        target_opset={"": TARGET_OPSET, "ai.onnx.ml": 3},
    )
    graph = onx.graph
    kept = []
    for node in graph.node:
        kept.append(node)
        if node.op_type == "Sigmoid":
            node.output[0] = "score"
            break
    else:
        raise SystemExit("skl2onnx's graph has no Sigmoid: the binary MLP export changed")
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.input[:]
    window = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["N", INPUT_LEN])
    graph.input.append(window)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1]))
    opsets = [o for o in onx.opset_import if o.domain in ("", "ai.onnx")]
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    onx.doc_string = (
        "reflex motor example: anomaly score in [0, 1] of a window of 64 phase-current "
        "samples (A) then 64 winding-temperature samples (degC) at 640 Hz"
    )
    onnx.checker.check_model(onx, full_check=True)
    ops = sorted({n.op_type for n in onx.graph.node})
    assert set(ops) <= {"Cast", "MatMul", "Add", "Relu", "Sigmoid"}, ops
    return onx


def main():
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=here, help="output directory")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    x_train, y_train, _ = simulate(rng, N_TRAIN)
    x_test, y_test, kinds_test = simulate(rng, N_TEST)
    x_train, x_test = x_train.reshape(N_TRAIN, INPUT_LEN), x_test.reshape(N_TEST, INPUT_LEN)

    pipeline = Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "mlp",
                MLPClassifier(
                    hidden_layer_sizes=(16,),
                    alpha=1e-3,
                    max_iter=500,
                    random_state=SEED,
                ),
            ),
        ]
    )
    pipeline.fit(x_train, y_train)
    scores_test = pipeline.predict_proba(x_test)[:, 1]
    predicted = scores_test >= THRESHOLD
    print(f"held-out windows: {N_TEST}, anomalous: {int(y_test.sum())}")
    print(f"accuracy at {THRESHOLD}: {np.mean(predicted == y_test):.4f}")
    print(f"roc auc: {roc_auc_score(y_test, scores_test):.4f}")
    for k, name in enumerate(KINDS):
        sel = kinds_test == k
        flagged = np.mean(predicted[sel])
        print(f"  {name:12s} {int(sel.sum()):4d} windows, flagged {flagged:.3f}")

    folded = fold_scaler(pipeline)
    folded_diff = np.max(np.abs(folded.predict_proba(x_test)[:, 1] - scores_test))
    assert folded_diff < 1e-5, f"folded scaler differs by {folded_diff}"

    onx = to_onnx(folded)
    samples = x_test[:N_SAMPLES]
    expected = scores_test[:N_SAMPLES].astype(np.float32)
    (onnx_scores,) = ReferenceEvaluator(onx).run(None, {"window": samples})
    onnx_diff = float(np.max(np.abs(onnx_scores[:, 0] - expected)))
    assert onnx_diff < 1e-5, f"onnx reference run differs from scikit-learn by {onnx_diff}"
    print(f"onnx (onnx.reference) vs scikit-learn on samples: max |diff| {onnx_diff:.2e}")

    data = onx.SerializeToString()
    (out / "motor.onnx").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    (out / "motor.sha256").write_text(digest + "\n")
    np.save(out / "samples.npy", samples)
    np.save(out / "expected_scores.npy", expected)
    np.save(out / "labels.npy", y_test[:N_SAMPLES])
    print(f"motor.onnx: {len(data)} bytes, sha256 {digest}")
    print(f"samples: {N_SAMPLES}, anomalous: {int(y_test[:N_SAMPLES].sum())}")


if __name__ == "__main__":
    main()
