"""The one-command demo (`mmkp-train demo`, `make demo`), above every layer.

It drives all of them — synthetic data (train.demo_data), training (train), export (export) and the
torch-free runtime (mmkp_edge) — so it lives in none of them: train must not import export, and the
demo needs both. `demo.cli` attaches its command to training's `mmkp-train` group from here.
"""
