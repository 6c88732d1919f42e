# Prasad–Rao's second-order MSE of the nested-error (Battese–Harter–Fuller) model,
# written from the published closed forms (Prasad & Rao 1990; Rao & Molina 2015,
# §7.2), at lme4's REML estimates: the reference of tests/test_intervals.py for
# pooljob's interval_method = "prasad-rao" (sae, whose eblupBHF this is, is not
# installed here; its analytic MSE is these formulas).
#
# The data: sleepstudy with an uneven number of days per subject (subject k keeps
# days 0 … 1 + (k mod 9)): 18 areas of 2–10 rows.  The target of each area is the
# mean of its rows' fitted values, x̄_iᵀβ + u_i (x̄_i the area's sample mean of x).
#
#   g1 = γ_i σ²/n_i,  γ_i = τ²/(τ² + σ²/n_i)
#   g2 = (1 − γ_i)² x̄_iᵀ (Σ_i X_iᵀV_i⁻¹X_i)⁻¹ x̄_i
#   g3 = n_i⁻² (τ² + σ²/n_i)⁻³ [σ⁴ V_ττ + τ⁴ V_σσ − 2σ²τ² V_στ],  V = I⁻¹
#   I  = ½ [[Σ (n_i−1)/σ⁴ + 1/α_i², Σ n_i/α_i²], [Σ n_i/α_i², Σ n_i²/α_i²]],  α_i = σ² + n_i τ²
#   mse = g1 + g2 + 2 g3
#
# Regenerate (from the repository root; R 4 + lme4 + jsonlite):
#   Rscript tests/data/make_prasad_rao_bhf.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})

here <- "tests/data"
d <- read.csv(file.path(here, "sleepstudy.csv"))
d$Subject <- as.character(d$Subject)
subjects <- sort(unique(d$Subject))
keep <- d$Days <= 1 + (match(d$Subject, subjects) %% 9)
d <- d[keep, ]
write.csv(d, file.path(here, "sleep_uneven.csv"), row.names = FALSE)

m <- lmer(Reaction ~ Days + (1 | Subject), d, REML = TRUE)
s2 <- sigma(m)^2
t2 <- as.numeric(VarCorr(m)$Subject)
n <- as.numeric(table(factor(d$Subject, levels = subjects)))
alpha <- s2 + n * t2
info <- 0.5 * matrix(c(sum((n - 1) / s2^2 + 1 / alpha^2), sum(n / alpha^2),
                       sum(n / alpha^2), sum(n^2 / alpha^2)), 2)
v <- solve(info)
g3 <- (s2^2 * v[2, 2] + t2^2 * v[1, 1] - 2 * s2 * t2 * v[1, 2]) / (n^2 * (t2 + s2 / n)^3)
gamma <- t2 / (t2 + s2 / n)
g1 <- gamma * s2 / n
xtvx <- matrix(0, 2, 2)
xbar <- matrix(0, length(subjects), 2)
for (i in seq_along(subjects)) {
  xi <- cbind(1, d$Days[d$Subject == subjects[i]])
  vi <- s2 * diag(nrow(xi)) + t2 * matrix(1, nrow(xi), nrow(xi))
  xtvx <- xtvx + t(xi) %*% solve(vi, xi)
  xbar[i, ] <- colMeans(xi)
}
q <- solve(xtvx)
g2 <- (1 - gamma)^2 * rowSums((xbar %*% q) * xbar)
est <- as.vector(xbar %*% fixef(m)) + ranef(m)$Subject[subjects, 1]
out <- list(
  formula = "Reaction ~ Days + (1 | Subject)", method = "REML",
  sigma2 = s2, tau2 = t2, subject = subjects, n = n, estimate = est,
  g1 = g1, g2 = g2, g3 = g3, mse = g1 + g2 + 2 * g3,
  lme4 = as.character(packageVersion("lme4"))
)
write_json(out, file.path(here, "prasad_rao_bhf.json"), digits = NA, auto_unbox = TRUE,
           pretty = TRUE)
