-- group_stats: one row per leaf group, that is per distinct combination of
-- the model's grouping columns in `source` (null keys included, so that the
-- rows they hold can be counted and reported as dropped).
--
-- Columns: the grouping columns; n_rows (rows read); n, mean, var_pop (count,
-- mean and population variance of the non-null responses, centred at the
-- bound value $shift; n_rows - n rows have a null response).  A NaN or
-- infinite response makes its group's mean or variance non-finite: pooljob
-- then reads finite_group_stats instead.  As few aggregates and expressions as
-- the model needs: this query costs what a bare count/avg/var_pop does.
--
-- Template fields, filled by pooljob with quoted identifiers only:
--   {keys}      the grouping columns, comma separated
--   {response}  the response column
-- DuckDB's avg and var_pop are one-pass and stable (Welford updates), so the
-- within-group sum of squares is var_pop * n, never sum(y^2) - n * mean^2.

with

responses as (
    select
        {keys},
        cast({response} as double) - $shift as y
    from source
),

group_stats as (
    select
        {keys},
        count(*) as n_rows,
        count(y) as n,
        avg(y) as mean,
        var_pop(y) as var_pop
    from responses
    group by {keys}
)

select * from group_stats
