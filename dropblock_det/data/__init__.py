"""PLACEHOLDER (issue 3): embedded dataset, registered on import."""
