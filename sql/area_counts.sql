-- area_counts: one row for the whole `source` of an area-level (Fay-Herriot)
-- model, whose rows are the areas: each a direct estimate y, its known
-- sampling variance v and covariates.  It counts the rows read, the rows
-- dropped by reason (as lme4's na.omit: a null grouping key, a null or
-- non-finite response, a null or non-finite covariate), the rows used, and
-- among those the rows whose sampling variance is not a positive number
-- (null, NaN, infinite, zero or negative): these stop the run.
--
-- Names.  The first CTE is the only place a column of `source` is named,
-- quoted and qualified (source."col"): key column i is k<i>, the response y,
-- the sampling variance v, covariate term k c<k>; every later step names
-- only those (pooljob/scan/area_rows.py).
--
-- Template fields, filled by pooljob from quoted identifiers only:
--   columns    source."key" as k<i>, ..., cast(source."resp" as double) as y,
--              cast(source."var" as double) as v, cast(source."x" as double) as c<k>, ...
--   drop_code  0 for a usable row, else 1 null key, 2 null response,
--              3 non-finite response, 4 null or non-finite covariate

with

model_rows as (
    select
        {columns}
    from source
),

coded_rows as (
    select
        *,
        {drop_code} as drop_code
    from model_rows
),

area_counts as (
    select
        count(*) as n_rows,
        count(*) filter (where drop_code = 1) as n_null_group_key,
        count(*) filter (where drop_code = 2) as n_null_response,
        count(*) filter (where drop_code = 3) as n_nonfinite_response,
        count(*) filter (where drop_code = 4) as n_unusable_covariate,
        count(*) filter (where drop_code = 0) as n_used,
        count(*) filter (
            where drop_code = 0 and (v is null or not isfinite(v) or v <= 0)
        ) as n_bad_variance
    from coded_rows
)

select * from area_counts
