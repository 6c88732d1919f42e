-- group_stats: one row per leaf group, that is per distinct combination of
-- the model's grouping columns in `source` (null keys included, so that the
-- rows they hold can be counted and reported as dropped).
--
-- Columns: the grouping columns; n_rows (rows read); n, mean, var_pop (count,
-- mean and population variance of the usable, finite responses, centred at
-- `shift`); n_null_response and n_nonfinite_response (rows that cannot be
-- used); shift (one finite response of the source, subtracted before any sum
-- so that a response shifted by 1e9 loses no precision).
--
-- Template fields, filled by pooljob with quoted identifiers only:
--   {keys}      the grouping columns, comma separated
--   {response}  the response column
-- DuckDB's avg and var_pop are one-pass and stable (Welford updates), so the
-- within-group sum of squares is var_pop * n, never sum(y^2) - n * mean^2.

with

response_values as (
    select
        {keys},
        cast({response} as double) as y
    from source
),

shift as (
    select coalesce(any_value(y), 0.0) as value
    from (
        select y
        from response_values
        where isfinite(y)
        limit 1
    )
),

centred as (
    select
        response_values.* exclude (y),
        response_values.y - shift.value as y
    from response_values
    cross join shift
),

group_stats as (
    select
        {keys},
        count(*) as n_rows,
        count(y) filter (where isfinite(y)) as n,
        avg(y) filter (where isfinite(y)) as mean,
        var_pop(y) filter (where isfinite(y)) as var_pop,
        count(*) filter (where y is null) as n_null_response,
        count(*) filter (where not isfinite(y)) as n_nonfinite_response
    from centred
    group by {keys}
)

select
    group_stats.*,
    shift.value as shift
from group_stats
cross join shift
