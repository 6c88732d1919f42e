# lme4 reference fits for binomial and Poisson GLMMs with a numeric covariate that
# varies within cells (issue 13 §2), Laplace (nAGQ = 1).
#
# Each fixture is made twice, as by make_lme4_glmm.R (whose JSON-writing code this
# copies; that script is unchanged):
#   NAME.json        glmer with its defaults;
#   NAME_tight.json  glmer with tolPwrss = 1e-13 and bobyqa to rhoend = 1e-10.
#
# Also writes contraception_age.csv: mlmRev's Contraception, one row per woman,
# with age (centred years, as mlmRev ships it), so that age varies within the cells
# district x urban x livch.  A CSV column of the literal strings true/false is read
# as an R logical (term urbanTRUE), as in make_lme4_contract.R.  A fit for which
# lme4 gives any warning is refused.
#
# Regenerate (from the repository root, R 4.2 + lme4 1.1-31 + mlmRev + jsonlite):
#   Rscript tests/data/make_lme4_glmm_rows.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
here <- "tests/data"

data("Contraception", package = "mlmRev", envir = environment())
d <- Contraception
write.csv(data.frame(use = as.integer(d$use == "Y"), age = d$age,
                     urban = ifelse(d$urban == "Y", "true", "false"),
                     livch = as.character(d$livch), district = as.integer(d$district)),
          file.path(here, "contraception_age.csv"), row.names = FALSE, quote = FALSE)

FIXTURES <- list(
  list("contraception_age.csv", "use ~ age + urban + livch + (1 | district)", "binomial",
       "contraception_age", c("district", "livch")),
  list("claims.csv", "claims ~ agecat + exposure + (1 | district)", "poisson",
       "claims_covariate", c("district", "agecat"))
)

read_data <- function(csv, factors) {
  df <- read.csv(csv, stringsAsFactors = TRUE)
  for (col in names(df)) {
    v <- df[[col]]
    if ((is.factor(v) || is.character(v)) && all(as.character(v) %in% c("true", "false")))
      df[[col]] <- as.character(v) == "true"
  }
  for (col in factors) df[[col]] <- factor(df[[col]])
  df
}

ranef_rows <- function(m) {
  re <- ranef(m, condVar = TRUE)
  do.call(rbind, lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    do.call(rbind, lapply(seq_along(re[[g]]), function(j)
      data.frame(grouping = g, level = rownames(re[[g]]), term = names(re[[g]])[j],
                 estimate = re[[g]][[j]], cond_sd = sqrt(pv[j, j, ]))))
  }))
}

# Per grouping and level: rows, the trials-weighted mean of the fitted proportions
# (binomial) or the mean fitted count per row (Poisson without an offset), as
# pooljob's estimates; and the raw mean.
group_means <- function(m) {
  fl <- getME(m, "flist")
  w <- weights(m)
  num <- fitted(m) * w; raw <- getME(m, "y") * w
  do.call(rbind, lapply(names(fl), function(g) {
    f <- fl[[g]]
    data.frame(grouping = g, level = levels(f), n = as.vector(table(f)),
               fitted_mean = as.vector(tapply(num, f, sum) / tapply(w, f, sum)),
               raw_mean = as.vector(tapply(raw, f, sum) / tapply(w, f, sum)))
  }))
}

make_fit <- function(fx, tight) {
  df <- read_data(file.path(here, fx[[1]]), fx[[5]])
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
    ranef = ranef_rows(m), group_means = group_means(m))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"),
             file.path(here, paste0(name, ".json")))
  cat(sprintf("%-28s nobs %d loglik %.10f theta %.10f\n", name, nobs(m), res$loglik,
              getME(m, "theta")[1]))
}

for (fx in FIXTURES) for (tight in c(FALSE, TRUE)) make_fit(fx, tight)
