# lme4 reference fits with observation weights (lmer's `weights`: precision weights,
# residual variance sigma^2 / w_i), for tests/test_weights.py (issue 12 §1).
#
# Writes the data sets (made here with a fixed seed) and one JSON per fit:
#   weights_oneway.csv   y ~ x1 + cat + (1 | g)          (blocked solver: covariates)
#   weights_nested.csv   y ~ 1 + (1 | a/b/c)             (the tree solver)
#   weights_slope.csv    y ~ x + (x | g) + (1 | h)       (blocked: slope + crossed)
# each by REML and ML, fitted with tight optimizer tolerances so that the numbers are
# the optimum to ~1e-8.  Fields: objective (REMLcrit or deviance), loglik, sigma, theta,
# fixef with std_error, varcomp, ranef with cond_sd, and group_means: per grouping and
# level, the row count n, the weight sum w, the weighted raw mean sum(w y)/sum(w), the
# weighted mean of fitted(m) sum(w fitted)/sum(w) and its prediction-error standard
# error sqrt(a' C a) with a the weighted row average of [x_i, z_i] and C Henderson's
# joint prediction-error covariance with weights:
#   C = sigma^2 T [[X'WX, X'WZ Lambda], [Lambda'Z'WX, Lambda'Z'WZ Lambda + I]]^-1 T'.
# Also `ldw` = sum(log w), checked against lme4's own: lme4's criterion of the weighted
# model is the criterion of the rows scaled by sqrt(w) less sum(log w), which this
# script verifies by refitting the scaled problem's deviance by hand.
#
# Regenerate (from the repository root, R 4 + lme4 + jsonlite):
#   Rscript tests/data/make_lme4_weights.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})

a <- commandArgs(trailingOnly = TRUE)
here <- if (length(a) == 1) a[1] else "tests/data"
tight <- lmerControl(optimizer = "nloptwrap",
                     optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-15, xtol_rel = 1e-12,
                                    ftol_rel = 1e-15, maxeval = 100000),
                     calc.derivs = FALSE)

set.seed(20261130)
# one-way with covariates: 30 groups of uneven sizes, a numeric and a categorical covariate
g <- sample(sprintf("g%02d", 1:30), 400, replace = TRUE, prob = (1:30) / sum(1:30))
bg <- setNames(rnorm(30, 0, 1.5), sprintf("g%02d", 1:30))
x1 <- rnorm(400, 3, 2)
cat_ <- sample(c("a", "b", "c"), 400, replace = TRUE)
w <- round(runif(400, 0.2, 4), 3)
y <- 10 + 0.7 * x1 + c(a = 0, b = 1, c = -0.5)[cat_] + bg[g] + rnorm(400) * 2 / sqrt(w)
oneway <- data.frame(g = g, x1 = x1, cat = cat_, w = w, y = round(y, 6))
write.csv(oneway, file.path(here, "weights_oneway.csv"), row.names = FALSE)

# three-level nested: a / b / c, uneven
rows <- 600
a_ <- sample(sprintf("a%d", 1:5), rows, replace = TRUE)
b_ <- paste0(a_, "b", sample(1:4, rows, replace = TRUE))
c_ <- paste0(b_, "c", sample(1:3, rows, replace = TRUE, prob = c(0.6, 0.3, 0.1)))
ea <- setNames(rnorm(5, 0, 3), sprintf("a%d", 1:5))
ub <- unique(b_); eb <- setNames(rnorm(length(ub), 0, 2), ub)
uc <- unique(c_); ec <- setNames(rnorm(length(uc), 0, 1), uc)
wn <- sample(c(1, 2, 3, 0.5, 1.5), rows, replace = TRUE)
yn <- 50 + ea[a_] + eb[b_] + ec[c_] + rnorm(rows) * 4 / sqrt(wn)
nested <- data.frame(a = a_, b = b_, c = c_, w = wn, y = round(yn, 6))
write.csv(nested, file.path(here, "weights_nested.csv"), row.names = FALSE)

# random slope on g, crossed with h
rows <- 500
gs <- sample(sprintf("s%02d", 1:25), rows, replace = TRUE)
hs <- sample(sprintf("h%d", 1:8), rows, replace = TRUE)
xs <- runif(rows, 0, 10)
b0 <- setNames(rnorm(25, 0, 2), sprintf("s%02d", 1:25))
b1 <- setNames(rnorm(25, 0, 0.3), sprintf("s%02d", 1:25))
eh <- setNames(rnorm(8, 0, 1), sprintf("h%d", 1:8))
ws <- round(rgamma(rows, 2, 2), 4) + 0.05
ys <- 5 + 0.4 * xs + b0[gs] + b1[gs] * xs + eh[hs] + rnorm(rows) * 1.5 / sqrt(ws)
slope <- data.frame(g = gs, h = hs, x = round(xs, 4), w = ws, y = round(ys, 6))
write.csv(slope, file.path(here, "weights_slope.csv"), row.names = FALSE)

ranef_rows <- function(m) {
  re <- ranef(m, condVar = TRUE)
  do.call(rbind, lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    do.call(rbind, lapply(seq_along(re[[g]]), function(j) {
      v <- if (is.list(pv)) pv[[names(re[[g]])[j]]][1, 1, ] else pv[j, j, ]
      data.frame(grouping = g, level = rownames(re[[g]]), term = names(re[[g]])[j],
                 estimate = re[[g]][[j]], cond_sd = sqrt(v))
    }))
  }))
}

group_means <- function(m) {
  X <- as.matrix(getME(m, "X")); Z <- as.matrix(getME(m, "Z"))
  L <- as.matrix(getME(m, "Lambda")); wt <- weights(m)
  p <- ncol(X); q <- ncol(Z); s2 <- sigma(m)^2
  jb <- p + seq_len(q)
  A <- cbind(X, Z)
  M <- crossprod(cbind(X, Z %*% L) * sqrt(wt))
  M[jb, jb] <- M[jb, jb] + diag(q)
  Tm <- diag(p + q); Tm[jb, jb] <- L
  C <- s2 * Tm %*% solve(M) %*% t(Tm)
  V <- as.matrix(vcov(m))
  stopifnot(max(abs(C[1:p, 1:p] - V)) < 1e-9 * max(abs(V)))
  coefs <- c(unname(fixef(m)), getME(m, "b")[, 1])
  y <- getME(m, "y"); fit <- fitted(m)
  fl <- getME(m, "flist")
  do.call(rbind, lapply(names(fl), function(g) {
    f <- fl[[g]]
    S <- t(sapply(levels(f), function(l) as.numeric(f == l)))  # levels x rows
    W <- as.vector(S %*% wt)
    Am <- unname((S %*% (A * wt)) / W)
    est <- as.vector(Am %*% coefs)
    stopifnot(max(abs(est - as.vector(S %*% (wt * fit)) / W)) < 1e-9 * max(abs(est)))
    data.frame(grouping = g, level = levels(f), n = as.vector(table(f)), w = W,
               raw_mean = as.vector(S %*% (wt * y)) / W, estimate = est,
               std_error = sqrt(rowSums((Am %*% C) * Am)), row.names = NULL)
  }))
}

# lme4's criterion with weights, by hand: the profiled criterion of the rows scaled by
# sqrt(w) (penalised weighted residual sum of squares, log-determinants of L and R_X)
# less sum(log w).  Checked against REMLcrit / deviance.
by_hand <- function(m, reml) {
  X <- as.matrix(getME(m, "X")); Z <- as.matrix(getME(m, "Z")); y <- getME(m, "y")
  L <- as.matrix(getME(m, "Lambda")); wt <- weights(m); sw <- sqrt(wt)
  n <- length(y); p <- ncol(X); q <- ncol(Z)
  Xs <- X * sw; ZLs <- (Z %*% L) * sw; ys <- y * sw
  A <- crossprod(cbind(ZLs, Xs)); A[1:q, 1:q] <- A[1:q, 1:q] + diag(q)
  sol <- solve(A, crossprod(cbind(ZLs, Xs), ys))
  u <- sol[1:q]; beta <- sol[q + 1:p]
  r2 <- sum((ys - ZLs %*% u - Xs %*% beta)^2) + sum(u^2)
  ldL <- as.numeric(determinant(crossprod(ZLs) + diag(q))$modulus)
  if (reml) {
    S <- A[q + 1:p, q + 1:p] - A[q + 1:p, 1:q] %*% solve(A[1:q, 1:q], A[1:q, q + 1:p])
    ldR <- as.numeric(determinant(S)$modulus)
    ldL + ldR + (n - p) * (1 + log(2 * pi * r2 / (n - p))) - sum(log(wt))
  } else {
    ldL + n * (1 + log(2 * pi * r2 / n)) - sum(log(wt))
  }
}

fit_one <- function(df, formula, reml, name) {
  warns <- character(0)
  m <- withCallingHandlers(
    lmer(as.formula(formula), data = df, REML = reml, weights = w, control = tight),
    warning = function(w) {warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning")}
  )
  if (length(warns)) stop("lme4 warned: ", paste(warns, collapse = "; "))
  crit <- if (reml) REMLcrit(m) else deviance(m)
  hand <- by_hand(m, reml)
  stopifnot(abs(crit - hand) < 1e-8 * abs(crit))
  stopifnot(abs(as.numeric(logLik(m)) + crit / 2) < 1e-8 * abs(crit))
  vc <- as.data.frame(VarCorr(m))
  res <- list(
    name = name, formula = formula, method = if (reml) "REML" else "ML",
    lme4_version = as.character(packageVersion("lme4")),
    nobs = nobs(m), objective = crit, objective_by_hand = hand, ldw = sum(log(df$w)),
    loglik = as.numeric(logLik(m)), sigma = sigma(m), singular = isSingular(m),
    theta = I(unname(getME(m, "theta"))),
    fixef = data.frame(term = names(fixef(m)), estimate = unname(fixef(m)),
                       std_error = unname(sqrt(diag(as.matrix(vcov(m)))))),
    varcomp = data.frame(grouping = vc$grp, term1 = vc$var1, term2 = vc$var2,
                         variance_or_cov = vc$vcov, sd_or_cor = vc$sdcor),
    ranef = ranef_rows(m), group_means = group_means(m)
  )
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"),
             file.path(here, paste0(name, ".json")))
  cat(sprintf("%-22s %-34s %-4s objective %.10f (by hand %.10f)\n", name, formula,
              res$method, crit, hand))
}

for (reml in c(TRUE, FALSE)) {
  sfx <- if (reml) "_reml" else "_ml"
  fit_one(oneway, "y ~ x1 + cat + (1 | g)", reml, paste0("weights_oneway", sfx))
  fit_one(nested, "y ~ 1 + (1 | a/b/c)", reml, paste0("weights_nested", sfx))
  fit_one(slope, "y ~ x + (x | g) + (1 | h)", reml, paste0("weights_slope", sfx))
}
