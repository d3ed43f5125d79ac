"""The blocks ``python -m benchmarks.render`` writes into the docs, each made from result files only.

One module per source: :mod:`.cpu` (the CPU benchmarks: run, learning, seeds, faults),
:mod:`.searches` (whole searches: cpu_search, search efficiency) and :mod:`.gpu` (the lent GPU).
"""
