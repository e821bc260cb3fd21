"""`mmkp-train`: training's command group (train.cli) plus `demo`, attached from above the layers.

train.cli holds every training subcommand and stays free of export; the demo needs the exporter
and the runtime too, so the console script assembles the group here (DESIGN.md §1: the dependency
direction is mmkp_edge ← train ← export ← demo). `python -m train.cli` is the same group without
`demo`.
"""

from __future__ import annotations

from mmkp_edge.cli import entry
from train.cli import cli

from .command import demo_command

cli.add_command(demo_command)

main = entry(cli, "mmkp-train")

if __name__ == "__main__":
    main()
