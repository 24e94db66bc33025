"""The baselines the speed benchmarks compare with compute what pfanet computes: the authors' k-reciprocal
code restated in ``benchmarks/rerank.py`` (in float64) equals ``kreciprocal_distances``, and AGW's
``eval_sysu`` restated in ``benchmarks/evaluate.py`` gives the metrics of ``evaluate_sysu``, trial by trial.
Otherwise a speed-up against them would be a speed-up against something else."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from pfanet_cli.evaluation.galleries import sample_sysu_galleries
from pfanet_cli.evaluation.protocols import evaluate_sysu
from pfanet_cli.evaluation.ranking import cosine_normalise
from pfanet_cli.evaluation.rerank import RerankConfig, kreciprocal_distances
from tests.helpers import REPO, sysu_like


def benchmark(name: str):
    """A script of ``benchmarks/`` as a module (its folder on the path, as when it runs)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (4, 1, 0.5), (6, 3, 1.0)])
def test_the_restated_authors_code_in_float64_equals_pfanet(k1, k2, lam):
    rerank_benchmark = benchmark("rerank")
    rng = np.random.default_rng(k1)
    centres = rng.standard_normal((12, 16))
    feats = centres[rng.integers(0, 12, 110)] + 0.8 * rng.standard_normal((110, 16))
    queries, gallery = cosine_normalise(feats[:35]), cosine_normalise(feats[35:])
    euclidean = rerank_benchmark.euclidean
    theirs = rerank_benchmark.restated_authors_rerank(euclidean(queries, gallery), euclidean(queries, queries),
                                                      euclidean(gallery, gallery), k1, k2, lam, dtype=np.float64)
    np.testing.assert_allclose(kreciprocal_distances(queries, gallery, RerankConfig(k1, k2, lam)), theirs,
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("mode,shot", [("all", "single"), ("indoor", "multi")])
def test_the_restated_eval_sysu_gives_the_evaluators_metrics(mode, shot):
    evaluate_benchmark = benchmark("evaluate")
    feats, pids, camids, paths = sysu_like(3, ids=40)    # 20 identities left in every list, as AGW's code needs
    mine = evaluate_sysu(feats, pids, camids, paths, mode=mode, shot=shot, trials=3, sampler="agw")
    galleries = sample_sysu_galleries(pids, camids, paths, mode=mode, shot=shot, trials=3, sampler="agw")[1]
    theirs, _, _ = evaluate_benchmark.agw_protocol(cosine_normalise(feats), pids, camids, galleries, timed=3)
    assert len(theirs) == 3
    for a, b in zip(mine.per_trial, theirs):
        assert {key: a[key] for key in ("mAP", "mINP")} == pytest.approx({"mAP": b["mAP"], "mINP": b["mINP"]},
                                                                          abs=1e-9)
        assert {key: a[key] for key in ("r1", "r5", "r10", "r20")} == pytest.approx(
            {key: b[key] for key in ("r1", "r5", "r10", "r20")}, abs=1e-4)        # theirs sums in float32
