"""PLACEHOLDER (issue 3): registered backbone and meta-architecture."""
