"""Benchmarks, wired into ``cmidps bench`` by :mod:`cmidps.cli`:

* ``gmm`` (:mod:`cmidps.bench.gmm`): exact-posterior Gaussian mixtures, sliced Wasserstein-2.
* ``images`` (:mod:`cmidps.bench.images`): tasks x methods x metrics over image folders, resumable, sharded.
* ``speed`` (:mod:`cmidps.bench.speed`): the cost of a step against the bare network.

Shared by the benches that run many jobs: :mod:`cmidps.bench.store` (the output folder: JSONL results,
resume, merge, ``config.json``, the lock), :mod:`cmidps.bench.runner` (torchrun ranks, ``--shard``),
:mod:`cmidps.bench.report` (the tables).
"""
