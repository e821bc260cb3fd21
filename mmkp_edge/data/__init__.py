"""Dataset tools for calibrated benchmarks (the paper's MMKP-V2 idea), behind `mmkp-data`.

Standard keyphrase benchmarks overestimate models: test keyphrases (98.9% on CMKP) and even posts
recur in training. These modules convert datasets to posts JSONL (convert), measure the overlap
(overlap, with near-duplicates from neardup), remove duplicates (dedup) and re-split a pool so a
chosen share of test keyphrases is unseen (split). Torch-free: stdlib, numpy and nltk (via phrases).
"""
