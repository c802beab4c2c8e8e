"""The batch engine: the task service, the dispatch/ingest/sweep loops and the executors."""
