"""Training side of mmkp-edge (torch, transformers, peft): the student, the progressive stages
(zero-shot → SFT → Fine-tune-CoT → Dynamic CoT) and the teacher that writes CoT data."""
