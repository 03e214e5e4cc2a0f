#!/usr/bin/env python3
"""Reference fixtures for clipstock-merge: tiny checkpoints and an independent numpy Model Stock.

How to run (from the repository root; numpy and safetensors are the only dependencies):

    /work/venv-parity/bin/python scripts/make_merge_fixtures.py

Output goes to crates/clipstock-merge/tests/fixtures/ (override with --out). Running it twice
produces byte-identical files.

What it writes:
  w0.safetensors, model{1,2,3}.safetensors   anchor and three fine-tuned models, open_clip names
                                             (a 2-block tiny ViT, width 16, plus a 10-class head
                                             and two text-tower leftovers), float32
  hf_w0.safetensors, hf_model{1,2,3}.safetensors
                                             the same weights under HF-transformers names, with
                                             attn.in_proj_* split into self_attn.{q,k,v}_proj.*
                                             and visual.proj transposed into visual_projection
  hf_names.json                              HF name -> {openai name, row range, transposed}
  expected_n2.safetensors                    Model Stock of models 1,2 over every tensor
  expected_n3.safetensors                    Model Stock of models 1,2,3 over every tensor
  expected_n2_vision.safetensors             models 1,2, only visual.* and classification_head.*
                                             merged, the rest plainly averaged
  expected_ratios.json                       per case and tensor: pairwise cosines, cos, t, norms

The deltas are built so that the cosines vary: a shared direction plus per-model noise in
different proportions, one tensor (visual.ln_pre.bias) untouched by every model, one
(visual.class_embedding) with anti-correlated deltas (cos < 0), one (visual.ln_post.bias)
untouched by model 1 only.

The merge below is written from the formula of docs/SPEC.md section 1, independently of the
Rust code: f32 deltas, f64 dot products, mean pairwise cosine clamped to [-1, 1],
t = N cos / ((N-1) cos + 1 + 1e-8), w_H = t mean(w_i) + (1 - t) w0 evaluated in float64 and
rounded once to float32.
"""

import argparse
import json
import math
from pathlib import Path

import numpy as np

try:
    from safetensors.numpy import save_file
except ImportError:  # pragma: no cover - fall back to writing the format by hand
    save_file = None

SEED = 20240327
D = 16  # width
PATCH = 4
GRID = 2  # 2x2 patches of an 8x8 image
LAYERS = 2
MLP = 2 * D
EMBED = 8  # output of visual.proj
CLASSES = 10
VOCAB = 32


def openclip_shapes():
    """Tensor name -> shape, in the order open_clip's state_dict lists them."""
    s = {
        "logit_scale": (),
        "token_embedding.weight": (VOCAB, EMBED),
        "visual.class_embedding": (D,),
        "visual.positional_embedding": (GRID * GRID + 1, D),
        "visual.proj": (D, EMBED),
        "visual.conv1.weight": (D, 3, PATCH, PATCH),
        "visual.ln_pre.weight": (D,),
        "visual.ln_pre.bias": (D,),
    }
    for i in range(LAYERS):
        p = f"visual.transformer.resblocks.{i}."
        s[p + "ln_1.weight"] = (D,)
        s[p + "ln_1.bias"] = (D,)
        s[p + "attn.in_proj_weight"] = (3 * D, D)
        s[p + "attn.in_proj_bias"] = (3 * D,)
        s[p + "attn.out_proj.weight"] = (D, D)
        s[p + "attn.out_proj.bias"] = (D,)
        s[p + "ln_2.weight"] = (D,)
        s[p + "ln_2.bias"] = (D,)
        s[p + "mlp.c_fc.weight"] = (MLP, D)
        s[p + "mlp.c_fc.bias"] = (MLP,)
        s[p + "mlp.c_proj.weight"] = (D, MLP)
        s[p + "mlp.c_proj.bias"] = (D,)
    s["visual.ln_post.weight"] = (D,)
    s["visual.ln_post.bias"] = (D,)
    s["classification_head.weight"] = (CLASSES, EMBED)
    s["classification_head.bias"] = (CLASSES,)
    return s


def make_models(rng):
    """Anchor and three fine-tuned models as dicts of float32 arrays."""
    shapes = openclip_shapes()
    w0 = {}
    for k, shp in shapes.items():
        if "ln_" in k and k.endswith(".weight"):  # LayerNorm gains sit around 1
            w0[k] = np.asarray(1.0 + 0.05 * rng.standard_normal(shp), dtype=np.float32)
        else:
            w0[k] = np.asarray(0.2 * rng.standard_normal(shp), dtype=np.float32)

    models = [dict(), dict(), dict()]
    for idx, (k, shp) in enumerate(shapes.items()):
        shared = rng.standard_normal(shp)
        noise = [rng.standard_normal(shp) for _ in range(3)]
        scale = 0.01 * (1 + idx % 4)
        if k == "visual.ln_pre.bias" or k == "logit_scale":
            deltas = [np.zeros(shp)] * 3  # untouched by every model
        elif k == "visual.class_embedding":
            # Model 2 moves against model 1; model 3 mostly orthogonal: cos < 0 for N=2 and N=3.
            deltas = [shared, -0.7 * shared + 0.5 * noise[1], noise[2] - 0.3 * shared]
        elif k == "visual.ln_post.bias":
            deltas = [np.zeros(shp), shared + 0.5 * noise[1], shared + 0.5 * noise[2]]
        else:
            # Shared direction weight grows with depth-ish index, so cosines span (0, 1).
            a = [0.2, 0.5, 1.0, 2.0, 4.0][idx % 5]
            deltas = [a * shared + noise[i] for i in range(3)]
        for i in range(3):
            models[i][k] = np.asarray(w0[k] + scale * deltas[i], dtype=np.float32)
    return w0, models


def model_stock(w0, models, selected):
    """Independent reference: returns (merged dict, per-tensor stats dict)."""
    n = len(models)
    merged, stats = {}, {}
    for k, a in w0.items():
        if k not in selected:
            acc = np.zeros(a.shape, dtype=np.float64)
            for m in models:
                acc += m[k].astype(np.float64)
            merged[k] = np.asarray(acc / n, dtype=np.float32)
            continue
        a32 = a.astype(np.float32)
        deltas = [(m[k].astype(np.float32) - a32).astype(np.float32).reshape(-1).astype(np.float64) for m in models]
        sq = [float(np.dot(d, d)) for d in deltas]
        pair = {}
        for i in range(n):
            for j in range(i + 1, n):
                pair[f"{i},{j}"] = float(np.dot(deltas[i], deltas[j])) / (math.sqrt(sq[i] * sq[j]) + 1e-8)
        cos = sum(pair.values()) / len(pair)
        cos = min(1.0, max(-1.0, cos))
        t = n * cos / ((n - 1) * cos + 1.0 + 1e-8)
        mean = sum(m[k].astype(np.float64) for m in models) / n
        merged[k] = np.asarray(t * mean + (1.0 - t) * a32.astype(np.float64), dtype=np.float32)
        stats[k] = {
            "pair_cos": pair,
            "cos": cos,
            "t": t,
            "norms": [math.sqrt(s) for s in sq],
        }
    return merged, stats


def hf_rename(sd):
    """open_clip -> HF-transformers names (q/k/v split, proj transposed). Returns (sd, map)."""
    out, names = {}, {}

    def put(hf, oc, value, rows=None, transposed=False):
        # np.array, not np.ascontiguousarray: the latter turns 0-d (logit_scale) into 1-d.
        out[hf] = np.array(value, dtype=np.float32, order="C")
        names[hf] = {"openai": oc, "rows": rows, "transposed": transposed}

    simple = {
        "logit_scale": "logit_scale",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "classification_head.weight": "classification_head.weight",
        "classification_head.bias": "classification_head.bias",
    }
    block = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for oc, value in sd.items():
        if oc in simple:
            put(simple[oc], oc, value)
        elif oc == "visual.proj":
            put("visual_projection.weight", oc, value.T, transposed=True)
        else:
            prefix = "visual.transformer.resblocks."
            rest = oc[len(prefix):]
            layer, sub = rest.split(".", 1)
            hp = f"vision_model.encoder.layers.{layer}."
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if sub.endswith("weight") else "bias"
                for j, qkv in enumerate("qkv"):
                    put(f"{hp}self_attn.{qkv}_proj.{kind}", oc, value[j * D:(j + 1) * D], rows=[j * D, (j + 1) * D])
            else:
                mod, kind = sub.rsplit(".", 1)
                put(f"{hp}{block[mod]}.{kind}", oc, value)
    return out, names


def write_safetensors(path, tensors):
    if save_file is not None:
        save_file(tensors, str(path))
        return
    header, offset, blobs = {}, 0, []
    for k in sorted(tensors):
        b = np.ascontiguousarray(tensors[k], dtype="<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(tensors[k].shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "crates/clipstock-merge/tests/fixtures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(SEED)
    w0, models = make_models(rng)

    write_safetensors(args.out / "w0.safetensors", w0)
    for i, m in enumerate(models):
        write_safetensors(args.out / f"model{i + 1}.safetensors", m)

    hf_w0, names = hf_rename(w0)
    write_safetensors(args.out / "hf_w0.safetensors", hf_w0)
    for i, m in enumerate(models):
        write_safetensors(args.out / f"hf_model{i + 1}.safetensors", hf_rename(m)[0])
    (args.out / "hf_names.json").write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")

    everything = set(w0)
    vision = {k for k in w0 if k.startswith("visual.") or k.startswith("classification_head.")}
    cases = {
        "n2": (models[:2], everything),
        "n3": (models, everything),
        "n2_vision": (models[:2], vision),
    }
    ratios = {}
    for case, (ms, selected) in cases.items():
        merged, stats = model_stock(w0, ms, selected)
        write_safetensors(args.out / f"expected_{case}.safetensors", merged)
        ratios[case] = stats
    # repr() of a Python float round-trips exactly, which json.dumps uses.
    (args.out / "expected_ratios.json").write_text(json.dumps(ratios, indent=1, sort_keys=True) + "\n")

    for case in ("n2", "n3"):
        ts = {k: v["t"] for k, v in ratios[case].items()}
        neg = sorted(k for k, v in ratios[case].items() if v["cos"] <= 0)
        print(f"{case}: t in [{min(ts.values()):.4f}, {max(ts.values()):.4f}], cos <= 0: {neg}")


if __name__ == "__main__":
    main()
