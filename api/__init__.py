"""The task-affinity service: REST API, job store, workers."""
