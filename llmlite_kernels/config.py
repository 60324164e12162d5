"""User-facing configuration of a quantization run."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence, Union

from ._checks import check_choice
from .formats import SUPPORTED_BITS
from .formats.lowbit import canonical_group_size

METHODS = ("rtn", "gptq", "awq", "awq+gptq")
CALIBRATED = ("gptq", "awq", "awq+gptq")
SENSITIVITIES = ("output-fisher", "fisher", "output")
SAMPLINGS = ("first", "random")


@dataclass
class QuantConfig:
    """What to quantize and how.

    bits / group_size (-1 or None: per-channel) / symmetric: the packed format (``formats.lowbit``).
    method: the algorithm choosing the values: "rtn" (round to nearest, no calibration, the default),
    "gptq", "awq" (activation-aware scaling then RTN) or "awq+gptq" (``llmlite_kernels.quantization``).
    bits="auto" with avg_bits=: per-layer (bits, group_size) chosen among candidate_bits x
    candidate_group_sizes by measured sensitivity so the average bits per weight, scales and zero points
    included, stays <= avg_bits (``quantization.allocate``). sensitivity: "output-fisher" (default: each
    candidate quantized as ``method`` will, GPTQ included, its output error per channel weighted by that
    channel's empirical Fisher over ``fisher_windows`` windows), "fisher" (round-to-nearest error weighted
    by the weights' Fisher diagonal) or "output" (relative layer-output error); ``quantization.sensitivity``.
    act_order / static_groups / damp / block_size: GPTQ options (act-order implies static groups).
    clip_search: search each group's clipping ratio (MSE weighted by the input second moment).
    awq_grid: number of AWQ exponents tried in [0, 1).
    calib_windows x calib_seq_len: calibration tokens (default 64 x 512 of the WikiText-2 validation file).
    calib_sampling / calib_seed: "first" windows of the text, or "random" distinct windows drawn with the seed.
    include / exclude: regular expressions matched (``re.search``) against module names; a Linear is
    quantized when it matches some ``include`` (all, if empty) and no ``exclude``.
    """

    bits: Union[int, str] = 4
    group_size: Optional[int] = 128
    symmetric: bool = False
    method: str = "rtn"
    include: Sequence[str] = ()
    exclude: Sequence[str] = field(default_factory=lambda: ["lm_head"])
    avg_bits: Optional[float] = None
    candidate_bits: Sequence[int] = (2, 3, 4, 8)
    candidate_group_sizes: Sequence[int] = (32, 64, 128, -1)
    sensitivity: str = "output-fisher"
    fisher_windows: int = 16
    act_order: bool = False
    static_groups: Optional[bool] = None
    damp: float = 0.01
    block_size: int = 128
    clip_search: bool = False
    awq_grid: int = 20
    calib_windows: int = 64
    calib_seq_len: int = 512
    calib_sampling: str = "first"
    calib_seed: int = 0

    def __post_init__(self):
        if self.bits != "auto":
            check_choice("bits", self.bits, SUPPORTED_BITS)
        self.group_size = canonical_group_size(self.group_size)
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {type(self.symmetric).__name__}")
        check_choice("method", self.method, METHODS)
        self.include, self.exclude = list(self.include), list(self.exclude)
        self._check_calibrated_options()

    def _check_calibrated_options(self):
        if self.bits == "auto":
            if isinstance(self.avg_bits, bool) or not isinstance(self.avg_bits, (int, float)) or not 1 < self.avg_bits <= 16:
                raise ValueError(f"avg_bits={self.avg_bits!r}: bits='auto' needs avg_bits, a number in (1, 16]")
            for b in self.candidate_bits:
                check_choice("candidate_bits", b, SUPPORTED_BITS)
            self.candidate_bits = sorted(set(self.candidate_bits))
            check_choice("sensitivity", self.sensitivity, SENSITIVITIES)
            self.candidate_group_sizes = [canonical_group_size(g) for g in self.candidate_group_sizes]
            if not self.candidate_bits or not self.candidate_group_sizes:
                raise ValueError("candidate_bits and candidate_group_sizes must not be empty")
        elif self.avg_bits is not None:
            raise ValueError(f"avg_bits={self.avg_bits!r} is only used with bits='auto'")
        for name in ("act_order", "clip_search"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.static_groups not in (None, True, False):
            raise ValueError(f"static_groups must be None, True or False, got {self.static_groups!r}")
        if self.act_order and self.static_groups is False:
            raise ValueError("static_groups=False is not supported with act_order=True (the format stores no g_idx)")
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0 <= self.damp < 1:
            raise ValueError(f"damp={self.damp!r} must be a number in [0, 1)")
        check_choice("calib_sampling", self.calib_sampling, SAMPLINGS)
        for name, low in (("block_size", 1), ("awq_grid", 2), ("calib_windows", 1), ("calib_seq_len", 2),
                          ("fisher_windows", 1), ("calib_seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r} must be an int >= {low}")

    @property
    def calibrated(self) -> bool:
        """Whether this run needs calibration data."""
        return self.method in CALIBRATED or self.bits == "auto"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        group = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        method = self.method.upper() + ("+act-order" if self.act_order else "") + ("+clip" if self.clip_search else "")
        if self.bits == "auto":
            return f"auto <={self.avg_bits} bits/weight {'sym' if self.symmetric else 'asym'} {method}"
        return f"W{self.bits} {group} {'sym' if self.symmetric else 'asym'} {method}"


PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt", "sparsegpt_recon")
PRUNE_PATTERNS = ("unstructured", "2:4", "4:8")
PRUNE_SCOPES = ("row", "layer")
CALIBRATION_DEFAULTS = {"wanda": (128, "random"), None: (64, "first")}  # method: (calib_windows, calib_sampling)


@dataclass
class PruneConfig:
    """What to prune and how (``llmlite_kernels.prune``).

    method: "magnitude" (|W|, no calibration), "wanda" (|W| * ||X_j||_2), "sparsegpt" (OBS with the
    input Hessian, N:M masks chosen inside the sweep), or "sparsegpt_recon" (SparseGPT, then each block's
    kept weights refit so the block reproduces the *dense* model's block outputs).
    sparsity: fraction of weights pruned; N:M patterns fix it to 1 - N/M.
    pattern: "unstructured", "2:4" or "4:8" (N kept in every M consecutive inputs of a row).
    scope: unstructured pruning ranks weights per output "row" or over the whole "layer".
    calib_windows x calib_seq_len: calibration tokens (WikiText-2 validation text by default).
    calib_sampling / calib_seed: as in :class:`QuantConfig`. None: the method's default (``CALIBRATION_DEFAULTS``):
    Wanda 128 random windows, as its reference code samples (it updates no weight, and its ranking gains from
    the wider sample: SmolLM2 2:4 177.7 with the 64 first windows, 165.6 / 169.5 / 172.6 with 128 random, seeds 0-2);
    the others the 64 first windows (SparseGPT's cost is its calibration forward passes: it fits 5 minutes).
    blocksize / damp: SparseGPT's column block and Hessian dampening (fraction of the mean diagonal).
    recon_steps / recon_lr / recon_batch: Adam steps, learning rate and windows per step of the
    block reconstruction of "sparsegpt_recon".
    true_sequential: wanda/sparsegpt gather each Linear's statistics after the Linears that feed it inside
    the same block were pruned (one extra block run per subset; ``calibration.linear_subsets``).
    sequential: wanda/sparsegpt statistics of each block come from the blocks before it as pruned (True,
    the papers' setup) or as in the dense model (False).
    include / exclude: regular expressions on module names, as in :class:`QuantConfig`.
    """

    method: str = "sparsegpt"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    scope: str = "row"
    calib_windows: Optional[int] = None
    calib_seq_len: int = 512
    calib_sampling: Optional[str] = None
    calib_seed: int = 0
    blocksize: int = 128
    damp: float = 0.01
    recon_steps: int = 32
    recon_lr: float = 5e-4
    recon_batch: int = 4
    true_sequential: bool = False
    sequential: bool = True
    include: Sequence[str] = ()
    exclude: Sequence[str] = field(default_factory=lambda: ["lm_head"])

    def __post_init__(self):
        check_choice("method", self.method, PRUNE_METHODS)
        check_choice("pattern", self.pattern, PRUNE_PATTERNS)
        check_choice("scope", self.scope, PRUNE_SCOPES)
        windows, sampling = CALIBRATION_DEFAULTS.get(self.method, CALIBRATION_DEFAULTS[None])
        self.calib_windows = windows if self.calib_windows is None else self.calib_windows
        self.calib_sampling = sampling if self.calib_sampling is None else self.calib_sampling
        check_choice("calib_sampling", self.calib_sampling, SAMPLINGS)
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity={self.sparsity!r} must be a number in [0, 1)")
        if self.nm is not None:
            n, m = self.nm
            if abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise ValueError(f"sparsity={self.sparsity!r} does not match pattern={self.pattern!r}, "
                                 f"which prunes {1 - n / m:g}")
        if isinstance(self.calib_seed, bool) or not isinstance(self.calib_seed, int) or self.calib_seed < 0:
            raise ValueError(f"calib_seed={self.calib_seed!r} must be a non-negative integer")
        for name in ("calib_windows", "calib_seq_len", "blocksize", "recon_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if isinstance(self.recon_steps, bool) or not isinstance(self.recon_steps, int) or self.recon_steps < 0:
            raise ValueError(f"recon_steps={self.recon_steps!r} must be a non-negative integer")
        for name in ("true_sequential", "sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not self.sequential and (self.true_sequential or self.method == "sparsegpt_recon"):
            raise ValueError("sequential=False (statistics from the dense model) does not combine with "
                             "true_sequential=True or method='sparsegpt_recon'")
        for name in ("damp", "recon_lr"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a non-negative number")
        self.include, self.exclude = list(self.include), list(self.exclude)

    @property
    def nm(self):
        """``(N, M)`` for an N:M pattern, else None."""
        if self.pattern == "unstructured":
            return None
        n, m = self.pattern.split(":")
        return int(n), int(m)

    @property
    def calibrated(self) -> bool:
        return self.method != "magnitude"

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        what = self.pattern if self.nm else f"{self.sparsity:.0%} unstructured/{self.scope}"
        return f"{self.method} {what}"
