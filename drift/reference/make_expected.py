#!/usr/bin/env python3
"""Writes drift/tests/expected.json: scipy's values for the reflex-drift statistics.

Run once after changing a definition, then commit the JSON (CI has no Python):

    python3 -m venv drift/.venv
    drift/.venv/bin/pip install -r drift/reference/requirements.txt
    drift/.venv/bin/python drift/reference/make_expected.py

Inputs are not stored: both this script and the Rust tests draw them from the same
generator (SplitMix64; uniform = top 53 bits / 2^53; normal ~ sum of 12 uniforms - 6),
using only +, *, floor, so both sides get bit-identical samples. Each case records the
first values and the sum of its samples so the Rust side can check that.

What is compared with what:
  ks_2samp         scipy.stats.ks_2samp(a, b) (method='auto'): statistic, p-value, method
  kstwo_sf         scipy.stats.kstwo.sf(d, n)
  ks_profile       statistic: scipy.stats.kstest(sample, F) with F = numpy.interp(x, q, p),
                   the piecewise-linear CDF through the 101 quantiles;
                   p-value: scipy.stats.kstwo.sf(D, round(n*n_ref/(n+n_ref)))
  wasserstein      scipy.stats.wasserstein_distance(a, b)
  wasserstein_profile  integral over p of |Q_sample(p) - Q_profile(p)|, midpoint rule with
                   2,000,000 points (Q_sample(p) = sorted[ceil(n p) - 1])
  psi              numpy, the definition in drift/src/stats/psi.rs (deciles of the profile,
                   open outer bins, fractions < 1e-4 raised to 1e-4, natural log)
  jensen_shannon   scipy.spatial.distance.jensenshannon(p, q, base=2) (distance)
  profile_std      standard deviation of Q_profile(U), U uniform, midpoint rule with
                   2,000,000 points (the scale of the normalised Wasserstein distance)
"""
import json
import math
import os
import sys

import numpy as np
import scipy
from scipy import stats
from scipy.spatial import distance

MASK = (1 << 64) - 1


def splitmix(seed):
    x = seed & MASK
    while True:
        x = (x + 0x9E3779B97F4A7C15) & MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def draw(spec):
    """spec: {kind: normal|uniform, seed, n, loc, scale, step (0 = no rounding)}."""
    gen = splitmix(spec["seed"])
    out = []
    for _ in range(spec["n"]):
        if spec["kind"] == "normal":
            s = 0.0
            for _ in range(12):
                s += (next(gen) >> 11) * (1.0 / 9007199254740992.0)
            z = s - 6.0
        elif spec["kind"] == "uniform":
            z = (next(gen) >> 11) * (1.0 / 9007199254740992.0)
        else:
            raise ValueError(spec["kind"])
        v = spec["loc"] + spec["scale"] * z
        if spec["step"] > 0.0:
            v = math.floor(v / spec["step"]) * spec["step"]
        out.append(v)
    return np.array(out, dtype=np.float64)


def spec(kind, seed, n, loc=0.0, scale=1.0, step=0.0):
    return {"kind": kind, "seed": seed, "n": n, "loc": loc, "scale": scale, "step": step}


def check(s, values):
    return {"first": [float(v) for v in values[:3]], "sum": float(np.sum(values))}


def profile_of(values):
    return [float(v) for v in np.quantile(values, np.linspace(0.0, 1.0, 101))]


def psi_numpy(q, sample, bins=10):
    probs = np.linspace(0.0, 1.0, len(q))
    edges = np.interp(np.arange(1, bins) / bins, probs, q)
    edges = np.unique(edges)
    ref_cdf = np.interp(edges, q, probs)
    ref = np.diff(np.concatenate([[0.0], ref_cdf, [1.0]]))
    counts = np.bincount(np.searchsorted(edges, sample, side="left"), minlength=len(edges) + 1)
    cur = counts / len(sample)
    ref = np.maximum(ref, 1e-4)
    cur = np.maximum(cur, 1e-4)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def wasserstein_profile(q, sample, points=2_000_000):
    p = (np.arange(points) + 0.5) / points
    qs = np.interp(p, np.linspace(0.0, 1.0, len(q)), q)
    srt = np.sort(sample)
    idx = np.ceil(len(srt) * p).astype(np.int64) - 1
    return float(np.mean(np.abs(srt[idx] - qs)))


def main():
    out = {
        "generator": "make_expected.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "ks_2samp": [],
        "kstwo_sf": [],
        "ks_profile": [],
        "wasserstein": [],
        "wasserstein_profile": [],
        "psi": [],
        "jensen_shannon": [],
        "profile_std": [],
    }

    pairs = [
        (spec("normal", 1, 50), spec("normal", 2, 50)),
        (spec("normal", 3, 40), spec("normal", 4, 60, loc=0.5)),
        (spec("normal", 5, 200), spec("normal", 6, 130, scale=1.5)),
        (spec("uniform", 7, 1000), spec("uniform", 8, 700, loc=0.05)),
        (spec("normal", 9, 300, step=0.25), spec("normal", 10, 250, loc=0.1, step=0.25)),
        (spec("normal", 11, 2000), spec("normal", 12, 2000, loc=0.08)),
        (spec("normal", 13, 7), spec("normal", 14, 5, loc=1.0)),
        (spec("normal", 15, 3000), spec("normal", 16, 4000, loc=0.02)),
        (spec("normal", 17, 12000), spec("normal", 18, 3000, loc=0.05)),
        (spec("normal", 19, 15000), spec("normal", 20, 11000)),
        (spec("uniform", 21, 20000, step=0.01), spec("uniform", 22, 12000, loc=0.01, step=0.01)),
        (spec("normal", 23, 11000), spec("normal", 24, 100, loc=0.3)),
    ]
    for sa, sb in pairs:
        a, b = draw(sa), draw(sb)
        r = stats.ks_2samp(a, b)
        method = "exact" if max(len(a), len(b)) <= 10000 else "asymptotic"
        out["ks_2samp"].append({
            "a": sa, "b": sb, "a_check": check(sa, a), "b_check": check(sb, b),
            "statistic": float(r.statistic), "p_value": float(r.pvalue), "method": method,
        })
        out["wasserstein"].append({
            "a": sa, "b": sb, "distance": float(stats.wasserstein_distance(a, b)),
        })

    for n in [5, 20, 100, 140, 141, 300, 1000, 1714, 4000, 20000]:
        for c in [0.3, 0.6, 0.9, 1.1, 1.36, 1.63, 2.0, 3.0]:
            d = c / math.sqrt(n)
            if d >= 1.0:
                continue
            out["kstwo_sf"].append({"n": n, "d": d, "sf": float(stats.kstwo.sf(d, n))})

    ref_specs = [
        spec("normal", 101, 4000, loc=2.0, scale=0.5),
        spec("uniform", 102, 4000, loc=-1.0, scale=2.0),
    ]
    for ref_spec in ref_specs:
        ref = draw(ref_spec)
        q = profile_of(ref)
        probs = np.linspace(0.0, 1.0, 101)
        grid = (np.arange(2_000_000) + 0.5) / 2_000_000
        out["profile_std"].append({
            "reference_quantiles": q,
            "std": float(np.std(np.interp(grid, probs, q))),
        })
        cases = []
        if ref_spec["kind"] == "normal":
            cases = [
                spec("normal", 201, 500, loc=2.0, scale=0.5),
                spec("normal", 202, 3000, loc=2.0, scale=0.5),
                spec("normal", 203, 3000, loc=2.1, scale=0.5),
                spec("normal", 204, 1000, loc=2.0, scale=0.7),
                spec("normal", 205, 60, loc=2.5, scale=0.5),
                spec("normal", 206, 5000, loc=2.0, scale=0.5, step=0.05),
            ]
        else:
            cases = [
                spec("uniform", 211, 800, loc=-1.0, scale=2.0),
                spec("uniform", 212, 2000, loc=-0.8, scale=2.0),
                spec("normal", 213, 2000, loc=0.0, scale=0.5),
            ]
        for cs in cases:
            x = draw(cs)
            r = stats.kstest(x, lambda v: np.interp(v, q, probs))
            n_ref = len(ref)
            en = len(x) * n_ref / (len(x) + n_ref)
            p = float(stats.kstwo.sf(r.statistic, round(en)))
            entry = {"reference": ref_spec, "reference_quantiles": q, "sample": cs,
                     "sample_check": check(cs, x)}
            out["ks_profile"].append({**entry, "statistic": float(r.statistic), "p_value": p,
                                      "n_eff": round(en)})
            out["wasserstein_profile"].append({**entry,
                                               "distance": wasserstein_profile(q, x)})
            out["psi"].append({**entry, "psi": psi_numpy(q, x)})

    for p, q in [
        ([0.26075, 0.245, 0.24875, 0.2455], [0.25, 0.25, 0.25, 0.25]),
        ([0.26075, 0.245, 0.24875, 0.2455], [0.7, 0.1, 0.1, 0.1]),
        ([10, 0, 5, 1], [1, 1, 1, 1]),
        ([1, 0], [0, 1]),
        ([0.5, 0.5], [0.5, 0.5]),
        ([3, 7, 0, 0, 1], [2, 2, 2, 2, 2]),
    ]:
        out["jensen_shannon"].append({
            "p": p, "q": q, "distance": float(distance.jensenshannon(p, q, base=2)),
        })

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "expected.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
