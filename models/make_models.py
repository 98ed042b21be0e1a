#!/usr/bin/env python3
"""Builds reflex's models, reproducibly, from the simulator's dataset.

Writes into models/ (next to this script):
  edge.onnx        small 1D-CNN, batch fixed to 1, statically int8-quantized (QOperator)
  edge_fp32.onnx   its float twin
  cloud.onnx       wider/deeper fp32 CNN + temperature input, symbolic batch dimension "N"
  {edge,cloud,fallback}.manifest.json
  golden/*.npy     held-out inputs and onnxruntime outputs for the Rust conformance tests

Training is numpy only (no torch): every layer's forward and backward pass is written out
below, weights start from a seeded generator and numpy runs single-threaded, so the same
seed gives the same weights, the same ONNX bytes and the same accuracies.

Usage (from the repository root):
  models/.venv/bin/python models/make_models.py                 # runs reflex-sim itself
  models/.venv/bin/python models/make_models.py --data DIR      # an existing dataset

Cheap features (fallback input and drift reference), computed in float64 from the window
in g, channel-major (all x features, then y, then z) -- identical to
reflex_models::features::compute in Rust:
  mean_c     = sum(x) / 64
  std_c      = sqrt(m2),  m2 = sum((x - mean_c)^2) / 64   (population)
  peak_c     = max |x - mean_c|
  kurt_c     = m4 / m2^2, m4 = sum((x - mean_c)^4) / 64   (not excess; 0 if m2 == 0)
  temperature (°C)
Order: mean_x mean_y mean_z std_x std_y std_z peak_x peak_y peak_z kurt_x kurt_y kurt_z
temperature.
"""

import os

# Single-threaded BLAS: same summation order on every run, so training is reproducible.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VERSION = "1.0.0"
CHANNELS, WINDOW = 3, 64
COUNTS_PER_G = 2048.0
FEATURE_NAMES = [
    "mean_x", "mean_y", "mean_z",
    "std_x", "std_y", "std_z",
    "peak_x", "peak_y", "peak_z",
    "kurt_x", "kurt_y", "kurt_z",
    "temperature",
]
FEATURE_DEFINITION = (
    "float64 from the window in g, per channel c in x,y,z (channel-major: all x, y, z of "
    "one statistic, then the next): mean_c = sum(x)/64; m2 = sum((x-mean_c)^2)/64; "
    "std_c = sqrt(m2) (population); peak_c = max|x-mean_c|; m4 = sum((x-mean_c)^4)/64; "
    "kurt_c = m4/m2^2 (not excess; 0 if m2 == 0); then temperature in degrees C"
)
ACTIONS = {
    "healthy": "run",
    "imbalance": "slow_down",
    "bearing_fault": "stop",
    "misalignment": "inspect",
}
GOLDEN_EXAMPLES = 1600


# --------------------------------------------------------------------------- data


SIM_BIN = None  # set by --sim-bin


def run_simulator(out: Path, per_class: int, seed: int) -> None:
    prefix = [str(SIM_BIN)] if SIM_BIN else ["cargo", "run", "-q", "-p", "reflex-sim", "--"]
    cmd = prefix + [
        "dataset", "--out", str(out), "--per-class", str(per_class), "--seed", str(seed),
    ]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def load_dataset(d: Path):
    x = np.load(d / "windows.npy")
    t = np.load(d / "temperature.npy")
    y = np.load(d / "labels.npy")
    meta = json.loads((d / "meta.json").read_text())
    assert x.dtype == np.float32 and x.shape[1:] == (CHANNELS, WINDOW), x.shape
    return x, t, y, meta


def split(n: int):
    """Deterministic split: the dataset interleaves classes in rounds of 4; every 5th round
    (rounds 4, 9, 14, ...) is held out, so both sides are balanced and cover every device."""
    rounds = np.arange(n) // 4
    held = rounds % 5 == 4
    return np.flatnonzero(~held), np.flatnonzero(held)


def features(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The 13 cheap features, float64, [N, 13]; see the module docstring."""
    x = x.astype(np.float64)
    mean = x.mean(axis=2)
    d = x - mean[:, :, None]
    m2 = (d**2).mean(axis=2)
    m4 = (d**4).mean(axis=2)
    std = np.sqrt(m2)
    peak = np.abs(d).max(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        kurt = np.where(m2 > 0, m4 / (m2 * m2), 0.0)
    return np.concatenate([mean, std, peak, kurt, t.astype(np.float64)[:, None]], axis=1)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Exactly what the Rust side does: float32 (x - mean_c) / std_c."""
    return ((x - mean[None, :, None]) / std[None, :, None]).astype(np.float32)


# --------------------------------------------------------------------------- numpy CNN
# Internal layout is channels-last [B, L, C]; ONNX export converts to [N, C, L].


def conv_forward(x, w, b, k, stride):
    """x [B, L, C], w [K*C, O] (row k*C + c) -> y [B, Lo, O], cache."""
    bsz, length, c = x.shape
    lo = (length - k) // stride + 1
    idx = stride * np.arange(lo)[:, None] + np.arange(k)[None, :]
    cols = x[:, idx, :].reshape(bsz, lo, k * c)
    return cols @ w + b, (cols, idx, x.shape)


def conv_backward(dy, w, cache):
    cols, idx, xshape = cache
    bsz, lo, o = dy.shape
    k = idx.shape[1]
    c = xshape[2]
    dw = cols.reshape(-1, k * c).T @ dy.reshape(-1, o)
    db = dy.sum(axis=(0, 1))
    dcols = (dy @ w.T).reshape(bsz, lo, k, c)
    dx = np.zeros(xshape, dtype=dy.dtype)
    for j in range(k):
        dx[:, idx[:, j], :] += dcols[:, :, j, :]  # positions distinct for fixed j
    return dx, dw, db


class Net:
    """convs: list of (out_channels, kernel, stride); each followed by ReLU.
    pool: "mean" or "meanmax" over time; hidden: dense widths (ReLU) before the 4 logits."""

    def __init__(self, convs, pool, hidden, classes, rng, extra=0):
        self.convs, self.pool, self.hidden, self.extra = convs, pool, hidden, extra
        self.p = {}
        c = CHANNELS
        for i, (o, k, _s) in enumerate(convs):
            fan = k * c
            self.p[f"cw{i}"] = (rng.standard_normal((fan, o)) * np.sqrt(2.0 / fan)).astype(np.float32)
            self.p[f"cb{i}"] = np.zeros(o, np.float32)
            c = o
        width = c * (2 if pool == "meanmax" else 1) + extra
        for i, h in enumerate(list(hidden) + [classes]):
            self.p[f"dw{i}"] = (rng.standard_normal((width, h)) * np.sqrt(2.0 / width)).astype(np.float32)
            self.p[f"db{i}"] = np.zeros(h, np.float32)
            width = h

    def forward(self, x_ncl, extra=None):
        h = np.ascontiguousarray(x_ncl.transpose(0, 2, 1))
        caches = []
        for i, (_o, k, s) in enumerate(self.convs):
            z, cache = conv_forward(h, self.p[f"cw{i}"], self.p[f"cb{i}"], k, s)
            h = np.maximum(z, 0)
            caches.append((cache, z))
        pre_pool = h
        if self.pool == "mean":
            h = h.mean(axis=1)
        else:
            h = np.concatenate([h.mean(axis=1), h.max(axis=1)], axis=1)
        if self.extra:
            h = np.concatenate([h, extra.reshape(len(h), self.extra)], axis=1)
        dense = []
        n = len(self.hidden) + 1
        for i in range(n):
            z = h @ self.p[f"dw{i}"] + self.p[f"db{i}"]
            dense.append((h, z))
            h = np.maximum(z, 0) if i < n - 1 else z
        return h, (caches, pre_pool, dense)

    def backward(self, dlogits, state):
        caches, pre_pool, dense = state
        g = {}
        d = dlogits
        n = len(self.hidden) + 1
        for i in reversed(range(n)):
            hin, z = dense[i]
            if i < n - 1:
                d = d * (z > 0)
            g[f"dw{i}"] = hin.T @ d
            g[f"db{i}"] = d.sum(axis=0)
            d = d @ self.p[f"dw{i}"].T
        if self.extra:
            d = d[:, : d.shape[1] - self.extra]
        bsz, length, c = pre_pool.shape
        if self.pool == "mean":
            dh = np.broadcast_to(d[:, None, :] / length, pre_pool.shape).copy()
        else:
            dh = np.broadcast_to(d[:, None, :c] / length, pre_pool.shape).copy()
            am = pre_pool.argmax(axis=1)  # [B, C]
            bi, ci = np.meshgrid(np.arange(bsz), np.arange(c), indexing="ij")
            dh[bi, am, ci] += d[:, c:]
        for i in reversed(range(len(self.convs))):
            cache, z = caches[i]
            dz = dh * (z > 0)
            dh, g[f"cw{i}"], g[f"cb{i}"] = conv_backward(dz, self.p[f"cw{i}"], cache)
        return g


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(net, x, y, epochs, lr, seed, batch=128, l2=1e-4, label="", extra=None):
    rng = np.random.default_rng(seed)
    m = {k: np.zeros_like(v) for k, v in net.p.items()}
    v = {k: np.zeros_like(v) for k, v in net.p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = len(x)
    for ep in range(epochs):
        order = rng.permutation(n)
        # cosine learning-rate decay
        lr_ep = lr * 0.5 * (1 + np.cos(np.pi * ep / epochs))
        loss_sum = 0.0
        for s in range(0, n, batch):
            ids = order[s : s + batch]
            logits, state = net.forward(x[ids], None if extra is None else extra[ids])
            p = softmax(logits)
            loss_sum += -np.log(p[np.arange(len(ids)), y[ids]] + 1e-12).sum()
            d = p
            d[np.arange(len(ids)), y[ids]] -= 1
            d /= len(ids)
            g = net.backward(d.astype(np.float32), state)
            step += 1
            for k in net.p:
                gk = g[k] + l2 * net.p[k] if k.startswith(("cw", "dw")) else g[k]
                m[k] = b1 * m[k] + (1 - b1) * gk
                v[k] = b2 * v[k] + (1 - b2) * gk * gk
                mh = m[k] / (1 - b1**step)
                vh = v[k] / (1 - b2**step)
                net.p[k] = (net.p[k] - lr_ep * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        if ep % 5 == 4 or ep == epochs - 1:
            print(f"  {label} epoch {ep + 1}/{epochs} loss {loss_sum / n:.4f}", flush=True)


# --------------------------------------------------------------------------- ONNX export


def export_onnx(net, path: Path, batch, doc: str):
    """Writes the net as a standard-op ONNX graph (Conv, Relu, ReduceMean/Max, Concat,
    MatMul, Add): no Gemm, no contrib ops, so the QOperator quantizer produces only
    QLinearConv/QLinearMatMul and tract runs everything."""
    nodes, inits = [], []
    cur = "window"
    c = CHANNELS
    for i, (o, k, s) in enumerate(net.convs):
        w = net.p[f"cw{i}"].reshape(k, c, o).transpose(2, 1, 0)  # [O, C, K]
        inits += [
            numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"conv{i}.weight"),
            numpy_helper.from_array(net.p[f"cb{i}"], f"conv{i}.bias"),
        ]
        nodes.append(helper.make_node(
            "Conv", [cur, f"conv{i}.weight", f"conv{i}.bias"], [f"conv{i}"],
            name=f"conv{i}", kernel_shape=[k], strides=[s], pads=[0, 0], dilations=[1], group=1))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        cur = f"relu{i}"
        c = o
    if net.pool == "mean":
        nodes.append(helper.make_node("ReduceMean", [cur], ["pool"], name="pool", axes=[2], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", [cur], ["pool_mean"], name="pool_mean", axes=[2], keepdims=0))
        nodes.append(helper.make_node("ReduceMax", [cur], ["pool_max"], name="pool_max", axes=[2], keepdims=0))
        nodes.append(helper.make_node("Concat", ["pool_mean", "pool_max"], ["pool"], name="pool", axis=1))
    cur = "pool"
    inputs = [helper.make_tensor_value_info("window", TensorProto.FLOAT, [batch, CHANNELS, WINDOW])]
    if net.extra:
        inputs.append(helper.make_tensor_value_info("temperature", TensorProto.FLOAT, [batch, net.extra]))
        nodes.append(helper.make_node("Concat", ["pool", "temperature"], ["pool_t"], name="pool_t", axis=1))
        cur = "pool_t"
    n = len(net.hidden) + 1
    for i in range(n):
        inits += [
            numpy_helper.from_array(net.p[f"dw{i}"], f"fc{i}.weight"),
            numpy_helper.from_array(net.p[f"db{i}"], f"fc{i}.bias"),
        ]
        nodes.append(helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"fc{i}.mm"], name=f"fc{i}.matmul"))
        out = "logits" if i == n - 1 else f"fc{i}"
        nodes.append(helper.make_node("Add", [f"fc{i}.mm", f"fc{i}.bias"], [out], name=f"fc{i}.add"))
        if i < n - 1:
            nodes.append(helper.make_node("Relu", [out], [f"fc{i}.relu"], name=f"fc{i}.relu"))
            out = f"fc{i}.relu"
        cur = out
    graph = helper.make_graph(
        nodes, path.stem,
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="reflex make_models.py", producer_version=VERSION,
                              doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


class Calibration(CalibrationDataReader):
    def __init__(self, xs):
        self.it = iter([{"window": xs[i : i + 1]} for i in range(len(xs))])

    def get_next(self):
        return next(self.it, None)


def quantize(fp32: Path, out: Path, calib: np.ndarray, fmt: str):
    quantize_static(
        str(fp32), str(out), Calibration(calib),
        quant_format=QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "MatMul"],
        per_channel=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    ops = sorted({(n.domain or "ai.onnx", n.op_type) for n in onnx.load(str(out)).graph.node})
    bad = [o for o in ops if o[0] != "ai.onnx"]
    if bad:
        sys.exit(f"quantized model uses non-standard ops tract refuses: {bad}")
    return [o for _, o in ops]


# --------------------------------------------------------------------------- onnxruntime


def session(path: Path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feed(xs, ts, a, b):
    f = {"window": xs[a:b]}
    if ts is not None:
        f["temperature"] = ts[a:b, None]
    return f


def ort_logits(path: Path, xs: np.ndarray, batch_fixed: bool, ts=None):
    s = session(path)
    step = 1 if batch_fixed else 512
    return np.concatenate([s.run(["logits"], feed(xs, ts, i, i + step))[0] for i in range(0, len(xs), step)])


def ort_latency(path: Path, x1: np.ndarray, t1=None, runs=3000, warmup=300):
    """onnxruntime, one thread, batch 1, timed around InferenceSession.run from Python
    (includes ~several µs of Python binding overhead)."""
    s = session(path)
    feed = {"window": x1}
    if t1 is not None:
        feed["temperature"] = t1[:, None]
    for _ in range(warmup):
        s.run(["logits"], feed)
    ts = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        s.run(["logits"], feed)
        ts[i] = time.perf_counter_ns() - t0
    ts /= 1000.0
    return {"median_us": round(float(np.median(ts)), 2),
            "p99_us": round(float(np.percentile(ts, 99)), 2),
            "runs": runs, "threads": 1, "batch": 1,
            "runtime": f"onnxruntime {ort.__version__} (python, CPUExecutionProvider)"}


# --------------------------------------------------------------------------- fallback


def train_fallback(f_train, y_train, classes, iters=3000, lr=0.05, l2=1e-4):
    """Multinomial logistic regression, full-batch Adam on standardised features."""
    mu = f_train.mean(axis=0)
    sd = f_train.std(axis=0)
    sd[sd == 0] = 1.0
    z = (f_train - mu) / sd
    w = np.zeros((classes, z.shape[1]))
    b = np.zeros(classes)
    mw, vw, mb, vb = (np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b))
    onehot = np.eye(classes)[y_train]
    for t in range(1, iters + 1):
        p = softmax(z @ w.T + b)
        d = (p - onehot) / len(z)
        gw = d.T @ z + l2 * w
        gb = d.sum(axis=0)
        mw = 0.9 * mw + 0.1 * gw
        vw = 0.999 * vw + 0.001 * gw * gw
        mb = 0.9 * mb + 0.1 * gb
        vb = 0.999 * vb + 0.001 * gb * gb
        w -= lr * (mw / (1 - 0.9**t)) / (np.sqrt(vw / (1 - 0.999**t)) + 1e-8)
        b -= lr * (mb / (1 - 0.9**t)) / (np.sqrt(vb / (1 - 0.999**t)) + 1e-8)
    return w, b, mu, sd


def fallback_predict(f, w, b, mu, sd):
    return np.argmax(((f - mu) / sd) @ w.T + b, axis=1)


# --------------------------------------------------------------------------- manifests


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_profile(f_held: np.ndarray, pred: np.ndarray, classes) -> dict:
    profiles = []
    for j, name in enumerate(FEATURE_NAMES):
        col = f_held[:, j]
        profiles.append({
            "name": name,
            "quantiles": [float(q) for q in np.percentile(col, np.arange(101))],
            "mean": float(col.mean()),
            "std": float(col.std()),
            "count": int(len(col)),
        })
    frac = np.bincount(pred, minlength=len(classes)) / len(pred)
    return {
        "source": "held-out split of the training dataset",
        "features": profiles,
        "predicted_class_fraction": [float(v) for v in frac],
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="existing reflex-sim dataset directory")
    ap.add_argument("--per-class", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--edge-format", choices=["qoperator", "qdq"], default="qdq",
                    help="qdq (default) runs 2x faster than qoperator under tract 0.23.9 on x86_64")
    ap.add_argument("--edge-epochs", type=int, default=40)
    ap.add_argument("--cloud-epochs", type=int, default=16)
    ap.add_argument("--cloud-extra-per-class", type=int, default=5000,
                    help="extra training windows per class for cloud only, simulated with seed + 1000")
    ap.add_argument("--cloud-extra-data", type=Path, help="existing dataset for the cloud's extra training data")
    ap.add_argument("--sim-bin", type=Path,
                    help="a built reflex-sim binary to run instead of `cargo run -p reflex-sim`")
    ap.add_argument("--skip-latency", action="store_true", help="do not time onnxruntime")
    args = ap.parse_args()
    global SIM_BIN
    SIM_BIN = args.sim_bin

    extra = None
    if args.cloud_extra_per_class > 0 or args.cloud_extra_data is not None:
        if args.cloud_extra_data is not None:
            ex = load_dataset(args.cloud_extra_data)
        else:
            tmp2 = Path(tempfile.mkdtemp(prefix="reflex-dataset-extra-"))
            try:
                run_simulator(tmp2, args.cloud_extra_per_class, args.seed + 1000)
                ex = load_dataset(tmp2)
            finally:
                shutil.rmtree(tmp2, ignore_errors=True)
        assert ex[3]["seed"] != args.seed, "the cloud's extra data must come from another seed"
        extra = ex
    tmp = None
    if args.data is None:
        tmp = Path(tempfile.mkdtemp(prefix="reflex-dataset-"))
        run_simulator(tmp, args.per_class, args.seed)
        data = tmp
    else:
        data = args.data
    try:
        x, t, y, meta = load_dataset(data)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    classes = meta["classes"]
    assert classes == list(ACTIONS), classes
    out = args.out
    (out / "golden").mkdir(parents=True, exist_ok=True)
    tr, ho = split(len(x))
    print(f"dataset: {len(x)} examples, train {len(tr)}, held-out {len(ho)}", flush=True)

    # Per-channel standardisation, statistics from training data only.
    ch_mean = np.float32(x[tr].astype(np.float64).mean(axis=(0, 2)))
    ch_std = np.float32(x[tr].astype(np.float64).std(axis=(0, 2)))
    xs = standardize(x, ch_mean, ch_std)
    preprocessing = {
        "kind": "per_channel_standardize",
        "formula": "x'[c][i] = (x[c][i] - mean[c]) / std[c] in float32, x in g, c in (x, y, z)",
        "mean": [float(v) for v in ch_mean],
        "std": [float(v) for v in ch_std],
    }

    # ---- edge: small CNN, batch fixed to 1
    print("training edge CNN", flush=True)
    edge = Net([(8, 7, 2), (16, 5, 2)], "mean", [], 4, np.random.default_rng(args.seed))
    train(edge, xs[tr], y[tr], args.edge_epochs, 3e-3, args.seed + 1, label="edge")
    edge_fp32 = out / "edge_fp32.onnx"
    export_onnx(edge, edge_fp32, 1, "reflex edge model, fp32 twin of edge.onnx")
    edge_q = out / "edge.onnx"
    calib_ids = tr[np.random.default_rng(args.seed + 2).permutation(len(tr))[:1000]]
    edge_ops = quantize(edge_fp32, edge_q, xs[calib_ids], args.edge_format)

    # ---- cloud: wider, deeper CNN with mean+max pooling, plus the temperature, symbolic batch
    print("training cloud CNN", flush=True)
    t_mean = np.float32(t[tr].astype(np.float64).mean())
    t_std = np.float32(t[tr].astype(np.float64).std())
    ts = ((t - t_mean) / t_std).astype(np.float32)
    temperature_input = {
        "name": "temperature", "shape": ["N", 1], "dtype": "float32",
        "formula": "t' = (t - mean) / std in float32, t in degrees C",
        "mean": float(t_mean), "std": float(t_std),
    }
    cloud = Net([(32, 7, 1), (48, 5, 2), (64, 3, 1)], "meanmax", [64], 4,
                np.random.default_rng(args.seed + 3), extra=1)
    cx, cy, ct = xs[tr], y[tr], ts[tr]
    if extra is not None:
        ex_x, ex_t, ex_y, ex_meta = extra
        cx = np.concatenate([cx, standardize(ex_x, ch_mean, ch_std)])
        ct = np.concatenate([ct, ((ex_t - t_mean) / t_std).astype(np.float32)])
        cy = np.concatenate([cy, ex_y])
        print(f"  cloud trains on {len(cx)} windows ({len(ex_x)} extra, seed {ex_meta['seed']})", flush=True)
    train(cloud, cx, cy, args.cloud_epochs, 2e-3, args.seed + 4, l2=5e-4, label="cloud", extra=ct)
    cloud_path = out / "cloud.onnx"
    export_onnx(cloud, cloud_path, "N", "reflex cloud model, fp32, symbolic batch N")

    # ---- fallback: logistic regression on the 13 cheap features
    f_all = features(x, t)
    w, b, mu, sd = train_fallback(f_all[tr], y[tr], len(classes))

    # ---- evaluation with onnxruntime on the held-out split
    xh, yh = xs[ho], y[ho]
    lg = {
        "edge_fp32": ort_logits(edge_fp32, xh, True),
        "edge": ort_logits(edge_q, xh, True),
        "cloud": ort_logits(cloud_path, xh, False, ts[ho]),
    }
    pred = {k: v.argmax(axis=1) for k, v in lg.items()}
    pred["fallback"] = fallback_predict(f_all[ho], w, b, mu, sd)
    acc = {k: float((p == yh).mean()) for k, p in pred.items()}

    lat = {}
    if not args.skip_latency:
        for k, p in (("edge", edge_q), ("edge_fp32", edge_fp32), ("cloud", cloud_path)):
            lat[k] = ort_latency(p, xh[:1], ts[ho][:1] if k == "cloud" else None)

    # ---- golden vectors: the first GOLDEN_EXAMPLES held-out examples (balanced)
    g = ho[:GOLDEN_EXAMPLES]
    counts = np.round(x[g] * COUNTS_PER_G)
    assert np.array_equal((counts / COUNTS_PER_G).astype(np.float32), x[g]), "windows are not counts/2048"
    gd = out / "golden"
    np.save(gd / "window_counts.npy", counts.astype(np.int16))
    np.save(gd / "temperature.npy", t[g].astype(np.float32))
    np.save(gd / "labels.npy", y[g].astype(np.int64))
    np.save(gd / "features.npy", f_all[g])
    for k in ("edge", "edge_fp32", "cloud"):
        np.save(gd / f"{k}_logits.npy", lg[k][:GOLDEN_EXAMPLES].astype(np.float32))
    golden_acc = {k: float((p[:GOLDEN_EXAMPLES] == y[g]).mean()) for k, p in pred.items()}
    golden_correct = {k: int((p[:GOLDEN_EXAMPLES] == y[g]).sum()) for k, p in pred.items()}
    write_json(gd / "summary.json", {
        "examples": int(len(g)),
        "window_counts": "int16 [N, 3, 64]; window in g = counts as f32 * (1/2048), exact",
        "inputs_to_models": "window in g, standardised per the model manifest's preprocessing",
        "accuracy": golden_acc,
        "correct": golden_correct,
        "dataset": {"per_class": args.per_class if args.data is None else meta.get("per_class"),
                    "seed": args.seed if args.data is None else meta.get("seed")},
    })

    # ---- manifests
    def onnx_manifest(name, path, batch, desc, extra):
        m = {
            "format": 1,
            "name": name,
            "version": VERSION,
            "kind": "onnx",
            "description": desc,
            "file": path.name,
            "sha256": sha256(path),
            "input": {"name": "window", "shape": [batch, CHANNELS, WINDOW], "dtype": "float32",
                      "layout": "[batch, channel (x, y, z), sample]"},
            "output": {"name": "logits", "shape": [batch, len(classes)], "dtype": "float32",
                       "meaning": "unnormalised class scores (logits); softmax gives probabilities, argmax the class"},
            "preprocessing": preprocessing,
            "classes": classes,
            "actions": ACTIONS,
        }
        m.update(extra)
        return m

    def golden_spec(logits_file, max_abs_diff):
        # Checked by reflex-models at every load (and so by reflexd before a hot swap):
        # the golden windows through the model must give onnxruntime's logits within
        # max_abs_diff (int8: one output quantum; fp32: summation order on other CPUs).
        return {"windows": "golden/window_counts.npy", "scale": 1 / COUNTS_PER_G,
                "temperature": "golden/temperature.npy", "logits": f"golden/{logits_file}",
                "max_abs_diff": max_abs_diff}

    data_info = {"generator": meta.get("generator"), "seed": meta.get("seed"),
                 "per_class": meta.get("per_class"), "train_examples": int(len(tr)),
                 "heldout_examples": int(len(ho)),
                 "split": "round = index // 4; held out when round % 5 == 4"}
    f_ho = f_all[ho]
    write_json(out / "edge.manifest.json", onnx_manifest(
        "edge", edge_q, 1,
        "small 1D-CNN (Conv 3->8 k7 s2, Conv 8->16 k5 s2, mean pool, MatMul 16->4), "
        f"static int8 ({args.edge_format}: uint8 activations, int8 weights, per-tensor)",
        {
            "quantization": {"format": args.edge_format, "activations": "uint8", "weights": "int8",
                             "per_channel": False, "op_types": edge_ops,
                             "calibration": "MinMax over 1000 training windows",
                             "fp32_twin": edge_fp32.name, "fp32_twin_sha256": sha256(edge_fp32)},
            "metrics": {"heldout_accuracy": acc["edge"], "fp32_twin_heldout_accuracy": acc["edge_fp32"],
                        "heldout_examples": int(len(ho)), "ort_latency": lat.get("edge"),
                        "fp32_twin_ort_latency": lat.get("edge_fp32")},
            "dataset": data_info,
            "reference": reference_profile(f_ho, pred["edge"], classes),
            "golden": golden_spec("edge_logits.npy", 0.05),
        }))
    write_json(out / "cloud.manifest.json", onnx_manifest(
        "cloud", cloud_path, "N",
        "wider 1D-CNN (Conv 3->32 k7, Conv 32->48 k5 s2, Conv 48->64 k3, mean+max pool, "
        "MatMul 129->64 over [pooled, standardised temperature], ReLU, MatMul 64->4), fp32, "
        "symbolic batch N",
        {
            "temperature_input": temperature_input,
            "metrics": {"heldout_accuracy": acc["cloud"], "heldout_examples": int(len(ho)),
                        "ort_latency": lat.get("cloud")},
            "dataset": dict(data_info, extra_training=None if extra is None else (
                f"{len(extra[0])} more windows from {extra[3].get('generator')} seed {extra[3]['seed']}, "
                "training only")),
            "reference": reference_profile(f_ho, pred["cloud"], classes),
            "golden": golden_spec("cloud_logits.npy", 1e-3),
        }))
    write_json(out / "fallback.manifest.json", {
        "format": 1,
        "name": "fallback",
        "version": VERSION,
        "kind": "linear",
        "description": "multinomial logistic regression on the 13 cheap features; "
                       "logits[k] = bias[k] + sum_j weights[k][j] * (f[j] - feature_mean[j]) / feature_std[j]",
        "classes": classes,
        "actions": ACTIONS,
        "features": {"names": FEATURE_NAMES, "definition": FEATURE_DEFINITION},
        "linear": {
            "weights": [[float(v) for v in row] for row in w],
            "bias": [float(v) for v in b],
            "feature_mean": [float(v) for v in mu],
            "feature_std": [float(v) for v in sd],
        },
        "metrics": {"heldout_accuracy": acc["fallback"], "heldout_examples": int(len(ho))},
        "dataset": data_info,
        "reference": reference_profile(f_ho, pred["fallback"], classes),
    })

    print()
    print(f"held-out accuracy ({len(ho)} examples):")
    for k in ("edge_fp32", "edge", "fallback", "cloud"):
        print(f"  {k:10s} {100 * acc[k]:6.2f} %")
    for k, v in lat.items():
        print(f"  onnxruntime latency {k:10s} median {v['median_us']:7.2f} µs  p99 {v['p99_us']:7.2f} µs")
    print("files:")
    for p in (edge_q, edge_fp32, cloud_path):
        print(f"  {p.name:16s} {p.stat().st_size:8d} B  sha256 {sha256(p)}")
    for p in sorted(gd.iterdir()):
        print(f"  golden/{p.name:20s} {p.stat().st_size:8d} B")


if __name__ == "__main__":
    main()
