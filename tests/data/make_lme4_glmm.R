# lme4 reference fits for binomial and Poisson GLMMs (issue 4), Laplace (nAGQ = 1).
#
# Each fixture is made twice:
#   NAME.json        glmer with its defaults (as ../shared/reference/lme4 makes them);
#   NAME_tight.json  glmer with tolPwrss = 1e-13 and bobyqa to rhoend = 1e-10.
# glmer's default PIRLS tolerance (tolPwrss = 1e-7, on the relative change of the
# penalised deviance) stops the inner loop while u still moves by ~1e-4, and the
# log-determinant in its Laplace criterion is then taken at the weights of the
# previous iterate: on cbpp that moves the criterion by 5.6e-4 and the estimates by
# up to 4e-4 relative.  With tolPwrss = 1e-13 the criterion is the Laplace
# approximation itself, the one pooljob minimises; the _tight fixtures check
# agreement to optimizer precision, the default ones that pooljob is never worse.
#
# Also writes the synthetic data sets it fits (seeded): a 0/1 poll with crossed
# groupings and a Poisson claims table with exposure varying within cells.
#
# Regenerate (from the repository root, R 4.2 + lme4 1.1-31 + jsonlite):
#   Rscript tests/data/make_lme4_glmm.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
here <- "tests/data"

set.seed(20261122)
states <- sprintf("S%02d", 1:12); ages <- c("18-29", "30-44", "45-64", "65+")
n <- 3000
poll <- data.frame(state = sample(states, n, replace = TRUE, prob = (1:12) / sum(1:12)),
                   age = sample(ages, n, replace = TRUE, prob = c(0.4, 0.3, 0.2, 0.1)),
                   sex = sample(c("F", "M"), n, replace = TRUE, prob = c(0.1, 0.9)))
a_state <- setNames(rnorm(12, 0, 0.5), states); a_age <- setNames(c(-0.4, -0.1, 0.2, 0.5), ages)
eta <- -0.2 + 0.3 * (poll$sex == "M") + a_state[poll$state] + a_age[poll$age]
poll$vote <- rbinom(n, 1, plogis(eta))
write.csv(poll, file.path(here, "poll.csv"), row.names = FALSE)

m <- 1500
claims <- data.frame(district = sprintf("D%02d", sample(1:30, m, replace = TRUE)),
                     agecat = sample(c("A", "B", "C"), m, replace = TRUE),
                     exposure = round(runif(m, 0.1, 2), 3))
d_eff <- setNames(rnorm(30, 0, 0.4), sprintf("D%02d", 1:30))
mu <- claims$exposure * exp(-1 + c(A = 0, B = 0.3, C = 0.6)[claims$agecat] + d_eff[claims$district])
claims$claims <- rpois(m, mu)
write.csv(claims, file.path(here, "claims.csv"), row.names = FALSE)

FIXTURES <- list(
  list("cbpp.csv", "cbind(incidence, size - incidence) ~ period + (1 | herd)", "binomial",
       "cbpp_binomial", c("herd", "period")),
  list("grouseticks.csv", "TICKS ~ YEAR + (1 | BROOD)", "poisson", "grouseticks_poisson",
       c("BROOD", "YEAR")),
  list("poll.csv", "vote ~ sex + (1 | state) + (1 | age)", "binomial", "poll_crossed",
       character(0)),
  list("claims.csv", "claims ~ agecat + offset(log(exposure)) + (1 | district)", "poisson",
       "claims_offset", character(0))
)

ranef_rows <- function(m) {
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
group_means <- function(m, df, family, formula) {
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

make_fit <- function(fx, tight) {
  df <- read.csv(file.path(here, fx[[1]]), stringsAsFactors = TRUE)
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
    ranef = ranef_rows(m), group_means = group_means(m, df, fx[[3]], fx[[2]]))
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, na = "null", null = "null"),
             file.path(here, paste0(name, ".json")))
  cat(sprintf("%-28s loglik %.10f\n", name, res$loglik))
}

for (fx in FIXTURES) for (tight in c(FALSE, TRUE)) make_fit(fx, tight)
