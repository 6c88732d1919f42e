"""``interval_method = "prasad-rao"``: the second-order MSE of unit-level EBLUPs (issue 12 §3).

Checked against (1) Prasad & Rao's (1990) closed form of the nested-error
(Battese–Harter–Fuller) model, ``g3 = n⁻²(τ² + σ²/n)⁻³ [σ⁴V_ττ + τ⁴V_σσ −
2σ²τ²V_στ]`` with ``V`` the inverse of the REML information, written here from
the rows (dense ``P``), as ``sae`` and Rao & Molina (2015, §7.2) state it;
(2) a dense Kackar–Harville computation from the rows, ``tr[Cov(∂c/∂ψ ᵀy) I⁻¹]``
with the BLUP's coefficients ``c(ψ) = V⁻¹ Z G a`` differentiated numerically,
for nested and crossed groupings; (3) the tree and blocked solvers against
each other (1e-8); and a simulation: with 10 groups the plug-in intervals
under-cover, Prasad–Rao's cover close to 95%.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import polars as pl
import pytest

import pooljob
from pooljob.errors import ConfigError, InputError
from pooljob.job.cli import main
from pooljob.job.config import load_config
from pooljob.model.formula import parse_formula
from pooljob.model.nested import NestedStats
from pooljob.model.nested_fit import fit_nested
from pooljob.model.options import Control
from pooljob.model.second_order import (
    Henderson,
    cells_g3,
    check_size,
    level_g3,
    one_grouping_g3,
    tree_g3,
)
from pooljob.outputs.tables import FitResult
from pooljob.pipeline import fit_source
from pooljob.scan.source import open_data

DATA = Path(__file__).parent / "data"
Z95 = NormalDist().inv_cdf(0.975)
PR = Control(interval_method="prasad-rao")


def _fit(formula: str, data: Any, solver: str = "auto") -> FitResult:
    with open_data(data) as source:
        return fit_source(
            parse_formula(formula), source, "gaussian", "reml", 0.95, solver=solver, control=PR
        )


def _rows(seed: int, groups: int = 7, covariate: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    out = []
    for g in range(groups):
        u = rng.normal(0.0, 1.0)
        for _ in range(int(rng.integers(2, 9))):
            x = float(rng.normal())
            y = 5.0 + (0.7 * x if covariate else 0.0) + u + rng.normal(0.0, 2.0)
            out.append({"g": f"g{g}", "x": x, "y": y})
    return pl.DataFrame(out)


def _variances(fit: FitResult) -> tuple[float, dict[str, float]]:
    comp = fit.components
    sigma2 = float(comp.filter(pl.col("grouping") == "Residual")["variance"][0])
    tau2 = {
        str(r["grouping"]): float(r["variance"])
        for r in comp.filter(pl.col("grouping") != "Residual").iter_rows(named=True)
    }
    return sigma2, tau2


def _information(zs: list[Any], sigma2: float, tau2: list[float]) -> Any:
    """``½ tr(V⁻¹V_i V⁻¹V_j)`` over ``ψ = (σ², τ²_1, …)``, from the rows."""
    n = zs[0].shape[0]
    derivs = [np.eye(n)] + [z @ z.T for z in zs]
    v = sigma2 * np.eye(n) + sum(t * d for t, d in zip(tau2, derivs[1:], strict=True))
    vi = np.linalg.inv(v)
    return np.array([[0.5 * np.trace(vi @ a @ vi @ b) for b in derivs] for a in derivs])


def _g3_twice(fit: FitResult) -> Any:
    e = fit.estimates
    return (e["rmse"] ** 2 - e["std_error"] ** 2).to_numpy()


def test_one_grouping_is_prasad_rao_closed_form() -> None:
    """BHF with a covariate (blocked solver) and without (tree): PR 1990's g3 per area."""
    for covariate, formula in ((True, "y ~ x + (1 | g)"), (False, "y ~ 1 + (1 | g)")):
        data = _rows(11, covariate=covariate)
        fit = _fit(formula, data)
        assert fit.nested is not covariate
        sigma2, tau2 = _variances(fit)
        t2 = tau2["g"]
        codes = data["g"].to_numpy()
        levels = sorted(set(codes))
        z = (codes[:, None] == np.array(levels)[None, :]).astype(float)
        v = np.linalg.inv(_information([z], sigma2, [t2]))
        n = z.sum(axis=0)
        closed = (
            n**-2
            * (t2 + sigma2 / n) ** -3
            * (sigma2**2 * v[1, 1] + t2**2 * v[0, 0] - 2 * sigma2 * t2 * v[0, 1])
        )
        est = fit.estimates.sort("g")
        got = (est["rmse"] ** 2 - est["std_error"] ** 2).to_numpy() / 2.0
        assert np.allclose(got, closed, rtol=1e-7, atol=0)
        assert np.allclose(
            est["upper"].to_numpy(), (est["estimate"] + Z95 * est["rmse"]).to_numpy(), rtol=1e-12
        )


def test_one_grouping_closed_form_is_the_general_formula() -> None:
    """``one_grouping_g3`` (linear) against :func:`level_g3` (dense) on ``ZᵀZ = diag(n)``."""
    n = np.array([2.0, 5.0, 1.0, 9.0, 3.0])
    for tau2 in (0.0, 0.4, 3.0):
        dense = level_g3(
            Henderson(np.diag(n), n.sum(), np.zeros(5, np.int64), np.array([tau2]), 2.5)
        )
        assert np.allclose(one_grouping_g3(n, tau2, 2.5), dense, rtol=1e-10, atol=0)


def test_components_add_up_to_the_dense_formula() -> None:
    """``cells_g3`` block by block (a tree's subtrees, crossed blocks) = one dense ``level_g3``."""
    rng = np.random.default_rng(4)
    top = np.repeat(np.arange(6), rng.integers(1, 5, 6))  # 6 subtrees of 1-4 leaves
    crossed = rng.integers(0, 3, len(top)) + 3 * (top >= 3)  # two blocks of crossings
    rows = rng.integers(1, 7, len(top)).astype(float)
    for codes in ([top, np.arange(len(top))], [top, crossed]):
        tau2, sigma2 = np.array([0.7, 1.9]), 2.3
        sizes = [int(c.max()) + 1 for c in codes]
        q = sum(sizes)
        rzz = np.zeros((q, q))
        cols = [codes[0], sizes[0] + codes[1]]
        for ca in cols:
            for cb in cols:
                np.add.at(rzz, (ca, cb), rows)
        grouping = np.repeat(np.arange(2), sizes)
        dense = level_g3(Henderson(rzz, rows.sum(), grouping, tau2, sigma2))
        assert np.allclose(cells_g3(rows, codes, tau2, sigma2), dense, rtol=1e-10, atol=0)


def _dense_g3(data: pl.DataFrame, groupings: list[list[str]], fit: FitResult) -> dict[str, Any]:
    """Kackar–Harville's ``g3`` from the rows, the BLUP's derivative by differences."""
    sigma2, tau2 = _variances(fit)
    names = [":".join(reversed(g)) if len(g) > 1 else g[0] for g in groupings]
    labels = [
        data.select(pl.concat_str(g, separator="/")).to_series().to_numpy() for g in groupings
    ]
    zs = [(lab[:, None] == np.unique(lab)[None, :]).astype(float) for lab in labels]
    psi = np.array([sigma2] + [tau2[n] for n in names])
    z = np.hstack(zs)
    widths = [zk.shape[1] for zk in zs]

    def coefficients(ps: Any) -> Any:
        v = ps[0] * np.eye(data.height) + sum(
            t * zk @ zk.T for t, zk in zip(ps[1:], zs, strict=True)
        )
        g = np.repeat(ps[1:], widths)
        a = z.T @ z / z.sum(axis=0)[None, :]  # column u: the mean of Z over u's rows
        return np.linalg.solve(v, z @ (g[:, None] * a)), v

    _, v0 = coefficients(psi)
    derivs = []
    for i in range(len(psi)):
        step = np.zeros_like(psi)
        step[i] = 1e-5 * max(psi[i], 1e-3)
        derivs.append((coefficients(psi + step)[0] - coefficients(psi - step)[0]) / (2 * step[i]))
    info_inv = np.linalg.inv(_information(zs, sigma2, list(psi[1:])))
    g3 = sum(
        info_inv[i, j] * np.einsum("ng,nm,mg->g", derivs[i], v0, derivs[j])
        for i in range(len(psi))
        for j in range(len(psi))
    )
    out, start = {}, 0
    for lab, name, w in zip(labels, names, widths, strict=True):
        out[name] = (np.unique(lab), g3[start : start + w])
        start += w
    return out


@pytest.mark.parametrize("crossed", [False, True])
def test_several_groupings_against_dense_kackar_harville(crossed: bool) -> None:
    rng = np.random.default_rng(7)
    rows = []
    ea, eb = rng.normal(0, 1.2, 4), rng.normal(0, 0.8, 12)
    for _ in range(70):
        a = int(rng.integers(4))
        b = int(rng.integers(3)) if crossed else 3 * a + int(rng.integers(3))
        rows.append({"a": f"a{a}", "b": f"b{b}", "y": ea[a] + eb[b] + rng.normal(0, 1.5)})
    data = pl.DataFrame(rows)
    formula = "y ~ 1 + (1 | a) + (1 | b)" if crossed else "y ~ 1 + (1 | a/b)"
    fit = _fit(formula, data)
    assert fit.nested is not crossed
    groupings = [["a"], ["b"]] if crossed else [["a"], ["a", "b"]]
    dense = _dense_g3(data, groupings, fit)
    for name, (labels, g3) in dense.items():
        est = fit.estimates.filter(pl.col("grouping") == name)
        cols = ["a"] if name == "a" else (["b"] if crossed else ["a", "b"])
        keyed = est.with_columns(pl.concat_str(cols, separator="/").alias("_k")).sort("_k")
        assert keyed["_k"].to_list() == list(labels)
        got = (keyed["rmse"] ** 2 - keyed["std_error"] ** 2).to_numpy() / 2.0
        assert np.allclose(got, g3, rtol=1e-5, atol=1e-9), name


def test_tree_and_blocked_solvers_publish_the_same_rmse() -> None:
    from tests.test_contract import nested_rows

    data = nested_rows(3)
    formula = "y ~ 1 + (1 | a/b/c)"
    tree, blocked = _fit(formula, data), _fit(formula, data, solver="blocked")
    assert tree.nested and not blocked.nested
    keys = ["grouping", "a", "b", "c"]
    t, b = tree.estimates.sort(keys), blocked.estimates.sort(keys)
    for col in ("rmse", "lower", "upper", "std_error"):
        assert np.allclose(t[col].to_numpy(), b[col].to_numpy(), rtol=1e-8, atol=1e-10), col
    assert (t["rmse"] >= t["std_error"]).all()
    assert tree.summary()["interval_method"] == "prasad-rao"


def test_plugin_is_the_default_and_unchanged() -> None:
    data = _rows(2)
    plugin = pooljob.fit("y ~ 1 + (1 | g)", data)
    widened = pooljob.fit("y ~ 1 + (1 | g)", data, interval_method="prasad-rao")
    assert plugin.estimates["rmse"].null_count() == plugin.estimates.height
    assert plugin.summary()["interval_method"] == "plugin"
    for col in ("estimate", "std_error"):
        assert plugin.estimates[col].equals(widened.estimates[col])
    assert (widened.estimates["upper"] > plugin.estimates["upper"]).all()


def test_boundary_fit_has_a_finite_rmse() -> None:
    """τ̂² = 0: the BLUP is the synthetic mean, g3 stays finite (n σ⁻² V_ττ per area)."""
    data = pl.DataFrame({"g": ["a", "a", "b", "b", "c", "c"], "y": [1.0, 3.0, 2.0, 2.5, 1.5, 2.2]})
    fit = pooljob.fit("y ~ 1 + (1 | g)", data, interval_method="prasad-rao")
    assert fit.singular
    assert np.isfinite(fit.estimates["rmse"].to_numpy()).all()
    assert (fit.estimates["rmse"] > fit.estimates["std_error"]).all()


def test_area_level_prasad_rao_uses_rmse() -> None:
    plugin = pooljob.fit("yi ~ ablat + (1 | trial)", DATA / "fh_bcg.csv", sampling_variance="vi")
    pr = pooljob.fit(
        "yi ~ ablat + (1 | trial)",
        DATA / "fh_bcg.csv",
        sampling_variance="vi",
        interval_method="prasad-rao",
    )
    assert plugin.estimates["rmse"].equals(pr.estimates["rmse"])
    e = pr.estimates
    assert np.allclose(e["lower"].to_numpy(), (e["estimate"] - Z95 * e["rmse"]).to_numpy())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval_method": "bootstrap"}, "interval_method = 'bootstrap' is not supported"),
        ({"method": "ml"}, "needs method = 'reml' for a unit-level model, got 'ml'"),
        ({"formula": "y ~ x + (x | g)"}, "random intercepts .* has a slope"),
        ({"family": "poisson", "formula": "k ~ 1 + (1 | g)"}, "is for gaussian models"),
    ],
)
def test_refused_with_one_line(kwargs: dict[str, str], message: str) -> None:
    args = {"formula": "y ~ 1 + (1 | g)", "interval_method": "prasad-rao", **kwargs}
    formula = args.pop("formula")
    with pytest.raises(ConfigError, match=message) as info:
        pooljob.fit(formula, _rows(1), **args)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_dense_limit_is_a_clear_error() -> None:
    check_size(3000)
    with pytest.raises(
        InputError, match=r"at most 3,000 connected random-effect levels .* has 3,001"
    ):
        check_size(3001)


def _job(tmp_path: Path, method: str, extra: str = "") -> Path:
    _rows(4).write_parquet(tmp_path / "rows.parquet")
    job = tmp_path / "job.toml"
    job.write_text(
        f'[source]\npath = "rows.parquet"\n[model]\nformula = "y ~ 1 + (1 | g)"\n{extra}\n'
        f'[output]\npath = "out"\ninterval_method = "{method}"\n'
    )
    return job


def test_config_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(tmp_path, "prasad-rao")
    assert load_config(job).control.interval_method == "prasad-rao"
    assert main(["validate", str(job)]) == 0
    assert main(["explain", str(job)]) == 0
    assert main(["run", str(job)]) == 0
    est = pl.read_parquet(tmp_path / "out" / "current" / "estimates.parquet")
    assert est["rmse"].null_count() == 0
    manifest = (tmp_path / "out" / "current" / "manifest.json").read_text()
    assert '"interval_method": "prasad-rao"' in manifest
    html = tmp_path / "report.html"
    assert main(["report", str(tmp_path / "out" / "current"), "--output", str(html)]) == 0
    assert "Prasad–Rao: from rmse" in html.read_text() and "interval method" in html.read_text()
    capsys.readouterr()
    bad = _job(tmp_path, "prasad-rao", 'method = "ml"')
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "[output] interval_method = 'prasad-rao' needs method = 'reml'" in err
    with pytest.raises(ConfigError, match="interval_method = 'exact' is not supported"):
        load_config(_job(tmp_path, "exact"))


def test_simulation_prasad_rao_covers_where_plugin_does_not() -> None:
    """10 groups of 2–20 rows, τ = 1, σ = 2, REML: 300 fixed-seed replications."""
    rng = np.random.default_rng(20261130)
    groups, covered = 10, {"plugin": [], "prasad-rao": []}
    for _ in range(300):
        n = rng.integers(2, 21, size=groups).astype(float)
        u = rng.normal(0.0, 1.0, size=groups)
        mean = u + rng.normal(0.0, 2.0, size=groups) / np.sqrt(n)
        within = 4.0 * rng.chisquare(n - 1)
        parents = (np.zeros(groups, dtype=np.int64),)
        fit = fit_nested(NestedStats(n, mean, within, parents), "reml")
        se = fit.levels[0].std_error
        g3 = tree_g3(n, parents, fit.variances, fit.sigma2)
        err = np.abs(fit.levels[0].estimate - u)
        covered["plugin"].append(np.mean(err <= Z95 * se))
        covered["prasad-rao"].append(np.mean(err <= Z95 * np.sqrt(se**2 + 2 * g3)))
    plugin, pr = np.mean(covered["plugin"]), np.mean(covered["prasad-rao"])
    assert plugin < 0.925
    assert abs(pr - 0.95) < 0.015
    assert pr - plugin > 0.025


def test_poststratified_and_predicted_intervals_stay_plugin() -> None:
    """``interval_method`` widens ``estimates`` only (docs/outputs.md): MRP is unchanged."""
    data = _rows(6)
    cells = pl.DataFrame({"g": ["g0", "g1", "new"], "n": [10.0, 20.0, 5.0]})
    plugin = pooljob.fit("y ~ 1 + (1 | g)", data)
    widened = pooljob.fit("y ~ 1 + (1 | g)", data, interval_method="prasad-rao")
    for fit in (plugin, widened):
        assert fit.predictor is not None
    a = pooljob.poststratify(plugin, cells, weight="n", by=["g"])
    b = pooljob.poststratify(widened, cells, weight="n", by=["g"])
    assert a.equals(b)
    assert plugin.predict(cells).equals(widened.predict(cells))


def test_agrees_with_the_r_reference_on_uneven_sleepstudy() -> None:
    """lme4's REML fit and Prasad–Rao's closed forms in R (``make_prasad_rao_bhf.R``)."""
    import json

    ref = json.loads((DATA / "prasad_rao_bhf.json").read_text())
    fit = pooljob.fit(ref["formula"], DATA / "sleep_uneven.csv", interval_method="prasad-rao")
    sigma2, tau2 = _variances(fit)
    assert sigma2 == pytest.approx(ref["sigma2"], rel=1e-6)
    assert tau2["Subject"] == pytest.approx(ref["tau2"], rel=1e-6)
    est = fit.estimates.with_columns(pl.col("Subject").cast(pl.String)).sort("Subject")
    assert est["Subject"].to_list() == ref["subject"]
    assert np.allclose(est["estimate"].to_numpy(), ref["estimate"], rtol=1e-8)
    g12 = np.array(ref["g1"]) + np.array(ref["g2"])
    assert np.allclose(est["std_error"].to_numpy() ** 2, g12, rtol=1e-6)
    assert np.allclose(est["rmse"].to_numpy() ** 2, ref["mse"], rtol=1e-6)


def test_unidentified_components_are_a_clear_error() -> None:
    """Each ``a`` holds one ``b:a``: τ²_a and τ²_b are not told apart, I(ψ) is singular."""
    rng = np.random.default_rng(0)
    rows = [
        {"a": f"a{i}", "b": "x", "y": float(rng.normal() + i % 3)}
        for i in range(8)
        for _ in range(3)
    ]
    with pytest.raises(InputError, match="information matrix is singular") as info:
        pooljob.fit("y ~ 1 + (1 | a/b)", pl.DataFrame(rows), interval_method="prasad-rao")
    assert "\n" not in str(info.value)


def test_prasad_rao_with_weights_is_refused() -> None:
    from pooljob.model.formula import parse_formula
    from pooljob.model.interval_options import interval_method_problems

    formula = parse_formula("y ~ 1 + (1 | g)")
    found = interval_method_problems("prasad-rao", formula, "gaussian", "reml", False, "w")
    assert len(found) == 1 and "unweighted rows" in found[0] and "'w'" in found[0]
    assert interval_method_problems("plugin", formula, "gaussian", "reml", False, "w") == []
