"""The compiler room: the instruction set (``isa``), ``compile_program`` and the instruction-level executor."""
