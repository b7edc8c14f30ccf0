"""capbot storage package."""
