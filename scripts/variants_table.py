"""Print the student-variant table (markdown) from the JSON files that scripts/variants.sh writes.

    python scripts/variants_table.py RUNS_DIR NAME [NAME ...]
"""
import json
import os
import sys


def cell(path: str) -> str:
    if not os.path.exists(path):
        return "-"
    r = json.load(open(path))
    std = r.get("seed_std", {}).get("recall@1")
    return f"{r['recall@1']:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    runs, names = argv[0], argv[1:]
    print("| variant | loose R@1 | loose R@1, appearance only | matched R@1 | matched R@1, appearance only |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        cols = [cell(os.path.join(runs, f"{n}{ao}.{p}.json")) for p in ("loose", "matched") for ao in ("", ".appearance")]
        print(f"| {n} | {cols[0]} | {cols[1]} | **{cols[2]}** | {cols[3]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
