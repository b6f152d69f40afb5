"""intvit: an integer-only Vision Transformer, its accelerator simulator and its RTL.

The subpackages are :mod:`intvit.quant` (the integer semantics and golden executor),
:mod:`intvit.sim` (the cycle-approximate simulator) and :mod:`intvit.rtl` (the Amaranth
hardware); :mod:`intvit.cli` is the command line that ties them together.
"""

__version__ = "0.1.0"
