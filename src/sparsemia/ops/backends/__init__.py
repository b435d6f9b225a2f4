"""The glue between the public ops and each backend's kernels: ``reference`` (plain torch),
``cpu`` (the C++ extension), ``cuda`` (the CUDA extension, torch's 2:4 path) and ``triton``.

Each module registers its implementations with :func:`sparsemia.ops.registry.register_impl`
when imported. ``reference`` and ``cpu`` are imported with :mod:`sparsemia.ops`; ``cuda`` and
``triton`` on the first call that could use them.
"""
