"""Base of objectives with an EMA teacher: the teacher follows device moves and lives in the checkpoint.

The :class:`~unimim.core.ema.EMATeacher` is a plain attribute, not a child module (so the optimizer, ``parameters()``
and DeepSpeed never see it); this base carries it along in ``.to()`` / ``.cuda()`` and saves it, with the number of
completed updates, through ``nn.Module``'s extra state.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from unimim.core.ema import EMAConfig, EMATeacher
from unimim.objectives.base import Objective


class TeacherStudentObjective(Objective):
    """An :class:`Objective` whose subclass calls :meth:`attach_teacher` once in ``__init__``."""

    teacher: EMATeacher
    num_updates: int

    def attach_teacher(self, student: nn.Module, cfg: EMAConfig) -> None:
        """Build the EMA teacher as a frozen copy of ``student`` (its parameter names must match the names the
        subclass passes to ``teacher.update``)."""
        self.teacher = EMATeacher(student, cfg)  # a plain attribute: not a child module
        self.num_updates = 0

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.teacher.module._apply(fn, recurse)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "num_updates": self.num_updates}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.num_updates = int(state["num_updates"])
