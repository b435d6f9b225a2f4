"""Pruning: magnitude (unstructured, block, N:M, filter), ADMM, schedules, masks and reports.

```python
import sparsemia as sm
sm.prune.magnitude(model, sparsity=0.9, scope="global")             # masks, in place
sm.prune.magnitude(model, structure="nm", n=2, m=4, exclude=sm.prune.first_and_last(model))
sm.prune.magnitude(model, sparsity=0.5, structure="filter"); sm.prune.shrink(model)
result = sm.prune.admm(model, train_loader, sparsity=0.9, rho=1e-3, rounds=10)
print(sm.prune.sparsity_report(model))
sm.prune.remove(model)                                               # masks -> plain zeros
```

Masks are fixed through any later training (see :mod:`sparsemia.prune.masks`
for the mechanism and why it was chosen).
"""

from sparsemia.prune.admm import AdmmResult, AdmmRound, admm
from sparsemia.prune.filter import ChannelGroup, channel_groups, shrink
from sparsemia.prune.finetune import train_epochs
from sparsemia.prune.magnitude import magnitude
from sparsemia.prune.masks import (
    adopt_torch_prune,
    apply_mask,
    get_mask,
    is_masked,
    mask_zeros,
    masks,
    remove,
)
from sparsemia.prune.report import LayerSparsity, SparsityReport, sparsity_report
from sparsemia.prune.schedule import GradualPruner, cubic_sparsity, scheduled, sparsity_schedule
from sparsemia.prune.targets import first_and_last, prunable_layers

__all__ = [
    "magnitude",
    "admm",
    "AdmmResult",
    "AdmmRound",
    "shrink",
    "channel_groups",
    "ChannelGroup",
    "scheduled",
    "sparsity_schedule",
    "cubic_sparsity",
    "GradualPruner",
    "sparsity_report",
    "SparsityReport",
    "LayerSparsity",
    "remove",
    "masks",
    "apply_mask",
    "get_mask",
    "is_masked",
    "mask_zeros",
    "adopt_torch_prune",
    "first_and_last",
    "prunable_layers",
    "train_epochs",
]
