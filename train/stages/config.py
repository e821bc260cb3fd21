"""The stage config: one typed, frozen dataclass for all four stages (DESIGN.md §2, §7).

A recipe (`train/recipes/<stage>.yaml`) sets the fields that differ from these defaults; the
command line adds `--set key=value`. Only the fields a stage uses matter to it (`zero_shot` ignores
`train`, `lora` and `dynamic`; only `cot` / `dynamic_cot` read `rationales`), but every run dir
saves the whole resolved config, so any two runs can be diffed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmkp_edge.errors import InputError
from mmkp_edge.images import check_policy

from ..evaluate import EvalConfig
from ..gate import GateConfig
from ..lora import LoraSettings
from ..loop import LoopConfig

STAGES = ("zero_shot", "sft", "cot", "dynamic_cot")
Stage = Literal["zero_shot", "sft", "cot", "dynamic_cot"]
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"


@dataclass(frozen=True)
class DataConfig:
    train: str | None = None       # training posts (JSONL or CMKP); also the "seen" keyphrase set
    valid: str | None = None       # validation posts (evaluated when eval_split = valid)
    test: str | None = None        # test posts (evaluated when eval_split = test)
    eval_split: Literal["valid", "test"] = "test"   # which split metrics.json scores
    image_root: str | None = None  # where relative image paths live (default: beside the file)
    max_train_posts: int = 0       # use only the first N training posts (0 = all)
    max_eval_posts: int = 0        # evaluate only the first N posts (0 = all)
    bad_image: str = "text-only"   # a missing / undecodable image: "text-only" (counted, reported)
                                   # or "error" (refused before training); mmkp_edge.images

    def validate(self) -> "DataConfig":
        if self.max_train_posts < 0 or self.max_eval_posts < 0:
            raise InputError("data.max_train_posts and data.max_eval_posts must be >= 0")
        try:
            check_policy(self.bad_image)
        except InputError as exc:
            raise InputError(f"data.{exc}") from None
        return self

    @property
    def eval_path(self) -> str | None:
        return self.valid if self.eval_split == "valid" else self.test


@dataclass(frozen=True)
class StageConfig:
    stage: Stage                              # which stage this config runs
    name: str = "default"                     # run name: the run dir is runs_dir/stage/name
    runs_dir: str = "runs"                    # root of all run dirs
    model: str = DEFAULT_MODEL                # hub id or checkpoint folder (ignored with init_from)
    init_from: str | None = None              # a previous run dir to start from (see stages.chain)
    image_splitting: bool = False             # False: one global tile per image (edge default)
    rationales: str | None = None             # cot / dynamic_cot: rationale JSONL keyed by post id
    rationales_kept_only: bool = True         # only rationales that passed the teacher filter
    merge: bool = True                        # write merged/ after training (next stage, export)
    data: DataConfig = field(default_factory=DataConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dynamic: GateConfig = field(default_factory=GateConfig)   # dynamic_cot only

    def validate(self) -> "StageConfig":
        if self.stage not in STAGES:
            raise InputError(f"stage must be one of {', '.join(STAGES)}; got {self.stage!r}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise InputError(f"name must be a plain folder name, got {self.name!r}")
        self.data.validate()
        self.train.validate()
        self.lora.validate()
        self.eval.validate()
        self.dynamic.validate()
        if self.data.eval_path is None:
            raise InputError(f"data.{self.data.eval_split} is required (the split to evaluate)")
        if self.stage != "zero_shot" and self.data.train is None:
            raise InputError(f"{self.stage}: data.train is required")
        return self
