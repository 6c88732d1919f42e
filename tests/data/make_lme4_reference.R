# Make an lme4 reference fit in the format of shared/reference/lme4 (see LME4_REFERENCE.md).
# Usage: Rscript make_lme4_reference.R DATA.csv "FORMULA" REML|ML NAME OUT.json [FACTOR_COLS]
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
a <- commandArgs(trailingOnly = TRUE)
df <- read.csv(a[1], stringsAsFactors = TRUE)
if (length(a) >= 6) for (col in strsplit(a[6], ",")[[1]]) df[[col]] <- factor(df[[col]])
reml <- a[3] == "REML"
t0 <- proc.time()[["elapsed"]]
m <- lmer(as.formula(a[2]), data = df, REML = reml)
secs <- proc.time()[["elapsed"]] - t0
vc <- as.data.frame(VarCorr(m))
re <- ranef(m, condVar = TRUE)
ranef_rows <- do.call(rbind, lapply(names(re), function(g) {
  pv <- attr(re[[g]], "postVar")
  do.call(rbind, lapply(seq_along(re[[g]]), function(j) data.frame(
    grouping = g, level = rownames(re[[g]]), term = names(re[[g]])[j],
    estimate = re[[g]][[j]], cond_sd = sqrt(pv[j, j, ])
  )))
}))
out <- list(
  name = a[4], formula = a[2], family = "gaussian", method = a[3], nobs = nobs(m),
  objective = if (reml) REMLcrit(m) else deviance(m), loglik = as.numeric(logLik(m)),
  sigma = sigma(m), singular = isSingular(m), lme4_version = as.character(packageVersion("lme4")),
  lme4_fit_seconds = secs, theta = unname(getME(m, "theta")),
  fixef = data.frame(term = names(fixef(m)), estimate = unname(fixef(m)),
                     std_error = unname(sqrt(diag(as.matrix(vcov(m)))))),
  varcomp = data.frame(grouping = vc$grp, term1 = vc$var1, term2 = vc$var2,
                       variance_or_cov = vc$vcov, sd_or_cor = vc$sdcor),
  ranef = ranef_rows
)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", null = "null"), a[5])
