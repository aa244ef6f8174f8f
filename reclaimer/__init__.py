"""The reclaimer: one pass over the group's PEL (a Kubernetes CronJob), or a loop for local use."""
