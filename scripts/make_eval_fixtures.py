#!/usr/bin/env python3
"""Reference predictions for `clipstock eval`, computed by open_clip on the fixture tree.

How to run (from the repository root, after `cargo build --release --workspace`; the venv is
the one of scripts/make_parity_fixtures.py):

    /work/venv-parity/bin/python scripts/make_eval_fixtures.py

Optional arguments: --binary PATH (default target/release/clipstock), --out DIR.
Output goes to crates/clipstock-cli/tests/fixtures/eval/:

  head.safetensors   classification_head.weight [1000, 32] and .bias [1000], float32
  expected.json      per image: set, path (relative to the set folder, as `clipstock eval
                     --predictions` writes it), label, prediction, top5, top2_margin (of the
                     projected scores); per-set top-1 (fractions) and the OOD mean; the tree's
                     checksums (images_fnv1a64: see images_fnv, the Rust test recomputes it to
                     tell a stale fixture from a wrong prediction); the library versions

The image tree is not stored: `clipstock fixtures --images-per-class 4 --size 48` writes it
deterministically (the script generates it twice and checks the bytes), and the Rust test
(crates/clipstock-cli/tests/eval.rs) regenerates it with the same binary.

The model is crates/clipstock-model/tests/fixtures/openclip_tiny.safetensors (float16 weights,
computed in float32), built as open_clip.CLIP exactly as make_parity_fixtures.py builds it.
Every image goes through open_clip's own eval transform for 32 px (PIL decode, bicubic resize
of the shorter side with antialias, centre crop, RGB, CLIP normalisation); then
logits = head(normalize(encode_image(x))) and the SPEC §5 projection of its set:
imagenet / imagenet_v2 / imagenet_sketch argmax over 1000; imagenet_r / imagenet_a the logits
at data/imagenet_{r,a}_class_sublist.json, argmax over those 200; objectnet, per class the max
over its ImageNet indices (data/objectnet_113_to_imagenet.json), argmax over 113.

The head: a random head alone would give top-1 0 on every set (so the scores would not catch a
wrong label rule), and the tiny random model's features are all alike (mean cosine ~0.86). So
the rows of the ImageNet classes present in the tree are the centred class means of the
features (`100 * normalize(mean_c - mean)`), every other row is random (`30 * normalize(randn)`,
seed HEAD_SEED), and the bias is `-W @ mean` plus small noise. Accuracies are then well above
zero and below 100% on most sets. Everything runs on CPU in one thread, deterministically:
running the script twice gives byte-identical files.
"""

import argparse
import collections
import filecmp
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

import open_clip

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "crates" / "clipstock-cli" / "tests" / "fixtures" / "eval"
MODEL_FILE = REPO_ROOT / "crates" / "clipstock-model" / "tests" / "fixtures" / "openclip_tiny.safetensors"
DATA = REPO_ROOT / "data"

IMAGES_PER_CLASS = 4
SIZE = 48
HEAD_SEED = 7
IMAGE_SIZE = 32

# As in make_parity_fixtures.py (build_openclip with OPENCLIP_TEXT_CFG).
EMBED_DIM = 32
VISION_CFG = dict(image_size=32, patch_size=16, width=128, layers=2, head_width=64)
TEXT_CFG = dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)

SETS = ["imagenet", "imagenet_v2", "imagenet_sketch", "imagenet_r", "imagenet_a", "objectnet"]
SHIFTS = SETS[1:]
# The set folders of `clipstock fixtures` (the first variant clipstock looks for); the
# predictions' `path` is relative to these.
SET_DIRS = {
    "imagenet": "imagenet/val",
    "imagenet_v2": "imagenetv2-matched-frequency",
    "imagenet_sketch": "sketch",
    "imagenet_r": "imagenet-r",
    "imagenet_a": "imagenet-a",
    "objectnet": "objectnet-1.0/images",
}

SAFETENSORS_METADATA = {"format": "pt"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", type=Path, default=REPO_ROOT / "target" / "release" / "clipstock")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap.parse_args()


def make_tree(binary, dest):
    manifest = dest.with_suffix(".json")
    subprocess.run(
        [str(binary), "fixtures", "--out", str(dest), "--images-per-class", str(IMAGES_PER_CLASS),
         "--size", str(SIZE), "--manifest", str(manifest)],
        check=True, cwd=REPO_ROOT,
    )
    return manifest


def tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(chunks):
    """FNV-1a 64 over the concatenated chunks: the Rust test recomputes it without a hash crate."""
    h = FNV_OFFSET
    for chunk in chunks:
        for byte in chunk:
            h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def images_fnv(root, entries):
    """FNV-1a 64 of, for each evaluation image in manifest order, its manifest path, a 0 byte,
    its bytes and a 0 byte; as 16 lowercase hex digits."""
    chunks = []
    for e in entries:
        chunks += [e["path"].encode(), b"\0", (root / e["path"]).read_bytes(), b"\0"]
    return f"{fnv1a64(chunks):016x}"


def same_tree(a, b):
    cmp = filecmp.dircmp(a, b)
    stack = [cmp]
    while stack:
        c = stack.pop()
        if c.left_only or c.right_only or c.funny_files:
            return False
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        if mismatch or errors:
            return False
        stack.extend(c.subdirs.values())
    return True


def build_model():
    model = open_clip.CLIP(embed_dim=EMBED_DIM, vision_cfg=dict(VISION_CFG), text_cfg=dict(TEXT_CFG),
                           quick_gelu=True).eval()
    sd = {k: v.float() for k, v in load_file(str(MODEL_FILE)).items()}
    model.load_state_dict(sd, strict=True)
    return model


class Projections:
    def __init__(self):
        self.r = json.loads((DATA / "imagenet_r_class_sublist.json").read_text())
        self.a = json.loads((DATA / "imagenet_a_class_sublist.json").read_text())
        on = json.loads((DATA / "objectnet_113_to_imagenet.json").read_text())
        assert [o["objectnet_index"] for o in on] == list(range(113))
        self.on = [o["imagenet_indices"] for o in on]
        assert len(self.r) == 200 and len(self.a) == 200

    def project(self, set_name, logits):
        """[N, 1000] -> the set's scores (SPEC §5)."""
        if set_name == "imagenet_r":
            return logits[:, self.r]
        if set_name == "imagenet_a":
            return logits[:, self.a]
        if set_name == "objectnet":
            return torch.stack([logits[:, idx].max(dim=1).values for idx in self.on], dim=1)
        return logits

    def imagenet_class(self, set_name, label):
        """An image's label as an ImageNet index (the first one for ObjectNet)."""
        if set_name == "imagenet_r":
            return self.r[label]
        if set_name == "imagenet_a":
            return self.a[label]
        if set_name == "objectnet":
            return self.on[label][0]
        return label


def make_head(features, classes):
    gen = torch.Generator().manual_seed(HEAD_SEED)
    mean = features.mean(dim=0)
    weight = 30.0 * F.normalize(torch.randn(1000, EMBED_DIM, generator=gen), dim=-1)
    for c in sorted(set(classes.tolist())):
        weight[c] = 100.0 * F.normalize(features[classes == c].mean(dim=0) - mean, dim=0)
    bias = -(weight @ mean) + 0.01 * torch.randn(1000, generator=gen)
    return weight.contiguous(), bias.contiguous()


def main():
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    binary = args.binary.resolve()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = make_tree(binary, tmp / "a")
        make_tree(binary, tmp / "b")
        assert same_tree(tmp / "a", tmp / "b"), "clipstock fixtures is not deterministic"
        assert filecmp.cmp(tmp / "a.json", tmp / "b.json", shallow=False)
        root = tmp / "a"
        digest = tree_digest(root)
        entries = [e for e in json.loads(manifest.read_text())["images"] if not e.get("corrupt")]
        fnv = images_fnv(root, entries)
        print(f"tree: {len(entries)} evaluation images, sha256 {digest}, images fnv1a64 {fnv}")

        transform = open_clip.image_transform(IMAGE_SIZE, is_train=False)
        print(transform)
        images = []
        for e in entries:
            with Image.open(root / e["path"]) as im:
                images.append(transform(im))
        x = torch.stack(images)

    model = build_model()
    with torch.no_grad():
        features = F.normalize(model.encode_image(x), dim=-1)

    proj = Projections()
    classes = torch.tensor([proj.imagenet_class(e["set"], e["label"]) for e in entries])
    weight, bias = make_head(features, classes)
    head_file = out / "head.safetensors"
    save_file({"classification_head.weight": weight, "classification_head.bias": bias}, str(head_file),
              metadata=SAFETENSORS_METADATA)
    head_file.chmod(0o644)

    # Reload: the expectations come from exactly the stored head.
    head = load_file(str(head_file))
    assert torch.equal(head["classification_head.weight"], weight)
    with torch.no_grad():
        logits = F.linear(features, head["classification_head.weight"], head["classification_head.bias"])

    images_out = []
    correct = collections.defaultdict(int)
    count = collections.Counter()
    margins = []
    for i, e in enumerate(entries):
        s = e["set"]
        scores = proj.project(s, logits[i : i + 1])[0]
        top = torch.topk(scores, 5)
        top5 = [int(j) for j in top.indices]
        margin = float(top.values[0] - top.values[1])
        margins.append(margin)
        prefix = SET_DIRS[s] + "/"
        assert e["path"].startswith(prefix), e["path"]
        pred = int(torch.argmax(scores))
        assert pred == top5[0]
        images_out.append(collections.OrderedDict([
            ("set", s),
            ("path", e["path"][len(prefix):]),
            ("label", e["label"]),
            ("prediction", pred),
            ("top5", top5),
            ("top2_margin", round(margin, 6)),
        ]))
        count[s] += 1
        correct[s] += int(pred == e["label"])

    top1 = collections.OrderedDict((s, correct[s] / count[s]) for s in SETS)
    ood = sum(top1[s] for s in SHIFTS) / len(SHIFTS)
    doc = collections.OrderedDict([
        ("about", "open_clip predictions for `clipstock eval` (scripts/make_eval_fixtures.py)"),
        ("tree", collections.OrderedDict([
            ("command", f"clipstock fixtures --images-per-class {IMAGES_PER_CLASS} --size {SIZE}"),
            ("images", len(entries)),
            ("sha256_note", "sha256 over every file of the tree (train images too), sorted by relative "
                            "path: path, 0, bytes, 0"),
            ("sha256", digest),
            ("images_fnv1a64", fnv),
        ])),
        ("model", "crates/clipstock-model/tests/fixtures/openclip_tiny.safetensors"),
        ("head", "head.safetensors"),
        ("image_size", IMAGE_SIZE),
        ("transform", "open_clip.image_transform(32, is_train=False)"),
        ("top1", top1),
        ("ood_mean", ood),
        ("min_top2_margin", min(margins)),
        ("versions", collections.OrderedDict([
            ("python", platform.python_version()),
            ("torch", torch.__version__),
            ("open_clip_torch", open_clip.__version__),
            ("pillow", PIL.__version__),
            ("safetensors", safetensors.__version__),
            ("numpy", np.__version__),
        ])),
        ("images", images_out),
    ])
    exp_file = out / "expected.json"
    exp_file.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    exp_file.chmod(0o644)

    print("top-1:", {s: round(v, 4) for s, v in top1.items()}, "ood_mean", round(ood, 4))
    small = sorted(margins)[:5]
    print(f"smallest top-2 margins: {small}; below 1e-4: {sum(m <= 1e-4 for m in margins)}")
    print(f"wrote {head_file} and {exp_file}")


if __name__ == "__main__":
    sys.exit(main())
