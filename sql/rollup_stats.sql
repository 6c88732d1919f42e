-- rollup_stats: one row per usable cell of a rollup table (`source`), and
-- one per drop_code and cell for its rollup rows that cannot be used, so
-- that they can be counted and reported.  A rollup row stands for `count`
-- rows of the response with sum `sum` and sum of squares `sum_squares`;
-- every other column the model uses (keys, numeric covariates, offsets) is
-- constant over those rows.  The result has the columns of cell_stats.sql,
-- so a cell from a rollup is the cell a scan of the rows would give.
--
-- Names, as in cell_stats.sql: the first CTE alone names columns of
-- `source`, qualified, and renames them (key column i to k<i>, numeric
-- variable i >= 1 to v<i>, the count to w, the sum to s, the sum of
-- squares to q); everything after it, and the result, use those names only.
--
-- Statistics.  The response is centred at the bound integer $s0 before
-- anything is divided, in the columns' own type (exact for integer and
-- DECIMAL columns, which DuckDB sums exactly):
--   ys = s - w s0                 the row's sum of (y - s0)
--   yq = q - s0 (2 s - w s0)      the row's sum of (y - s0)^2
--   d  = (w yq - ys^2) / w        the row's within co-moment of the response
-- The covariates' within co-moments are 0 (constant within the row).  Rows
-- of one cell are pooled with Chan et al.'s parallel update, every product
-- being of two deviations from the cell mean:
--   n        = sum w
--   mean_i   = sum w m_i / n      (mean_0 = sum ys / n, summed exactly first)
--   cov_i_j  = (sum d [i = j = 0] + sum w (m_i - mean_i)(m_j - mean_j)) / n
-- where m_0 = ys / w and m_i = v<i> for a covariate.
--
-- drop_code: used; null_count, bad_count (negative or not whole: a data
-- error), zero_count (dropped); null_group_key; null_response (a null sum
-- or sum of squares), nonfinite_response; unusable_covariate (null, NaN or
-- infinite); bad_sum_squares (w q < s^2 beyond rounding: a data error).
--
-- Template fields (in braces below), filled by pooljob from quoted
-- identifiers only:
--   columns        source."key" as k<i>, ..., source."count" as w,
--                  source."sum" as s, source."sum_squares" as q,
--                  cast(source."col" as double) [* ...] - $s<i> as v<i>, ...
--   null_key       k0 is null or k1 is null ... (false with no key)
--   bad_covariate  v1 is null or not isfinite(v1) or ... (false with none)
--   key_list       k0, k1, ... followed by a comma, or nothing
--   row_means      v<i> as m<i>, ... followed by a comma, or nothing
--   cell_means     sum(w * m<i>) over cell / sum(w) over cell as c<i>, ... or nothing
--   cell           drop_code, k0, k1, ...: a cell (the rows of one drop_code apart)
--   aggregates     mean_<i> and cov_<i>_<j> as above

with

model_rows as (
    select
        {columns}
    from source
),

centred_rows as (
    select
        *,
        s - w * cast($s0 as hugeint) as ys,
        q - cast($s0 as hugeint) * (2 * s - w * cast($s0 as hugeint)) as yq
    from model_rows
),

checked_rows as (
    select
        *,
        case
            when w is null then 'null_count'
            when not isfinite(cast(w as double)) then 'bad_count'
            when w < 0 or w <> round(w) then 'bad_count'
            when w = 0 then 'zero_count'
            when {null_key} then 'null_group_key'
            when s is null or q is null then 'null_response'
            when not isfinite(cast(s as double)) or not isfinite(cast(q as double))
                then 'nonfinite_response'
            when {bad_covariate} then 'unusable_covariate'
            when cast(w * yq - ys * ys as double)
                < -1e-10 * cast(w as double) * abs(cast(q as double))
                then 'bad_sum_squares'
            else 'used'
        end as drop_code
    from centred_rows
),

row_moments as (
    select
        drop_code,
        {key_list}
        {row_means}
        cast(w as double) as w,
        case when drop_code = 'used' then cast(ys as double) / cast(w as double) end as m0,
        case
            when drop_code = 'used'
                then greatest(cast(w * yq - ys * ys as double) / cast(w as double), 0.0)
        end as d,
        case when drop_code = 'used' then ys end as ys
    from checked_rows
),

cell_means as (
    select
        *,
        {cell_means}
        cast(sum(ys) over cell as double) / sum(w) over cell as c0
    from row_moments
    window cell as (partition by {cell})
),

rollup_stats as (
    select
        drop_code,
        {key_list}
        count(*) as rollup_rows,
        sum(w) as n_rows,
        sum(w) as n_0,
        {aggregates}
    from cell_means
    group by {cell}
)

select * from rollup_stats
