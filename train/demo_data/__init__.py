"""The one-command demo's data: synthetic multimodal posts generated in code (no downloads, no GPU).

It lives in train (the demo itself, which also drives export and the runtime, is the top-level
`demo` package): the tiny student's tokenizer is trained on `demo_corpus`, and the `demo` teacher
(train/cot/demo_teacher.py) reads the evidence written here.

`make_demo_data` writes seeded train/valid/test JSONL + PNG images + `evidence.jsonl` (why each gold
keyphrase is right); `demo_corpus` lists the words they use, for the tiny student's tokenizer.
"""

from .data import DemoData, DemoDataConfig, demo_corpus, demo_words, make_demo_data, stats
from .evidence import Evidence, ImageEvidence, KeyphraseEvidence, read_evidence

__all__ = ["DemoData", "DemoDataConfig", "Evidence", "ImageEvidence", "KeyphraseEvidence",
           "demo_corpus", "demo_words", "make_demo_data", "read_evidence", "stats"]
