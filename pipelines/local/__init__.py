"""The local conversion engine: resumable stages run by worker processes on one machine, with user
buckets spilled to disk (a grace hash join); also the conversion behind ``pipelines.predict``."""
