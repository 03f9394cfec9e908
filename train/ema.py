"""Weight averaging: an exponential moving average of the network's weights (Polyak averaging).

With ``optim.ema_decay`` = d > 0 the trainer keeps, beside the network it trains, a copy whose
weights after optimiser step t (1, 2, ...) are

    avg_t = d_t * avg_{t-1} + (1 - d_t) * w_t,    d_t = min(d, t / (t + 9)),    avg_0 = w_0

where ``w_t`` are the training ("raw") weights after that step (``w_0``: the run's starting
weights, ``optim.init_from``'s when given). The warm-up of the decay (``d_t``: 0.1 at the first
step, 0.5 at the ninth, 0.9 at the 81st; TensorFlow's ExponentialMovingAverage with
``num_updates``) keeps the random initial weights out of the average: with a fixed d = 0.999
they would still weigh exp(-1) ~ 37 % after 1,000 steps, most of a 5-epoch run of the 2D
network (1,250 steps). In a short run the warm-up, not d, sets the window: t / (t + 9) is 0.965
at step 250, 0.993 at 1,250, 0.997 at 3,000, so any d above 0.993 gives the same 1,250-step
average (86 % of its weight on the last 250 steps' weights). ``d_t`` is a function of the step
alone, so a resumed run continues the same average from the checkpoint (no extra state).

Floating-point buffers (BatchNorm's running mean and variance) are averaged like the
parameters, not copied: the raw network's running statistics describe the activations of its
last ~10 steps' weights (momentum 0.1), while the averaged weights stand for a longer window;
averaging the statistics over the same window keeps them matched to the averaged weights (as
YOLOv5's ModelEMA and timm's ModelEmaV2 do). Integer buffers (``num_batches_tracked``) are
copied.

The average is updated after every optimiser step, in float32 on the training device, on every
rank of a DDP job from the unwrapped module (the ranks' weights are identical after a step, so
are their averages); a step that AMP's GradScaler skips (an overflow) leaves the raw weights as
they were and the average moves towards them as for any step. The averaged copy is always in
eval mode and holds no gradients; it is what validation measures and what checkpoints hold
under ``model`` (train.checkpoint).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

WARMUP_STEPS = 9
"""``d_t = min(d, t / (t + WARMUP_STEPS))``: the decay's warm-up over the first steps."""


def decay_at(decay: float, step: int) -> float:
    """The averaging decay ``d_t`` used at optimiser step ``step`` (1 = the first step)."""
    return min(decay, step / (step + WARMUP_STEPS))


class WeightAverage:
    """An exponential moving average of ``model``'s weights (module docstring).

    Attributes:
        decay: the configured decay d in (0, 1) (``optim.ema_decay``).
        module: the averaged network (a copy of ``model`` at construction, eval mode, no grad).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"optim.ema_decay: the average needs a decay in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        tensors = [(a, b) for pa, pb in ((self.module.parameters(), model.parameters()),
                                         (self.module.buffers(), model.buffers()))
                   for a, b in zip(pa, pb, strict=True)]
        self._avg = [a for a, b in tensors if a.is_floating_point()]
        self._raw = [b for a, b in tensors if a.is_floating_point()]
        self._ints = ([a for a, b in tensors if not a.is_floating_point()],
                      [b for a, b in tensors if not a.is_floating_point()])

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the training weights after optimiser step ``step`` (1, 2, ...) into the average."""
        torch._foreach_lerp_(self._avg, self._raw, 1.0 - decay_at(self.decay, step))
        if self._ints[0]:
            torch._foreach_copy_(*self._ints)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

