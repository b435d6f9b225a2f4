"""Sparse layers (drop-in for ``nn.Linear`` / ``nn.Conv2d``) and model conversion."""

from sparsemia.nn.conv import SparseConv2d
from sparsemia.nn.convert import (
    BytesReport,
    FoldedLayer,
    bytes_report,
    densify,
    fuse_relu_pool,
    load_sparsified,
    save_sparsified,
    sparsify,
)
from sparsemia.nn.linear import SparseLinear

__all__ = ["SparseLinear"]
# convolution and conversion (nn/conv.py, nn/convert.py)
__all__ += ["SparseConv2d", "sparsify", "densify", "fuse_relu_pool", "FoldedLayer", "bytes_report", "BytesReport",
            "save_sparsified", "load_sparsified"]
