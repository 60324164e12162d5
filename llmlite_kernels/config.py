"""User-facing configuration of a quantization run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

from ._checks import check_choice
from .formats import SUPPORTED_BITS
from .formats.lowbit import canonical_group_size

METHODS = ("rtn",)


@dataclass
class QuantConfig:
    """What to quantize and how.

    bits / group_size (-1 or None: per-channel) / symmetric: the packed format (``formats.lowbit``).
    method: the algorithm choosing the values ("rtn": round to nearest).
    include / exclude: regular expressions matched (``re.search``) against module names; a Linear is
    quantized when it matches some ``include`` (all, if empty) and no ``exclude``.
    """

    bits: int = 4
    group_size: Optional[int] = 128
    symmetric: bool = False
    method: str = "rtn"
    include: Sequence[str] = ()
    exclude: Sequence[str] = field(default_factory=lambda: ["lm_head"])

    def __post_init__(self):
        check_choice("bits", self.bits, SUPPORTED_BITS)
        self.group_size = canonical_group_size(self.group_size)
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {type(self.symmetric).__name__}")
        check_choice("method", self.method, METHODS)
        self.include, self.exclude = list(self.include), list(self.exclude)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        group = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"W{self.bits} {group} {'sym' if self.symmetric else 'asym'} {self.method.upper()}"
