"""The scan: the source reduced to the model's statistics, by SQL on DuckDB or Spark.

The queries are the files in ``sql/``; Python fills in quoted identifiers and
binds values.  The statistics store of incremental refresh lives here too.
"""
