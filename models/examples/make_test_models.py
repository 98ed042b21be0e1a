#!/usr/bin/env python3
"""Writes the tiny format-2 test models under models/examples/test/.

Each model is an ONNX graph written by hand with onnx.helper, its format-2 manifest and
its golden vectors (.npy float32 inputs before preprocessing, onnxruntime's outputs):

- score16:    input x [1, 16] float32 -> MatMul + Add + Sigmoid -> score [1, 1],
              thresholds normal / anomaly;
- int8_rank3: input x [N, 2, 8] int8 (symbolic batch) -> dequantize in the graph ->
              Flatten + MatMul + Add -> logits [N, 3];
- probs_u8:   input x [1, 4, 3] uint8 (channels on axis 2) -> dequantize -> Flatten +
              MatMul + Add -> logits and Softmax -> probabilities [1, 2]; the manifest
              names the second output.

The preprocessing below is the manifest contract (models/README.md) in float32 numpy, so
the golden outputs check the Rust side's preprocessing as well as tract. Seeded: two runs
write identical files.

Run: models/.venv/bin/python models/examples/make_test_models.py
(venv: python3 -m venv models/.venv && models/.venv/bin/pip install -r models/requirements.txt)
"""

import hashlib
import json
import pathlib
import re

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = pathlib.Path(__file__).resolve().parent / "test"
OPSET = 13
GOLDEN = 24
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
NP_TYPES = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16}
ONNX_TYPES = {
    "float32": TensorProto.FLOAT,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
}


def preprocess(x, steps, dtype):
    """The manifest's steps on float32 values x of shape [n, ...dims]."""
    x = x.astype(np.float32)
    for s in steps:
        op = s["op"]
        if op == "scale":
            x = x * np.float32(s["factor"])
        elif op == "offset":
            x = x + np.float32(s["value"])
        elif op == "clip":
            x = np.minimum(np.maximum(x, np.float32(s["min"])), np.float32(s["max"]))
        elif op == "per_channel_standardize":
            shape = [1] * x.ndim
            shape[s["axis"]] = -1
            mean = np.asarray(s["mean"], dtype=np.float32).reshape(shape)
            std = np.asarray(s["std"], dtype=np.float32).reshape(shape)
            x = (x - mean) / std
        elif op == "quantize":
            lo, hi = INT_RANGES[dtype]
            q = np.round(x / np.float32(s["scale"])) + s["zero_point"]
            x = np.clip(q, lo, hi).astype(NP_TYPES[dtype])
        else:
            raise ValueError(op)
    return x


def init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def save_model(graph, name):
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="reflex make_test_models.py",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = OUT / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def quantiles(values):
    return [round6(v) for v in np.quantile(values, np.linspace(0.0, 1.0, 101))]


def round6(v):
    """Six significant digits: the reference profile needs no more, the files stay small."""
    return float(f"{float(v):.6g}")


def window_stat(stat, x):
    """Simple per-channel statistics of x [n, samples], for the reference profile."""
    if stat == "mean":
        return x.mean(axis=1)
    if stat == "std":
        return x.std(axis=1)
    if stat == "rms":
        return np.sqrt((x**2).mean(axis=1))
    if stat == "peak":
        return np.abs(x - x.mean(axis=1, keepdims=True)).max(axis=1)
    raise ValueError(stat)


def reference(monitoring, channels_of, scalars, classes_hit, n_classes):
    """Reference profile over the monitoring features of the sample."""
    features = []
    for stat in monitoring["window_stats"]["stats"]:
        for c, channel in enumerate(monitoring["window_stats"]["channels"]):
            v = window_stat(stat, channels_of(c)).astype(np.float64)
            features.append((f"{stat}_{channel}", v))
    for name in monitoring.get("scalars", []):
        features.append((name, scalars[name].astype(np.float64)))
    fractions = np.bincount(classes_hit, minlength=n_classes) / len(classes_hit)
    return {
        "source": "synthetic sample written by make_test_models.py",
        "features": [
            {
                "name": name,
                "quantiles": quantiles(v),
                "mean": round6(v.mean()),
                "std": round6(v.std()),
                "count": int(len(v)),
            }
            for name, v in features
        ],
        "predicted_class_fraction": [float(f) for f in fractions],
    }


def run_ort(path, output, x, batch_one):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    if batch_one:
        rows = [session.run([output], {input_name: x[i : i + 1]})[0] for i in range(len(x))]
        return np.concatenate(rows).astype(np.float32)
    return session.run([output], {input_name: x})[0].astype(np.float32)


def write(name, manifest, inputs, outputs):
    np.save(OUT / f"{name}_inputs.npy", inputs.astype(np.float32))
    np.save(OUT / f"{name}_outputs.npy", outputs.astype(np.float32))
    manifest["golden"] = {
        "inputs": f"{name}_inputs.npy",
        "outputs": f"{name}_outputs.npy",
        "max_abs_diff": 1e-4,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    # One line per list of numbers (the quantiles), so that the file stays a few KB.
    text = re.sub(
        r"\[\s*(-?[0-9][^\[\]{}\"]*?)\s*\]",
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
        text,
    )
    (OUT / f"{name}.manifest.json").write_text(text)


def base(name, description, path, input_spec, steps, output, classes, actions, monitoring):
    return {
        "format": 2,
        "name": name,
        "version": "0.1.0",
        "kind": "onnx",
        "description": description,
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "input": input_spec,
        "preprocessing": steps,
        "output": output,
        "classes": classes,
        "actions": actions,
        "monitoring": monitoring,
        "metrics": {},
        "dataset": {"generator": "make_test_models.py (random weights, no training)"},
    }


def score16(rng):
    w = rng.normal(0.0, 0.5, size=(16, 1))
    b = np.array([0.1])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["score"]),
        ],
        "score16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1, 1])],
        [init("w", w), init("b", b)],
    )
    path = save_model(graph, "score16")
    steps = [
        {"op": "offset", "value": -0.5},
        {"op": "scale", "factor": 2.0},
        {"op": "clip", "min": -3.0, "max": 3.0},
    ]
    monitoring = {"window_stats": {"stats": ["mean", "std", "peak"], "channels": ["a"]}}
    manifest = base(
        "score16",
        "logistic score over 16 values: MatMul 16->1 + Add + Sigmoid",
        path,
        {"name": "x", "shape": [1, 16], "dtype": "float32", "layout": "[batch, value]"},
        steps,
        {
            "kind": "score",
            "name": "score",
            "thresholds": [{"below": 0.5, "class": "normal"}, {"class": "anomaly"}],
        },
        ["normal", "anomaly"],
        {"normal": "run", "anomaly": "stop"},
        monitoring,
    )
    x = rng.uniform(-1.0, 2.0, size=(GOLDEN, 16)).astype(np.float32)
    y = run_ort(path, "score", preprocess(x, steps, "float32"), batch_one=True)
    manifest["reference"] = reference(
        monitoring, lambda c: x, {}, (y[:, 0] >= 0.5).astype(int), 2
    )
    write("score16", manifest, x, y)


def dequantize_then_dense(zero_point, scale, w, b, extra_nodes):
    """Cast -> Sub zero point -> Mul scale -> Flatten -> MatMul -> Add (-> extra)."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["xf", "zp"], ["xc"]),
        helper.make_node("Mul", ["xc", "qs"], ["xd"]),
        helper.make_node("Flatten", ["xd"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["logits"]),
    ] + extra_nodes
    inits = [init("zp", [zero_point]), init("qs", [scale]), init("w", w), init("b", b)]
    return nodes, inits


def int8_rank3(rng):
    w = rng.normal(0.0, 0.4, size=(16, 3))
    b = np.array([0.2, 0.0, -0.2])
    scale = 0.05
    nodes, inits = dequantize_then_dense(0.0, scale, w, b, [])
    graph = helper.make_graph(
        nodes,
        "int8_rank3",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["N", 2, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    path = save_model(graph, "int8_rank3")
    steps = [
        {"op": "per_channel_standardize", "axis": 1, "mean": [0.25, -0.5], "std": [0.5, 2.0]},
        {"op": "quantize", "scale": scale, "zero_point": 0},
    ]
    monitoring = {
        "window_stats": {"stats": ["mean", "rms"], "channels": ["left", "right"]},
        "scalars": ["temperature"],
    }
    manifest = base(
        "int8_rank3",
        "int8 input [N, 2, 8], dequantized in the graph, Flatten + MatMul 16->3 + Add",
        path,
        {"name": "x", "shape": ["N", 2, 8], "dtype": "int8", "layout": "[batch, channel, sample]"},
        steps,
        {"kind": "classification", "name": "logits", "values": "logits"},
        ["idle", "running", "fault"],
        {"idle": "run", "running": "run", "fault": "inspect"},
        monitoring,
    )
    x = (rng.normal(0.0, 1.0, size=(GOLDEN, 2, 8)) * [[0.5], [2.0]] + [[0.25], [-0.5]])
    x = x.astype(np.float32)
    y = run_ort(path, "logits", preprocess(x, steps, "int8"), batch_one=False)
    temperature = rng.uniform(30.0, 60.0, size=GOLDEN)
    manifest["reference"] = reference(
        monitoring, lambda c: x[:, c, :], {"temperature": temperature}, y.argmax(axis=1), 3
    )
    write("int8_rank3", manifest, x, y)


def probs_u8(rng):
    w = rng.normal(0.0, 0.6, size=(12, 2))
    b = np.array([0.0, 0.1])
    scale, zero_point = 0.04, 128
    softmax = [helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)]
    nodes, inits = dequantize_then_dense(float(zero_point), scale, w, b, softmax)
    graph = helper.make_graph(
        nodes,
        "probs_u8",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2]),
        ],
        inits,
    )
    path = save_model(graph, "probs_u8")
    steps = [
        {"op": "per_channel_standardize", "axis": 2, "mean": [0.0, 1.0, -1.0], "std": [1.0, 0.5, 2.0]},
        {"op": "clip", "min": -5.0, "max": 5.0},
        {"op": "quantize", "scale": scale, "zero_point": zero_point},
    ]
    monitoring = {"window_stats": {"stats": ["mean", "peak"], "channels": ["x", "y", "z"]}}
    manifest = base(
        "probs_u8",
        "uint8 input [1, 4, 3] (sample, channel), Flatten + MatMul 12->2 + Softmax; "
        "the graph also outputs its logits",
        path,
        {"name": "x", "shape": [1, 4, 3], "dtype": "uint8", "layout": "[batch, sample, channel]"},
        steps,
        {"kind": "classification", "name": "probabilities", "values": "probabilities"},
        ["ok", "worn"],
        {"ok": "run", "worn": "slow_down"},
        monitoring,
    )
    x = (rng.normal(0.0, 1.0, size=(GOLDEN, 4, 3)) * [1.0, 0.5, 2.0] + [0.0, 1.0, -1.0])
    x = x.astype(np.float32)
    y = run_ort(path, "probabilities", preprocess(x, steps, "uint8"), batch_one=True)
    manifest["reference"] = reference(
        monitoring, lambda c: x[:, :, c], {}, y.argmax(axis=1), 2
    )
    write("probs_u8", manifest, x, y)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261207)
    score16(rng)
    int8_rank3(rng)
    probs_u8(rng)
    for p in sorted(OUT.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
