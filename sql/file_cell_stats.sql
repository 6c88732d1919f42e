-- file_cell_stats: one row per source file and cell, that is per distinct
-- combination of the file a row was read from and the model's key columns
-- (null keys included, so that the rows they hold can be counted per file
-- and reported as dropped).  With no key column, one row per file.
--
-- This is cell_stats.sql with the file as one more key: the statistics an
-- incremental refresh keeps per file (pooljob/job/refresh.py), so that a file
-- that changes, appears or disappears changes only its own rows.  The cells
-- of the whole source follow exactly by merging the files' rows
-- (pooljob/scan/merge.py).  `source` here is a view over the files to scan
-- only (the new and changed ones, or all of them on a rebuild), with a
-- column naming each row's file, as DuckDB's read_parquet or
-- read_csv(..., filename = '<name>') gives it; pooljob chooses that name so
-- that it is no column of the source (pooljob/scan/cell_moments.py,
-- file_column).
--
-- Names, as in cell_stats.sql: the first CTE alone names columns of
-- `source`, qualified, and renames them positionally (the file column to
-- file, key column i to k<i>, numeric variable i to v<i>); everything after
-- it, and the result, use those names only.
--
-- Columns: file; k<i> for every key column; n_rows (rows read); for every
-- numeric variable v<i> of the model, centred at the bound value $s<i>:
--   n_<i>        its non-null values,
--   mean_<i>     their mean,
--   cov_<i>_<j>  (i <= j) var_pop for i = j, covar_pop otherwise,
-- exactly as in cell_stats.sql (and its weighted sums with observation
-- weights).
--
-- Template fields (in braces below), filled by pooljob from quoted
-- identifiers only:
--   file_column source."<the file column>"
--   columns     source."key" as k<i>, ...,
--               cast(source."col" as double) [* ...] - $s<i> as v<i>, ...
--   key_list    k0, k1, ... followed by a comma, or nothing
--   group_by    group by file, k0, k1, ...
--   aggregates  the aggregates of cell_stats.sql
--   filter      nothing on the first scan; where isfinite(v0) and ... on a
--               second scan, made only when some value is null, NaN or infinite

with

model_rows as (
    select
        {file_column} as file,
        {columns}
    from source
),

usable_rows as (
    select *
    from model_rows
    {filter}
),

file_cell_stats as (
    select
        file,
        {key_list}
        count(*) as n_rows,
        {aggregates}
    from usable_rows
    {group_by}
)

select * from file_cell_stats
