"""Test helper (not a test): a briefly trained tiny student, shared by the export and MLX tests.

A random-weight student is chaotic — any weight rounding flips its argmax — so quantization gates
are checked on the tiny student after 40 full fine-tuning steps on the export probe posts, which
gives peaked greedy choices like a real trained student's.
"""

from pathlib import Path

import torch

from export.source import load_source
from export.validate import probe_posts
from mmkp_edge import prompt
from train.collate import train_batch


def train_briefly(tiny_dir: Path, probe_folder: Path, out: Path, steps: int = 40) -> Path:
    src = load_source(str(tiny_dir))
    posts = probe_posts(probe_folder, 8)
    targets = [prompt.direct_target(p.text.lower().replace(",", "").split()[:2]) for p in posts]
    torch.manual_seed(0)
    model = src.model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = train_batch(src.processor, posts, targets)
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval().save_pretrained(out)
    src.processor.save_pretrained(out)
    return out
