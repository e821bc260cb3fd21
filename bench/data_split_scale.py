"""Scale check for `mmkp-data split` and `dedup`: a few hundred thousand posts on one CPU in minutes.

Real pools of that size are not shipped, so this times the library calls on a seeded synthetic pool
with CMKP-like shape (mmkp_edge.data.synthetic: Zipf keyphrases, ~1.5 per post, 1% edited copies).
Prints a table for people and ends with one JSON line for machines.

    python bench/data_split_scale.py --posts 300000 --unseen-ratio 0.3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

from mmkp_edge.data.dedup import deduplicate
from mmkp_edge.data.neardup import NearDupConfig
from mmkp_edge.data.split import SplitConfig, split_pool
from mmkp_edge.data.synthetic import synthetic_pool


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=300_000)
    ap.add_argument("--unseen-ratio", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-dedup", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    pool = synthetic_pool(args.posts, seed=args.seed)
    gen_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    splits, report = split_pool(pool, SplitConfig(unseen_ratio=args.unseen_ratio, seed=args.seed))
    split_s = time.perf_counter() - t0

    result = {"posts": args.posts, "distinct_keyphrases": report["pool_distinct_keyphrases"],
              "generate_s": round(gen_s, 2), "split_s": round(split_s, 2),
              "split_sizes": report["sizes"], "held_out_keyphrases": report["held_out_keyphrases"],
              "requested_unseen_ratio": args.unseen_ratio,
              "achieved_test_unseen_ratio": round(report["achieved"]["test_unseen_instance_ratio"], 4),
              "achieved_valid_unseen_ratio": round(report["achieved"]["valid_unseen_instance_ratio"], 4)}
    if not args.skip_dedup:
        t0 = time.perf_counter()
        dd = deduplicate([("pool", pool)], NearDupConfig())
        result["dedup_s"] = round(time.perf_counter() - t0, 2)
        result["dedup_removed_exact"] = sum(r.reason == "exact" for r in dd.removed)
        result["dedup_removed_near"] = sum(r.reason == "near" for r in dd.removed)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["cpu"] = platform.processor() or platform.machine()
    result["cpu_count"] = os.cpu_count()

    print(f"{'step':<10} {'seconds':>8}")
    for step in ("generate", "split", "dedup"):
        if f"{step}_s" in result:
            print(f"{step:<10} {result[f'{step}_s']:>8.2f}")
    print(f"test unseen ratio {result['achieved_test_unseen_ratio']} (requested {args.unseen_ratio}); "
          f"sizes {result['split_sizes']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
