#!/usr/bin/env python3
"""numpy comparison for clipstock-merge's benchmark (crates/clipstock-merge/benches/merge.rs).

    cargo bench -p clipstock-merge --bench merge -- --dir D --keep
    /work/venv-parity/bin/python scripts/bench_merge_numpy.py D [--out-dir /dev/shm]

Merges D/w0.safetensors with D/model{1,2,3}.safetensors by Model Stock the way a numpy user
would, in two variants:

  f64  the same arithmetic as clipstock-merge (SPEC.md section 1): f32 deltas, f64 dot products,
       w = t*mean + (1-t)*w0 evaluated in f64 and rounded to f32;
  f32  everything in float32 (np.dot on float32, as the official PyTorch code sums), the
       cheapest numpy can do.

Each variant loads the four files fully (safetensors.numpy.load_file), merges, saves with
safetensors.numpy.save_file and fsyncs the output. Prints wall time per phase, GB/s of logical
bytes moved (4 inputs read + 1 output written) and peak RSS.
"""

import argparse
import os
import resource
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def merge(w0, models, f64):
    n = len(models)
    out = {}
    for k, a in w0.items():
        ms = [m[k] for m in models]
        ds = [(m - a).reshape(-1) for m in ms]  # float32 deltas
        if f64:
            ds = [d.astype(np.float64) for d in ds]
        g = {}
        for i in range(n):
            for j in range(i, n):
                g[i, j] = float(np.dot(ds[i], ds[j]))
        cos = np.mean([g[i, j] / (np.sqrt(g[i, i] * g[j, j]) + 1e-8) for i in range(n) for j in range(i + 1, n)])
        cos = min(1.0, max(-1.0, float(cos)))
        t = n * cos / ((n - 1) * cos + 1 + 1e-8)
        if f64:
            s = ms[0].astype(np.float64)
            for m in ms[1:]:
                s += m
            out[k] = ((t / n) * s + (1 - t) * a.astype(np.float64)).astype(np.float32)
        else:
            s = ms[0].copy()
            for m in ms[1:]:
                s += m
            out[k] = np.float32(t / n) * s + np.float32(1 - t) * a
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out-dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    ap.add_argument("--variant", choices=["f64", "f32", "both"], default="both")
    args = ap.parse_args()
    out_dir = args.out_dir or args.dir
    files = [args.dir / "w0.safetensors"] + [args.dir / f"model{i}.safetensors" for i in (1, 2, 3)]
    file_bytes = files[0].stat().st_size
    moved = 5 * file_bytes
    print(f"numpy {np.__version__}, {os.cpu_count()} cpus, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    print(f"inputs: 4 x {file_bytes / 1e6:.0f} MB; {moved / 1e9:.2f} GB moved (4 inputs read + 1 output written)")
    variants = ["f64", "f32"] if args.variant == "both" else [args.variant]
    for variant in variants:
        t0 = time.perf_counter()
        w0 = load_file(str(files[0]))
        models = [load_file(str(f)) for f in files[1:]]
        t1 = time.perf_counter()
        merged = merge(w0, models, variant == "f64")
        t2 = time.perf_counter()
        out = out_dir / "numpy-bench-merged.safetensors"
        save_file(merged, str(out))
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        t3 = time.perf_counter()
        out.unlink()
        del w0, models, merged
        total = t3 - t0
        print(
            f"{variant}: load {t1 - t0:.3f} s, merge {t2 - t1:.3f} s, save+fsync {t3 - t2:.3f} s, "
            f"total {total:.3f} s = {moved / total / 1e9:.2f} GB/s"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
