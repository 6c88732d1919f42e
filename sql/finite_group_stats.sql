-- finite_group_stats: one row per leaf group that has at least one finite
-- response: count, mean and population variance of its finite responses,
-- centred at the bound value $shift.  Read only when group_stats found NaN or
-- infinite responses (it is a second scan); the rows it leaves out are
-- counted as dropped.
--
-- Template fields, filled by pooljob with quoted identifiers only:
--   {keys}      the grouping columns, comma separated
--   {response}  the response column

with

finite_responses as (
    select
        {keys},
        cast({response} as double) - $shift as y
    from source
    where isfinite(cast({response} as double))
),

group_stats as (
    select
        {keys},
        count(y) as n,
        avg(y) as mean,
        var_pop(y) as var_pop
    from finite_responses
    group by {keys}
)

select * from group_stats
