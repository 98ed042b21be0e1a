#!/usr/bin/env python3
"""Time from exec to subscribed of reflexd.

    benches/startup/measure.py REFLEXD CONFIG N cold|warm CACHE_DIR

Runs `REFLEXD run --config CONFIG` N times against the broker CONFIG names, reads its log
until the SUBACK line ("subscribed"), and reports the time from just before exec to that
line's timestamp. `cold` removes CACHE_DIR (the config's [model_cache] dir) before each
run; `warm` keeps it (run once cold first). benches/startup/edge.toml is the example
config's edge route with a cache in /tmp/reflex-startup-cache and a broker on 18931.
"""
import datetime, os, shutil, signal, subprocess, sys, time, statistics
binary, config, n, mode, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
env = dict(os.environ, REFLEX_LOG="info")
env.pop("STATE_DIRECTORY", None)
out = []
for i in range(n):
    if mode == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    t0 = time.time()
    p = subprocess.Popen([binary, "run", "--config", config], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    marks = {}
    for line in p.stderr:
        ts = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        for key, text in (("cache", "from the cache"), ("conn", "connected to the broker"), ("sub", " subscribed")):
            if text in line and key not in marks:
                marks[key] = ts - t0
        if "sub" in marks:
            break
    p.send_signal(signal.SIGTERM); p.wait()
    hit = "cache" in marks
    out.append(marks["sub"])
    print(f"run {i}: connack {marks['conn']*1000:.0f} ms, suback {marks['sub']*1000:.0f} ms, cache hit {hit}")
    time.sleep(1.5)  # between runs only (lets the broker drop the old session's socket); not a synchronisation
print(f"{mode}: n={n} median {statistics.median(out)*1000:.0f} ms, min {min(out)*1000:.0f}, max {max(out)*1000:.0f}")
