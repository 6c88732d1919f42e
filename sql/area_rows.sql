-- area_rows: the used rows of an area-level (Fay-Herriot) model, one per
-- area: its key columns k<i>, the direct estimate y, its known sampling
-- variance v and the covariate terms c<k>.  The same first two steps as
-- sql/area_counts.sql (which the run reads first: it refuses more than
-- {limit} used rows before this query collects them), then the used rows in
-- the order of their keys, at most {limit} + 1 of them.
--
-- Template fields: columns, drop_code (as in sql/area_counts.sql), key_order
-- (k0, k1, ...), limit (an integer).

with

model_rows as (
    select
        {columns}
    from source
),

coded_rows as (
    select
        *,
        {drop_code} as drop_code
    from model_rows
),

area_rows as (
    select
        * exclude (drop_code)
    from coded_rows
    where drop_code = 0
    order by {key_order}
    limit {limit} + 1
)

select * from area_rows
