-- cell_stats: one row per cell, that is per distinct combination of the
-- model's key columns in `source` (its grouping factors and categorical
-- variables; null keys included, so that the rows they hold can be counted
-- and reported as dropped).  With no key column, one row for the whole source.
--
-- Names.  The first CTE is the only place a column of `source` is named:
-- each is read qualified (source."col"), so it can only mean the source's
-- column, and given a positional name of pooljob's own: key column i is
-- k<i>, numeric variable i is v<i>.  Every later step, and the result, name
-- only those, so no name a user's column can have changes what is computed
-- (pooljob/scan/cell_moments.py maps k<i> back to the key's name and type).
--
-- Columns: k<i> for every key column (its original type); n_rows (rows
-- read); for every numeric variable v<i> of the model (the response,
-- covariates, products of covariates that interactions need, offsets),
-- centred at the bound value $s<i>:
--   n_<i>        its non-null values,
--   mean_<i>     their mean,
--   cov_<i>_<j>  (i <= j) the population co-moment of v<i> and v<j> about
--                the cell means: var_pop for i = j, covar_pop otherwise.
-- These are the sufficient statistics of a Gaussian model whose design is
-- constant within cells: every block of [Z X y]'[Z X y] is a sum over cells.
-- DuckDB's avg, var_pop and covar_pop are one-pass and stable (Welford-type
-- updates), never sum(x*y) - n*mean(x)*mean(y).  For a model with only a
-- response the aggregates are count, avg and var_pop: what a bare scan costs.
--
-- Observation weights ([model] weights): the columns add
-- cast(source."w" as double) as w, the filter keeps the rows with w > 0 (rows
-- of weight 0 are counted by sql/weight_check.sql, which runs first), and
-- instead of mean_<i> and cov_<i>_<j> the aggregates are the weighted sums
--   w_sum = sum(w), log_w = sum(ln(w)), wsum_<i> = sum(w * v<i>),
--   wprod_<i>_<j> = sum(w * v<i> * v<j>)  (i <= j)
-- (n_<i> and n_rows still count rows): the weighted means and co-moments
-- follow in pooljob/scan/cell_moments.py (cell_arrays).
--
-- Template fields (in braces below), filled by pooljob from quoted
-- identifiers only:
--   columns     source."key" as k<i>, ...,
--               cast(source."col" as double) [* ...] - $s<i> as v<i>, ...
--   key_list    k0, k1, ... followed by a comma, or nothing
--   group_by    group by k0, k1, ..., or nothing when there is no key
--               (then the aggregates make one row for the whole source)
--   aggregates  the aggregates above
--   filter      nothing on the first scan; a second scan, made only when
--               some value is null, NaN or infinite, keeps the rows whose
--               every variable is finite: where isfinite(v0) and ...

with

model_rows as (
    select
        {columns}
    from source
),

usable_rows as (
    select *
    from model_rows
    {filter}
),

cell_stats as (
    select
        {key_list}
        count(*) as n_rows,
        {aggregates}
    from usable_rows
    {group_by}
)

select * from cell_stats
