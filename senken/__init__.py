"""senken."""
