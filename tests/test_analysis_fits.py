"""Distribution fits: parameters recovered from known samples, agreement with scipy's MLE fits,
the right best family, and zero matrices named instead of fitted."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as ss

from lorascope.analysis import fits
from lorascope.errors import UsageError

N = 4000


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(7)
    return {
        "normal": rng.normal(0.3, 2.0, N),
        "uniform": rng.uniform(-1.0, 3.0, N),
        "laplace": rng.laplace(1.0, 0.5, N),
        "t": ss.t.rvs(3.0, loc=-0.2, scale=1.5, size=N, random_state=rng),
        "logistic": rng.logistic(0.0, 0.7, N),
    }


@pytest.fixture(scope="module")
def result(samples):
    X = np.stack([v.reshape(40, 100) for v in samples.values()])
    return fits.fit_snapshots(X, max_samples=None)


def test_best_family_is_the_true_one(samples, result):
    assert list(result.best) == list(samples)


@pytest.mark.parametrize("family, dist", [
    ("normal", ss.norm), ("uniform", ss.uniform), ("laplace", ss.laplace), ("logistic", ss.logistic),
])
def test_two_parameter_families_equal_scipy_mle(samples, result, family, dist):
    for t, x in enumerate(samples.values()):
        loc, scale = dist.fit(x)
        got = result.families[family]
        np.testing.assert_allclose([got["loc"][t], got["scale"][t]], [loc, scale], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["loglik"][t], dist.logpdf(x, loc, scale).sum(), rtol=1e-8)
        ks = ss.kstest(x, dist(loc, scale).cdf).statistic
        np.testing.assert_allclose(got["ks"][t], ks, rtol=1e-6)


def test_student_t_recovers_parameters_and_at_least_scipys_likelihood(samples, result):
    t = list(samples).index("t")
    got = {k: v[t] for k, v in result.families["t"].items()}
    assert got["df"] == pytest.approx(3.0, rel=0.2)
    assert got["loc"] == pytest.approx(-0.2, abs=0.08)
    assert got["scale"] == pytest.approx(1.5, rel=0.08)
    ref = ss.t.fit(samples["t"])  # the 0.2 s generic MLE, once, as the reference
    assert got["loglik"] >= ss.t.logpdf(samples["t"], *ref).sum() - 1e-6 * abs(got["loglik"])
    assert got["method"] == "mle"


@pytest.mark.parametrize("beta", [0.8, 1.0, 2.0, 4.0])
def test_gennorm_shape_tracks_laplace_normal_uniform(beta):
    x = ss.gennorm.rvs(beta, loc=0.5, scale=2.0, size=N, random_state=np.random.default_rng(3))
    r = fits.fit_snapshots(x.reshape(1, 40, 100), families=("gennorm",), max_samples=None)
    g = r.families["gennorm"]
    assert g["beta"][0] == pytest.approx(beta, rel=0.12)
    assert g["scale"][0] == pytest.approx(2.0, rel=0.08)
    ref = ss.gennorm.fit(x)
    assert g["loglik"][0] >= ss.gennorm.logpdf(x, *ref).sum() - 1e-6 * abs(g["loglik"][0])


def test_gennorm_beta_is_infinite_for_uniform_samples(samples, result):
    # the likelihood rises all the way to β = ∞, where the generalised normal is the uniform on
    # [min, max]: the fit is that limit, with the uniform's likelihood (one parameter more)
    i = list(samples).index("uniform")
    g, u = result.families["gennorm"], result.families["uniform"]
    assert g["beta"][i] == np.inf and g["method"][i] == "mle"
    assert g["loglik"][i] == pytest.approx(u["loglik"][i], rel=1e-12)
    assert g["bic"][i] > u["bic"][i] and result.best[i] == "uniform"


def test_zero_and_constant_matrices_are_named_not_fitted():
    X = np.stack([np.zeros((4, 8)), np.full((4, 8), 0.5), np.random.default_rng(0).normal(size=(4, 8))])
    r = fits.fit_snapshots(X)
    assert list(r.status[:2]) == ["zero", "constant"] and list(r.best[:2]) == ["zero", "constant"]
    for fam in r.families.values():
        assert np.isnan(fam["ks"][:2]).all() and np.isfinite(fam["ks"][2])


def test_subsample_uses_the_same_entries_every_step():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 64, 64))
    X = np.concatenate([x, x, 2 * x])
    r = fits.fit_snapshots(X, families=("normal",), max_samples=500)
    s = r.families["normal"]["scale"]
    assert r.n == 500 and s[0] == s[1] and s[2] == pytest.approx(2 * s[0])


def test_scale_invariance_for_huge_values():
    x = np.random.default_rng(0).laplace(size=(1, 20, 50))
    a = fits.fit_snapshots(x, max_samples=None)
    b = fits.fit_snapshots(x * 1e250, max_samples=None)
    for fam in a.families:
        np.testing.assert_allclose(b.families[fam]["ks"], a.families[fam]["ks"], rtol=1e-6)
        np.testing.assert_allclose(b.families[fam]["scale"], a.families[fam]["scale"] * 1e250, rtol=1e-6)
    assert a.best[0] == b.best[0]


def test_best_family_changes():
    steps = np.array([0, 10, 20, 30])
    best = np.array(["uniform", "uniform", "normal", "normal"], dtype=object)
    assert fits.best_family_changes(steps, best) == [(20, "uniform", "normal")]


def test_bad_options_are_usage_errors():
    X = np.ones((1, 4, 4))
    with pytest.raises(UsageError, match="distribution family"):
        fits.fit_snapshots(X, families=("cauchy",))
    with pytest.raises(UsageError, match="criterion"):
        fits.fit_snapshots(X, criterion="waic")


@pytest.fixture(scope="module")
def shaped():
    """Student-t and generalised-normal samples on a LoRA-like scale (0.02), so that a
    log-likelihood on the standardised scale would be off by n·log(std) from the data's."""
    rng = np.random.default_rng(11)
    x = {
        "t": ss.t.rvs(4.0, loc=0.003, scale=0.02, size=1200, random_state=rng),
        "gennorm": ss.gennorm.rvs(1.5, loc=-0.01, scale=0.02, size=1200, random_state=rng),
    }
    return x, fits.fit_snapshots(np.stack([v.reshape(30, 40) for v in x.values()]), max_samples=None)


_SHAPED = {"t": (ss.t, "df"), "gennorm": (ss.gennorm, "beta")}


@pytest.mark.parametrize("family", ["normal", "uniform", "laplace", "logistic", "t", "gennorm"])
def test_aic_bic_follow_their_definitions_from_loglik_and_parameter_count(shaped, family):
    x, r = shaped
    got, k, n = r.families[family], len(fits.FAMILIES.get(family).params), r.n
    assert n == 1200
    np.testing.assert_allclose(got["aic"], 2 * k - 2 * got["loglik"], rtol=1e-12)
    np.testing.assert_allclose(got["bic"], k * np.log(n) - 2 * got["loglik"], rtol=1e-12)
    crit = np.stack([r.families[f]["bic"] for f in r.families], axis=1)
    assert list(r.best) == [list(r.families)[i] for i in crit.argmin(axis=1)]


def test_bic_uses_the_number_of_values_fitted_after_subsampling():
    x = np.random.default_rng(12).normal(size=(1, 40, 50))
    r = fits.fit_snapshots(x, families=("normal",), max_samples=300)
    g = r.families["normal"]
    assert r.n == 300
    np.testing.assert_allclose(g["bic"], 2 * np.log(300) - 2 * g["loglik"], rtol=1e-12)


@pytest.mark.parametrize("family", ["t", "gennorm"])
def test_shape_families_loglik_and_ks_equal_scipy_at_returned_parameters(shaped, family):
    # loglik is that of the data x (not of the standardised z): scipy's logpdf summed on x
    x, r = shaped
    dist, shape = _SHAPED[family]
    got = r.families[family]
    for t, v in enumerate(x.values()):
        params = (got[shape][t], got["loc"][t], got["scale"][t])
        np.testing.assert_allclose(got["loglik"][t], dist.logpdf(v, *params).sum(), rtol=1e-10)
        np.testing.assert_allclose(got["ks"][t], ss.kstest(v, dist.cdf, args=params).statistic, rtol=1e-8, atol=1e-12)


def test_loglik_is_on_the_data_scale():
    # scaling the data by c moves every family's log-likelihood by exactly −n·log c
    x = np.random.default_rng(13).logistic(size=(1, 20, 30))
    a = fits.fit_snapshots(x, max_samples=None)
    b = fits.fit_snapshots(1e-3 * x, max_samples=None)
    for fam in a.families:
        np.testing.assert_allclose(b.families[fam]["loglik"], a.families[fam]["loglik"] - 600 * np.log(1e-3),
                                   rtol=1e-10, err_msg=fam)
