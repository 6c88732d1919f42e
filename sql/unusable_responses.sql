-- unusable_responses: one row for the whole source, counting the rows whose
-- group keys are all present but whose response cannot be used, by reason.
-- Run only when group_stats found such rows (it reads the response column
-- once more), so that clean data costs one scan.
--
-- Template fields, filled by pooljob with quoted identifiers only:
--   {response}        the response column
--   {keys_not_null}   "k1" is not null and "k2" is not null ...

with

unusable as (
    select cast({response} as double) as y
    from source
    where {keys_not_null}
        and not coalesce(isfinite(cast({response} as double)), false)
)

select
    count(*) filter (where y is null) as null_response,
    count(*) filter (where y is not null) as nonfinite_response
from unusable
