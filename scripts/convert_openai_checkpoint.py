#!/usr/bin/env python3
"""Convert OpenAI's original CLIP checkpoint (a TorchScript archive such as ViT-B-32.pt) into a
safetensors state dict that clipstock reads directly.

Why: the .pt files OpenAI published are TorchScript programs, not pickled state dicts; reading
them needs TorchScript itself. This script needs `torch` and `safetensors` (pip) and runs offline.

    python scripts/convert_openai_checkpoint.py ViT-B-32.pt vit_b32.safetensors [--dtype f32|f16]

The output uses OpenAI's key names (`visual.conv1.weight`, ...), which are also open_clip's.
OpenAI stores most weights in fp16; `--dtype f32` (the default) widens them losslessly.
"""
import argparse
import sys

import torch
from safetensors.torch import save_file

# Integers OpenAI keeps in the archive's state dict; clipstock infers them from shapes.
NON_PARAMETERS = {"input_resolution", "context_length", "vocab_size"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32")
    args = ap.parse_args()
    dtype = torch.float32 if args.dtype == "f32" else torch.float16
    try:
        module = torch.jit.load(args.src, map_location="cpu")
        state = module.state_dict()
    except RuntimeError:
        # Not TorchScript: a plain pickled state dict (or a checkpoint dict holding one).
        state = torch.load(args.src, map_location="cpu")
        state = state.get("state_dict", state)
    out = {}
    for k, v in state.items():
        if k in NON_PARAMETERS or not torch.is_tensor(v) or not v.is_floating_point():
            continue
        out[k] = v.detach().to(dtype).contiguous()
    if "visual.conv1.weight" not in out:
        print(f"{args.src}: no `visual.conv1.weight`; not an OpenAI CLIP ViT", file=sys.stderr)
        return 1
    save_file(out, args.dst)
    print(f"wrote {args.dst}: {len(out)} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
