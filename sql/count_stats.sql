-- count_stats: one row per cell of a binomial or Poisson model, that is per
-- distinct combination of the model's key columns in `source` (its grouping
-- factors and categorical variables; null keys included, so that the rows
-- they hold can be counted and reported as dropped) and of the values of its
-- numeric covariates c<k> (and, binomial, its offset o).  With no key column
-- and no covariate, one row for the whole source.
--
-- Every row of a cell shares the cell's linear predictor eta (same levels,
-- same covariate values), so the log-likelihood of the rows
-- is a function of per-cell sums:
--   binomial  sum_i [y_i eta - t_i log(1 + e^eta) + log choose(t_i, y_i)]
--             = y_sum eta - t_sum log(1 + e^eta) + const_sum
--   Poisson   sum_i [y_i (eta + o_i) - e^(eta + o_i) - log y_i!]
--             = y_sum eta - t_sum e^eta + const_sum,  t_sum = sum_i e^(o_i)
-- with t_i the trials of a row (1 for a 0/1 response) and o_i its offset.
--
-- Names.  The first CTE is the only place a column of `source` is named:
-- each is read qualified (source."col"), so it can only mean the source's
-- column, and given a name of pooljob's own: key column i is k<i>, the
-- response y, the trials t, the offset o, covariate k c<k>.  Every later
-- step (drop_code included), and the result, name only those, so no name a
-- user's column can have changes what is computed
-- (pooljob/scan/cell_counts.py maps k<i> back to the key's name and type).
--
-- Columns: k<i> for every key column (its original type); n_rows (rows
-- read); n_used; the dropped rows by reason (n_null_response,
-- n_nonfinite_response, n_unusable_covariate); n_bad_response (usable rows
-- whose response is not a valid count: these stop the run); y_sum, t_sum,
-- const_sum; and for every covariate c<k> and the offset, their min_ and
-- max_ over the used rows (the query groups by the covariates, so for them
-- min = max, the cell's value; the cells are sorted and merged on it).
--
-- Template fields (in braces below), filled by pooljob from quoted
-- identifiers only (pooljob/scan/cell_counts.py):
--   columns      source."key" as k<i>, ...,
--                cast(source."resp" as double) as y, <trials> as t,
--                <offset> as o, cast(source."x" as double) [* ...] as c<k>, ...
--   key_list     k0, k1, ... followed by a comma, or nothing
--   group_by     group by k0, k1, ..., c0, c1, ... [, o for a binomial
--                offset], or nothing
--   drop_code    0 for a usable row, else 1 null response, 2 non-finite
--                response, 3 null or non-finite covariate or offset
--   bad          true where a used row's response is not a valid count
--   exposure     t for binomial, exp(o) for Poisson
--   constant     the row's log-likelihood constant
--   response     y
--   extremes     min(c<k>) filter (where drop_code = 0) as min_<k>, max ...
--   filter       nothing
--
-- With observation weights (glmer's prior weights, [model] weights), the
-- columns add cast(source."w" as double) as w, each row's log-likelihood is
-- w times its own (its sums above: response w * y, exposure w * t or
-- w * exp(o), constant w times the row's), and filter is where w > 0 (rows
-- of weight 0 are counted by sql/weight_check.sql, which runs first).

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
    {filter}
),

count_stats as (
    select
        {key_list}
        count(*) as n_rows,
        count(*) filter (where drop_code = 0) as n_used,
        count(*) filter (where drop_code = 1) as n_null_response,
        count(*) filter (where drop_code = 2) as n_nonfinite_response,
        count(*) filter (where drop_code = 3) as n_unusable_covariate,
        count(*) filter (where drop_code = 0 and ({bad})) as n_bad_response,
        sum({response}) filter (where drop_code = 0) as y_sum,
        fsum({exposure}) filter (where drop_code = 0) as t_sum,
        fsum({constant}) filter (where drop_code = 0) as const_sum,
        min(o) filter (where drop_code = 0) as min_offset,
        max(o) filter (where drop_code = 0) as max_offset{extremes}
    from coded_rows
    {group_by}
)

select * from count_stats
