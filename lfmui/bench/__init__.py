"""Benchmarks, kept apart from the app: ``python -m lfmui.bench CASE`` (``cli``) runs the cases
(``cases``: lfmui alone; ``peers``: beside llama.cpp and between clients) and prints JSON lines.
``meters`` measures memory and operations, ``llamacpp`` drives the peer, and ``measured`` holds
the figures the Models tab shows. What the figures mean: docs/benchmarks.md."""
