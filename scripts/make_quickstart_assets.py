#!/usr/bin/env python3
"""Build the quickstart assets in data/quickstart/: shipped Fashion-MNIST subsets, the class
files in the ImageNet formats, and a tiny CLIP pretrained contrastively by this script.

How to run (from the repository root, once; the outputs are committed):

    apt-get install -y dataset-fashion-mnist          # Debian, MIT (Zalando SE)
    /work/venv-parity/bin/python scripts/make_quickstart_assets.py

    # optional: zero-shot numbers of the shipped weights on the tree that
    # clipstock_data::quickstart::write_quickstart_tree writes (all six evaluation layouts)
    QUICKSTART_TREE_OUT=/tmp/qs-tree cargo test --release -p clipstock-data --test quickstart -- --ignored
    /work/venv-parity/bin/python scripts/make_quickstart_assets.py --eval-tree /tmp/qs-tree

Everything runs on CPU with fixed seeds and a fixed thread count; two runs write
byte-identical files (checked with sha256sum).

Why a self-made CLIP: the quickstart must show zero-shot accuracy above chance and fine-tuning
plus Model Stock moving in-distribution and shift accuracy, in minutes on two cores, without a
download. A random CLIP cannot do the first, a real one cannot do the second on two cores.

Outputs (data/quickstart/):
  train.png, val.png, v2.png  grey 28x28 tiles in a grid (row-major), see manifest.json
  manifest.json               tile size, columns, counts and labels of each mosaic, provenance
  wnids.txt classnames.json templates.json r_subset.json a_subset.json objectnet.json
  tiny_clip.safetensors       float16, OpenAI/open_clip key names
  VERSIONS.txt                library versions used
"""

import argparse
import gzip
import json
import math
import platform
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import open_clip
import safetensors
from safetensors.torch import load_file, save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = REPO_ROOT / "data" / "quickstart"

# Label order is Fashion-MNIST's; the folder names sort in the same order (f0..f9).
WNIDS = ["f0_tshirt", "f1_trouser", "f2_pullover", "f3_dress", "f4_coat",
         "f5_sandal", "f6_shirt", "f7_sneaker", "f8_bag", "f9_ankle_boot"]
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
              "sandal", "shirt", "sneaker", "bag", "ankle boot"]
TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a low resolution photo of a {}.",
    "a black and white photo of a {}.",
    "a sketch of a {}.",
    "a rendering of a {}.",
    "a cropped photo of the {}.",
    "a blurry photo of a {}.",
]
# Classes covered by the R and A copies (ascending, 8 of 10, different from each other).
R_SUBSET = [0, 1, 2, 3, 5, 7, 8, 9]
A_SUBSET = [0, 1, 3, 4, 5, 6, 7, 9]
# ObjectNet-like coarse classes; "shirt" (6) is deliberately unmapped: its folder exists in the
# tree and the evaluator must ignore it, as ObjectNet's 200 unmapped folders.
OBJECTNET = [
    ("bag", "Bag", "bag", [8]),
    ("dress", "Dress", "dress", [3]),
    ("footwear", "Footwear", "footwear", [5, 7, 9]),
    ("jacket", "Jacket", "jacket", [4]),
    ("sweater", "Sweater", "sweater", [2]),
    ("t_shirt", "T-shirt", "t-shirt", [0]),
    ("trousers", "Trousers", "trousers", [1]),
]

TILE = 28
COLUMNS = 50
# Per class: train from the idx train split, val and v2 from the idx test split.
N_TRAIN, N_VAL, N_V2 = 200, 50, 50
N_HELDOUT = 1000  # pretraining pool images kept aside to decide when to stop

# Tiny CLIP. Heads = max(1, width // 64) is what clipstock (and OpenAI's loader) infer from
# shapes, so widths below 128 must have exactly one head.
IMAGE_SIZE = 32
EMBED_DIM = 32
VISION_CFG = dict(image_size=IMAGE_SIZE, patch_size=8, width=64, layers=2, head_width=64)
TEXT_CFG = dict(context_length=32, vocab_size=49408, width=32, heads=1, layers=2)

SEED_SPLIT = 20240301
SEED_MODEL = 1
SEED_TRAIN = 2
THREADS = 2
BATCH = 128
MAX_STEPS = 1500
EVAL_EVERY = 50
LR = 1e-3
WARMUP = 50
# Stop as soon as held-out zero-shot reaches this: the quickstart needs a CLIP that is clearly
# better than chance but leaves fine-tuning plenty to gain.
TARGET_HELDOUT_ZS = 0.62

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
SAFETENSORS_METADATA = {"format": "pt"}


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


def balanced_pick(labels, per_class, rng, exclude=None):
    taken = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        if exclude is not None:
            idx = idx[~np.isin(idx, exclude)]
        taken.append(rng.choice(idx, size=per_class, replace=False))
    out = np.concatenate(taken)
    # Shuffled, so a prefix of a mosaic is still balanced-ish and not one class.
    return out[rng.permutation(len(out))]


def write_mosaic(path, images):
    n = len(images)
    rows = math.ceil(n / COLUMNS)
    canvas = np.zeros((rows * TILE, COLUMNS * TILE), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, COLUMNS)
        canvas[r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE] = img
    # optimize=True makes zlib try harder; output is still deterministic.
    Image.fromarray(canvas, mode="L").save(path, format="PNG", optimize=True)


# ---------------------------------------------------------------------------
# Preprocessing exactly as SPEC §5 at IMAGE_SIZE (PIL bicubic resize of the shorter side,
# centre crop, CLIP normalisation).
# ---------------------------------------------------------------------------
def preprocess(rgb_u8):
    img = Image.fromarray(rgb_u8, mode="RGB")
    w, h = img.size
    s = IMAGE_SIZE
    if w <= h:
        nw, nh = s, int(s * h / w)
    else:
        nw, nh = int(s * w / h), s
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = round((nw - s) / 2), round((nh - s) / 2)
    img = img.crop((left, top, left + s, top + s))
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def grey_to_rgb(g):
    g = np.clip(g * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


# ---------------------------------------------------------------------------
# Pretraining augmentations: kinds of images a web-scale CLIP has seen (drawings, posters,
# bad photos, odd poses). Related to, but milder than, the shifted copies the Rust side
# writes, so zero-shot on the shifts is above chance yet below val.
# ---------------------------------------------------------------------------
def hue_rgb(h):
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return 1.0 - np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def sobel(g):
    p = np.pad(g, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return np.sqrt(gx * gx + gy * gy)


def box_blur(g):
    p = np.pad(g, 1, mode="edge")
    return sum(p[i:i + g.shape[0], j:j + g.shape[1]] for i in range(3) for j in range(3)) / 9.0


def clutter(size, rng):
    bg = np.full((size, size, 3), rng.uniform(0.0, 0.4), dtype=np.float64)
    for _ in range(rng.integers(3, 7)):
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(3, size // 2, 2)
        bg[y0:y0 + h, x0:x0 + w] = rng.uniform(0.0, 0.5, 3)
    return np.clip(bg + rng.normal(0, 0.04, bg.shape), 0, 1)


def augment(g, rng):
    """g: [28, 28] float in [0, 1]; returns an RGB uint8 image (any size)."""
    u = rng.random()
    if u < 0.40:
        if rng.random() < 0.5:
            g = g[:, ::-1]
        return grey_to_rgb(g)
    if u < 0.50:  # tinted photo
        col = hue_rgb(rng.random()) * rng.uniform(0.6, 1.0)
        return (np.clip(g[:, :, None] * col, 0, 1) * 255 + 0.5).astype(np.uint8)
    if u < 0.60:  # drawing: dark lines on white
        e = np.clip(sobel(g) * rng.uniform(0.8, 1.6), 0, 1)
        return grey_to_rgb(1.0 - e)
    if u < 0.70:  # poster / rendering
        levels = rng.integers(3, 5)
        q = np.floor(g * levels).clip(0, levels - 1) / (levels - 1)
        if rng.random() < 0.3:
            q = 1.0 - q
        fg, bg = hue_rgb(rng.random()), hue_rgb(rng.random()) * 0.3
        return (np.clip(q[:, :, None] * fg + (1 - q[:, :, None]) * bg, 0, 1) * 255 + 0.5).astype(np.uint8)
    if u < 0.85:  # bad photo
        c = rng.uniform(0.6, 1.0)
        x = box_blur(g) if rng.random() < 0.5 else g
        x = x * c + (1 - c) * 0.5 + rng.normal(0, rng.uniform(0.05, 0.15), g.shape)
        return grey_to_rgb(np.clip(x, 0, 1))
    # odd pose on a cluttered background
    g = np.rot90(g, k=int(rng.integers(0, 4)))
    size = 36
    s = int(rng.integers(22, 29))
    small = np.asarray(Image.fromarray((g * 255).astype(np.uint8)).resize((s, s), Image.BILINEAR),
                       dtype=np.float64) / 255.0
    out = clutter(size, rng)
    x0, y0 = rng.integers(0, size - s + 1, 2)
    a = np.clip(small * 3.0, 0, 1)[:, :, None]
    out[y0:y0 + s, x0:x0 + s] = a * small[:, :, None] + (1 - a) * out[y0:y0 + s, x0:x0 + s]
    return (out * 255 + 0.5).astype(np.uint8)


def plain_batch(images):
    return torch.from_numpy(np.stack([preprocess(grey_to_rgb(g / 255.0)) for g in images]))


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
def build_model():
    torch.manual_seed(SEED_MODEL)
    return open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=dict(VISION_CFG), text_cfg=dict(TEXT_CFG),
                          quick_gelu=True)


def tokenize(texts):
    return open_clip.tokenize(texts, context_length=TEXT_CFG["context_length"])


@torch.no_grad()
def zeroshot_head(model):
    rows = []
    for name in CLASSNAMES:
        emb = F.normalize(model.encode_text(tokenize([t.replace("{}", name) for t in TEMPLATES])), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows) * 100.0


@torch.no_grad()
def logits_of(model, head, x):
    out = []
    for i in range(0, len(x), 500):
        out.append(F.normalize(model.encode_image(x[i:i + 500]), dim=-1) @ head.T)
    return torch.cat(out)


def accuracy(logits, labels):
    return (logits.argmax(dim=1) == torch.as_tensor(labels)).float().mean().item()


def pretrain(model, pool_x, pool_y, heldout_x, heldout_y):
    rng = np.random.default_rng(SEED_TRAIN)
    torch.manual_seed(SEED_TRAIN)
    # One caption per (class, template): encode only the distinct captions of a step.
    captions = [t.replace("{}", n) for n in CLASSNAMES for t in TEMPLATES]
    cap_tokens = tokenize(captions)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    held = plain_batch(heldout_x)
    for step in range(1, MAX_STEPS + 1):
        lr = LR * min(1.0, step / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / MAX_STEPS))
        for grp in opt.param_groups:
            grp["lr"] = lr
        idx = rng.choice(len(pool_x), size=BATCH, replace=False)
        x = torch.from_numpy(np.stack([preprocess(augment(pool_x[i] / 255.0, rng)) for i in idx]))
        cap = pool_y[idx] * len(TEMPLATES) + rng.integers(0, len(TEMPLATES), BATCH)
        uniq, inverse = np.unique(cap, return_inverse=True)
        model.train()
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(cap_tokens[torch.from_numpy(uniq)]), dim=-1)[torch.from_numpy(inverse)]
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        # Captions repeat within a batch (10 classes); every pair with the same caption is a
        # positive, so the targets are spread over them instead of pretending they differ.
        same = torch.from_numpy(cap[:, None] == cap[None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        loss = 0.5 * (-(target * F.log_softmax(logits, 1)).sum(1).mean()
                      - (target * F.log_softmax(logits.T, 1)).sum(1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % EVAL_EVERY == 0:
            model.eval()
            acc = accuracy(logits_of(model, zeroshot_head(model), held), heldout_y)
            print(f"step {step:5d}  loss {loss.item():.4f}  lr {lr:.2e}  held-out zero-shot {acc:.3f}", flush=True)
            if acc >= TARGET_HELDOUT_ZS:
                return step
    return MAX_STEPS


@torch.no_grad()
def round_params(model, dtype):
    for p in model.parameters():
        p.copy_(p.to(dtype).to(torch.float32))


# ---------------------------------------------------------------------------
# Zero-shot on a tree written by the Rust side (SPEC §5 scoring on the quickstart classes)
# ---------------------------------------------------------------------------
def load_folder_set(folder, label_of):
    xs, ys = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        y = label_of(sub.name)
        if y is None:
            continue
        for f in sorted(sub.iterdir()):
            xs.append(preprocess(np.asarray(Image.open(f).convert("RGB"))))
            ys.append(y)
    return torch.from_numpy(np.stack(xs)), ys


def eval_tree(model, root):
    head = zeroshot_head(model)
    res = OrderedDict()
    wn = {w: i for i, w in enumerate(WNIDS)}
    for name, rel in (("val", "imagenet/val"), ("sketch", "sketch")):
        x, y = load_folder_set(root / rel, wn.get)
        res[name] = accuracy(logits_of(model, head, x), y)
    x, y = load_folder_set(root / "imagenetv2-matched-frequency", int)
    res["v2"] = accuracy(logits_of(model, head, x), y)
    for name, rel, sub in (("r", "imagenet-r", R_SUBSET), ("a", "imagenet-a", A_SUBSET)):
        pos = {WNIDS[c]: j for j, c in enumerate(sub)}
        x, y = load_folder_set(root / rel, pos.get)
        res[name] = accuracy(logits_of(model, head, x)[:, sub], y)
    folders = {f: j for j, (f, _, _, _) in enumerate(OBJECTNET)}
    x, y = load_folder_set(root / "objectnet-1.0" / "images", folders.get)
    lg = logits_of(model, head, x)
    proj = torch.stack([lg[:, idx].max(dim=1).values for (_, _, _, idx) in OBJECTNET], dim=1)
    res["objectnet"] = accuracy(proj, y)
    shifts = [res[k] for k in ("v2", "sketch", "r", "objectnet", "a")]
    for k, v in res.items():
        print(f"zero-shot {k:10s} {100 * v:6.2f}%")
    print(f"zero-shot avg shifts {100 * sum(shifts) / len(shifts):6.2f}%")


# ---------------------------------------------------------------------------
def write_json(path, obj, indent=None):
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="folder with the Fashion-MNIST idx .gz files")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--eval-tree", type=Path, help="only evaluate OUT/tiny_clip.safetensors on this tree")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    out = args.out

    if args.eval_tree:
        model = build_model().eval()
        sd = {k: v.float() for k, v in load_file(str(out / "tiny_clip.safetensors")).items()}
        model.load_state_dict(sd, strict=True)
        eval_tree(model, args.eval_tree)
        return

    out.mkdir(parents=True, exist_ok=True)
    tr_x = read_idx(args.src / "train-images-idx3-ubyte.gz")
    tr_y = read_idx(args.src / "train-labels-idx1-ubyte.gz").astype(np.int64)
    te_x = read_idx(args.src / "t10k-images-idx3-ubyte.gz")
    te_y = read_idx(args.src / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    assert tr_x.shape == (60000, 28, 28) and te_x.shape == (10000, 28, 28)

    rng = np.random.default_rng(SEED_SPLIT)
    train_idx = balanced_pick(tr_y, N_TRAIN, rng)
    val_idx = balanced_pick(te_y, N_VAL, rng)
    v2_idx = balanced_pick(te_y, N_V2, rng, exclude=val_idx)
    # The CLIP never sees a shipped image: its pool is the rest of the idx train split.
    rest = np.setdiff1d(np.arange(len(tr_y)), train_idx)
    rest = rest[rng.permutation(len(rest))]
    held_idx, pool_idx = rest[:N_HELDOUT], rest[N_HELDOUT:]

    subsets = []
    for name, xs, ys, idx, split in (("train", tr_x, tr_y, train_idx, "train"),
                                     ("val", te_x, te_y, val_idx, "t10k"),
                                     ("v2", te_x, te_y, v2_idx, "t10k")):
        write_mosaic(out / f"{name}.png", xs[idx])
        subsets.append(OrderedDict(name=name, mosaic=f"{name}.png", count=int(len(idx)), columns=COLUMNS,
                                   source=f"fashion-mnist {split}", labels=[int(v) for v in ys[idx]]))
    write_json(out / "manifest.json", OrderedDict(
        tile=TILE, channels=1,
        note="tiles are row-major in each mosaic; label i belongs to tile i",
        subsets=subsets))

    (out / "wnids.txt").write_text("".join(w + "\n" for w in WNIDS), encoding="utf-8")
    write_json(out / "classnames.json", CLASSNAMES, indent=1)
    write_json(out / "templates.json", TEMPLATES, indent=1)
    write_json(out / "r_subset.json", R_SUBSET)
    write_json(out / "a_subset.json", A_SUBSET)
    write_json(out / "objectnet.json", [OrderedDict(objectnet_index=i, folder=f, objectnet_label=lab,
                                                    classname=cn, imagenet_indices=idx)
                                        for i, (f, lab, cn, idx) in enumerate(OBJECTNET)], indent=1)
    assert sorted(WNIDS) == WNIDS and [o[0] for o in OBJECTNET] == sorted(o[0] for o in OBJECTNET)

    model = build_model()
    model.eval()
    val_x, v2_x = plain_batch(te_x[val_idx]), plain_batch(te_x[v2_idx])
    acc0 = accuracy(logits_of(model, zeroshot_head(model), val_x), te_y[val_idx])
    print(f"random init: zero-shot val {acc0:.3f}")
    steps = pretrain(model, tr_x[pool_idx], tr_y[pool_idx], tr_x[held_idx], tr_y[held_idx])
    model.eval()
    # Numbers below are those of the stored float16 weights, which is what clipstock loads.
    round_params(model, torch.float16)
    head = zeroshot_head(model)
    sd = OrderedDict((k, v.detach().to(torch.float16).contiguous()) for k, v in model.state_dict().items())
    save_file(sd, str(out / "tiny_clip.safetensors"), metadata=SAFETENSORS_METADATA)
    (out / "tiny_clip.safetensors").chmod(0o644)  # safetensors creates it owner-only
    n_params = sum(p.numel() for p in model.parameters())
    print(f"pretrained {steps} steps; {n_params} parameters")
    print(f"zero-shot val {100 * accuracy(logits_of(model, head, val_x), te_y[val_idx]):.2f}%  "
          f"v2 {100 * accuracy(logits_of(model, head, v2_x), te_y[v2_idx]):.2f}%  "
          f"train subset {100 * accuracy(logits_of(model, head, plain_batch(tr_x[train_idx])), tr_y[train_idx]):.2f}%")

    (out / "VERSIONS.txt").write_text(
        f"python {platform.python_version()}\ntorch {torch.__version__}\nopen_clip_torch {open_clip.__version__}\n"
        f"safetensors {safetensors.__version__}\nnumpy {np.__version__}\nPillow {Image.__version__}\n"
        f"threads {THREADS}\npretraining steps {steps}\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
