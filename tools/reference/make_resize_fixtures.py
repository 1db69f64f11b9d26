"""Writes crates/orrery-video/tests/fixtures/resize.json: random 8-bit RGB frames of awkward
sizes fitted to an output size the way Video2World inputs are prepared: scaled to cover
(ceil of the larger ratio, aspect kept), torch `interpolate(mode="bicubic", antialias=True)` on
the float frame, clamped to [0, 255], centre-cropped with torchvision's offsets
(int(round((size - crop) / 2))), divided by 255.

Run from the repository root:
  .venv-ref/bin/python tools/reference/make_resize_fixtures.py
"""
import json
import math
import os

import torch
import torch.nn.functional as F

OUT = os.path.join("crates", "orrery-video", "tests", "fixtures", "resize.json")
CASES = [((37, 53), (16, 24)), ((9, 13), (16, 24)), ((50, 30), (24, 16)), ((1, 7), (8, 8)), ((64, 96), (16, 24)),
         ((16, 24), (16, 24)), ((33, 17), (16, 16))]


def fit(img, target):
    h, w = img.shape[:2]
    th, tw = target
    ratio = max(tw / w, th / h)
    rh, rw = max(int(math.ceil(ratio * h)), th), max(int(math.ceil(ratio * w)), tw)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
    top, left = int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0))
    x = x[:, :, top:top + th, left:left + tw].clamp(0, 255) / 255
    return x[0]


def main():
    g = torch.Generator().manual_seed(3)
    cases = []
    for (h, w), target in CASES:
        img = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        cases.append(dict(size=[h, w], target=list(target), rgb=img.reshape(-1).tolist(),
                          planes=[round(v, 7) for v in fit(img, target).reshape(-1).tolist()]))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(cases, f)
    print(f"{OUT}: {len(cases)} cases, {os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
