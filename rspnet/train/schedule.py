"""The learning-rate schedule of training: poly decay per step."""
from __future__ import annotations

from typing import Callable

__all__ = ["poly_lambda"]


def poly_lambda(total_steps: int, power: float) -> Callable[[int], float]:
    """``LambdaLR`` factor ``(1 - step / total_steps) ** power``, 0 past the end."""
    return lambda step: max(0.0, 1.0 - min(step, total_steps) / total_steps) ** power
