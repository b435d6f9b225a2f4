"""Small models shared by the pruning tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallNet(nn.Module):
    """Conv-BN-ReLU ×2, pool, flatten, two linear layers; every GEMM dimension is a multiple of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture
def small_net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, 8, 8, generator=generator), torch.randint(0, 12, (16,), generator=generator)
