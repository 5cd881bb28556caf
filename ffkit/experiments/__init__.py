"""The experiments behind the book's longer commands, importable by notebooks and tests.

Each module holds the logic of one ``python -m ffkit`` experiment or benchmark; the command
itself (``ffkit/commands/``) only parses arguments, shows progress and writes the results file
(:mod:`ffkit.results`).

==================  ===============================  ========================================
module              command                          what it measures
==================  ===============================  ========================================
``modes``           ``bench-modes``                  R_f, R_b; full gradient by n JVPs vs one VJP
``step``            ``bench-step``                   one training step over a grid of shapes
``fg_mnist``        ``fg-mnist``                     MNIST by backprop and forward gradient
``parallel``        ``bench-parallel``               per-layer timings; K tangents with vmap
``comm``            ``bench-comm``                   bytes per step of the data-parallel schemes
``variance_width``  ``variance-width``               steps to a loss as an MLP widens
==================  ===============================  ========================================
"""
