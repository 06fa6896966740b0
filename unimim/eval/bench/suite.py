"""A benchmark suite: entries (a pretraining recipe each, or a chain of stages), one budget shared by all of them,
and the evaluations every entry gets. Read strictly from YAML like a recipe (unknown keys fail, names suggested).

```
name: image_methods_cpu           # the suite's directory: out_dir/name
description: ...
budget: {kind: seconds, value: 480}   # per entry: steps | samples | seconds | flops (training FLOPs)
out_dir: runs/bench
overrides: [train.threads=2]      # applied to every entry's every stage, before the entry's own
evaluate:
  probe: true                     # linear probe + kNN, pretrained vs the same architecture at random weights
  probe_points: 3                 # probes at 1/3, 2/3 and the end of the budget (accuracy against budget curves)
  finetune: true                  # fine-tune vs from scratch, with the modality's fine-tune recipe below
  baselines: true                 # the raw-input baseline of each modality's probe task, on the same splits
  finetune_recipes: {image: image/finetune_fmnist_cpu}
launch: null                      # or {command: "deepspeed --hostfile hosts", world_size: 16}: pretraining stages
                                  # run under this launcher (DeepSpeed), evaluations in the bench process
entries:
  - name: data2vec2
    recipe: image/data2vec2_fmnist_cpu
  - name: beit                    # a two-stage entry: the dVAE tokenizer, then BEiT; the budget covers both
    stages:
      - {name: dvae, recipe: image/dvae_fmnist_cpu, share: 0.4}
      - {name: beit, recipe: image/beit_fmnist_cpu, overrides: ["method.tokenizer={dvae}"]}
```

``{stage}`` in a stage's overrides is replaced by that earlier stage's run directory. The last stage is the one
evaluated. A stage without ``share`` takes what the stages with one leave (an equal part each).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from unimim.config import ConfigError

BudgetKind = Literal["steps", "samples", "seconds", "flops"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
STAGE_REF = re.compile(r"\{([A-Za-z0-9][A-Za-z0-9_.-]*)\}")


def _check_name(name: str, what: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")


@dataclass
class Budget:
    kind: BudgetKind = "steps"
    value: float = 100

    def __post_init__(self) -> None:
        if not self.value > 0:
            raise ValueError(f"budget.value must be > 0, got {self.value}")

    def describe(self) -> str:
        unit = {"steps": "optimizer steps", "samples": "samples seen", "seconds": "s of training wall-clock",
                "flops": "training FLOPs"}[self.kind]
        value = f"{self.value:.3g}" if self.kind == "flops" else f"{self.value:g}"
        return f"{value} {unit} per entry"


@dataclass
class Stage:
    recipe: str
    name: str = "pretrain"
    overrides: list[str] = field(default_factory=list)
    share: float | None = None       # this stage's part of the entry's budget, in (0, 1)

    def __post_init__(self) -> None:
        _check_name(self.name, "stage")
        if self.share is not None and not 0.0 < self.share < 1.0:
            raise ValueError(f"stage {self.name}: share must be in (0, 1), got {self.share}")


@dataclass
class Entry:
    name: str
    recipe: str | None = None        # a one-stage entry; or `stages`
    overrides: list[str] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)
    finetune: str | bool | None = None   # a fine-tune recipe for this entry; false: none; None: the modality's
    finetune_overrides: list[str] = field(default_factory=list)
    probe_overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_name(self.name, "entry")
        if (self.recipe is None) == (not self.stages):
            raise ValueError(f"entry {self.name}: give either recipe (one stage) or stages (a list), not "
                             f"{'both' if self.recipe else 'neither'}")
        if self.recipe is not None:
            self.stages = [Stage(recipe=self.recipe, overrides=list(self.overrides))]
            self.recipe, self.overrides = None, []
        elif self.overrides:  # the entry's overrides apply to its last stage, the evaluated one
            self.stages[-1].overrides = [*self.stages[-1].overrides, *self.overrides]
            self.overrides = []
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"entry {self.name}: stage names must differ, got {names}")
        for i, stage in enumerate(self.stages):
            for ref in STAGE_REF.findall(" ".join(stage.overrides)):
                if ref not in names[:i]:
                    raise ValueError(f"entry {self.name}, stage {stage.name}: {{{ref}}} names no earlier stage "
                                     f"(earlier: {names[:i] or 'none'})")
        if self.finetune is True:
            self.finetune = None

    def shares(self) -> list[float]:
        """Each stage's part of the budget (summing to 1)."""
        given = sum(s.share for s in self.stages if s.share is not None)
        rest = [s for s in self.stages if s.share is None]
        if given >= 1.0 or (not rest and abs(given - 1.0) > 1e-9):
            raise ConfigError(f"entry {self.name}: the stage shares sum to {given:g}; leave one stage without "
                              "share (it takes the rest), or make them sum to 1")
        return [s.share if s.share is not None else (1.0 - given) / len(rest) for s in self.stages]


@dataclass
class Evaluate:
    probe: bool = True
    probe_points: int = 1            # probes over the budget (the last at its end); 1: the final probe only
    finetune: bool = True
    baselines: bool = True
    finetune_recipes: dict[str, str] = field(default_factory=dict)  # modality -> fine-tune recipe

    def __post_init__(self) -> None:
        if self.probe_points < 1:
            raise ValueError(f"evaluate.probe_points must be >= 1, got {self.probe_points}")


@dataclass
class Launch:
    command: str                     # the launcher and its options, e.g. "deepspeed --hostfile hosts"
    world_size: int = 1              # processes it starts (for the samples / FLOPs budget arithmetic)
    deepspeed: bool = True           # run the stages with deepspeed.enabled=true
    deepspeed_config: str | None = None  # a DeepSpeed JSON over the generated one (unimim pretrain --deepspeed)

    def __post_init__(self) -> None:
        if not self.command.strip():
            raise ValueError("launch.command is empty")
        if self.world_size < 1:
            raise ValueError(f"launch.world_size must be >= 1, got {self.world_size}")


@dataclass
class Suite:
    name: str
    entries: list[Entry]
    budget: Budget = field(default_factory=Budget)
    description: str = ""
    out_dir: str = "runs/bench"
    overrides: list[str] = field(default_factory=list)
    evaluate: Evaluate = field(default_factory=Evaluate)
    launch: Launch | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "suite")
        if not self.entries:
            raise ValueError("a suite needs at least one entry")
        names = [e.name for e in self.entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"entry names must differ: {dup} repeat")
        for entry in self.entries:
            entry.shares()

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ConfigError(f"suite {self.name} has no entry {name!r}; entries: {[e.name for e in self.entries]}")
