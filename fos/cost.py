"""Per-pair cost of teacher and student: multiply-accumulates (MACs) and parameters.

``python -m fos.cost`` prints the table used in the README.
"""
from __future__ import annotations

import json
import sys

import torch
from torch import nn

from fos.preprocess import GEOMETRY_DIM
from fos.registry import build_model


def count_macs(module: nn.Module, fn) -> int:
    """MACs of the Conv2d / Linear layers of ``module`` run by ``fn()`` (dominant cost; no activations)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return total


def functional_conv_macs(model) -> dict[str, int]:
    """The head applies conv1 as two functional halves (no hooks fire): count them analytically, with
    the 1x1 projections of the interaction (``bg_q``, ``fg_k``) that each half carries."""
    d, a = model.dim, model.cfg.align_size
    half = d * d * 9 * a * a + (d * d * a * a if model.head.interaction else 0)
    return {"conv1_bg_half": half, "conv1_fg_half": half}


def pair_costs(teacher_name: str = "teacher", student_name: str = "student", size: int = 224) -> dict:
    t = build_model(teacher_name, pretrained=False).eval()
    s = build_model(student_name, pretrained=False).eval()
    x = torch.zeros(1, 3, size, size)
    g = torch.zeros(1, GEOMETRY_DIM)
    teacher = count_macs(t, lambda: t(x, g if t.cfg.geometry else None))
    bg = count_macs(s, lambda: s.encode_background(x, torch.tensor([[0.0, 0.0, size, size]])))
    fg = count_macs(s, lambda: s.encode_foreground(x))
    part = torch.zeros(1, s.head.part_dim, s.cfg.align_size, s.cfg.align_size)
    finish = count_macs(s, lambda: s.head.finish(part, part, g if s.cfg.geometry else None))
    if s.head.interaction:  # the product of the projections, one multiply per channel and position
        finish += s.dim * s.cfg.align_size ** 2
    halves = functional_conv_macs(s)
    head_from_maps = finish + halves["conv1_bg_half"] + halves["conv1_fg_half"]
    head_cached = finish  # bg half once per query, fg half cached with the foreground
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head_params = params(s.head)
    return {
        "teacher_macs_per_pair": teacher,
        "teacher_params": params(t),
        "student_bg_encode_macs_per_query": bg + halves["conv1_bg_half"],
        "student_fg_encode_macs_per_item_offline": fg + halves["conv1_fg_half"],
        "student_head_macs_per_candidate_from_fg_maps": head_from_maps,
        "student_head_macs_per_candidate_cached": head_cached,
        "student_params": params(s),
        "student_head_params": head_params,
        "head_from_maps_over_teacher": head_from_maps / teacher,
        "head_cached_over_teacher": head_cached / teacher,
    }


def main(argv=None) -> int:
    c = pair_costs()
    print(f"{'quantity':55s} {'value':>14s}")
    for k, v in c.items():
        print(f"{k:55s} {v:14.4f}" if isinstance(v, float) else f"{k:55s} {v:14,d}")
    if argv and "--json" in argv:
        print(json.dumps(c))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
