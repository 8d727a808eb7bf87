"""bf16 against fp32 on the Fashion-MNIST study preset: the strict patriarch D(1.0,0.0) of
seeds 0-2 trained in each precision (same data, stream and initialisation), paired by seed.

Run from the repository root: python docs/results/fashion-mnist/precision.py
"""

from __future__ import annotations

import json
from pathlib import Path

from kdgen.report.stats import t_interval

HERE = Path(__file__).parent


def final_test(path: Path, key: str) -> float:
    summary = json.loads(path.read_text())
    return next(g for g in summary["generations"] if g["generation"] == 0)["test"][key]


def main() -> None:
    bf16 = {p.parent.name: p for p in sorted((HERE / "bf16").glob("D1.0-0.0/seed*/summary.json"))}
    print("| metric | seeds | fp32 | bf16 | bf16 - fp32, mean [95% t-interval] |")
    print("|---|---|---|---|---|")
    for key, scale in (("top1", 100), ("mean_max_prob", 1), ("dist_c", 1), ("nll", 1)):
        fp32_runs = HERE / "runs" / "D1.0-0.0"
        pairs = [
            (final_test(fp32_runs / seed / "summary.json", key), final_test(path, key))
            for seed, path in bf16.items()
        ]
        diff = t_interval([(b - f) * scale for f, b in pairs])
        fp32 = sum(f for f, _ in pairs) / len(pairs) * scale
        bf16_mean = sum(b for _, b in pairs) / len(pairs) * scale
        print(
            f"| test {key} | {', '.join(s[4:] for s in bf16)} | {fp32:.3f} | {bf16_mean:.3f} | "
            f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}] (n={diff.n}) |"
        )


if __name__ == "__main__":
    main()
