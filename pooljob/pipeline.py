"""One fit end to end: the scan, the solver, the output tables.

``fit_source`` scans an open source once and fits; ``fit_cells`` fits cell
statistics that were scanned or merged from the statistics store (incremental
refresh).  Gaussian random intercepts on groupings that nest in the data go to
the exact tree solver (:mod:`pooljob.model.nested`); every other Gaussian model
to the blocked-Cholesky solver (:mod:`pooljob.model.general`); binomial and
Poisson models to the Laplace solver (:mod:`pooljob.model.glmm`); area-level
(Fay–Herriot) models, one row per area with a known sampling variance, to
:mod:`pooljob.model.area`.  The tables
are built by :mod:`pooljob.outputs`.

A :class:`Watch` (the job's progress display, or none) is told when each
stage (scan, fit, tables) starts and ends and, during the fit, after each
evaluation of the criterion; it only observes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import Protocol

from pooljob.errors import InputError, NonConvergenceError, NotNestedError
from pooljob.model.cells import CellTable, CountTable
from pooljob.model.formula import Formula
from pooljob.model.nested_fit import fit_nested
from pooljob.model.optimize import OptSummary, is_singular
from pooljob.model.options import DEFAULT_CONTROL, Control, Rollup
from pooljob.outputs.tables import FitResult, build, build_general
from pooljob.scan.cell_counts import COUNT_FAMILIES, count_stats_sql, covariate_indices, scan_counts
from pooljob.scan.cell_moments import scan_cells
from pooljob.scan.rollup import check_rollup_schema, scan_rollup
from pooljob.scan.schema import ScanSpec, check_schema
from pooljob.scan.source import TableSource
from pooljob.scan.tree import nested_statistics

#: Gaussian solvers: ``auto`` (the tree where the groupings nest), ``blocked`` (always),
#: or ``iterative`` (``[model] solver = "iterative"``: :mod:`pooljob.model.crossed_fit`).
SOLVERS = ("auto", "blocked", "iterative")

log = logging.getLogger("pooljob")


class Watch(Protocol):
    """What a fit tells whoever watches it (the job's progress display)."""

    def stage(self, name: str) -> AbstractContextManager[None]:
        """A context manager around the stage ``name`` (scan, fit, tables)."""
        ...

    def evaluation(self, evaluations: int, best: float) -> None:
        """The criterion was evaluated: ``evaluations`` so far, ``best`` the lowest value."""
        ...


class Unwatched:
    """The :class:`Watch` of a fit nobody watches: does nothing."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Nothing around the stage."""
        yield

    def evaluation(self, evaluations: int, best: float) -> None:
        """Nothing."""


#: No watch: the default.
UNWATCHED: Watch = Unwatched()


def check_convergence(optimizer: OptSummary, fit: str, control: Control) -> None:
    """Act on a fit that failed the convergence check, as ``control`` says.

    ``on_nonconvergence = "fail"``: raise :class:`NonConvergenceError` (nothing
    is published); ``"publish"``: log a warning, and the fit is published with
    ``converged = false``.
    """
    if optimizer.converged:
        return
    text = (
        f"the {fit} fit did not converge: {optimizer.check} after "
        f"{optimizer.evaluations} evaluations"
    )
    fix = (
        f"raise [model] max_evaluations (now {optimizer.max_evaluations}), simplify "
        'the model, or set on_nonconvergence = "publish"'
    )
    _not_converged(text, fix, control)


def _not_converged(text: str, fix: str, control: Control) -> None:
    """``on_nonconvergence``: raise ``text; fix`` (``"fail"``) or log it (``"publish"``)."""
    if control.on_nonconvergence == "fail":
        raise NonConvergenceError(f"{text}; {fix}")
    log.warning("%s; published with converged = false (on_nonconvergence = 'publish')", text)


def fit_source(
    formula: Formula,
    source: TableSource,
    family: str,
    method: str,
    interval: float,
    solver: str = "auto",
    control: Control = DEFAULT_CONTROL,
    rollup: Rollup | None = None,
    watch: Watch = UNWATCHED,
    sampling_variance: str | None = None,
    weights: str | None = None,
) -> FitResult:
    """Fit ``formula`` to an open source: one scan, then the solver.

    Random intercepts on groupings that nest in the data go to the exact tree
    solver (:mod:`pooljob.model.nested`, linear in the number of groups); every
    other model to the blocked-Cholesky solver (:mod:`pooljob.model.lmm`).  Both
    start from the same cell statistics and publish the same tables
    (``solver = "blocked"`` forces the blocked solver, for tests that say so).
    ``control`` bounds the optimizer and says what a fit that fails the
    convergence check does; ``watch`` is told of the stages and evaluations.
    With ``rollup``, ``source`` is a rollup table (:mod:`pooljob.scan.rollup`):
    the cells are those of the rows behind it.  With ``sampling_variance`` the
    model is area-level (Fay–Herriot): :func:`fit_area_source`.  With
    ``weights``, the column of observation (precision) weights, the cells
    hold weighted moments (:func:`pooljob.scan.cell_moments.scan_cells`).
    """
    if sampling_variance is not None:
        return fit_area_source(formula, source, sampling_variance, method, interval, control, watch)
    t0 = time.perf_counter()
    if rollup is not None:
        spec = check_rollup_schema(source, formula, family, rollup)
        with watch.stage("scan"):
            cells = scan_rollup(source, spec, rollup)
    else:
        spec = check_schema(source, formula, family)
        if family in COUNT_FAMILIES:
            result = fit_count_source(
                formula, source, spec, family, interval, control, watch, weights
            )
            return result if weights is None else replace(result, weights=weights)
        with watch.stage("scan"):
            if weights is None:
                cells = scan_cells(source, spec.keys, spec.variables)
            else:
                from pooljob.scan.weights import scan_weighted_cells

                cells = scan_weighted_cells(source, spec.keys, spec.variables, weights)
    result = fit_cells(
        formula,
        cells,
        spec,
        family,
        method,
        interval,
        source.description,
        scan_seconds=time.perf_counter() - t0,
        solver=solver,
        control=control,
        watch=watch,
    )
    return result if weights is None else replace(result, weights=weights)


def fit_cells(
    formula: Formula,
    cells: CellTable,
    spec: ScanSpec,
    family: str,
    method: str,
    interval: float,
    description: str,
    scan_seconds: float = 0.0,
    solver: str = "auto",
    control: Control = DEFAULT_CONTROL,
    watch: Watch = UNWATCHED,
) -> FitResult:
    """Fit ``formula`` to cell statistics, scanned or merged from a store.

    ``description`` names the data in messages; ``scan_seconds`` is recorded
    as the ``scan`` timing.  The solver is chosen as in :func:`fit_source`;
    ``watch`` is told of the fit and tables stages and of each evaluation.
    """
    if solver == "iterative":
        return fit_iterative_cells(
            formula, cells, spec, family, method, interval, scan_seconds, control, watch
        )
    t1 = time.perf_counter()
    reml = method == "reml"
    with watch.stage("fit"):
        gs = None
        if formula.nested_intercepts and solver == "auto":
            try:
                gs = nested_statistics(cells, formula, description)
            except NotNestedError:
                gs = None
        if gs is not None:
            fitted = fit_nested(
                gs.stats, "reml" if reml else "ml", control.max_evaluations, watch.evaluation
            )
            check_convergence(fitted.optimizer, method.upper(), control)
        else:
            from pooljob.model.general import fit_general, prepare

            prep = prepare(formula, cells, spec.numeric, spec.categorical)
            general = fit_general(prep, reml, control.max_evaluations, watch.evaluation)
            check_convergence(general.optimizer, method.upper(), control)
    t2 = time.perf_counter()
    with watch.stage("tables"):
        if gs is not None:
            result = build(formula, gs, fitted, interval, family, control.interval_method)
        else:
            result = build_general(
                formula, general, interval, family, method, control.interval_method
            )
    t3 = time.perf_counter()
    result.timings.update({"scan": scan_seconds, "fit": t2 - t1, "tables": t3 - t2})
    return result


def fit_iterative_cells(
    formula: Formula,
    cells: CellTable,
    spec: ScanSpec,
    family: str,
    method: str,
    interval: float,
    scan_seconds: float = 0.0,
    control: Control = DEFAULT_CONTROL,
    watch: Watch = UNWATCHED,
) -> FitResult:
    """Fit crossed random intercepts by the iterative solver (``[model] solver = "iterative"``).

    :mod:`pooljob.model.crossed_fit` checks the model class and fits;
    :mod:`pooljob.outputs.crossed_tables` builds the tables and the manifest's
    ``approximation``.
    """
    from pooljob.model.crossed_fit import check_class, fit_crossed, prepare_crossed
    from pooljob.outputs.crossed_tables import crossed_result

    t1 = time.perf_counter()
    with watch.stage("fit"):
        check_class(formula, family, method, spec.categorical)
        prep = prepare_crossed(formula, cells, spec.numeric)
        fit = fit_crossed(prep, control.max_evaluations)
        if not fit.fit.converged:
            _iterative_nonconvergence(fit.fit.steps, control)
    t2 = time.perf_counter()
    with watch.stage("tables"):
        result = crossed_result(formula, fit, interval, control.max_evaluations)
    t3 = time.perf_counter()
    result.timings.update({"scan": scan_seconds, "fit": t2 - t1, "tables": t3 - t2})
    return result


def _iterative_nonconvergence(steps: int, control: Control) -> None:
    text = f"the iterative REML fit did not converge in {steps} Fisher-scoring steps"
    fix = (
        f"raise [model] max_evaluations (now {control.max_evaluations}), or set "
        'on_nonconvergence = "publish"'
    )
    _not_converged(text, fix, control)


def fit_area_source(
    formula: Formula,
    source: TableSource,
    sampling_variance: str,
    method: str,
    interval: float,
    control: Control = DEFAULT_CONTROL,
    watch: Watch = UNWATCHED,
) -> FitResult:
    """Read the areas of ``source`` and fit the area-level (Fay–Herriot) model.

    One row per area: the response is the direct estimate, ``sampling_variance``
    the column of its known variance (:mod:`pooljob.scan.area_rows`,
    :mod:`pooljob.model.area`); the tables by :mod:`pooljob.outputs.area_tables`.
    """
    from pooljob.model.area import fit_area
    from pooljob.outputs.area_tables import area_result
    from pooljob.scan.area_rows import scan_areas

    t0 = time.perf_counter()
    with watch.stage("scan"):
        areas = scan_areas(source, formula, sampling_variance)
    t1 = time.perf_counter()
    with watch.stage("fit"):
        fit = fit_area(areas.y, areas.v, areas.x, method, control.max_evaluations)
        check_convergence(fit.optimizer, method.upper(), control)
    t2 = time.perf_counter()
    with watch.stage("tables"):
        result = area_result(
            formula, areas, fit, interval, method, sampling_variance, control.interval_method
        )
    result.timings.update({"scan": t1 - t0, "fit": t2 - t1, "tables": time.perf_counter() - t2})
    return result


def count_sql(formula: Formula, family: str, spec: ScanSpec, weights: str | None = None) -> str:
    """The count query of a binomial or Poisson model (for ``pooljob explain``).

    ``weights``: the column of prior weights, if any (the weighted query).
    """
    covariates = [spec.variables[k] for k in covariate_indices(spec)]
    return count_stats_sql(formula, family, spec.keys, covariates, weight=weights)


def fit_count_source(
    formula: Formula,
    source: TableSource,
    spec: ScanSpec,
    family: str,
    interval: float,
    control: Control = DEFAULT_CONTROL,
    watch: Watch = UNWATCHED,
    weights: str | None = None,
) -> FitResult:
    """Scan ``source`` into per-cell counts and fit ``formula`` by Laplace.

    ``watch`` is told of the scan, fit and tables stages and of each
    evaluation; ``weights`` is the column of prior weights, if any.
    """
    t0 = time.perf_counter()
    _require_random(formula)
    with watch.stage("scan"):
        if weights is None:
            counts = scan_counts(source, formula, family, spec)
        else:
            from pooljob.scan.weights import scan_weighted_counts

            counts = scan_weighted_counts(source, formula, family, spec, weights)
    scan_seconds = time.perf_counter() - t0
    return fit_count_table(formula, counts, spec, family, interval, control, scan_seconds, watch)


def _require_random(formula: Formula) -> None:
    if not formula.random:
        raise InputError(
            f"formula {formula.text!r} has no random-effect term; pooljob fits multilevel "
            "models: add one, e.g. '+ (1 | group)'"
        )


def fit_count_table(
    formula: Formula,
    counts: CountTable,
    spec: ScanSpec,
    family: str,
    interval: float,
    control: Control = DEFAULT_CONTROL,
    scan_seconds: float = 0.0,
    watch: Watch = UNWATCHED,
) -> FitResult:
    """Fit ``formula`` by Laplace to per-cell counts, scanned or merged from a store.

    ``watch`` is told of the fit and tables stages and of each evaluation.
    """
    # imported here: a Gaussian run needs none of the Laplace solver (nor scipy.optimize)
    from pooljob.model.count_design import prepare_counts
    from pooljob.model.glmm_fit import fit_counts
    from pooljob.outputs.count_tables import count_tables, predictor

    _require_random(formula)
    t1 = time.perf_counter()
    with watch.stage("fit"):
        prep = prepare_counts(formula, family, counts, spec.numeric, spec.categorical)
        fit = fit_counts(prep.model, control.max_evaluations, watch.evaluation)
        check_convergence(fit.optimizer, f"Laplace ({family})", control)
    t2 = time.perf_counter()
    with watch.stage("tables"):
        frames = count_tables(prep, fit, interval)
    t3 = time.perf_counter()
    singular = is_singular(prep.model.free, fit.theta)
    groups = {
        b.grouping.name: int(prep.codes[d].max()) + 1 for d, b in enumerate(prep.design.blocks)
    }
    result = FitResult(
        predictor=predictor(prep, fit),
        formula=formula,
        family=family,
        method="laplace",
        interval=interval,
        estimates=frames["estimates"],
        effects=frames["effects"],
        coefficients=frames["coefficients"],
        components=frames["components"],
        objective=fit.deviance,
        loglik=-0.5 * fit.deviance,
        converged=fit.optimizer.converged,
        singular=singular,
        nobs=int(counts.n.sum()),
        sigma=1.0,
        groups=groups,
        rows=counts.rows,
        optimizer=fit.optimizer.to_dict(),
        hierarchy=tuple(b.grouping for b in prep.design.blocks),
        nested=False,
    )
    result.timings.update({"scan": scan_seconds, "fit": t2 - t1, "tables": t3 - t2})
    return result
