# Fay-Herriot / random-effects meta-analysis references for tests/test_area.py.
#
# Rscript tests/data/make_fh_reference.R   (from the repository root; metafor 3.8)
#
# Writes tests/data/fh_bcg.csv, fh_hackshaw.csv and fh_<data>_<method>.json:
# metafor::rma(yi, vi, mods, method) -- tau2, beta with se, logLik (metafor's,
# REML with its default +1/2 log|X'X|) -- blup()'s pred and se, and the MSE of
# the EBLUP as sae::mseFH computes it.  sae is not packaged here (no
# r-cran-sae), so the MSE is computed below from the published formulas, as
# sae's mseFH source writes them:
#   g1 = v (1 - B), B = v / (A + v)
#   g2 = B^2 x' (X' V^-1 X)^-1 x
#   g3 = B^2 * (2 / sum(1 / (A + v)^2)) / (A + v)
#   REML (Prasad-Rao, Datta-Lahiri):  mse = g1 + g2 + 2 g3
#   ML (Datta-Lahiri): mse = g1 + g2 + 2 g3 - b * B^2,
#     b = -tr((X' V^-1 X)^-1 X' V^-2 X) / sum(1 / (A + v)^2)  (the bias of ML's A)
suppressPackageStartupMessages({library(metafor); library(jsonlite)})

mse_fh <- function(A, v, X, method) {
  V <- A + v
  B <- v / V
  Q <- solve(crossprod(X / V, X))
  s2 <- sum(1 / V^2)
  g1 <- v * (1 - B)
  g2 <- B^2 * rowSums((X %*% Q) * X)
  g3 <- B^2 * (2 / s2) / V
  mse <- g1 + g2 + 2 * g3
  if (method == "ML") {
    b <- -sum(diag(Q %*% crossprod(X / V^2, X))) / s2
    mse <- mse - b * B^2
  }
  list(g1 = g1, g2 = g2, g3 = g3, mse = mse)
}

one <- function(name, d, mods, method) {
  tight <- list(threshold = 1e-12, maxiter = 10000)
  m <- if (is.null(mods)) rma(yi, vi, data = d, method = method, control = tight)
       else rma(yi, vi, mods = mods, data = d, method = method, control = tight)
  b <- blup(m)
  X <- model.matrix(m)
  e <- mse_fh(m$tau2, d$vi, X, method)
  out <- list(
    data = name, method = method, formula = if (is.null(mods)) "~ 1" else deparse(mods),
    tau2 = m$tau2, beta = setNames(as.list(as.numeric(m$beta)), rownames(m$beta)),
    se = setNames(as.list(m$se), rownames(m$beta)),
    loglik = as.numeric(logLik(m)), pred = b$pred, pred_se = b$se,
    g1 = e$g1, g2 = e$g2, g3 = e$g3, mse = e$mse,
    metafor = as.character(packageVersion("metafor"))
  )
  write_json(out, sprintf("tests/data/fh_%s_%s.json", name, tolower(method)),
             digits = NA, auto_unbox = TRUE, pretty = TRUE)
}

bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg <- data.frame(trial = bcg$trial, ablat = bcg$ablat, yi = as.numeric(bcg$yi),
                  vi = as.numeric(bcg$vi))
write.csv(bcg, "tests/data/fh_bcg.csv", row.names = FALSE)
hack <- data.frame(study = dat.hackshaw1998$study, yi = dat.hackshaw1998$yi,
                   vi = dat.hackshaw1998$vi)
write.csv(hack, "tests/data/fh_hackshaw.csv", row.names = FALSE)
for (method in c("REML", "ML")) {
  one("bcg", bcg, ~ ablat, method)
  one("hackshaw", hack, NULL, method)
}
