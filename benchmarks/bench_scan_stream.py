"""Benchmark: scanning beyond one process's memory (issue #15), on organism-tiny.

Baseline: the in-memory scan (`ParagraphSet.from_file` + `scan`, everything held until the end).
Measured against it in the same run, each in a fresh subprocess (peak RSS = ru_maxrss):
- the streaming local scan (`scan_to_table`) at N and 8N paragraphs: rows/s, and whether the
  memory above the loaded model (peak RSS minus RSS once the model is loaded) stays flat while
  the input grows (the in-memory scan's grows with it);
- the Ray Data engine (`scan_with_ray`) with 1 and 2 actors: rows/s, and each actor's peak RSS
  (sampled from the actors' processes while they run). Skipped, saying so, without Ray.

    python benchmarks/bench_scan_stream.py [--n 2048] [--scale 8] [--cache-dir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, tracemalloc
import memlens as ml
from memlens import scan_to_table
mode, source, out, cache = sys.argv[1:5]
model = ml.load_model("organism-tiny", cache_dir=cache, progress=False)
loaded = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
tracemalloc.start()  # Python objects only (the paragraphs, ids, rows); tensors are native
t0 = time.perf_counter()
if mode == "memory":
    paras = ml.ParagraphSet.from_file(source, model)
    n = len(ml.scan(model, paras, batch_size=32, progress=False))
else:
    n = scan_to_table(model, source, out, batch_size=32, chunk_size=256, progress=False).header["n"]
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"n": n, "seconds": seconds, "peak_rss_mb": peak, "data_mb": peak - loaded,
                  "python_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}))
"""


def make_input(path: Path, n: int, cache_dir: str | None) -> None:
    """``n`` paragraphs of the organism's background (repeated with new ids), as JSONL."""
    import memlens as ml

    truth = ml.load_model("organism-tiny", cache_dir=cache_dir, progress=False).ground_truth
    pool = truth.background.to_records()
    with path.open("w") as f:
        for i in range(n):
            r = pool[i % len(pool)]
            f.write(json.dumps({"id": f"p{i}", "tokens": r["tokens"]}) + "\n")


def child(mode: str, source: Path, out: Path, cache_dir: str | None) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(source), str(out), cache_dir or ""],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def ray_run(source: Path, out: Path, workers: int, cache_dir: str | None) -> dict:
    """One Ray scan; each actor's peak RSS sampled every 0.5 s from its process."""
    from memlens.scale.ray_scan import scan_with_ray

    peaks: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            ps = subprocess.run(["ps", "-eo", "pid,rss,args"], capture_output=True, text=True).stdout
            for line in ps.splitlines():
                if "MapWorker" in line:
                    pid, rss = line.split()[:2]
                    peaks[int(pid)] = max(peaks.get(int(pid), 0.0), int(rss) / 1024)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    table = scan_with_ray("organism-tiny", source, out, workers=workers, cache_dir=cache_dir, batch_size=32,
                          rows_per_call=256)
    wall = time.perf_counter() - t0
    done.set()
    return {"n": table.header["n"], "seconds": wall, "execution_seconds": table.header["seconds"],
            "actor_peak_rss_mb": sorted(round(v) for v in peaks.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--scale", type=int, default=8, help="the larger input is scale x n paragraphs")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    small, large = tmp / "small.jsonl", tmp / "large.jsonl"
    make_input(small, args.n, args.cache_dir)
    make_input(large, args.scale * args.n, args.cache_dir)
    results: dict[str, dict] = {}
    results["in_memory_n"] = child("memory", small, tmp / "m.safetensors", args.cache_dir)
    results["in_memory_large"] = child("memory", large, tmp / "m4.safetensors", args.cache_dir)
    results["stream_n"] = child("stream", small, tmp / "s.parquet", args.cache_dir)
    results["stream_large"] = child("stream", large, tmp / "s4.parquet", args.cache_dir)
    try:
        import ray  # noqa: F401

        for w in (1, 2):
            results[f"ray_{w}_workers"] = ray_run(small, tmp / f"r{w}.parquet", w, args.cache_dir)
    except ImportError:
        print("Ray is not installed (pip install 'memlens[ray]'): the Ray rows are skipped", file=sys.stderr)
    for name, r in results.items():
        r["rows_per_second"] = round(r["n"] / r["seconds"], 1)
        extra = (f", peak RSS {r['peak_rss_mb']:.0f} MB ({r['data_mb']:.0f} MB above the loaded model), Python objects "
                 f"{r['python_peak_mb']:.1f} MB at peak") if "peak_rss_mb" in r else (
            f", actors' peak RSS {r['actor_peak_rss_mb']} MB" if "actor_peak_rss_mb" in r else "")
        print(f"{name:>16}: {r['n']} paragraphs in {r['seconds']:.1f} s = {r['rows_per_second']} rows/s{extra}")
    base = results["in_memory_n"]
    for name in results:
        if name != "in_memory_n":
            print(f"{name} / in-memory (N): {results[name]['rows_per_second'] / base['rows_per_second']:.2f}x rows/s")
    grow_mem = results["in_memory_large"]["data_mb"] - base["data_mb"]
    grow_stream = results["stream_large"]["data_mb"] - results["stream_n"]["data_mb"]
    print(f"memory above the model, N -> {args.scale}N paragraphs: in-memory {grow_mem:+.0f} MB, "
          f"streaming {grow_stream:+.0f} MB")
    print("peak of Python objects, N -> {}N: in-memory {:.1f} -> {:.1f} MB, streaming {:.1f} -> {:.1f} MB".format(
        args.scale, base["python_peak_mb"], results["in_memory_large"]["python_peak_mb"],
        results["stream_n"]["python_peak_mb"], results["stream_large"]["python_peak_mb"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
