"""Evaluation across strategies: plan (what to run), launch (where), report (tables, plots).

``mihd evaluate`` is a thin wrapper around :func:`evaluate`::

    from mihd._config import compose
    from mihd.evaluate import evaluate
    result = evaluate(compose("evaluate", ["fusions=[concat,gnn]", "seeds=[0]"]))
    result.table            # one row per planned run
"""

from ._evaluate import RESULT_COLUMNS, EvaluationResult, evaluate, results_table
from ._plan import Plan, PlanError, PlannedRun, build_plan, config_key, split_overrides

__all__ = [
    "evaluate",
    "EvaluationResult",
    "results_table",
    "RESULT_COLUMNS",
    "build_plan",
    "Plan",
    "PlanError",
    "PlannedRun",
    "config_key",
    "split_overrides",
]
