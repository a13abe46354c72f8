"""Print the README's results table (markdown) from the JSON files that scripts/results.sh writes."""
import json
import os
import sys

RUNS = sys.argv[1] if len(sys.argv) > 1 else "runs/results"
ROWS = [("teacher", "`teacher`"), ("student", "`student`"), ("random", "`random`"), ("aspect", "`aspect`"),
        ("color", "`color`"), ("imagenet", "`imagenet`"),
        ("geometry", "`geometry` (control: aspect + size, no training)"),
        ("teacher.appearance", "`teacher --appearance-only`"), ("student.appearance", "`student --appearance-only`"),
        ("teacher.fit", "`teacher --composite fit` (what the app's rerank scores)")]


def load(name):
    path = os.path.join(RUNS, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


print("| model | exact R@1 | exact R@5 | exact R@10 | **loose R@1** | loose R@5 | loose R@10 |")
print("|---|---:|---:|---:|---:|---:|---:|")
for key, label in ROWS:
    e, lo = load(key + ".exact"), load(key + ".loose")
    if e is None or lo is None:
        continue
    std = lo.get("seed_std", {}).get("recall@1")
    loose1 = f"{lo['recall@1']:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    print(f"| {label} | {e['recall@1']:.3f} | {e['recall@5']:.3f} | {e['recall@10']:.3f} | **{loose1}** | "
          f"{lo['recall@5']:.3f} | {lo['recall@10']:.3f} |")

for proto in ("matched", "harmony"):  # the leak-free protocol, then the lighting one
    if any(load(f"{k}.{proto}") for k, _ in ROWS):
        print()
        print(f"| model ({proto} protocol) | R@1 | chance R@1 | R@3 | chance R@3 |")
        print("|---|---:|---:|---:|---:|")
    for key, label in ROWS:
        m = load(f"{key}.{proto}")
        if m is None:
            continue
        std = m.get("seed_std", {}).get("recall@1", 0.0)
        print(f"| {label} | **{m['recall@1']:.3f} ± {std:.3f}** | {m['chance@1']:.3f} | {m['recall@3']:.3f} | "
              f"{m['chance@3']:.3f} |")

# the targets of the student (issue "Learn compatibility, not box shape"), checked on the numbers above
m = {k: load(k + ".matched") for k in ("student", "teacher", "geometry", "imagenet")}
lo = {k: load(k + ".loose") for k in ("student", "random", "aspect", "geometry", "color", "imagenet")}
if all(m.values()):
    s, chance = m["student"]["recall@1"], m["student"]["chance@1"]
    checks = [
        ("matched: student >= chance + 0.08", s, chance + 0.08),
        ("matched: student >= geometry + 0.08", s, m["geometry"]["recall@1"] + 0.08),
        ("matched: student > imagenet", s, m["imagenet"]["recall@1"] + 1e-9),
        ("matched: student >= 0.95 x teacher", s, 0.95 * m["teacher"]["recall@1"]),
    ]
    if all(lo.values()):
        best = max(lo[k]["recall@1"] for k in lo if k != "student")
        checks.append(("loose: student above every baseline", lo["student"]["recall@1"], best + 1e-9))
    print()
    print("| target | student | needs | met |")
    print("|---|---:|---:|:---:|")
    for name, have, need in checks:
        print(f"| {name} | {have:.3f} | {need:.3f} | {'yes' if have >= need else '**no**'} |")
