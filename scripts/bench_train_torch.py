#!/usr/bin/env python3
"""PyTorch (open_clip) reference for `clipstock bench --what train|eval` on the same machine.

Same work as crates/clipstock-cli/src/bench.rs: the ViT-B/32 vision tower with OpenAI's
QuickGELU, random init, a Linear(512, 1000) head on L2-normalised features; the train step is
forward, cross-entropy, backward, global-norm clipping at 1 (the recipe's default, with the loss
and norm read back as the trainer does; `--clip 0` drops it), AdamW (lr 3e-5, wd 0.1, eps 1e-8)
at batch 8; the eval forward runs under no_grad at batch 32. Offline (pretrained=None), nothing
downloaded. scripts/bench_vs_torch.sh runs it alternately with `clipstock bench`.

    /work/venv-parity/bin/python scripts/bench_train_torch.py --what train
    /work/venv-parity/bin/python scripts/bench_train_torch.py --what eval
    python3 scripts/bench_train_torch.py --device cuda --precision bf16 --train-batch 128

On CUDA every timed step ends with a synchronisation, and `--precision bf16|f16` runs the
forward under `torch.autocast` (AMP: f32 master weights, as clipstock's `optim.precision`).

Peak RSS is the process's (`getrusage` maxrss never goes down), so run one `--what` per
process to get each phase's own peak.
"""

import argparse
import os
import resource
import statistics
import time

import open_clip
import torch
import torch.nn.functional as F


class Classifier(torch.nn.Module):
    """open_clip's image tower plus a linear head on normalised features (model-soups' layout)."""

    def __init__(self, visual, embed_dim, classes):
        super().__init__()
        self.visual = visual
        self.head = torch.nn.Linear(embed_dim, classes)

    def forward(self, x):
        return self.head(F.normalize(self.visual(x), dim=-1))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build(model_name):
    # Only the image tower is built: the classifier never runs the text tower, and clipstock's
    # bench leaves it out too, so parameters, optimizer state and peak RSS cover the same
    # tensors. `_build_vision_tower` is what `open_clip.create_model` calls for `.visual`
    # (same config, same init); building the whole CLIP and deleting the text tower would
    # leave its ~250 MB in the peak RSS.
    cfg = open_clip.get_model_config(model_name)
    visual = open_clip.model._build_vision_tower(
        cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True
    )
    return Classifier(visual, cfg["embed_dim"], 1000)


def time_steps(step, warmup, iters, sync=lambda: None):
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times


def report(label, batch, times):
    med = statistics.median(times)
    best = min(times)
    print(
        f"{label}: batch {batch}, {len(times)} timed steps: "
        f"median {med:.3f} s/step ({batch / med:.2f} img/s), "
        f"best {best:.3f} s/step ({batch / best:.2f} img/s); "
        f"all: {' '.join(f'{t:.3f}' for t in times)}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--what", choices=["train", "eval", "both"], default="train")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--eval-batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--clip",
        type=float,
        default=1.0,
        help="global gradient-norm clipping as the recipe's optim.grad_clip_norm (0: off)",
    )
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument(
        "--precision",
        choices=["f32", "bf16", "f16"],
        default="f32",
        help="autocast dtype of the forward (f32: none); parameters stay f32",
    )
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    amp_dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(a.precision)

    def autocast():
        return torch.autocast(
            device_type=dev.type, dtype=amp_dtype, enabled=amp_dtype is not None
        )

    torch.set_num_threads(a.threads)
    # torch + open_clip's imports alone (shared libraries, MKL, CUDA stubs) are part of it.
    print(f"RSS after imports: {peak_rss_mib():.0f} MiB")
    torch.manual_seed(0)
    model = build(a.model).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    print(
        f"torch {torch.__version__}, open_clip {open_clip.__version__}, "
        f"{torch.get_num_threads()} threads, {a.model} ({n_params} params incl. head), "
        f"load average {os.getloadavg()[0]:.2f}, device {dev}"
        + (f" ({torch.cuda.get_device_name(dev)})" if cuda else "")
        + f", precision {a.precision}"
    )
    print(f"RSS after building the model: {peak_rss_mib():.0f} MiB")

    if a.what in ("train", "both"):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.1, eps=1e-8)
        x = torch.randn(a.train_batch, 3, size, size, device=dev)
        y = torch.tensor([(i * 37) % 1000 for i in range(a.train_batch)], device=dev)
        # f16 needs a loss scale as in the trainer; bf16 and f32 do not.
        scaler = torch.amp.GradScaler(dev.type, enabled=a.precision == "f16")

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x).float(), y)
            scaler.scale(loss).backward()
            # The recipe's global-norm clipping and the trainer's read-back of loss and norm
            # (clipstock's step does both), unless --clip 0.
            if a.clip > 0:
                scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
                float(norm)
            scaler.step(opt)
            scaler.update()
            float(loss.detach())

        report("train step (AdamW)", a.train_batch, time_steps(step, a.warmup, a.iters, sync))
        print(f"peak RSS: {peak_rss_mib():.0f} MiB, load average {os.getloadavg()[0]:.2f}")
        del opt

    if a.what in ("eval", "both"):
        model.eval()
        x = torch.randn(a.eval_batch, 3, size, size, device=dev)

        def fwd():
            with torch.no_grad(), autocast():
                model(x)

        report("eval forward", a.eval_batch, time_steps(fwd, a.warmup, a.iters, sync))
        print(f"peak RSS: {peak_rss_mib():.0f} MiB, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
