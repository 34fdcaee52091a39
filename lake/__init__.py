"""The Parquet lake: layout, atomic publish, the live set, the writer, the compactor and queries."""
