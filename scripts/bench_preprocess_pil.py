#!/usr/bin/env python3
"""Images per second for CLIP's eval preprocessing with PIL + torchvision, single process.

The same work as `cargo bench -p clipstock-data --bench preprocess` (which writes the 500x375
JPEG it times to $CARGO_TARGET_DIR/preprocess_bench_500x375.jpg):

    /work/venv-parity/bin/python scripts/bench_preprocess_pil.py PATH.jpg [SECONDS]
"""

import sys
import time

import torch
import torchvision.transforms as T
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def main():
    path = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    torch.set_num_threads(1)
    tf = T.Compose([
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])

    def full():
        with Image.open(path) as im:
            return tf(im.convert("RGB"))

    decoded = Image.open(path).convert("RGB")

    def rate(fn):
        """(images per wall second, images per CPU second of this thread): the VM is shared."""
        fn()
        n, start, cpu0 = 0, time.perf_counter(), time.thread_time()
        while time.perf_counter() - start < seconds:
            fn()
            n += 1
        return n / (time.perf_counter() - start), n / (time.thread_time() - cpu0)

    def decode_only():
        with Image.open(path) as im:
            return im.convert("RGB")

    print(f"{'work':<48} {'img/s':>10} {'ms/img':>10} {'img/CPU-s':>14}")
    for name, fn in [
        ("decode only (PIL)", decode_only),
        ("resize+crop+ToTensor+Normalize only", lambda: tf(decoded)),
        ("eval: open+convert+transform (1 process)", full),
    ]:
        r, cpu = rate(fn)
        print(f"{name:<48} {r:>10.1f} {1000 / r:>10.3f} {cpu:>14.1f}")


if __name__ == "__main__":
    main()
