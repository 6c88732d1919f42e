# lme4 reference fits for general Gaussian mixed models (issue 3): categorical and
# numeric fixed effects, interactions, no intercept, offsets, random slopes with and
# without correlation, crossed and nested-plus-crossed groupings.  A copy of
# make_lme4_reference.R, extended with: ranef condVar for several terms per factor
# (`(x || g)`), `fitted_group_means`, `theta`, the data file, and the lm case (a
# formula without random terms).  See LME4_GENERAL.md for the fields.
#
# Regenerate everything (from the repository root, R 4.2 + lme4 1.1-31 + jsonlite):
#   .venv/bin/python tests/data/make_general_data.py
#   Rscript tests/data/make_lme4_general.R
# One fit:
#   Rscript tests/data/make_lme4_general.R DATA.csv "FORMULA" REML|ML NAME OUT.json [FACTOR_COLS]
# A fit that gives any warning (convergence, scaling) is refused: fixtures must be
# models lme4 fits cleanly.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})

# The fixtures: data file, formula (exactly as pooljob gets it), method, name.
FIXTURES <- list(
  list("cat_mixed.csv", "income ~ year * urban + (1 | zip)", "REML", "cat_mixed_reml"),
  list("cat_mixed.csv", "income ~ year * urban + (1 | zip)", "ML", "cat_mixed_ml"),
  list("cat_mixed.csv", "income ~ 0 + urban + year + (1 | zip)", "REML", "cat_nointercept_reml"),
  list("cat_mixed.csv", "income ~ urban - 1", "REML", "cat_lm_reml"),
  list("cbpp.csv", "size ~ factor(period) + (1 | herd)", "REML", "cbpp_size_reml"),
  list("cbpp.csv", "size ~ factor(period) + (1 | herd)", "ML", "cbpp_size_ml"),
  list("sleepstudy.csv", "Reaction ~ Days + (Days || Subject)", "REML", "sleepstudy_uncorr_reml"),
  list("sleepstudy.csv", "Reaction ~ Days + (Days || Subject)", "ML", "sleepstudy_uncorr_ml"),
  list("sleepstudy.csv", "Reaction ~ Days + (0 + Days | Subject)", "REML",
       "sleepstudy_slopeonly_reml"),
  list("sleepstudy.csv", "Reaction ~ 0 + Days + (1 | Subject)", "REML",
       "sleepstudy_nointercept_reml"),
  list("nested_crossed.csv", "y ~ x + (1 | a/b) + (1 | c)", "REML", "nested_crossed_reml"),
  list("nested_crossed.csv", "y ~ x + (1 | a/b) + (1 | c)", "ML", "nested_crossed_ml"),
  list("offset.csv", "y ~ x + offset(o) + (1 | g)", "REML", "offset_reml"),
  list("offset.csv", "y ~ x + offset(o) + (1 | g)", "ML", "offset_ml"),
  list("crossed3.csv", "y ~ x + (1 | f1) + (1 | f2) + (1 | f3)", "REML", "crossed3_reml"),
  list("crossed3.csv", "y ~ x + (1 | f1) + (1 | f2) + (1 | f3)", "ML", "crossed3_ml"),
  list("slopes_crossed.csv", "y ~ x + urban + (1 + x | g) + (1 | h)", "REML",
       "slopes_crossed_reml"),
  list("slopes_crossed.csv", "y ~ x + urban + (1 + x | g) + (1 | h)", "ML", "slopes_crossed_ml")
)

ranef_rows <- function(m) {
  re <- ranef(m, condVar = TRUE)
  do.call(rbind, lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    do.call(rbind, lapply(seq_along(re[[g]]), function(j) {
      # one covariance array per factor, or (several terms on one factor, `(x || g)`)
      # a list with one array per term
      v <- if (is.list(pv)) pv[[names(re[[g]])[j]]][1, 1, ] else pv[j, j, ]
      data.frame(grouping = g, level = rownames(re[[g]]), term = names(re[[g]])[j],
                 estimate = re[[g]][[j]], cond_sd = sqrt(v))
    }))
  }))
}

coef_rows <- function(m) {
  cf <- coef(m)
  do.call(rbind, lapply(names(cf), function(g) do.call(rbind, lapply(names(cf[[g]]), function(t)
    data.frame(grouping = g, level = rownames(cf[[g]]), term = t, estimate = cf[[g]][[t]])))))
}

# Per grouping factor (lme4's flist, named as ranef names them) and level: rows, mean of
# fitted(m) (fixed part + offset + random effects) and mean of the response.
fitted_group_means <- function(m) {
  fl <- getME(m, "flist")
  y <- getME(m, "y")
  do.call(rbind, lapply(names(fl), function(g) {
    f <- fl[[g]]
    data.frame(grouping = g, level = levels(f), n = as.vector(table(f)),
               fitted_mean = as.vector(tapply(fitted(m), f, mean)),
               raw_mean = as.vector(tapply(y, f, mean)))
  }))
}

fit_lmer <- function(df, formula, reml) {
  warns <- character(0)
  msgs <- character(0)
  t0 <- proc.time()[["elapsed"]]
  m <- withCallingHandlers(
    lmer(formula, data = df, REML = reml),
    warning = function(w) {warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning")},
    message = function(c) {msgs <<- c(msgs, conditionMessage(c)); invokeRestart("muffleMessage")}
  )
  secs <- proc.time()[["elapsed"]] - t0
  if (length(warns)) stop("lme4 warned: ", paste(warns, collapse = "; "))
  # fitted(m) must include the offset (pooljob's estimates do)
  off <- getME(m, "offset")
  stopifnot(max(abs(fitted(m) - (off + drop(getME(m, "X") %*% fixef(m)) +
                                   drop(getME(m, "Z") %*% getME(m, "b"))))) < 1e-8)
  vc <- as.data.frame(VarCorr(m))
  list(
    nobs = nobs(m), objective = if (reml) REMLcrit(m) else deviance(m),
    loglik = as.numeric(logLik(m)), sigma = sigma(m), singular = isSingular(m),
    lme4_fit_seconds = secs, messages = msgs, theta = I(unname(getME(m, "theta"))),
    fixef = data.frame(term = names(fixef(m)), estimate = unname(fixef(m)),
                       std_error = unname(sqrt(diag(as.matrix(vcov(m)))))),
    varcomp = data.frame(grouping = vc$grp, term1 = vc$var1, term2 = vc$var2,
                         variance_or_cov = vc$vcov, sd_or_cor = vc$sdcor),
    ranef = ranef_rows(m), coef = coef_rows(m), fitted_group_means = fitted_group_means(m)
  )
}

# No random term: lmer refuses, so fit lm and report it on lme4's scale (the profiled
# criterion at Λ = 0): REML = (n-p)(1 + log(2π RSS/(n-p))) + log|X'X| (= -2 logLik(m,
# REML = TRUE)), ML = n(1 + log(2π RSS/n)); sigma² = RSS/(n-p) (REML) or RSS/n (ML), as
# lme4 would; std errors sqrt(diag(sigma² (X'X)⁻¹)).
fit_lm <- function(df, formula, reml) {
  t0 <- proc.time()[["elapsed"]]
  m <- lm(formula, data = df)
  secs <- proc.time()[["elapsed"]] - t0
  n <- nobs(m); p <- length(coef(m)); rss <- sum(residuals(m)^2)
  X <- model.matrix(m)
  dof <- if (reml) n - p else n
  crit <- dof * (1 + log(2 * pi * rss / dof)) + if (reml) determinant(crossprod(X))$modulus else 0
  crit <- as.numeric(crit)
  stopifnot(abs(crit + 2 * as.numeric(logLik(m, REML = reml))) < 1e-8 * abs(crit))
  s2 <- rss / dof
  list(
    nobs = n, objective = crit, loglik = -crit / 2, sigma = sqrt(s2), singular = FALSE,
    lme4_fit_seconds = secs, messages = character(0), theta = numeric(0),
    fixef = data.frame(term = names(coef(m)), estimate = unname(coef(m)),
                       std_error = unname(sqrt(diag(s2 * solve(crossprod(X)))))),
    varcomp = data.frame(grouping = "Residual", term1 = NA, term2 = NA,
                         variance_or_cov = s2, sd_or_cor = sqrt(s2)),
    ranef = list(), coef = list(), fitted_group_means = list()
  )
}

make_fit <- function(csv, formula, method, name, out, factor_cols = character(0)) {
  df <- read.csv(csv, stringsAsFactors = TRUE)
  for (col in factor_cols) df[[col]] <- factor(df[[col]])
  f <- as.formula(formula)
  reml <- method == "REML"
  body <- if (is.null(findbars(f))) fit_lm(df, f, reml) else fit_lmer(df, f, reml)
  res <- c(list(name = name, formula = formula, data = basename(csv), family = "gaussian",
                method = method, lme4_version = as.character(packageVersion("lme4")),
                r_version = paste(R.version$major, R.version$minor, sep = ".")), body)
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"), out)
  cat(sprintf("%-28s %-45s %-4s objective %.10f\n", name, formula, method, res$objective))
}

a <- commandArgs(trailingOnly = TRUE)
if (length(a) >= 5) {
  make_fit(a[1], a[2], a[3], a[4], a[5],
           if (length(a) >= 6) strsplit(a[6], ",")[[1]] else character(0))
} else {
  here <- if (length(a) == 1) a[1] else "tests/data"
  for (fx in FIXTURES) {
    make_fit(file.path(here, fx[[1]]), fx[[2]], fx[[3]], fx[[4]],
             file.path(here, paste0(fx[[4]], ".json")))
  }
}
