-- weight_check: one row for the whole `source` of a model with observation
-- weights ([model] weights): how many rows have a weight that is null, one
-- that is negative, NaN or infinite (both stop the run: a data error), and
-- one that is 0 (those rows are dropped, and counted as zero_weight), and
-- one that is not exactly 1 (when none is, the model is the unweighted one,
-- and pooljob scans it as such: the same numbers as without weights).
--
-- With a file column (incremental refresh), one row per source file.
--
-- Names.  The first CTE is the only place a column of `source` is named,
-- quoted and qualified (source."col"), as w (and the file column as file);
-- the rest names only those.
--
-- Template fields, filled by pooljob from quoted identifiers only:
--   weight     cast(source."col" as double)
--   file       source."<the file column>" as file, -- or nothing
--   file_key   file, -- or nothing
--   group_by   group by file, or nothing

with

weights as (
    select {file} {weight} as w
    from source
)

select
    {file_key}
    count(*) filter (where w is null) as null_weight,
    count(*) filter (where w is not null and (not isfinite(w) or w < 0)) as bad_weight,
    count(*) filter (where w = 0) as zero_weight,
    count(*) filter (where w <> 1) as not_one
from weights
{group_by}
