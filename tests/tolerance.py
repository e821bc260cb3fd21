"""Tolerances for comparing two floating-point evaluations of the same math, from the arithmetic.

Two computations that are equal in exact arithmetic but order their operations differently — another
BLAS blocking or thread split, fused multiply-adds, AVX-512 vs AMX vs NEON kernels, a merged weight
(W + s·B·A)x instead of Wx + s·B(Ax), an ONNX graph instead of eager torch — differ by rounding
only. A sum of n terms in a format with unit roundoff u (fp32: u = 2^-24) has an error of at most
γ_n·Σ|terms| ≈ n·u·Σ|terms| (Higham, *Accuracy and Stability of Numerical Algorithms*, §3.1), and
~√n·u·Σ|terms| when the rounding errors are independent. A network chains `depth` such reductions,
each adding its own relative error, so we allow

    atol = depth · n · eps · max|values|        eps = 2u (2^-23 for fp32)

with n the widest reduction (hidden or intermediate size, or the number of terms summed) and
max|values| the magnitude of the compared values: the worst-case n·u bound with a factor 2 of slack,
scaled to the values, so it holds on any CPU while staying orders of magnitude below what a real
bug changes (a wrong LoRA merge or a wrong graph moves values by ~10⁻¹ of their scale).
A fixed atol like 1e-5 is neither: too tight for large values on another ISA, meaningless for
tiny ones.
"""

from __future__ import annotations

import numpy as np


def _magnitude(values) -> float:
    if hasattr(values, "detach"):                     # a torch tensor (no torch import here)
        values = values.detach().double().cpu().numpy()
    arr = np.abs(np.asarray(values, dtype=np.float64))
    return float(arr.max()) if arr.size else 0.0


def fp32_atol(values, reduction: int, depth: int = 1, dtype=np.float32) -> float:
    """Absolute tolerance for `values` computed twice in `dtype` with sums of up to `reduction`
    terms chained `depth` deep (see the module docstring). Never below the smallest normal."""
    if reduction < 1 or depth < 1:
        raise ValueError("reduction and depth must be at least 1")
    info = np.finfo(dtype)
    return max(depth * reduction * float(info.eps) * _magnitude(values), float(info.tiny))


def student_atol(values, config) -> float:
    """`fp32_atol` for an Idefics3 / SmolVLM-shaped student from its Hugging Face `config`: the
    widest reduction of its text and vision stacks (hidden, intermediate, or the connector's
    pixel-shuffled width) and depth = decoder layers + vision layers + connector + lm_head."""
    text, vision = config.text_config, config.vision_config
    widest = max(text.hidden_size, text.intermediate_size, vision.hidden_size,
                 vision.intermediate_size, vision.hidden_size * config.scale_factor ** 2)
    depth = text.num_hidden_layers + vision.num_hidden_layers + 2
    return fp32_atol(values, reduction=widest, depth=depth)
