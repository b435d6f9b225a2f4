"""Membership inference: signals, attacks, metrics and shadow / reference models.

```python
from sparsemia import mia
shadows = mia.train_shadow_models(LeNet5, x_universe, y_universe, mia.lira_inclusion(64, K), config)
shadow_logits = mia.score_models(shadows, x_universe)              # [64, K, 10]
result = mia.lira(target_logits, labels, shadow_logits[:, cand], inclusion[:, cand])
metrics = mia.attack_metrics(result.scores, is_member, labels=labels)
```
"""

from sparsemia.mia import signals
from sparsemia.mia.attacks import (
    METRIC_ATTACKS,
    AttackResult,
    ShadowRecords,
    learn_thresholds,
    lira,
    metric_attack,
    rmia,
    shadow_model_attack,
)
from sparsemia.mia.metrics import (
    AttackMetrics,
    attack_metrics,
    load_scores,
    roc_points,
    save_scores,
    tpr_at_fpr,
)
from sparsemia.mia.shadow import (
    ShadowModels,
    build_stack,
    disjoint_inclusion,
    lira_inclusion,
    magnitude_prune_stacked,
    score_models,
    train_shadow_models,
)

__all__ = [
    "signals",
    "AttackResult",
    "ShadowRecords",
    "metric_attack",
    "learn_thresholds",
    "shadow_model_attack",
    "lira",
    "rmia",
    "METRIC_ATTACKS",
    "AttackMetrics",
    "attack_metrics",
    "roc_points",
    "tpr_at_fpr",
    "save_scores",
    "load_scores",
    "ShadowModels",
    "lira_inclusion",
    "disjoint_inclusion",
    "build_stack",
    "train_shadow_models",
    "score_models",
    "magnitude_prune_stacked",
]
