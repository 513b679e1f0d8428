"""Candidate tables: the Parquet output of classification, queries over it and revisit order.

``table`` (the candidate table's schema, parts and metadata), ``query`` (DuckDB over the
tables, parameters never spliced into SQL) and ``revisit`` (the microscope's visiting order).
"""
