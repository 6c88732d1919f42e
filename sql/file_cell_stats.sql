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
-- read_csv(..., filename = '__pooljob_file') gives it.
--
-- Columns: __pooljob_file; the key columns; n_rows (rows read); for every
-- numeric variable v<i> of the model, centred at the bound value $s<i>:
--   n_<i>        its non-null values,
--   mean_<i>     their mean,
--   cov_<i>_<j>  (i <= j) var_pop for i = j, covar_pop otherwise,
-- exactly as in cell_stats.sql.
--
-- Template fields (in braces below), filled by pooljob from quoted
-- identifiers only:
--   file_column the column naming the file: "__pooljob_file"
--   key_list    the key columns followed by a comma, or nothing
--   group_by    group by the file column and the key columns
--   variables   cast("col" as double) [* cast("col2" as double)] - $s<i> as v<i>, ...
--   aggregates  the aggregates of cell_stats.sql
--   filter      nothing on the first scan; where isfinite(v0) and ... on a
--               second scan, made only when some value is null, NaN or infinite

with

model_rows as (
    select
        {file_column},
        {key_list}
        {variables}
    from source
),

usable_rows as (
    select *
    from model_rows
    {filter}
),

file_cell_stats as (
    select
        {file_column},
        {key_list}
        count(*) as n_rows,
        {aggregates}
    from usable_rows
    {group_by}
)

select * from file_cell_stats
