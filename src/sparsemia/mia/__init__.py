"""Membership inference: signals, attacks, metrics and shadow / reference models.

```python
from sparsemia import mia
shadows = mia.train_shadow_models(LeNet5, x_universe, y_universe, mia.lira_inclusion(64, K), config)
shadow_logits = mia.score_models(shadows, x_universe)              # [64, K, 10]
result = mia.lira(target_logits, labels, shadow_logits[:, cand], inclusion[:, cand])
metrics = mia.attack_metrics(result.scores, is_member, labels=labels)
```

A population of K models on random halves of one universe, each model a target once:

```python
logits = ...                                                       # [K, N, Q, C] on mia.augment(x, "mnist")
result = mia.evaluate_population(logits, labels, inclusion, ["loss", "lira_online"], seed=0)
rows = mia.compare(result_pruned, result_none, test_acc_pruned, test_acc_none, defense="admm", versus="none")
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
from sparsemia.mia.population import (
    POPULATION_ATTACKS,
    PopulationResult,
    compare,
    evaluate_population,
)
from sparsemia.mia.queries import augment, num_queries, query_plan
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
    "augment",
    "num_queries",
    "query_plan",
    "PopulationResult",
    "evaluate_population",
    "compare",
    "POPULATION_ATTACKS",
]
