"""`converged` means a checked optimum: the convergence check, max_evaluations, on_nonconvergence.

Every solver (the nested tree, the blocked Gaussian solver, the Laplace
solver) ends in :func:`pooljob.model.optimize.minimize_criterion`, which
checks the point (projected gradient, Hessian on the free parameters) and
records the check in the manifest's ``optimizer``.  A fit that fails it
raises NonConvergenceError (exit code 6, nothing published) unless
``on_nonconvergence = "publish"``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import pooljob
import pooljob.model.optimize as optimize
from pooljob.errors import ConfigError, NonConvergenceError
from pooljob.job.cli import build_parser, main
from pooljob.job.config import parse_config
from pooljob.model.criterion import Criterion, Differences
from pooljob.model.optimize import minimize_criterion
from tests.helpers import tree_digest, write_config, write_rows
from tests.test_lme4_glmm import load

DATA = Path(__file__).parent / "data"
NESTED = "sales ~ 1 + (1 | region/store)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`main` points pooljob's log at the captured stream; put the handlers back."""
    logger = logging.getLogger("pooljob")
    handlers, level = logger.handlers[:], logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def _with_model_keys(cfg: Path, **keys: object) -> None:
    text = cfg.read_text()
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    cfg.write_text(text.replace("[output]\n", extra + "[output]\n"))


def _manifest(out: Path) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((out / "current" / "manifest.json").read_text())
    return manifest


@pytest.fixture
def published(tmp_path: Path) -> Path:
    write_rows(tmp_path / "data" / "part-0.parquet")
    cfg = write_config(tmp_path)
    assert main(["--quiet", "run", str(cfg)]) == 0
    return cfg


def test_normal_fit_records_the_check(published: Path) -> None:
    opt = _manifest(published.parent / "out")["optimizer"]
    assert isinstance(opt, dict)
    assert opt["converged"] is True
    assert 0.0 <= opt["max_gradient"] <= opt["gradient_tolerance"]
    assert opt["gradient_tolerance"] == pytest.approx(1e-6 * abs(opt["fmin"]))
    assert opt["max_gradient"] < 1e-9 * abs(opt["fmin"])  # Newton to the rounding floor
    assert opt["min_hessian_eigenvalue"] > 0.0
    assert opt["evaluations"] > 0 and opt["max_evaluations"] == 10_000
    assert opt["check"].startswith("max |gradient|") and "positive definite" in opt["check"]
    assert opt["message"]


def test_too_few_evaluations_fail_with_exit_6_and_keep_current(
    published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = published.parent / "out"
    before = tree_digest(out)
    _with_model_keys(published, max_evaluations=2)
    capsys.readouterr()
    assert main(["run", str(published)]) == 6
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pooljob: error: the REML fit did not converge: max |gradient|")
    assert "> tolerance" in err and "after 3 evaluations" in err
    assert "max_evaluations" in err and 'on_nonconvergence = "publish"' in err
    assert tree_digest(out) == before


def test_on_nonconvergence_publish_publishes_flagged(
    published: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = published.parent / "out"
    _with_model_keys(published, max_evaluations=2, on_nonconvergence="publish")
    assert main(["--quiet", "run", str(published)]) == 0
    manifest = _manifest(out)
    assert manifest["converged"] is False
    opt = manifest["optimizer"]
    assert isinstance(opt, dict)
    assert opt["converged"] is False and opt["max_gradient"] > opt["gradient_tolerance"]
    assert "stopped at max_evaluations = 2" in opt["message"]
    warning = capsys.readouterr().err  # --quiet: warnings and errors only
    assert "WARNING" in warning and "the REML fit did not converge" in warning
    assert "published with converged = false" in warning


def test_exit_code_6_is_documented() -> None:
    assert "  6    the fit did not converge" in build_parser().format_help()
    assert NonConvergenceError.exit_code == 6


def test_boundary_fit_is_converged_by_the_projected_gradient() -> None:
    fit = pooljob.fit("Yield ~ 1 + (1 | Batch)", DATA / "Dyestuff2.csv")
    opt = fit.optimizer
    assert fit.singular and opt["final"] == [0.0]
    assert fit.converged and opt["converged"]
    # θ-gradient vanishes at 0; the one-sided ∂f/∂θ² points outward: projected 0
    assert opt["max_gradient"] == 0.0
    assert opt["min_hessian_eigenvalue"] is None  # no free parameter


@pytest.mark.parametrize(
    ("formula", "csv"),
    [
        ("Yield ~ 1 + (1 | Batch)", "Dyestuff.csv"),
        ("Reaction ~ Days + (Days | Subject)", "sleepstudy.csv"),
    ],
    ids=["nested", "general"],
)
def test_python_api_raises_by_default(formula: str, csv: str) -> None:
    data = DATA / csv
    with pytest.raises(NonConvergenceError, match=r"the ML fit did not converge: max \|gradient\|"):
        pooljob.fit(formula, data, method="ml", max_evaluations=2)
    fit = pooljob.fit(formula, data, method="ml", max_evaluations=2, on_nonconvergence="publish")
    assert not fit.converged and "stopped at max_evaluations = 2" in fit.optimizer["message"]
    assert pooljob.fit(formula, data, method="ml").converged


def test_glmm_converged_is_false_when_the_check_fails() -> None:
    cbpp = load("cbpp.csv", ["herd", "period"])
    good = pooljob.fit(CBPP, cbpp, family="binomial")
    assert good.converged and good.optimizer["vcov"] == "hessian"
    assert good.optimizer["max_gradient"] <= good.optimizer["gradient_tolerance"]
    with pytest.raises(NonConvergenceError, match=r"the Laplace \(binomial\) fit did not"):
        pooljob.fit(CBPP, cbpp, family="binomial", max_evaluations=5)
    bad = pooljob.fit(CBPP, cbpp, family="binomial", max_evaluations=5, on_nonconvergence="publish")
    assert not bad.converged
    assert bad.optimizer["max_gradient"] > bad.optimizer["gradient_tolerance"]


def test_glmm_standard_errors_without_a_positive_definite_hessian(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An indefinite Hessian: β's covariance is the conditional one, and it says so."""
    cbpp = load("cbpp.csv", ["herd", "period"])
    good = pooljob.fit(CBPP, cbpp, family="binomial")
    from_gradient, from_values = optimize.hessian_from_gradient, optimize.curvature

    def indefinite(*args: Any) -> np.ndarray:
        return np.asarray(-from_gradient(*args))

    def indefinite_values(*args: Any) -> tuple[np.ndarray, np.ndarray]:
        g, hess = from_values(*args)
        return g, -hess

    # both: a gradient search that fails the check is finished without the gradient
    monkeypatch.setattr(optimize, "hessian_from_gradient", indefinite)
    monkeypatch.setattr(optimize, "curvature", indefinite_values)
    with pytest.raises(NonConvergenceError, match="Hessian is not positive definite"):
        pooljob.fit(CBPP, cbpp, family="binomial")
    bad = pooljob.fit(CBPP, cbpp, family="binomial", on_nonconvergence="publish")
    assert not bad.converged and bad.optimizer["vcov"] == "conditional"
    assert bad.optimizer["min_hessian_eigenvalue"] < 0
    se_good = good.coefficients["std_error"].to_numpy()
    se_bad = bad.coefficients["std_error"].to_numpy()
    assert np.all(np.isfinite(se_bad)) and np.all(se_bad > 0)
    # given θ, without its uncertainty: close to the observed-information ones
    np.testing.assert_allclose(se_bad, se_good, rtol=0.1)


def test_options_are_validated(tmp_path: Path) -> None:
    raw = {
        "source": {"path": "data/*.parquet"},
        "model": {"formula": NESTED, "max_evaluations": 0, "on_nonconvergence": "warn"},
        "output": {"path": "out"},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw, tmp_path / "c.toml")
    msg = str(info.value)
    assert "[model] max_evaluations = 0 must be an integer of at least 1" in msg
    assert "[model] on_nonconvergence = 'warn' is not supported; use 'fail' or 'publish'" in msg
    raw["model"] = {"formula": NESTED, "max_evaluations": True}
    with pytest.raises(ConfigError, match=r"max_evaluations = True must be an integer"):
        parse_config(raw, tmp_path / "c.toml")
    raw["model"] = {"formula": NESTED, "max_evaluations": 50, "on_nonconvergence": "publish"}
    model = parse_config(raw, tmp_path / "c.toml").model
    assert (model.max_evaluations, model.on_nonconvergence) == (50, "publish")
    with pytest.raises(ConfigError, match="max_evaluations = 0"):
        pooljob.fit(NESTED, pl.DataFrame({"sales": [1.0]}), max_evaluations=0)
    with pytest.raises(ConfigError, match="on_nonconvergence = 'no'"):
        pooljob.fit(NESTED, pl.DataFrame({"sales": [1.0]}), on_nonconvergence="no")  # type: ignore[arg-type]


# the driver on criteria whose optimum is known


def _quadratic(a: np.ndarray, c: np.ndarray) -> Criterion:
    """``f(θ) = Σ c_k (θ_k² − a_k)²``: optimum at θ_k² = max(a_k, 0)."""

    def fg(theta: np.ndarray) -> tuple[float, np.ndarray]:
        d = theta**2 - a
        return float(c @ d**2 + 100.0), 4.0 * c * d * theta

    return Criterion(gradient=fg)


def test_driver_reaches_interior_and_boundary_optima() -> None:
    crit = _quadratic(np.array([2.0, -1.0]), np.array([3.0, 1.0]))
    opt = minimize_criterion(
        crit, np.array([0.5, 0.5]), [[(0, 0)], [(0, 0)]], Differences(1e-6, 1.0), "t"
    )
    assert opt.x[0] == pytest.approx(np.sqrt(2.0), rel=1e-15) and opt.x[1] == 0.0
    assert opt.summary.converged and opt.free == [0]
    assert opt.summary.min_hessian_eigenvalue == pytest.approx(48.0, rel=1e-3)


def test_driver_restarts_off_a_boundary_that_is_no_optimum() -> None:
    """θ = 0 is stationary in θ whatever the data say; ∂f/∂θ² < 0 there sends the search off it."""
    crit = _quadratic(np.array([1.5]), np.array([1.0]))
    opt = minimize_criterion(crit, np.array([0.0]), [[(0, 0)]], Differences(1e-6, 1.0), "t")
    assert opt.x[0] == pytest.approx(np.sqrt(1.5), rel=1e-15)
    assert "restart off the boundary" in opt.summary.message and opt.summary.converged


def test_check_recomputes_a_hessian_that_is_not_positive_definite() -> None:
    """A secant Hessian left indefinite is an approximation: the check asks the gradient."""
    crit = _quadratic(np.array([2.0]), np.array([3.0]))  # f'' = 48 at θ = √2
    x = np.array([np.sqrt(2.0)])
    stale = optimize.NewtonResult(x, crit(x), [0], np.zeros(1), np.array([[-5.0]]), "t")
    free, hess, _ = optimize._derivatives(
        crit, x, crit(x), [[(0, 0)]], Differences(1e-6, 1.0), stale, None
    )
    assert free == [0] and hess[0, 0] == pytest.approx(48.0, rel=1e-3)


def test_driver_reports_a_saddle() -> None:
    """A stationary point with an indefinite Hessian is not converged."""

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        return float(x[0] ** 2 - x[1] ** 2), np.array([2 * x[0], -2 * x[1]])

    crit = Criterion(gradient=fg)
    opt = minimize_criterion(crit, np.array([0.0, 0.0]), [], Differences(1e-6, 1.0), "t")
    assert not opt.summary.converged
    assert "not positive definite" in opt.summary.check
    assert opt.summary.min_hessian_eigenvalue == pytest.approx(-2.0)
