#!/usr/bin/env python3
"""onnxruntime latency of reflex's models, for comparison with tract
(`cargo bench -p reflex-benches --bench model_latency`).

Same models (models/*.onnx) and same inputs (the first 256 golden held-out windows,
standardised per the manifest, cycled) as the Rust bench. One intra-op thread, batch 1,
sequential execution; every call is timed with perf_counter_ns around
InferenceSession.run, so the figures include the Python binding overhead (a few µs).

Run: models/.venv/bin/python benches/ort_latency.py [--runs 20000]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = Path(__file__).resolve().parent.parent / "models"


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--inputs", type=int, default=256)
    args = ap.parse_args()

    counts = np.load(MODELS / "golden" / "window_counts.npy")[: args.inputs]
    windows = (counts.astype(np.float32) * np.float32(1.0 / 2048.0)).astype(np.float32)
    temps = np.load(MODELS / "golden" / "temperature.npy")[: args.inputs]
    edge = json.loads((MODELS / "edge.manifest.json").read_text())
    cases = [
        ("edge (int8)", MODELS / edge["file"], edge),
        ("edge_fp32", MODELS / edge["quantization"]["fp32_twin"], edge),
    ]
    cloud = json.loads((MODELS / "cloud.manifest.json").read_text())
    cases.append(("cloud (batch 1)", MODELS / cloud["file"], cloud))

    print(f"onnxruntime {ort.__version__}, 1 thread, batch 1, {args.runs} runs, "
          f"{len(windows)} distinct inputs cycled")
    for label, path, manifest in cases:
        pre = manifest["preprocessing"]
        mean = np.array(pre["mean"], np.float32)[None, :, None]
        std = np.array(pre["std"], np.float32)[None, :, None]
        xs = ((windows - mean) / std).astype(np.float32)
        feeds = [{"window": xs[i : i + 1]} for i in range(len(xs))]
        t_in = manifest.get("temperature_input")
        if t_in is not None:
            ts = ((temps - np.float32(t_in["mean"])) / np.float32(t_in["std"])).astype(np.float32)
            for i, f in enumerate(feeds):
                f[t_in["name"]] = ts[i : i + 1, None]
        s = session(path)
        for i in range(1000):
            s.run(["logits"], feeds[i % len(feeds)])
        ts = np.empty(args.runs)
        for i in range(args.runs):
            feed = feeds[i % len(feeds)]
            t0 = time.perf_counter_ns()
            s.run(["logits"], feed)
            ts[i] = time.perf_counter_ns() - t0
        ts /= 1000.0
        print(f"  {label:16s} median {np.median(ts):7.2f} µs  p99 {np.percentile(ts, 99):7.2f} µs  "
              f"mean {ts.mean():7.2f} µs")


if __name__ == "__main__":
    main()
