"""Print the ship rule's tables from ``scripts/ship_eval.sh``'s JSON: per source and pooled over the
sources' test queries (a category's Recall@1 weighted by its queries), the targets of the cached-trunk
models, and the fixed ship rule's verdict. ``python scripts/ship_table.py [DIR]`` (default runs/ship)."""
from __future__ import annotations

import json
import os
import sys

from fos.data import load_test

SOURCES = dict(s.split("=", 1) for s in os.environ.get(
    "SOURCES", "msrc=../shared/data/msrc-fos coco128=runs/coco128-fos coco-extra=runs/coco-extra-fos "
               "ccp-person=runs/ccp-person-fos").split())
PROTOCOLS = ("harmony", "matched", "loose")
ROWS = [("new.student", "**new student**"), ("new.student.appearance", "new student, appearance only"),
        ("old.student", "shipped student"), ("new.teacher", "**new teacher** (fit composites)"),
        ("old.teacher", "shipped teacher"), ("new.rerank", "**new student + new teacher rerank top 3**"),
        ("old.rerank", "shipped student + shipped teacher rerank top 3"), ("random", "`random`"),
        ("aspect", "`aspect`"), ("geometry", "`geometry`"), ("color", "`color`"), ("imagenet", "`imagenet`")]


def read(d, src, proto, tag):
    p = os.path.join(d, f"{src}.{proto}.{tag}.json")
    return json.load(open(p)) if os.path.isfile(p) else None


def pooled(rs):
    """Recall@1 over every query of the results ``rs`` (one per source), and the query count."""
    rs = [r for r in rs if r]
    num = sum(m["recall@1"] * m["n_queries"] for r in rs for m in r["per_category"].values())
    n = sum(m["n_queries"] for r in rs for m in r["per_category"].values())
    return (num / n if n else float("nan")), n


def inverse_n(data):
    """Loose boxes: the mean over queries of 1 / (candidates), what a ranking that ignores the photo gets."""
    ts = load_test(data)
    num = sum(len(cs.queries) / len(cs.fg_names) for cs in ts.categories.values())
    return num / sum(len(cs.queries) for cs in ts.categories.values()), sum(len(cs.queries) for cs in ts.categories.values())


def main(d="runs/ship") -> int:
    R = {(s, p, t): read(d, s, p, t) for s in SOURCES for p in PROTOCOLS for t, _ in ROWS}
    chance = {}
    for s, data in SOURCES.items():
        for p in ("harmony", "matched"):
            r = R[(s, p, "geometry")] or R[(s, p, "random")]
            chance[(s, p)] = (r["chance@1"], r["n_queries"]) if r else None
        chance[(s, "loose")] = inverse_n(data)
    P = {(p, t): pooled([R[(s, p, t)] for s in SOURCES]) for p in PROTOCOLS for t, _ in ROWS}
    pc = {}
    for p in PROTOCOLS:
        cs = [chance[(s, p)] for s in SOURCES if chance[(s, p)]]
        pc[p] = sum(c * n for c, n in cs) / sum(n for _, n in cs)

    def cell(r):
        if not r:
            return ""
        sd = r.get("seed_std", {}).get("recall@1")
        return f"{r['recall@1']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")

    for p in PROTOCOLS:
        print(f"\n### {p} (Recall@1; 5 box seeds; pooled: every test query of the four sources)\n")
        print("| model | " + " | ".join(SOURCES) + " | **pooled** |")
        print("|---|" + "---:|" * (len(SOURCES) + 1))
        ch = " | ".join(f"{chance[(s, p)][0]:.3f}" if chance[(s, p)] else "" for s in SOURCES)
        print(f"| chance{' (mean of 1/n)' if p == 'loose' else ''} | {ch} | {pc[p]:.3f} |")
        for t, label in ROWS:
            if any(R[(s, p, t)] for s in SOURCES):
                print(f"| {label} | " + " | ".join(cell(R[(s, p, t)]) for s in SOURCES) + f" | **{P[(p, t)][0]:.3f}** |")
        print("\nqueries: " + ", ".join(f"{s} {R[(s, p, 'new.student')]['n_queries'] if R[(s, p, 'new.student')] else 0}"
                                        for s in SOURCES) + f"; pooled {P[(p, 'new.student')][1]}")
    g = lambda p, t: P[(p, t)][0]  # noqa: E731
    rows = []
    for s in SOURCES:
        h, m, a = R[(s, "harmony", "new.student")], R[(s, "matched", "new.student")], R[(s, "loose", "new.student.appearance")]
        if h:
            ch = chance[(s, "harmony")][0]
            rows.append((f"{s}: harmony >= chance + 0.30", h["recall@1"], ch + 0.30))
            rows.append((f"{s}: harmony >= `color` + 0.10", h["recall@1"], R[(s, "harmony", "color")]["recall@1"] + 0.10))
        if m:
            ch = chance[(s, "matched")][0]
            rows.append((f"{s}: matched >= chance + 0.05", m["recall@1"], ch + 0.05))
            rows.append((f"{s}: matched > `geometry`", m["recall@1"], R[(s, "matched", "geometry")]["recall@1"] + 1e-9))
            rows.append((f"{s}: matched > `imagenet`", m["recall@1"], R[(s, "matched", "imagenet")]["recall@1"] + 1e-9))
        if a:
            rows.append((f"{s}: appearance-only loose differs from the mean of 1/n ({chance[(s, 'loose')][0]:.3f})",
                         abs(a["recall@1"] - chance[(s, "loose")][0]), 0.005))
    rows.append(("pooled loose: student > `geometry`", g("loose", "new.student"), g("loose", "geometry") + 1e-9))
    rows.append(("pooled loose: student > `aspect`", g("loose", "new.student"), g("loose", "aspect") + 1e-9))
    rows.append(("pooled loose: teacher rerank helps (> student alone)", g("loose", "new.rerank"), g("loose", "new.student") + 1e-9))
    print("\n### Targets\n\n| target | value | needs | met |\n|---|---:|---:|:---:|")
    for name, v, need in rows:
        print(f"| {name} | {v:.3f} | {need:.3f} | {'yes' if v >= need else '**no**'} |")
    rule = [("student harmony > shipped", g("harmony", "new.student"), g("harmony", "old.student"), 1e-9),
            ("student matched > shipped", g("matched", "new.student"), g("matched", "old.student"), 1e-9),
            ("student loose >= shipped - 0.01", g("loose", "new.student"), g("loose", "old.student"), -0.01),
            ("teacher harmony > shipped", g("harmony", "new.teacher"), g("harmony", "old.teacher"), 1e-9),
            ("teacher matched > shipped", g("matched", "new.teacher"), g("matched", "old.teacher"), 1e-9),
            ("teacher (rerank) loose >= shipped - 0.01", g("loose", "new.rerank"), g("loose", "old.rerank"), -0.01)]
    print("\n### Ship rule (pooled)\n\n| clause | new | shipped | holds |\n|---|---:|---:|:---:|")
    ok = True
    for name, new, old, tol in rule:
        holds = new >= old + tol
        ok &= holds
        print(f"| {name} | {new:.3f} | {old:.3f} | {'yes' if holds else '**no**'} |")
    print(f"\nship: {'yes' if ok else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
