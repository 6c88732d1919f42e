# glmer reference fits with prior weights (`weights`), for tests/test_weights_glmm.py
# (issue 12 §1): each row's log-likelihood is multiplied by its weight.
#
# Writes the data sets (made here, seeded) and one JSON per fit, Laplace (nAGQ = 1),
# glmer with tight settings: glmerControl(tolPwrss = 1e-13, optimizer = "bobyqa",
# optCtrl = list(rhoend = 1e-10)), so that its criterion is the Laplace approximation
# itself, the one pooljob minimises (see make_lme4_glmm.R):
#   wbin01.csv    y ~ x + (1 | g), y 0/1, integer weights 1..3 (glmer's logLik rounds
#                 non-integer weights of a 0/1 response: its family's aic takes
#                 dbinom(round(w y), round(w), p); integer ones make it exact)
#   wcbind.csv    cbind(s, f) ~ x + (1 | g), non-integer weights (exact in glmer:
#                 w times log dbinom(s, s + f, p))
#   wpois.csv     n ~ x + offset(log(e)) + (1 | g), non-integer weights
# Fields as make_lme4_glmm.R's: objective (deviance(m)), loglik, theta, fixef with
# std_error, varcomp, ranef with cond_sd, and group_means: per level, the rows n, the
# prior-weighted mean of the fitted proportion (sum of w t p / sum of w t; weights(m)
# is w t for cbind, w for 0/1) or rate (sum of w mu / sum of w e), and the raw mean.
#
# Regenerate (from the repository root): Rscript tests/data/make_glmer_weights.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
here <- "tests/data"
set.seed(20261130)
G <- sprintf("g%02d", 1:20)
eff <- setNames(rnorm(20, 0, 0.6), G)

n <- 800
b01 <- data.frame(g = sample(G, n, replace = TRUE), x = round(rnorm(n), 3))
b01$y <- rbinom(n, 1, plogis(-0.3 + 0.8 * b01$x + eff[b01$g]))
b01$w <- sample(1:3, n, replace = TRUE)
write.csv(b01, file.path(here, "wbin01.csv"), row.names = FALSE)

n <- 300
cb <- data.frame(g = sample(G, n, replace = TRUE), x = round(rnorm(n), 3),
                 t = sample(1:12, n, replace = TRUE))
cb$s <- rbinom(n, cb$t, plogis(0.2 + 0.5 * cb$x + eff[cb$g]))
cb$f <- cb$t - cb$s
cb$w <- round(runif(n, 0.3, 2.5), 3)
cb$t <- NULL
write.csv(cb, file.path(here, "wcbind.csv"), row.names = FALSE)

n <- 600
po <- data.frame(g = sample(G, n, replace = TRUE), x = round(rnorm(n), 3),
                 e = round(runif(n, 0.2, 3), 3))
po$n <- rpois(n, po$e * exp(-0.5 + 0.4 * po$x + eff[po$g]))
po$w <- round(runif(n, 0.2, 3), 3)
write.csv(po, file.path(here, "wpois.csv"), row.names = FALSE)

ranef_rows <- function(m) {
  re <- ranef(m, condVar = TRUE)
  do.call(rbind, lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    do.call(rbind, lapply(seq_along(re[[g]]), function(j)
      data.frame(grouping = g, level = rownames(re[[g]]), term = names(re[[g]])[j],
                 estimate = re[[g]][[j]], cond_sd = sqrt(pv[j, j, ]))))
  }))
}

group_means <- function(m, df, family) {
  f <- getME(m, "flist")[[1]]
  pw <- weights(m)  # prior weights: w t (cbind) or w
  if (family == "binomial") {
    num <- fitted(m) * pw; den <- pw; raw <- getME(m, "y") * pw
  } else {
    num <- fitted(m) * pw; den <- df$e * pw; raw <- getME(m, "y") * pw
  }
  data.frame(grouping = "g", level = levels(f), n = as.vector(table(f)),
             fitted_mean = as.vector(tapply(num, f, sum) / tapply(den, f, sum)),
             raw_mean = as.vector(tapply(raw, f, sum) / tapply(den, f, sum)))
}

fit_one <- function(df, formula, family, name) {
  ctrl <- glmerControl(tolPwrss = 1e-13, optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10))
  warns <- character(0)
  m <- withCallingHandlers(
    glmer(as.formula(formula), data = df, family = family, weights = w, control = ctrl),
    warning = function(w) {warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning")})
  if (length(warns)) stop(name, ": lme4 warned: ", paste(warns, collapse = "; "))
  vc <- as.data.frame(VarCorr(m))
  res <- list(
    name = name, formula = formula, family = family, method = "Laplace",
    control = "tolPwrss = 1e-13, bobyqa rhoend = 1e-10",
    lme4_version = as.character(packageVersion("lme4")),
    nobs = nobs(m), objective = deviance(m), loglik = as.numeric(logLik(m)),
    theta = I(unname(getME(m, "theta"))),
    fixef = data.frame(term = names(fixef(m)), estimate = unname(fixef(m)),
                       std_error = unname(sqrt(diag(as.matrix(vcov(m)))))),
    varcomp = data.frame(grouping = vc$grp, term1 = vc$var1, term2 = vc$var2,
                         variance_or_cov = vc$vcov, sd_or_cor = vc$sdcor),
    ranef = ranef_rows(m), group_means = group_means(m, df, family))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"),
             file.path(here, paste0(name, ".json")))
  cat(sprintf("%-16s loglik %.10f deviance %.10f\n", name, res$loglik, res$objective))
}

fit_one(b01, "y ~ x + (1 | g)", "binomial", "wbin01_tight")
fit_one(cb, "cbind(s, f) ~ x + (1 | g)", "binomial", "wcbind_tight")
fit_one(po, "n ~ x + offset(log(e)) + (1 | g)", "poisson", "wpois_tight")
