"""The status page, its JSON API and /metrics, served by the gateway when [web] is enabled."""
