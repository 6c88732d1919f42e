-- file_count_stats: one row per source file and cell of a binomial or
-- Poisson model, that is per distinct combination of the file a row was
-- read from, the model's key columns and its covariates' values (null keys
-- included, so that the rows they hold can be counted per file and reported
-- as dropped).  With no key column, one row per file.
--
-- This is count_stats.sql with the file as one more key: the counts an
-- incremental refresh keeps per file (pooljob/job/refresh.py), so that a
-- file that changes, appears or disappears changes only its own rows.  The
-- cells of the whole source follow exactly by merging the files' rows
-- (pooljob/scan/cell_counts.py, merge_count_parts): the counts and sums
-- add, the minima and maxima of the covariates and the offset merge by min
-- and max, the cell being identified by its keys and covariate values.  `source` here is a view over the files to scan only, with a
-- column naming each row's file (see file_cell_stats.sql), whose name
-- pooljob chooses so that it is no column of the source.
--
-- Names, as in count_stats.sql: the first CTE alone names columns of
-- `source`, qualified, and renames them (the file column to file, key
-- column i to k<i>, the response y, the trials t, the offset o, covariate k
-- c<k>); everything after it, and the result, use those names only.
--
-- Columns: file; then exactly those of count_stats.sql.
--
-- Template fields (in braces below), filled by pooljob from quoted
-- identifiers only (pooljob/scan/cell_counts.py):
--   file_column  source."<the file column>"
--   group_by     group by file, k0, k1, ..., c0, c1, ... [, o]
--   the others   as in count_stats.sql

with

model_rows as (
    select
        {file_column} as file,
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

file_count_stats as (
    select
        file,
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

select * from file_count_stats
