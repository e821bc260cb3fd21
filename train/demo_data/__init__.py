"""The one-command demo: synthetic multimodal posts generated in code (no downloads, no GPU).

`make_demo_data` writes seeded train/valid/test JSONL + PNG images + `evidence.jsonl` (why each gold
keyphrase is right); `demo_corpus` lists the words they use, for the tiny student's tokenizer.
"""

from .data import DemoData, DemoDataConfig, demo_corpus, demo_words, make_demo_data, stats
from .evidence import Evidence, ImageEvidence, KeyphraseEvidence, read_evidence

__all__ = ["DemoData", "DemoDataConfig", "Evidence", "ImageEvidence", "KeyphraseEvidence",
           "demo_corpus", "demo_words", "make_demo_data", "read_evidence", "stats"]
