"""Which weights train at each step, and how fast: stages, frozen rows, per-row learning rates.

Design decisions:
- `train.stages` is a schedule of what trains (`Stage.train`): `new_rows` (only the embedding
  rows dmlm adds: specials, speech units, image codes), `embeddings` (every embedding row),
  `adapters` (the LoRA adapters and every embedding row) or `all`. What trains is a function of
  the step alone, so a resumed run, even across a stage boundary, trains what the uninterrupted
  one did.
- Every weight some stage trains is in the optimizer from the start, so its state's layout never
  changes between stages (a resume loads it as saved); a frozen weight has no gradient and
  AdamW skips it (no moment update, no decay). In one process a frozen weight's `requires_grad`
  is off, so its gradient is not even computed. Under DDP the set of weights with gradients
  must not change after wrapping (DDP registers its hooks once), so there every trainable weight
  keeps `requires_grad` and a frozen one's gradient is dropped before the update: the same step.
- Rows of one tensor cannot sit in different optimizer groups, so the embedding rows get their
  own rates by scaling their update: AdamW's update (its decay included) is proportional to the
  learning rate, so `old + m·(new − old)` after the step is the step at m times the rate. m = 0
  holds rows still; their gradient is zeroed first, so they move neither Adam's moments nor the
  clipping norm. The new rows' rate is `train.lr_new_rows`, the text rows' `train.lr_text_rows`
  (0 in a `new_rows` stage).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from dmlm.modeling.adapters import has_adapters, is_adapter_weight
from dmlm.training.config import RunConfig, Stage

log = logging.getLogger(__name__)

# what each kind of stage trains, by role of the weight (`roles`)
TRAINS = {"new_rows": {"embeddings"}, "embeddings": {"embeddings"}, "adapters": {"embeddings", "adapters"},
          "all": {"embeddings", "body"}}


def roles(model: torch.nn.Module) -> dict[str, str]:
    """Parameter name -> role: embeddings (the input embedding and an untied output layer), adapters, body, or
    base (a weight under adapters, and every other body weight of an adapted model: never trained)."""
    emb = {id(m.weight) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    adapted = has_adapters(model)
    out = {}
    for name, p in model.named_parameters():
        if id(p) in emb:
            out[name] = "embeddings"
        elif is_adapter_weight(name):
            out[name] = "adapters"
        else:
            out[name] = "base" if adapted else "body"
    return out


@dataclass
class Trainable:
    """The schedule of what trains and the per-row rates of one run, applied to its model step by step."""

    kinds: list[str]  # what stage i trains
    ends: list[int]  # the step count at which stage i ends (the last: never)
    text_size: int  # rows [0, text_size) are the text rows, the rest dmlm's
    lr_new_rows: float
    lr_text_rows: float
    drop_grads: bool  # several processes: frozen weights keep requires_grad, their gradients are dropped
    params: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    role: dict[str, str] = field(default_factory=dict)
    current: int | None = None  # the stage whose freezing is applied

    @classmethod
    def of(cls, cfg: RunConfig, model: torch.nn.Module, text_size: int, processes: int) -> Trainable:
        stages = cfg.train.stages or [Stage(train="adapters" if cfg.model.adapter == "lora" else "all")]
        ends = [sum(s.steps for s in stages[: i + 1]) for i in range(len(stages) - 1)]
        t = cls([s.train for s in stages], ends, text_size, cfg.train.lr_new_rows, cfg.train.lr_text_rows,
                drop_grads=processes > 1)
        t.params, t.role = dict(model.named_parameters()), roles(model)
        return t

    def optimized(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Every (name, weight) some stage trains, in the model's order: what the optimizer holds."""
        ever = set().union(*(TRAINS[k] for k in self.kinds))
        return [(n, p) for n, p in self.params.items() if self.role[n] in ever]

    def stage(self, step: int) -> int:
        """The stage of the step that follows `step` finished steps."""
        return sum(step >= end for end in self.ends)

    def log_fields(self) -> dict[str, int]:
        """The stage number (from 1) for a step's log row, when the schedule has several."""
        return {"stage": self.current + 1} if len(self.kinds) > 1 and self.current is not None else {}

    def enter(self, step: int) -> None:
        """Freeze and unfreeze for the step that follows `step` finished steps."""
        i = self.stage(step)
        if i == self.current:
            return
        trains = set().union(*(TRAINS[k] for k in self.kinds)) if self.drop_grads else TRAINS[self.kinds[i]]
        for name, p in self.params.items():
            if p.requires_grad != (self.role[name] in trains):  # untouched when nothing changes (FSDP's views)
                p.requires_grad_(self.role[name] in trains)
        if len(self.kinds) > 1 or self.kinds[0] != "all":
            log.info("step %d: stage %d of %d trains %s", step + 1, i + 1, len(self.kinds), self.kinds[i])
        self.current = i

    def _rates(self) -> tuple[float, float]:
        """(text rows, new rows) learning-rate multipliers in the current stage."""
        return (0.0 if self.kinds[self.current] == "new_rows" else self.lr_text_rows), self.lr_new_rows

    def _embeddings(self) -> list[torch.nn.Parameter]:
        return [p for n, p in self.params.items() if self.role[n] == "embeddings"]

    def before_update(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """After the backward pass, before clipping: drop frozen weights' gradients (several processes), zero
        frozen rows' gradients, and keep the rows whose update gets scaled (for `after_update`)."""
        if self.drop_grads:
            trains = TRAINS[self.kinds[self.current]]
            for name, p in self.params.items():
                if self.role[name] not in trains:
                    p.grad = None
        text_rate, new_rate = self._rates()
        held = []
        for w in self._embeddings():
            if w.grad is None:
                continue
            if text_rate == 0:
                w.grad[: self.text_size] = 0
            if (text_rate, new_rate) != (1.0, 1.0):
                held.append((w, w.detach().clone()))
        return held

    @torch.no_grad()
    def after_update(self, held: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        """After the optimizer step: each row's update times its rate (0: the row as it was)."""
        text_rate, new_rate = self._rates()
        for w, old in held:
            for rows, rate in ((slice(None, self.text_size), text_rate), (slice(self.text_size, None), new_rate)):
                if rate == 0:
                    w[rows] = old[rows]
                elif rate != 1:
                    w[rows] = old[rows] + rate * (w[rows] - old[rows])
