"""Per-example signals computed from a model's logits and the true labels.

All functions take logits ``[..., C]`` and labels ``[...]`` (broadcast over any
leading dimensions, e.g. ``[M, N]`` for M shadow models) and return ``[...]``
float64 numpy arrays, oriented so that **higher means "more likely a member"**
unless the name says otherwise (``loss``, ``entropy``, ``modified_entropy`` are
the raw quantities; attacks negate them).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "probabilities",
    "true_class_probability",
    "loss",
    "correctness",
    "entropy",
    "modified_entropy",
    "logit_scaled_confidence",
    "SIGNALS",
]


def _as_tensors(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits_t = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double()
    labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long()
    if logits_t.dim() < 1:
        raise ValueError("logits: expected shape [..., C]")
    classes = logits_t.shape[-1]
    if labels_t.numel() and (labels_t.min() < 0 or labels_t.max() >= classes):
        raise ValueError(f"labels: values must lie in 0..{classes - 1} for logits with {classes} classes")
    try:
        labels_t = labels_t.expand(logits_t.shape[:-1])
    except RuntimeError as exc:
        raise ValueError(
            f"labels: shape {tuple(labels_t.shape)} does not broadcast to logits {tuple(logits_t.shape[:-1])}"
        ) from exc
    return logits_t, labels_t


def probabilities(logits) -> np.ndarray:
    """Softmax probabilities ``[..., C]``."""
    return torch.softmax(torch.as_tensor(np.asarray(logits)).double(), -1).numpy()


def true_class_probability(logits, labels, temperature: float = 1.0) -> np.ndarray:
    """``p_y`` (softmax at ``temperature``), the confidence signal of Song & Mittal and RMIA's ``Pr(x|θ)``."""
    z, y = _as_tensors(logits, labels)
    p = torch.softmax(z / temperature, -1)
    return p.gather(-1, y.unsqueeze(-1)).squeeze(-1).numpy()


def loss(logits, labels) -> np.ndarray:
    """Cross-entropy ``-log p_y`` (Yeom et al. 2018's signal; lower for members)."""
    z, y = _as_tensors(logits, labels)
    logp = torch.log_softmax(z, -1)
    return (-logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)).numpy()


def correctness(logits, labels) -> np.ndarray:
    """1.0 where the prediction is correct, else 0.0."""
    z, y = _as_tensors(logits, labels)
    return (z.argmax(-1) == y).double().numpy()


def entropy(logits, labels=None) -> np.ndarray:
    """Prediction entropy ``-Σ p_i log p_i`` (lower for members)."""
    z = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits).double()
    logp = torch.log_softmax(z, -1)
    return (-(logp.exp() * logp).sum(-1)).numpy()


def modified_entropy(logits, labels) -> np.ndarray:
    """Song & Mittal (2021)'s modified entropy (lower for members):

    ``Mentr = -(1 - p_y) log p_y - Σ_{i≠y} p_i log(1 - p_i)``.
    """
    z, y = _as_tensors(logits, labels)
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    log1mp = torch.log1p(-p.clamp(max=1 - 1e-16))
    onehot = torch.nn.functional.one_hot(y, z.shape[-1]).bool()
    true_term = -(1 - p) * logp
    other_term = -p * log1mp
    return torch.where(onehot, true_term, other_term).sum(-1).numpy()


def logit_scaled_confidence(logits, labels) -> np.ndarray:
    """LiRA's signal (Carlini et al. 2022): ``φ = log(p_y / (1 - p_y))``.

    Computed stably from logits as ``z_y - logsumexp_{i≠y} z_i`` (exact, no clipping).
    """
    z, y = _as_tensors(logits, labels)
    zy = z.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    others = z.masked_fill(torch.nn.functional.one_hot(y, z.shape[-1]).bool(), float("-inf"))
    return (zy - torch.logsumexp(others, -1)).numpy()


#: name → (function, sign): ``sign * function(logits, labels)`` is higher for members.
SIGNALS = {
    "correctness": (correctness, 1.0),
    "confidence": (true_class_probability, 1.0),
    "entropy": (entropy, -1.0),
    "modified_entropy": (modified_entropy, -1.0),
    "loss": (loss, -1.0),
}
