"""The Apache Beam conversion engine: one module per step of the pipeline (``pipeline`` assembles
them), vocabularies in value ranges with lookups as joins, and the launcher that runs it."""
