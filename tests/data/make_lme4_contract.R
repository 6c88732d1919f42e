# lme4 reference fits for pooljob's output contract: random-effect blocks of unequal
# and equal widths, a grouping column literally named `v1`, boolean covariates
# (Gaussian and binomial), and the nested Pastes model, each with `group_means`: per
# grouping and level, the mean of fitted(m) and its prediction-error standard error
# from Henderson's mixed-model equations at lme4's estimates.  See LME4_CONTRACT.md.
#
# The Gaussian part is a copy of make_lme4_general.R (same JSON fields: theta, ranef
# with cond_sd, coef, fixef with std_error, varcomp, fitted_group_means, ...) plus
# `group_means`; the binomial part is a copy of make_lme4_glmm.R (same fields, a
# default and a `_tight` fit).  Both scripts are unchanged.
#
# Regenerate everything (from the repository root, R 4.2 + lme4 1.1-31 + mlmRev +
# jsonlite):
#   .venv/bin/python tests/data/make_contract_data.py
#   Rscript tests/data/make_lme4_contract.R
# This script itself writes contraception.csv (from mlmRev's Contraception).
# A Gaussian or binomial fit that gives any lme4 warning (convergence, scaling) is
# refused: fixtures must be models lme4 fits cleanly.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})

a <- commandArgs(trailingOnly = TRUE)
here <- if (length(a) == 1) a[1] else "tests/data"

# ---------------------------------------------------------------------------------
# Gaussian fixtures: data file, formula (exactly as pooljob gets it), method, name.
GAUSSIAN <- list(
  list("unequal_widths.csv", "y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) + (1 | v2)",
       "REML", "unequal_widths_reml"),
  list("unequal_widths.csv", "y ~ x1 + x2 + (0 + z1 + z2 | groups) + (1 | v1) + (1 | v2)",
       "ML", "unequal_widths_ml"),
  list("equal_widths.csv", "y ~ x1 + (0 + z1 + z2 | g1) + (0 + z1 + z2 | g2) + (1 | w)",
       "REML", "equal_widths_reml"),
  list("equal_widths.csv", "y ~ x1 + (0 + z1 + z2 | g1) + (0 + z1 + z2 | g2) + (1 | w)",
       "ML", "equal_widths_ml"),
  list("unequal_widths.csv", "y ~ x1 + x2 + (1 | v1)", "REML", "grouping_v1_reml"),
  list("booleans.csv", "y ~ urban + (1 | g)", "REML", "bool_reml"),
  list("booleans.csv", "y ~ 0 + urban + x + (1 | g)", "REML", "bool_nointercept_reml"),
  list("Pastes.csv", "strength ~ 1 + (1 | batch/cask)", "REML", "Pastes_contract_reml")
)

# Binomial fixtures (as make_lme4_glmm.R): data, formula, family, name, factor columns.
BINOMIAL <- list(
  list("contraception.csv", "use ~ urban + livch + (1 | district)", "binomial",
       "contraception_bool", character(0))
)

# A CSV column of the literal strings true/false (as DuckDB writes and reads BOOLEAN)
# becomes an R logical, so that its term is `urbanTRUE` (`urbanFALSE`, `urbanTRUE`
# without an intercept).
read_data <- function(csv) {
  df <- read.csv(csv, stringsAsFactors = TRUE)
  for (col in names(df)) {
    v <- df[[col]]
    if ((is.factor(v) || is.character(v)) && all(as.character(v) %in% c("true", "false")))
      df[[col]] <- as.character(v) == "true"
  }
  df
}

# ---- copied from make_lme4_general.R ------------------------------------------------
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
# ---- end of copy --------------------------------------------------------------------

# Per grouping factor (lme4's flist) and level: n, raw_mean, estimate = mean of fitted(m)
# over the level's rows = a'(beta, b) (+ mean offset), with a the level's row average of
# [x_i, z_i] (z_i the full row of Z, every grouping), and std_error = sqrt(a' C a), C the
# joint prediction-error covariance of (beta^ - beta, b^ - b) from Henderson's mixed-model
# equations at the estimates:
#   C = sigma^2 [[X'X, X'Z], [Z'X, Z'Z + sigma^2 G^-1]]^-1,   G = sigma^2 Lambda Lambda'.
# Computed in lme4's u scale (b = Lambda u), which needs no G^-1 and so also holds for a
# singular G:  C = sigma^2 T [[X'X, X'Z Lambda], [Lambda'Z'X, Lambda'Z'Z Lambda + I]]^-1 T',
# T = diag(I_p, Lambda).  Checked: the beta block is vcov(m); when G is invertible C
# equals the Henderson form above; the estimates equal the means of fitted(m).
group_means <- function(m) {
  X <- as.matrix(getME(m, "X")); Z <- as.matrix(getME(m, "Z"))
  L <- as.matrix(getME(m, "Lambda"))
  p <- ncol(X); q <- ncol(Z); s2 <- sigma(m)^2
  jb <- p + seq_len(q)
  M <- crossprod(cbind(X, Z %*% L))
  M[jb, jb] <- M[jb, jb] + diag(q)
  Tm <- diag(p + q); Tm[jb, jb] <- L
  C <- s2 * Tm %*% solve(M) %*% t(Tm)
  V <- as.matrix(vcov(m))
  stopifnot(max(abs(C[1:p, 1:p] - V)) < 1e-9 * max(abs(V)))
  G <- s2 * L %*% t(L)
  if (min(eigen(G, symmetric = TRUE, only.values = TRUE)$values) > 1e-8 * max(diag(G))) {
    H <- crossprod(cbind(X, Z))
    H[jb, jb] <- H[jb, jb] + s2 * solve(G)
    CH <- s2 * solve(H)
    stopifnot(max(abs(CH - C)) < 1e-7 * max(abs(C)))
  }
  A <- cbind(X, Z)
  coefs <- c(unname(fixef(m)), getME(m, "b")[, 1])
  off <- getME(m, "offset"); y <- getME(m, "y"); fit <- fitted(m)
  fl <- getME(m, "flist")
  do.call(rbind, lapply(names(fl), function(g) {
    f <- fl[[g]]
    n <- as.vector(table(f))
    S <- t(sapply(levels(f), function(l) as.numeric(f == l)))  # levels x rows
    Am <- unname((S %*% A) / n)
    est <- as.vector(Am %*% coefs) + as.vector(S %*% off) / n
    stopifnot(max(abs(est - as.vector(tapply(fit, f, mean)))) < 1e-9 * max(abs(est)))
    data.frame(grouping = g, level = levels(f), n = n,
               raw_mean = as.vector(tapply(y, f, mean)), estimate = est,
               std_error = sqrt(rowSums((Am %*% C) * Am)), row.names = NULL)
  }))
}

# ---- fit_lmer copied from make_lme4_general.R, plus group_means ----------------------
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
    ranef = ranef_rows(m), coef = coef_rows(m), fitted_group_means = fitted_group_means(m),
    group_means = group_means(m)
  )
}

make_gaussian <- function(csv, formula, method, name, out) {
  df <- read_data(csv)
  f <- as.formula(formula)
  reml <- method == "REML"
  body <- fit_lmer(df, f, reml)
  res <- c(list(name = name, formula = formula, data = basename(csv), family = "gaussian",
                method = method, lme4_version = as.character(packageVersion("lme4")),
                r_version = paste(R.version$major, R.version$minor, sep = ".")), body)
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"), out)
  cat(sprintf("%-28s %-62s %-4s objective %.10f singular %s\n", name, formula, method,
              res$objective, res$singular))
}

# ---- binomial: copied from make_lme4_glmm.R ------------------------------------------
ranef_rows_glmm <- function(m) {
  re <- ranef(m, condVar = TRUE)
  do.call(rbind, lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    do.call(rbind, lapply(seq_along(re[[g]]), function(j)
      data.frame(grouping = g, level = rownames(re[[g]]), term = names(re[[g]])[j],
                 estimate = re[[g]][[j]], cond_sd = sqrt(pv[j, j, ]))))
  }))
}

# Per grouping and level: rows, and the group's mean on the response scale: trials-
# weighted mean of the fitted proportions (binomial), events per unit of exposure
# (Poisson: fitted counts over exposure), as pooljob's estimates; and the raw mean.
group_means_glmm <- function(m, df, family, formula) {
  fl <- getME(m, "flist")
  fit <- fitted(m)
  if (family == "binomial") {
    w <- weights(m)  # trials (cbind) or 1
    num <- fit * w; den <- w; raw <- getME(m, "y") * w
  } else {
    den <- if ("exposure" %in% names(df)) df$exposure else rep(1, nrow(df))
    num <- fit; raw <- getME(m, "y")
  }
  do.call(rbind, lapply(names(fl), function(g) {
    f <- fl[[g]]
    data.frame(grouping = g, level = levels(f), n = as.vector(table(f)),
               fitted_mean = as.vector(tapply(num, f, sum) / tapply(den, f, sum)),
               raw_mean = as.vector(tapply(raw, f, sum) / tapply(den, f, sum)))
  }))
}

make_glmm <- function(fx, tight) {
  df <- read_data(file.path(here, fx[[1]]))
  for (col in fx[[5]]) df[[col]] <- factor(df[[col]])
  ctrl <- if (tight) glmerControl(tolPwrss = 1e-13, optimizer = "bobyqa",
                                  optCtrl = list(rhoend = 1e-10)) else glmerControl()
  warns <- character(0)
  t0 <- proc.time()[["elapsed"]]
  m <- withCallingHandlers(
    glmer(as.formula(fx[[2]]), data = df, family = fx[[3]], control = ctrl),
    warning = function(w) {warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning")})
  secs <- proc.time()[["elapsed"]] - t0
  if (length(warns)) stop(fx[[4]], ": lme4 warned: ", paste(warns, collapse = "; "))
  vc <- as.data.frame(VarCorr(m))
  name <- paste0(fx[[4]], if (tight) "_tight" else "")
  res <- list(
    name = name, formula = fx[[2]], data = fx[[1]], family = fx[[3]], method = "Laplace",
    control = if (tight) "tolPwrss = 1e-13, bobyqa rhoend = 1e-10" else "glmerControl()",
    lme4_version = as.character(packageVersion("lme4")),
    nobs = nobs(m), objective = deviance(m), loglik = as.numeric(logLik(m)),
    sigma = NULL, singular = isSingular(m), lme4_fit_seconds = secs,
    theta = I(unname(getME(m, "theta"))),
    fixef = data.frame(term = names(fixef(m)), estimate = unname(fixef(m)),
                       std_error = unname(sqrt(diag(as.matrix(vcov(m)))))),
    varcomp = data.frame(grouping = vc$grp, term1 = vc$var1, term2 = vc$var2,
                         variance_or_cov = vc$vcov, sd_or_cor = vc$sdcor),
    ranef = ranef_rows_glmm(m), group_means = group_means_glmm(m, df, fx[[3]], fx[[2]]))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"),
             file.path(here, paste0(name, ".json")))
  cat(sprintf("%-28s objective %.10f loglik %.10f singular %s\n", name, res$objective,
              res$loglik, res$singular))
}

# ---- contraception.csv from mlmRev's Contraception ------------------------------------
# One row per woman (not aggregated): use 0/1, urban true/false (TRUE where urban ==
# "Y"), livch (levels 0, 1, 2, 3+), district (integer label).
write_contraception <- function(path) {
  data("Contraception", package = "mlmRev", envir = environment())
  d <- Contraception
  out <- data.frame(use = as.integer(d$use == "Y"),
                    urban = ifelse(d$urban == "Y", "true", "false"),
                    livch = as.character(d$livch),
                    district = as.integer(as.character(d$district)))
  write.csv(out, path, row.names = FALSE, quote = FALSE)
  back <- read_data(path)
  stopifnot(is.logical(back$urban), identical(levels(back$livch), c("0", "1", "2", "3+")),
            nrow(back) == nrow(d))
}

write_contraception(file.path(here, "contraception.csv"))
for (fx in GAUSSIAN) {
  make_gaussian(file.path(here, fx[[1]]), fx[[2]], fx[[3]], fx[[4]],
                file.path(here, paste0(fx[[4]], ".json")))
}
for (fx in BINOMIAL) for (tight in c(FALSE, TRUE)) make_glmm(fx, tight)
