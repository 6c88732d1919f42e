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
-- `shift` reads `source` on its own (it stops at the first finite row) so
-- that no CTE is referenced twice and nothing is materialised.

with

shift as (
    select coalesce(any_value(first_finite.y), 0.0) as value
    from (
        select cast({response} as double) as y
        from source
        where isfinite(cast({response} as double))
        limit 1
    ) as first_finite
),

centred as (
    select
        {keys},
        cast({response} as double) - (select shift.value from shift) as y
    from source
),

usable as (
    select
        centred.*,
        case when isfinite(centred.y) then centred.y end as y_usable
    from centred
),

group_stats as (
    select
        {keys},
        count(*) as n_rows,
        count(y_usable) as n,
        avg(y_usable) as mean,
        var_pop(y_usable) as var_pop,
        count(*) - count(y) as n_null_response,
        count(y) - count(y_usable) as n_nonfinite_response
    from usable
    group by {keys}
)

select
    group_stats.*,
    shift.value as shift
from group_stats
cross join shift
