"""ytun's own HTTP endpoints: the admin API, metrics and health."""
