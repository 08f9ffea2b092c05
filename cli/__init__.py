"""Click commands for embedcache; installed as the `embedcache_cli` package."""
