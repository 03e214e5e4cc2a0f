#!/usr/bin/env python3
"""Generate the reference fixtures that the Rust (burn) CLIP port is checked against.

How to run (from the repository root; the venv lives outside the repo):

    python3 -m venv /work/venv-parity
    /work/venv-parity/bin/pip install -r scripts/requirements-parity.txt
    /work/venv-parity/bin/python scripts/make_parity_fixtures.py

Optional arguments: --classnames PATH --templates PATH --out DIR (see --help).
Defaults: data/<file> in the repo if present, else /work/shared/model_stock_data/<file>;
output goes to crates/clipstock-model/tests/fixtures/.

Everything runs offline on CPU in float32: models are built from configs with random
weights (never a pretrained download), so the fixtures test *the computation and the
weight layout*, not any particular checkpoint. Running the script twice produces
byte-identical files (checked with sha256sum).

Outputs (all in the fixtures directory):
  openclip_tiny.safetensors   tiny open_clip CLIP, float16, OpenAI/open_clip key names
  hf_tiny.safetensors         tiny transformers CLIPModel, bfloat16, HF key names
  soups_tiny.pt               model-soups style checkpoint (torch zip pickle, float32)
  parity_expected.safetensors inputs and expected outputs (float32, tokens int64)
  parity_prompts.json         the prompts, zero-shot classes and the all-prompts token hash
  shapes_openclip.json        state_dict shapes of real-size open_clip ViT-B-32/B-16/L-14
  shapes_hf.json              state_dict shapes of the equivalent HF CLIPModel configs
  VERSIONS.txt                library versions used
"""

import os

# Must be set before transformers / huggingface_hub are imported: any accidental
# hub access should fail loudly instead of silently downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import hashlib
import json
import math
import platform
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import open_clip
import transformers
import safetensors
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path("/work/shared/model_stock_data")
DEFAULT_OUT = REPO_ROOT / "crates" / "clipstock-model" / "tests" / "fixtures"

CLASSNAMES_FILE = "imagenet_openai_classnames.json"
TEMPLATES_FILE = "openai_imagenet_templates.json"

# ---------------------------------------------------------------------------
# Tiny configurations. Vision head_dim (64) is the same in both tiny models so
# that one Rust attention implementation is exercised with 2 heads (vision) and
# 1 head (text).
# ---------------------------------------------------------------------------
EMBED_DIM = 32
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
SOT_ID = 49406
EOT_ID = 49407  # the largest id, so "argmax of the token ids" finds EOT

OPENCLIP_VISION_CFG = dict(image_size=32, patch_size=16, width=128, layers=2, head_width=64)
OPENCLIP_TEXT_CFG = dict(context_length=CONTEXT_LENGTH, vocab_size=VOCAB_SIZE, width=64, heads=1, layers=2)

SOUPS_TEXT_CFG = dict(context_length=CONTEXT_LENGTH, vocab_size=512, width=64, heads=1, layers=1)
SOUPS_NUM_CLASSES = 10

HF_TEXT_CFG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=64,
    intermediate_size=256,
    num_attention_heads=1,
    num_hidden_layers=2,
    max_position_embeddings=CONTEXT_LENGTH,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    # eos != 2 makes HF pool at the first occurrence of eos_token_id; with open_clip
    # tokens there is exactly one EOT per row and it is the max id, so this is the
    # same position as OpenAI's argmax pooling (asserted below).
    eos_token_id=EOT_ID,
    bos_token_id=SOT_ID,
    # Only metadata for the forward pass, but 0 is what the open_clip tokenizer pads with.
    pad_token_id=0,
)
HF_VISION_CFG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_attention_heads=2,
    num_hidden_layers=2,
    image_size=32,
    patch_size=16,
    num_channels=3,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)

SEED_GLOBAL = 0
SEED_IMAGES = 1234
SEED_OPENCLIP = 1001
SEED_HF = 2002
SEED_SOUPS = 3003
SEED_SOUPS_HEAD = 3004
NUM_IMAGES = 4
NUM_ZEROSHOT_CLASSES = 10

# A single key only: safetensors writes the metadata map in hash order, so two or
# more keys make the header (and the file hash) differ between runs.
SAFETENSORS_METADATA = {"format": "pt"}


def parse_args():
    def default_data(*names):
        # The repo copy under data/ wins; the shared extraction is the fallback.
        # The repo names the class list imagenet_classnames.json (same bytes).
        candidates = [REPO_ROOT / "data" / n for n in names] + [SHARED_DATA / n for n in names]
        return next((c for c in candidates if c.exists()), candidates[-1])

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classnames", type=Path, default=default_data("imagenet_classnames.json", CLASSNAMES_FILE))
    ap.add_argument("--templates", type=Path, default=default_data(TEMPLATES_FILE))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap.parse_args()


# ---------------------------------------------------------------------------
# Re-randomisation
# ---------------------------------------------------------------------------
# Library init leaves LayerNorm at (1, 0), biases at 0 and several tensors at
# constants. A Rust loader that dropped, swapped or transposed such a tensor
# would still pass parity. So every parameter gets a fresh, distinct draw.
# Scales are chosen so activations stay O(1): matrices ~ N(0, 1/fan_in),
# LayerNorm gain ~ 1 +- 0.1, biases ~ 0.1, embeddings ~ 0.5.

LN_GAIN_STD = 0.1
BIAS_STD = 0.1
EMBED_STD = 0.5
LOGIT_SCALE_MEAN = math.log(1.0 / 0.07)  # the CLIP init value, so exp() is ~14
LOGIT_SCALE_STD = 0.1

# Tensors that are used as `x @ P` (P is [in, out]) in the OpenAI layout; every
# other 2-D weight in both libraries is an nn.Linear-style [out, in] matrix.
RIGHT_MULTIPLIED = ("visual.proj", "text_projection")
EMBEDDING_NAMES = (
    "class_embedding",
    "positional_embedding",
    "token_embedding.weight",
    "position_embedding.weight",
)


def layernorm_param_names(model):
    names = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.LayerNorm):
            for p_name, _ in mod.named_parameters(recurse=False):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


@torch.no_grad()
def rerandomise(model, seed, skip=()):
    # A private generator: the result must not depend on how much of the global
    # RNG stream the library constructors happened to consume.
    gen = torch.Generator().manual_seed(seed)
    ln_names = layernorm_param_names(model)
    touched = set()

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float32)

    for name, p in model.named_parameters():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        shape = p.shape
        if name in ln_names and name.endswith("weight"):
            new = 1.0 + LN_GAIN_STD * randn(shape)
        elif name.endswith("bias"):
            new = BIAS_STD * randn(shape)
        elif name.endswith("logit_scale"):
            new = LOGIT_SCALE_MEAN + LOGIT_SCALE_STD * randn(shape)
        elif p.ndim == 4:  # conv patch embedding [out, in, kh, kw]
            fan_in = shape[1] * shape[2] * shape[3]
            new = randn(shape) / math.sqrt(fan_in)
        elif any(name.endswith(e) for e in EMBEDDING_NAMES):
            new = EMBED_STD * randn(shape)
        elif p.ndim == 2 and any(name.endswith(r) for r in RIGHT_MULTIPLIED):
            new = randn(shape) / math.sqrt(shape[0])
        elif p.ndim == 2:
            new = randn(shape) / math.sqrt(shape[1])
        else:
            raise ValueError(f"no randomisation rule for parameter {name} {tuple(shape)}")
        p.copy_(new)
        touched.add(name)
    return touched


@torch.no_grad()
def round_params(model, dtype):
    # The weights file is stored in `dtype`; rounding the live model makes the
    # stored file an exact representation of what produced the expectations.
    for p in model.parameters():
        p.copy_(p.to(dtype).to(torch.float32))


def persistent_state_dict(model):
    # state_dict() already omits non-persistent buffers (open_clip's attn_mask,
    # HF's position_ids in current transformers); clone so saved tensors own
    # their storage.
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in model.state_dict().items())


def check_all_randomised(model, touched, what):
    sd_keys = set(model.state_dict().keys())
    missing = sd_keys - touched
    if missing:
        raise RuntimeError(f"{what}: state_dict entries not re-randomised: {sorted(missing)}")


def max_abs_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def describe(name, t):
    print(f"  {name:28s} shape={list(t.shape)} max|x|={t.abs().max().item():.4f} rms={t.pow(2).mean().sqrt().item():.4f}")


def projected(out):
    # transformers changed get_*_features from returning a tensor to returning a
    # model output whose pooler_output holds the projected embedding.
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("pooler_output", "image_embeds", "text_embeds"):
        val = getattr(out, attr, None)
        if isinstance(val, torch.Tensor):
            return val
    raise TypeError(f"cannot find projected features in {type(out)}")


# ---------------------------------------------------------------------------
# Model builders
# ---------------------------------------------------------------------------
def build_openclip(text_cfg):
    model = open_clip.CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg=dict(OPENCLIP_VISION_CFG),
        text_cfg=dict(text_cfg),
        quick_gelu=True,
    )
    return model.eval()


def build_hf():
    config = CLIPConfig(
        text_config=dict(HF_TEXT_CFG),
        vision_config=dict(HF_VISION_CFG),
        projection_dim=EMBED_DIM,
    )
    # eager attention is the plain softmax(QK^T/sqrt(d))V that the Rust side
    # mirrors; SDPA kernels could differ in the last bits.
    model = CLIPModel._from_config(config, attn_implementation="eager")
    return model.eval()


class SoupWrapper(nn.Module):
    """Same module tree as the model-soups ModelWrapper, so state_dict keys match
    the published checkpoints: `model.*` for CLIP, `classification_head.*`."""

    def __init__(self, clip_model, feature_dim, num_classes):
        super().__init__()
        self.model = clip_model
        self.classification_head = nn.Linear(feature_dim, num_classes, bias=True)
        # Published model-soups checkpoints have no text transformer: the wrapper
        # deletes it before fine-tuning. Mirror that so the Rust loader is tested
        # against the real key set (token_embedding, positional_embedding,
        # ln_final, text_projection and logit_scale survive; transformer.* does not).
        del self.model.transformer

    def forward(self, images):
        feats = self.model.encode_image(images)  # un-normalised, like openclip.image_features
        return self.classification_head(F.normalize(feats, dim=-1)), feats


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------
def fill(template, classname):
    return template.replace("{}", classname)


def make_prompts(classnames, templates):
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)
    return [
        fill(templates[0], classnames[0]),
        fill(templates[1], classnames[1]),
        fill(templates[2], classnames[2]),  # multi-word class name
        "A PHOTO OF A CAT",
        "a photo of a cat!!!",
        "it's a dog's toy",
        "route 66 has 1234567 cars",  # digits are split one per token
        "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
        "a photo of a \U0001F431",
        "  two   spaces ",
        "fish &amp; chips",
        "",
        long_text,  # far above 75 BPE tokens: exercises truncation
    ]


def tokens_all_sha256(classnames, templates):
    rows = []
    for name in classnames:
        rows.append(open_clip.tokenize([fill(t, name) for t in templates]))
    allt = torch.cat(rows, dim=0)
    assert allt.shape == (len(classnames) * len(templates), CONTEXT_LENGTH)
    arr = allt.numpy().astype("<i4")
    return hashlib.sha256(arr.tobytes()).hexdigest(), tuple(allt.shape)


# ---------------------------------------------------------------------------
# Zero-shot head
# ---------------------------------------------------------------------------
@torch.no_grad()
def zeroshot_head(encode_text, classnames, templates):
    rows = []
    for name in classnames:
        toks = open_clip.tokenize([fill(t, name) for t in templates])
        emb = F.normalize(encode_text(toks), dim=-1)
        rows.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows, dim=0) * 100.0


# ---------------------------------------------------------------------------
# Shapes of real-size configs
# ---------------------------------------------------------------------------
def shapes_of(sd):
    return OrderedDict((k, list(v.shape)) for k, v in sd.items())


def openclip_shapes(name):
    shapes = {}
    for qg in (False, True):
        m = open_clip.create_model(name, pretrained=None, force_quick_gelu=qg, device="cpu")
        shapes[qg] = shapes_of(m.state_dict())
        del m
    # QuickGELU has no parameters; prove it so the Rust side can ignore the flag for shapes.
    assert shapes[False] == shapes[True], f"{name}: quick_gelu changed state_dict shapes"
    return shapes[False]


def hf_shapes(vision, text, proj):
    config = CLIPConfig(
        text_config=dict(vocab_size=VOCAB_SIZE, max_position_embeddings=CONTEXT_LENGTH,
                         hidden_act="quick_gelu", eos_token_id=EOT_ID, bos_token_id=SOT_ID, **text),
        vision_config=dict(num_channels=3, hidden_act="quick_gelu", **vision),
        projection_dim=proj,
    )
    m = CLIPModel._from_config(config, attn_implementation="eager")
    return shapes_of(m.state_dict())


HF_REAL_CONFIGS = OrderedDict(
    [
        ("ViT-B-32", dict(
            vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                        image_size=224, patch_size=32),
            text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
            proj=512)),
        ("ViT-B-16", dict(
            vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                        image_size=224, patch_size=16),
            text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
            proj=512)),
        ("ViT-L-14", dict(
            vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                        image_size=224, patch_size=14),
            text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
            proj=768)),
    ]
)


def write_shapes_json(path, table):
    # One tensor per line keeps diffs readable when a library version changes a key.
    lines = ["{"]
    models = list(table.items())
    for mi, (model_name, shapes) in enumerate(models):
        lines.append(f"  {json.dumps(model_name)}: {{")
        items = list(shapes.items())
        for ki, (k, shape) in enumerate(items):
            comma = "," if ki + 1 < len(items) else ""
            lines.append(f"    {json.dumps(k)}: {json.dumps(shape)}{comma}")
        lines.append("  }" + ("," if mi + 1 < len(models) else ""))
    lines.append("}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # self-check
    path.write_text(text, encoding="utf-8")


def write_json(path, obj):
    # ASCII escapes keep the non-ASCII prompts byte-exact through any editor or
    # git normalisation; every JSON parser decodes them to the same code points.
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")


def print_keys(title, sd):
    print(f"{title}: {len(sd)} tensors")
    for k, v in sd.items():
        print(f"  {k} {list(v.shape)} {str(v.dtype).replace('torch.', '')}")


# ---------------------------------------------------------------------------
def main():
    args = parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # One thread: reduction order, hence every float bit, is then independent of
    # the machine's core count.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(SEED_GLOBAL)

    classnames = json.loads(args.classnames.read_text(encoding="utf-8"))
    templates = json.loads(args.templates.read_text(encoding="utf-8"))
    assert len(classnames) == 1000 and len(templates) == 80
    print(f"classnames: {args.classnames}\ntemplates:  {args.templates}\nout:        {out}")

    images = torch.randn(NUM_IMAGES, 3, 32, 32, generator=torch.Generator().manual_seed(SEED_IMAGES))
    prompts = make_prompts(classnames, templates)
    tokens = open_clip.tokenize(prompts, context_length=CONTEXT_LENGTH)
    assert tokens.dtype == torch.int64
    # Every row has exactly one EOT and it is the row maximum, so argmax pooling
    # (OpenAI/open_clip) and first-eos pooling (HF with eos_token_id=49407) agree.
    assert bool(((tokens == EOT_ID).sum(dim=1) == 1).all())
    assert torch.equal(tokens.argmax(dim=-1), (tokens == EOT_ID).int().argmax(dim=-1))

    expected = OrderedDict()
    expected["images"] = images
    expected["tokens"] = tokens

    # ---------------- 1. open_clip tiny (float16 file) ----------------
    oc = build_openclip(OPENCLIP_TEXT_CFG)
    touched = rerandomise(oc, SEED_OPENCLIP)
    check_all_randomised(oc, touched, "openclip_tiny")
    round_params(oc, torch.float16)
    oc_sd = persistent_state_dict(oc)
    oc_file = out / "openclip_tiny.safetensors"
    save_file(OrderedDict((k, v.to(torch.float16)) for k, v in oc_sd.items()), str(oc_file),
              metadata=SAFETENSORS_METADATA)
    print_keys("openclip_tiny.safetensors", load_file(str(oc_file)))

    with torch.no_grad():
        oc_img = oc.encode_image(images)
        oc_txt = oc.encode_text(tokens)
        head = zeroshot_head(oc.encode_text, classnames[:NUM_ZEROSHOT_CLASSES], templates)
        zs_logits = F.normalize(oc_img, dim=-1) @ head.T
    expected["openclip.image_features"] = oc_img
    expected["openclip.text_features"] = oc_txt
    expected["openclip.logit_scale"] = oc.logit_scale.detach().clone().reshape(())
    expected["openclip.zeroshot_head"] = head
    expected["openclip.zeroshot_logits"] = zs_logits

    # ---------------- 2. HF tiny (bfloat16 file) ----------------
    hf = build_hf()
    touched = rerandomise(hf, SEED_HF)
    check_all_randomised(hf, touched, "hf_tiny")
    round_params(hf, torch.bfloat16)
    hf_sd = persistent_state_dict(hf)
    hf_save = OrderedDict((k, v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in hf_sd.items())
    # Older transformers saved position_ids as a persistent int64 buffer, and HF
    # checkpoints converted back then still carry them. Current versions do not
    # put them in state_dict(), so add them here: the Rust loader must skip them.
    for prefix, n in (("text_model", HF_TEXT_CFG["max_position_embeddings"]),
                      ("vision_model", (HF_VISION_CFG["image_size"] // HF_VISION_CFG["patch_size"]) ** 2 + 1)):
        key = f"{prefix}.embeddings.position_ids"
        if key not in hf_save:
            hf_save[key] = torch.arange(n, dtype=torch.int64).unsqueeze(0)
    hf_file = out / "hf_tiny.safetensors"
    save_file(hf_save, str(hf_file),
              metadata=SAFETENSORS_METADATA)
    print_keys("hf_tiny.safetensors", load_file(str(hf_file)))

    with torch.no_grad():
        # No attention_mask: HF then applies only its causal mask, which is exactly
        # the OpenAI text computation. Padding sits after EOT, so causality already
        # hides it from the pooled EOT position.
        hf_img = projected(hf.get_image_features(pixel_values=images))
        hf_txt = projected(hf.get_text_features(input_ids=tokens))
    expected["hf.image_features"] = hf_img
    expected["hf.text_features"] = hf_txt
    expected["hf.logit_scale"] = hf.logit_scale.detach().clone().reshape(())

    # ---------------- 3. model-soups style checkpoint (float32 torch zip) ----------------
    soup_clip = build_openclip(SOUPS_TEXT_CFG)
    soup = SoupWrapper(soup_clip, EMBED_DIM, SOUPS_NUM_CLASSES).eval()
    touched = rerandomise(soup, SEED_SOUPS, skip=("classification_head",))
    with torch.no_grad():
        # With unit-norm features, a unit-variance head gives O(1) logits.
        g = torch.Generator().manual_seed(SEED_SOUPS_HEAD)
        soup.classification_head.weight.copy_(torch.randn(SOUPS_NUM_CLASSES, EMBED_DIM, generator=g))
        soup.classification_head.bias.copy_(0.5 * torch.randn(SOUPS_NUM_CLASSES, generator=g))
    touched |= {"classification_head.weight", "classification_head.bias"}
    check_all_randomised(soup, touched, "soups_tiny")
    soup_sd = soup.state_dict()  # OrderedDict with _metadata, exactly as published checkpoints
    soups_file = out / "soups_tiny.pt"
    torch.save(soup_sd, str(soups_file))
    print_keys("soups_tiny.pt", soup_sd)

    with torch.no_grad():
        soup_logits, soup_feats = soup(images)
    expected["soups.image_features"] = soup_feats
    expected["soups.logits"] = soup_logits

    # ---------------- 4. expectations ----------------
    expected = OrderedDict((k, v.detach().clone().contiguous()) for k, v in expected.items())
    for k, v in expected.items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, k
    exp_file = out / "parity_expected.safetensors"
    save_file(expected, str(exp_file), metadata=SAFETENSORS_METADATA)

    print("activation magnitudes:")
    for k, v in expected.items():
        if v.is_floating_point():
            describe(k, v)

    # ---------------- 5. prompts / tokenizer hash ----------------
    sha, all_shape = tokens_all_sha256(classnames, templates)
    write_json(out / "parity_prompts.json", OrderedDict([
        ("prompts", prompts),
        ("zeroshot_classes", classnames[:NUM_ZEROSHOT_CLASSES]),
        ("templates_file", TEMPLATES_FILE),
        ("tokens_all_sha256", sha),
        ("tokens_all_note",
         f"sha256 of the int32 little-endian bytes of open_clip.tokenize(prompts) with context length 77, "
         f"shape {list(all_shape)}, row-major, where prompts is class-major over all 1000 ImageNet class names "
         f"in index order (data/imagenet_classnames.json, same content as {CLASSNAMES_FILE}; class 0 'tench' "
         f"with its 80 templates in file order, then class 1, ...) and each prompt "
         f"is template.replace('{{}}', classname) with templates from {TEMPLATES_FILE}. Rows are zero-padded "
         f"after EOT (49407); SOT is 49406."),
    ]))
    print(f"tokens_all_sha256 {sha} over {list(all_shape)}")

    # ---------------- 6. real-size shapes ----------------
    write_shapes_json(out / "shapes_openclip.json",
                      OrderedDict((n, openclip_shapes(n)) for n in ("ViT-B-32", "ViT-B-16", "ViT-L-14")))
    write_shapes_json(out / "shapes_hf.json",
                      OrderedDict((n, hf_shapes(**cfg)) for n, cfg in HF_REAL_CONFIGS.items()))

    (out / "VERSIONS.txt").write_text(
        f"python {platform.python_version()}\n"
        f"torch {torch.__version__}\n"
        f"open_clip_torch {open_clip.__version__}\n"
        f"transformers {transformers.__version__}\n"
        f"safetensors {safetensors.__version__}\n"
        f"numpy {np.__version__}\n"
        f"ftfy {__import__('ftfy').__version__}\n"
        f"regex {__import__('regex').__version__}\n",
        encoding="utf-8",
    )

    # safetensors creates files 0600; make every fixture plainly readable.
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o644)

    verify(out, tokens, expected, prompts, templates)


# ---------------------------------------------------------------------------
# Round-trip checks: reload every file into a *fresh* model and recompute.
# ---------------------------------------------------------------------------
@torch.no_grad()
def verify(out, tokens, expected, prompts, templates):
    print("round-trip checks (max abs diff vs stored expectations):")
    exp = load_file(str(out / "parity_expected.safetensors"))
    for k in expected:
        assert torch.equal(exp[k], expected[k]), k
    assert torch.equal(exp["tokens"], tokens)

    worst = 0.0

    def report(name, a, b):
        nonlocal worst
        d = max_abs_diff(a, b)
        worst = max(worst, d)
        print(f"  {name:28s} {d:.3e}")

    oc = build_openclip(OPENCLIP_TEXT_CFG)
    sd = {k: v.float() for k, v in load_file(str(out / "openclip_tiny.safetensors")).items()}
    oc.load_state_dict(sd, strict=True)
    img, txt = oc.encode_image(exp["images"]), oc.encode_text(exp["tokens"])
    report("openclip.image_features", img, exp["openclip.image_features"])
    report("openclip.text_features", txt, exp["openclip.text_features"])
    report("openclip.logit_scale", oc.logit_scale, exp["openclip.logit_scale"])
    prompts_json = json.loads((out / "parity_prompts.json").read_text(encoding="utf-8"))
    assert prompts_json["prompts"] == prompts
    assert torch.equal(open_clip.tokenize(prompts_json["prompts"]), exp["tokens"])
    head = zeroshot_head(oc.encode_text, prompts_json["zeroshot_classes"], templates)
    report("openclip.zeroshot_head", head, exp["openclip.zeroshot_head"])
    report("openclip.zeroshot_logits", F.normalize(img, dim=-1) @ head.T, exp["openclip.zeroshot_logits"])

    hf = build_hf()
    sd = load_file(str(out / "hf_tiny.safetensors"))
    sd = {k: v.float() for k, v in sd.items() if not k.endswith("position_ids")}
    hf.load_state_dict(sd, strict=True)
    report("hf.image_features", projected(hf.get_image_features(pixel_values=exp["images"])), exp["hf.image_features"])
    report("hf.text_features", projected(hf.get_text_features(input_ids=exp["tokens"])), exp["hf.text_features"])

    soup = SoupWrapper(build_openclip(SOUPS_TEXT_CFG), EMBED_DIM, SOUPS_NUM_CLASSES).eval()
    sd = torch.load(str(out / "soups_tiny.pt"), map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values())
    soup.load_state_dict(sd, strict=True)
    logits, feats = soup(exp["images"])
    report("soups.image_features", feats, exp["soups.image_features"])
    report("soups.logits", logits, exp["soups.logits"])
    # The formula the Rust side implements, spelled out independently of nn.Linear.
    manual = F.normalize(soup.model.encode_image(exp["images"]), dim=-1) @ sd["classification_head.weight"].T \
        + sd["classification_head.bias"]
    report("soups.logits (manual)", manual, exp["soups.logits"])

    # Cross-library check: the open_clip weights, renamed into HF layout, must give
    # the same features from HF code. This is the mapping the Rust loader needs.
    hf2 = build_hf()
    hf2.load_state_dict(openclip_to_hf(load_file(str(out / "openclip_tiny.safetensors"))), strict=True)
    x_img = projected(hf2.get_image_features(pixel_values=exp["images"]))
    x_txt = projected(hf2.get_text_features(input_ids=exp["tokens"]))
    print("cross-library (open_clip weights run through HF code):")
    print(f"  {'image_features':28s} {max_abs_diff(x_img, exp['openclip.image_features']):.3e}")
    print(f"  {'text_features':28s} {max_abs_diff(x_txt, exp['openclip.text_features']):.3e}")
    # The zero-shot head is scaled by 100, so a second, independent float32
    # implementation differs by far more than on the features; print it so the
    # Rust tolerance for the head/logits can be chosen from evidence.
    x_head = zeroshot_head(lambda t: projected(hf2.get_text_features(input_ids=t)),
                           prompts_json["zeroshot_classes"], templates)
    print(f"  {'zeroshot_head':28s} {max_abs_diff(x_head, exp['openclip.zeroshot_head']):.3e}")
    x_zs = F.normalize(x_img, dim=-1) @ x_head.T
    print(f"  {'zeroshot_logits':28s} {max_abs_diff(x_zs, exp['openclip.zeroshot_logits']):.3e}")
    assert max_abs_diff(x_img, exp["openclip.image_features"]) < 1e-4
    assert max_abs_diff(x_txt, exp["openclip.text_features"]) < 1e-4

    assert worst == 0.0, f"round trip not exact: {worst}"
    print("all round-trip checks exact")


def openclip_to_hf(sd):
    """OpenAI/open_clip key layout -> transformers CLIPModel layout (float32)."""
    sd = {k: v.float() for k, v in sd.items()}
    out = {}

    def blocks(src_prefix, dst_prefix, n):
        for i in range(n):
            s, d = f"{src_prefix}.{i}", f"{dst_prefix}.{i}"
            q, k, v = sd[f"{s}.attn.in_proj_weight"].chunk(3, dim=0)
            qb, kb, vb = sd[f"{s}.attn.in_proj_bias"].chunk(3, dim=0)
            out.update({
                f"{d}.self_attn.q_proj.weight": q, f"{d}.self_attn.k_proj.weight": k,
                f"{d}.self_attn.v_proj.weight": v, f"{d}.self_attn.q_proj.bias": qb,
                f"{d}.self_attn.k_proj.bias": kb, f"{d}.self_attn.v_proj.bias": vb,
                f"{d}.self_attn.out_proj.weight": sd[f"{s}.attn.out_proj.weight"],
                f"{d}.self_attn.out_proj.bias": sd[f"{s}.attn.out_proj.bias"],
                f"{d}.layer_norm1.weight": sd[f"{s}.ln_1.weight"], f"{d}.layer_norm1.bias": sd[f"{s}.ln_1.bias"],
                f"{d}.layer_norm2.weight": sd[f"{s}.ln_2.weight"], f"{d}.layer_norm2.bias": sd[f"{s}.ln_2.bias"],
                f"{d}.mlp.fc1.weight": sd[f"{s}.mlp.c_fc.weight"], f"{d}.mlp.fc1.bias": sd[f"{s}.mlp.c_fc.bias"],
                f"{d}.mlp.fc2.weight": sd[f"{s}.mlp.c_proj.weight"], f"{d}.mlp.fc2.bias": sd[f"{s}.mlp.c_proj.bias"],
            })

    blocks("visual.transformer.resblocks", "vision_model.encoder.layers", OPENCLIP_VISION_CFG["layers"])
    blocks("transformer.resblocks", "text_model.encoder.layers", OPENCLIP_TEXT_CFG["layers"])
    out.update({
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
        "visual_projection.weight": sd["visual.proj"].T.contiguous(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T.contiguous(),
        "logit_scale": sd["logit_scale"],
    })
    return out


if __name__ == "__main__":
    sys.exit(main())
