"""What both conversion engines share, and neither engine's own: the release's schema and Parquet
input, the data rules (vocabularies, join, item tables), record and manifest writing, the
conversion's options and summary, its claim on the output directory, and synthetic Parquet in the
release's schema."""
